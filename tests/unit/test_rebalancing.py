"""The alerts DAG's step without Airflow: a real SQLite live store -> the to-do lists that changed -> the lake."""

from __future__ import annotations

from pathlib import Path

import pytest

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.lake.layout import rebalancing_key
from citibikes.live.store import StoreError
from citibikes.rebalancing import describe, mark_sent, plan
from support.outages import DURATION_S, END, EXPECTED, T0, build_store, recover

RUN_AFTER = 1_800_003_000.5
"""The run's run_after: 2027-01-15 08:50 UTC, which dates its lake file."""


@pytest.fixture
def setup(tmp_path: Path):
    systems = tmp_path / "systems.yaml"
    systems.write_text("systems:\n  - id: citibike\n    discovery_url: http://127.0.0.1:1/gbfs.json\n"
                       "    outage_threshold_min: 30\n")
    store_path = tmp_path / "live.db"
    store = build_store(store_path)
    settings = load_settings({"CITIBIKES_SYSTEMS_FILE": str(systems), "CITIBIKES_STATE_DIR": str(tmp_path / "state"),
                              "CITIBIKES_LIVE_STORE": str(store_path)})
    yield settings, open_lake(str(tmp_path / "lake")), store
    store.close()


def _run(settings, lake, run_id: str) -> dict:
    """What one DAG run does: plan, then (the notifier sent it) record the lists as sent."""
    todo = plan(settings, lake, run_id, RUN_AFTER)
    mark_sent(lake, todo)
    return todo


def test_plan_lists_the_long_outages_and_lands_them_in_the_lake(setup) -> None:
    settings, lake, _ = setup
    todo = _run(settings, lake, "asset_triggered__2027-01-15T08:50:00+00:00")

    key = "curated/rebalancing/system=citibike/date=2027-01-15/asset_triggered__2027-01-15T08_50_00_00_00.parquet"
    assert todo["files"] == [key]
    assert todo["systems"] == {"citibike": {"as_of": END, "empty": 1, "full": 1}}
    got = {(o["station_id"], o["kind"]): [(h["station_id"], h["distance_m"], h["available"]) for h in o["helpers"]]
           for o in todo["outages"]}
    assert got == EXPECTED
    assert {(o["started"], o["duration_s"], o["threshold_s"]) for o in todo["outages"]} == {(T0 + 60, DURATION_S, 1800)}

    table = lake.read_table("rebalancing")
    assert table.num_rows == 2
    rows = sorted(table.to_pylist(), key=lambda r: r["kind"])
    assert [(r["system"], str(r["date"]), r["station_id"], r["name"], r["duration_s"]) for r in rows] == [
        ("citibike", "2027-01-15", "E", "E St", DURATION_S), ("citibike", "2027-01-15", "F", "F St", DURATION_S)]
    assert rows[0]["as_of"].timestamp() == END and rows[0]["run_id"] == todo["run_id"]
    assert rows[0]["helpers"][0] == {"station_id": "A", "name": "A St", "distance_m": 111, "available": 10}

    assert describe(todo) == [
        "citibike: 1 empty and 1 full stations past their outage threshold as of 2027-01-15 08:45:00 UTC",
        "  empty E E St for 44 min: bikes from A A St (111 m, 10 bikes), C C St (334 m, 8 bikes), D D St (445 m, 6 bikes)",
        "  full F F St for 44 min: room at D D St (667 m, 6 docks), B B St (890 m, 9 docks), A A St (1001 m, 10 docks)",
    ]


def test_only_lists_that_changed_since_the_last_ones_sent_are_kept(setup) -> None:
    settings, lake, store = setup
    _run(settings, lake, "run-1")
    same = plan(settings, lake, "run-2", RUN_AFTER)  # the same outages, only longer: nothing to send, no file
    assert (same["systems"], same["outages"], same["files"]) == ({}, [], [])
    assert describe(same) == ["no to-do list changed since the last ones sent"]

    recover(store, "E", END + 60)
    changed = plan(settings, lake, "run-3", RUN_AFTER)  # E recovered: F alone is a new list (its sending fails)
    assert [o["station_id"] for o in changed["outages"]] == ["F"]
    unsent = plan(settings, lake, "run-4", RUN_AFTER)  # not recorded as sent: the next run sends it again
    assert unsent["systems"] == changed["systems"] and unsent["outages"] == changed["outages"]
    assert lake.files("rebalancing") == [rebalancing_key(r, "citibike", RUN_AFTER) for r in ("run-1", "run-3", "run-4")]


def test_a_rerun_replaces_its_list_and_empties_it_when_nothing_is_left(setup) -> None:
    settings, lake, store = setup
    first = _run(settings, lake, "run-1")
    recover(store, "E", END + 60)
    again = _run(settings, lake, "run-1")
    assert again["files"] == first["files"]
    assert [r["station_id"] for r in lake.read_table("rebalancing").to_pylist()] == ["F"]

    recover(store, "F", END + 120)
    cleared = _run(settings, lake, "run-1")
    assert cleared["files"] == first["files"] and cleared["systems"]["citibike"]["full"] == 0
    assert lake.read_table("rebalancing").num_rows == 0
    assert describe(cleared) == ["citibike: 0 empty and 0 full stations past their outage threshold "
                                 "as of 2027-01-15 08:47:00 UTC"]
    assert _run(settings, lake, "run-2")["files"] == []  # nothing to do, as sent: no file at all
    assert lake.files("rebalancing") == [rebalancing_key("run-1", "citibike", RUN_AFTER)]


def test_a_missing_store_names_the_fix(setup, tmp_path: Path) -> None:
    settings, lake, _ = setup
    missing = load_settings({"CITIBIKES_SYSTEMS_FILE": str(settings.systems_file),
                             "CITIBIKES_LIVE_STORE": str(tmp_path / "nowhere.db")})
    with pytest.raises(StoreError, match="does not exist; start the consumer"):
        plan(missing, lake, "run-1", RUN_AFTER)
