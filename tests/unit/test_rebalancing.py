"""The alerts DAG's step without Airflow: a real SQLite live store -> the to-do list -> the lake table."""

from __future__ import annotations

from pathlib import Path

import pytest

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.lake.layout import rebalancing_key
from citibikes.live.store import StoreError
from citibikes.rebalancing import describe, plan
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


def test_plan_lists_the_long_outages_and_lands_them_in_the_lake(setup) -> None:
    settings, lake, _ = setup
    todo = plan(settings, lake, "asset_triggered__2027-01-15T08:50:00+00:00", RUN_AFTER)

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


def test_a_rerun_replaces_its_list_and_empties_it_when_nothing_is_left(setup) -> None:
    settings, lake, store = setup
    first = plan(settings, lake, "run-1", RUN_AFTER)
    recover(store, "E", END + 60)
    again = plan(settings, lake, "run-1", RUN_AFTER)
    assert again["files"] == first["files"]
    assert [r["station_id"] for r in lake.read_table("rebalancing").to_pylist()] == ["F"]

    recover(store, "F", END + 120)
    assert plan(settings, lake, "run-1", RUN_AFTER)["files"] == first["files"]  # rewritten, empty
    assert lake.read_table("rebalancing").num_rows == 0
    assert plan(settings, lake, "run-2", RUN_AFTER)["files"] == []  # nothing to do: no file at all
    assert lake.files("rebalancing") == [rebalancing_key("run-1", "citibike", RUN_AFTER)]


def test_a_missing_store_names_the_fix(setup, tmp_path: Path) -> None:
    settings, lake, _ = setup
    missing = load_settings({"CITIBIKES_SYSTEMS_FILE": str(settings.systems_file),
                             "CITIBIKES_LIVE_STORE": str(tmp_path / "nowhere.db")})
    with pytest.raises(StoreError, match="does not exist; start the consumer"):
        plan(missing, lake, "run-1", RUN_AFTER)
