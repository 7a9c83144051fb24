"""The dashboard's data (``citibikes.dashboard``) on a real SQLite live store, a folder lake and the consumer's
real metrics endpoint, with answers worked out by hand."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from citibikes.dashboard import audit, health, state
from citibikes.lake import RunRecord, open_lake
from citibikes.live.metrics import ConsumerMetrics
from citibikes.live.store import Changes, LiveStore
from citibikes.stack.process import free_port


def _status(system: str, station: str, bikes: int | None, docks: int | None, *, installed: bool = True,
            renting: bool = True, returning: bool = True, ebikes: int = 0, at: int = 1000) -> tuple:
    key = f"{system}:{station}"
    return key, (key, system, station, at, bikes, ebikes, docks, installed, renting, returning, 0, "{}")


def _information(system: str, station: str, name: str, lat: float | None = 40.7) -> tuple:
    key = f"{system}:{station}"
    return key, (key, system, station, 1, name, lat, -73.9, 20, "{}")


@pytest.fixture
def store(tmp_path: Path) -> LiveStore:
    store = LiveStore.open(str(tmp_path / "live.db"))
    changes = Changes()
    for row in (_status("a", "ok", 5, 5, ebikes=2), _status("a", "empty", 0, 10), _status("a", "full", 7, 0),
                _status("a", "closed", 0, 10, renting=False), _status("a", "gone", 3, 3, installed=False),
                _status("a", "unread", None, None), _status("a", "nodocks", 0, 0, at=1200),
                _status("b", "other", 1, 1, at=900)):
        changes.status[row[0]] = row[1]
    for row in (_information("a", "ok", "OK St"), _information("a", "empty", "Empty St"),
                _information("a", "full", "Full St"), _information("a", "nodocks", "No Docks", lat=None)):
        changes.information[row[0]] = row[1]
    changes.episodes["a:empty"] = [("a:empty", "empty", "a", "empty", 400, False)]
    changes.episodes["a:full"] = [("a:full", "full", "a", "full", 100, True)]
    changes.offsets[("t", 0)] = (1, 1)
    store.commit(changes)
    yield store
    store.close()


def test_each_station_has_its_state_and_the_cards_count_as_the_store_does(store: LiveStore) -> None:
    got = state.station_state(store, "a", now=1000)
    columns = got["columns"]
    by_id = dict(zip(columns["station_id"], columns["state"]))
    assert by_id == {"ok": state.IN_BETWEEN, "empty": state.EMPTY, "full": state.FULL, "closed": state.CLOSED,
                     "gone": state.CLOSED, "unread": state.UNKNOWN, "nodocks": state.EMPTY}
    summary = store.summary()  # both systems: "b" adds nothing empty or full
    assert got["summary"] == {"stations": 7, "empty": summary["empty"], "full": summary["full"], "not_renting": 2,
                              "bikes": 5 + 7 + 3, "ebikes": 2, "docks": 5 + 10 + 10 + 3}
    assert (summary["empty"], summary["full"]) == (2, 2)  # "nodocks" is both
    assert got["as_of"] == 1200 and columns["lat"][columns["station_id"].index("nodocks")] is None
    assert got["outages"] == [
        {"system_id": "a", "station_id": "full", "name": "Full St", "kind": "full", "since": 100, "minutes": 15.0},
        {"system_id": "a", "station_id": "empty", "name": "Empty St", "kind": "empty", "since": 400, "minutes": 10.0}]
    assert columns["outage_kind"][columns["station_id"].index("full")] == "full"


def test_every_system_at_once_and_the_systems_list(store: LiveStore) -> None:
    assert state.systems(store) == [{"id": "a", "stations": 7}, {"id": "b", "stations": 1}]
    every = state.station_state(store, state.ALL, now=1000)
    assert every["summary"]["stations"] == 8 and set(every["columns"]["system_id"]) == {"a", "b"}


def test_pipeline_health_reads_only_new_run_files_and_counts_the_last_hour(tmp_path: Path) -> None:
    lake = open_lake(str(tmp_path / "lake"))
    now = time.time()
    lake.write_runs([RunRecord(run_id="r1", system_id="a", started_at=now - 4000, outcome="success", stations_status=100,
                               stations_quarantined=50)])  # outside the hour
    lake.write_runs([RunRecord(run_id="r2", system_id="a", started_at=now - 120, outcome="success", stations_status=2000,
                               stations_quarantined=10)])
    history = health.RunHistory(lake)
    runs = history.refresh(now)
    assert [r["system_id"] for r in runs] == ["a"]
    lake.write_runs([RunRecord(run_id="r3", system_id="a", started_at=now - 60, outcome="failed", stations_status=1000,
                               stations_quarantined=20)])
    read = []
    history._read = lambda key, read_=history._read: read.append(key) or read_(key)  # count the files read
    runs = history.refresh(now)
    assert len(read) == 2 and len(runs) == 2  # the new run's file, and r2's again: a retry may rewrite it
    read.clear()
    assert len(history.refresh(now + 510)) == 2 and len(read) == 1  # r2 (120 s before now) is settled; r3 is not
    assert health.pipeline_health(runs, ["a", "z"], now) == [
        {"system_id": "a", "last_fetch_age_s": pytest.approx(60, abs=0.2), "records_per_minute": 1500.0,
         "quarantine_rate": 30 / 3000, "last_outcome": "failed"},
        {"system_id": "z", "last_fetch_age_s": None, "records_per_minute": None, "quarantine_rate": None,
         "last_outcome": None}]


def test_the_consumers_metrics_give_its_lag_and_rate() -> None:
    metrics = ConsumerMetrics()
    port = free_port()
    metrics.serve(port)
    metrics.update(counts=Counter(), lags={("t", 0): 7, ("t", 1): 5}, newest=0, outbox=0, open_episodes={}, committed_at=0)
    got = health.consumer_health(f"http://127.0.0.1:{port}/metrics")
    assert got["up"] is True and got["lag"] == 12 and got["messages_per_second"] is not None
    assert health.consumer_health(f"http://127.0.0.1:{free_port()}/metrics") == {
        "up": False, "lag": None, "messages_per_second": None}
    assert health.consumer_health(None)["up"] is None


def test_the_latest_report_is_the_one_ending_last_and_longest(tmp_path: Path) -> None:
    lake = open_lake(str(tmp_path / "lake"))
    assert audit.latest_report(lake, "a") is None
    for period, fines in (("2026-11-01_2026-11-30", 100), ("2026-11-30_2026-11-30", 5), ("2026-10-01_2026-10-31", 9)):
        lake.write_report("analytics", "a", period, [("summary.json", json.dumps(
            {"system": {"fines": fines, "unusable_share_mean": 0.1}}).encode())])
    latest = audit.latest_report(lake, "a")
    assert (latest["first"], latest["last"], latest["fines"]) == ("2026-11-01", "2026-11-30", 100)
    assert latest["url"] == "reports/a/2026-11-01_2026-11-30/report.html"
    for period, name in (("2026-11-01_2026-11-30", "../secret"), ("../x", "report.html"), ("x", "summary.json")):
        with pytest.raises(ValueError):
            audit.report_path("a", period, name)
