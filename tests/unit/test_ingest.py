"""One system's step without Kafka: what is checked, what changed since the state, what the state becomes.

The recorded Citi Bike snapshots are the data; expectations come from their raw JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from citibikes.changes import information_digest
from citibikes.config import QualityConfig
from citibikes.gbfs.client import GbfsClient
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.ingest import Checked, Fetched, check_fetched, inspect_feeds, landed_rows, select, step_files
from citibikes.lake import open_lake
from citibikes.replay.recordings import recorded
from citibikes.state import SystemState, load_state, save_state

QUALITY = QualityConfig()
EVERY = 900


def body(feed: str, index: int = 0) -> bytes:
    return recorded(feed)[index].read_bytes()


def doc(feed: str, index: int = 0) -> dict[str, Any]:
    return json.loads(body(feed, index))


def fetched(status: bytes | None, information: bytes | None = None) -> Fetched:
    bodies = {feed: data for feed, data in ((STATION_STATUS, status), (STATION_INFORMATION, information)) if data}
    last_updated = {feed: json.loads(data)["last_updated"] for feed, data in bodies.items()}
    return Fetched(system_id="citibike", fetched_at=float(max(last_updated.values())) + 5,
                   outcomes={feed: "new" for feed in bodies}, last_updated=last_updated, bodies=bodies)


def step_of(state: SystemState, status: bytes | None, information: bytes | None = None, *, every: int = EVERY):
    checked = check_fetched(fetched(status, information), state, QUALITY)
    return select(state, checked, system_id="citibike", snapshot_every_s=every)


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_the_first_step_publishes_every_station_and_lands_every_description() -> None:
    step = step_of(SystemState(), body(STATION_STATUS), body(STATION_INFORMATION))
    stations = len(doc(STATION_STATUS)["data"]["stations"])
    assert step.full_snapshot and len(step.publish) == step.status.num_rows == stations - 13
    assert step.descriptions.num_rows == len(doc(STATION_INFORMATION)["data"]["stations"])
    assert landed_rows(step) == {"station_status": stations - 13, "station_information": stations, "quarantine": 13}
    assert step.state.snapshot_at == doc(STATION_STATUS)["last_updated"]
    assert step.state.information_digest == information_digest(body(STATION_INFORMATION))


def test_the_next_step_publishes_only_the_stations_whose_counts_or_flags_changed() -> None:
    first = step_of(SystemState(), body(STATION_STATUS, 0), body(STATION_INFORMATION))
    second = step_of(first.state, body(STATION_STATUS, 1))
    before = {r["station_id"]: r for r in doc(STATION_STATUS, 0)["data"]["stations"]}
    counts = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
              "num_docks_disabled", "is_installed", "is_renting", "is_returning")
    valid = second.status["station_id"].to_pylist()
    changed = {r["station_id"] for r in doc(STATION_STATUS, 1)["data"]["stations"] if r["station_id"] in valid
               and (r["station_id"] not in first.state.published
                    or any(r[key] != before[r["station_id"]][key] for key in counts))}
    assert not second.full_snapshot and {valid[row] for row in second.publish} == changed
    assert 0 < len(changed) < len(valid)
    assert second.descriptions is None  # no station_information in this step
    # every observation still lands
    assert second.status.num_rows == len(valid)


def test_a_full_snapshot_is_published_every_snapshot_every_seconds() -> None:
    first = step_of(SystemState(), body(STATION_STATUS, 0), body(STATION_INFORMATION))
    gap = doc(STATION_STATUS, 1)["last_updated"] - doc(STATION_STATUS, 0)["last_updated"]
    assert step_of(first.state, body(STATION_STATUS, 1), every=gap).full_snapshot
    assert not step_of(first.state, body(STATION_STATUS, 1), every=gap + 1).full_snapshot


def test_descriptions_land_only_when_their_content_changed_whatever_last_updated_says() -> None:
    information = doc(STATION_INFORMATION)
    first = step_of(SystemState(), body(STATION_STATUS, 0), encode(information))
    information["last_updated"] += 60  # re-sent a minute later, nothing else new
    again = check_fetched(fetched(body(STATION_STATUS, 1), encode(information)), first.state, QUALITY)
    assert again.information is None  # same descriptions: not even normalized
    stations = information["data"]["stations"]
    stations[3]["name"] += " (temporary)"
    stations[7]["capacity"] += 2
    information["ttl"] = 30  # a header change alone would not count
    changed = step_of(first.state, body(STATION_STATUS, 1), encode(information))
    assert changed.descriptions["station_id"].to_pylist() == [stations[3]["station_id"], stations[7]["station_id"]]
    assert changed.descriptions["name"][0].as_py().endswith("(temporary)")
    assert changed.state.described.capacities.to_pylist()[7] == stations[7]["capacity"]


def test_station_information_of_another_key_order_is_the_same_descriptions() -> None:
    information = doc(STATION_INFORMATION)
    first = step_of(SystemState(), body(STATION_STATUS, 0), encode(information))
    reordered = {"data": {"stations": [dict(reversed(list(s.items()))) for s in information["data"]["stations"]]},
                 "version": information["version"], "ttl": information["ttl"], "last_updated": information["last_updated"] + 60}
    step = step_of(first.state, body(STATION_STATUS, 1), encode(reordered))
    assert step.descriptions is None  # normalized again (other bytes), but no description changed


def test_the_state_round_trips_through_the_lake_without_looking_changed(tmp_path: Path) -> None:
    lake = open_lake(str(tmp_path))
    first = step_of(SystemState(), body(STATION_STATUS, 0), body(STATION_INFORMATION))
    save_state(lake, "citibike", first.state)
    loaded = load_state(lake, "citibike")
    assert msgspec.json.encode(loaded.published) == msgspec.json.encode(first.state.published)
    assert loaded.described.ids.equals(first.state.described.ids)
    assert loaded.described.capacities.equals(first.state.described.capacities)
    # the same snapshot again selects nothing: the fingerprints read back equal the ones computed
    again = step_of(loaded, body(STATION_STATUS, 0))
    assert again.publish == [] and not again.full_snapshot


def test_a_status_step_without_new_information_is_checked_against_the_remembered_stations() -> None:
    first = step_of(SystemState(), body(STATION_STATUS, 0), body(STATION_INFORMATION))
    status = doc(STATION_STATUS, 1)
    status["data"]["stations"][0]["station_id"] = "ghost"
    step = step_of(first.state, encode(status))
    assert [q.station_id for q in step.quarantined if "unknown_station" in q.reasons] == ["ghost"]
    assert step.summary.orphans == {"status_without_information": 1, "information_without_status": 1}


def test_step_files_name_every_table_after_the_feed_times(tmp_path: Path) -> None:
    lake = open_lake(str(tmp_path))
    step = step_of(SystemState(), body(STATION_STATUS), body(STATION_INFORMATION))
    keys = sorted(key for key, _ in step_files(step, lake))
    status_time, information_time = doc(STATION_STATUS)["last_updated"], doc(STATION_INFORMATION)["last_updated"]
    assert keys == sorted([
        f"curated/station_information/system=citibike/date=2024-03-13/hour=13/{information_time}.parquet",
        f"curated/station_status/system=citibike/date=2024-03-13/hour=13/{status_time}.parquet",
        f"quarantine/system=citibike/date=2024-03-13/hour=13/station_status-{status_time}.parquet",
    ])
    assert not any("station_status/" in key for key, _ in step_files(step, lake, status=False))


def test_a_version_file_landed_again_keeps_the_rows_it_had(tmp_path: Path) -> None:
    """A backfill resumed with gaps starts from another state and may select fewer stations for a
    version the lake has already: landing it again adds rows, never drops one."""
    lake = open_lake(str(tmp_path))
    first = step_of(SystemState(), body(STATION_STATUS), body(STATION_INFORMATION))
    lake.write_files(step_files(first, lake))
    stations = doc(STATION_INFORMATION)["data"]["stations"]
    changed = first.descriptions.slice(3, 2)  # as if only two stations had changed since another start
    again = msgspec.structs.replace(first, descriptions=changed)
    lake.write_files(step_files(again, lake))
    landed = lake.read_table(STATION_INFORMATION)
    assert sorted(landed["station_id"].to_pylist()) == sorted(s["station_id"] for s in stations)


def test_mixed_versions_are_counted() -> None:
    information = doc(STATION_INFORMATION)
    information["version"] = "2.3"  # the status file says 1.1
    step = step_of(SystemState(), body(STATION_STATUS), encode(information))
    assert step.summary.quirks["feed:mixed_versions"] == 1
    assert "feed:mixed_versions" not in step_of(SystemState(), body(STATION_STATUS), body(STATION_INFORMATION)).summary.quirks


def test_a_folder_is_judged_by_each_file_s_own_time(tmp_path: Path) -> None:
    """An information file hours newer than the status file does not make the status stale."""
    information = doc(STATION_INFORMATION)
    information["last_updated"] += 6 * 3600
    (tmp_path / "station_information.json").write_text(json.dumps(information))
    (tmp_path / "station_status.json").write_bytes(body(STATION_STATUS))
    with GbfsClient.for_folder(tmp_path, system_id="citibike") as client:
        result = inspect_feeds(client, QUALITY, recorded=True)
    assert not result.summary["feed_stale"] and result.summary["feed_age_s"] == 0
    assert "stale_feed" not in result.summary["quarantined_by_reason"]


def test_vehicle_types_json_defines_the_known_vehicle_types(tmp_path: Path) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs" / "v2.3"
    status = json.loads((fixtures / "station_status.json").read_text())
    type_ids = sorted({entry["vehicle_type_id"] for s in status["data"]["stations"]
                       for entry in s.get("vehicle_types_available") or []})
    assert len(type_ids) >= 2
    folder = tmp_path / "feed"
    shutil.copytree(fixtures, folder)
    vehicle_types = {"last_updated": status["last_updated"], "ttl": 60, "version": "2.3", "data": {"vehicle_types": [
        {"vehicle_type_id": type_ids[0], "form_factor": "bicycle", "propulsion_type": "human"}]}}
    (folder / "vehicle_types.json").write_text(json.dumps(vehicle_types))
    with GbfsClient.for_folder(folder, system_id="fixture") as client:
        result = inspect_feeds(client, QUALITY, recorded=True)
    unknown = sum(any(e["vehicle_type_id"] != type_ids[0] for e in s.get("vehicle_types_available") or [])
                  for s in status["data"]["stations"])
    assert result.summary["quirks"]["unknown_vehicle_type_id"] == unknown > 0


@pytest.mark.parametrize("checked", [Checked()])
def test_a_step_without_new_data_changes_nothing_but_the_client_state(checked: Checked) -> None:
    state = step_of(SystemState(), body(STATION_STATUS), body(STATION_INFORMATION)).state
    step = select(state, checked, system_id="citibike", snapshot_every_s=EVERY, client_state={"format": 1})
    assert step.summary is None and step.status is None and step.descriptions is None
    assert step.state.client == {"format": 1}
    assert step.state.published == state.published and step.state.descriptions == state.descriptions


def test_a_broken_vehicle_types_json_is_counted_and_the_station_feeds_go_on(tmp_path: Path) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs" / "v2.3"
    shutil.copytree(fixtures, tmp_path / "feed")
    (tmp_path / "feed" / "vehicle_types.json").write_text("<html>Bad gateway</html>")
    with GbfsClient.for_folder(tmp_path / "feed", system_id="fixture") as client:
        result = inspect_feeds(client, QUALITY, recorded=True)
    assert result.summary["quirks"]["feed:unusable_vehicle_types"] == 1
    assert result.summary["valid"]["station_status"] > 0 and "unknown_vehicle_type_id" not in result.summary["quirks"]


def test_an_unreadable_station_information_lets_the_status_land_against_the_last_description() -> None:
    first = step_of(SystemState(), body(STATION_STATUS, 0), body(STATION_INFORMATION))
    status = fetched(body(STATION_STATUS, 1))
    broken = b"<html>502 Bad Gateway</html>"
    status.bodies[STATION_INFORMATION], status.outcomes[STATION_INFORMATION] = broken, "new"
    step = select(first.state, check_fetched(status, first.state, QUALITY), system_id="citibike", snapshot_every_s=EVERY)
    assert step.summary.quirks["feed:unusable_station_information"] == 1
    assert step.status.num_rows > 2000 and step.descriptions is None
    assert step.state.information_digest == first.state.information_digest
    del status.bodies[STATION_STATUS]
    with pytest.raises(FeedError, match="HTML"):  # nothing else new: the system fails, naming the cause
        check_fetched(status, first.state, QUALITY)
