"""The analytics DAG run for real (dag.test on the metadata DB) on a lake the backfill made of a hand-built series."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.replay.backfill import backfill
from support.dags import load_dag
from support.series import Series

pytestmark = pytest.mark.airflow


@pytest.fixture
def lake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path):
    """Two stations 1,000 ft apart, both empty 09:00-11:30 on Monday 2 March 2026 (New York), backfilled."""
    series = Series()
    series.station("a")
    series.station("b", east_ft=1000)
    for minute in range(8 * 60 + 50, 12 * 60 + 10, 10):
        empty = 9 * 60 <= minute < 11 * 60 + 30
        series.at(f"2026-03-02 {minute // 60:02d}:{minute % 60:02d}:00", a=0 if empty else 5, b=0 if empty else 5)
    folder = series.write(tmp_path / "feed")
    (tmp_path / "systems.yaml").write_text("systems:\n  - id: test\n    discovery_url: http://127.0.0.1:9/gbfs.json\n"
                                           "    timezone: America/New_York\n")
    env = {"CITIBIKES_SYSTEMS_FILE": str(tmp_path / "systems.yaml"), "CITIBIKES_LAKE_URI": str(tmp_path / "lake"),
           "CITIBIKES_STATE_DIR": str(tmp_path / "state")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "fs", "extra": {"path": env["CITIBIKES_LAKE_URI"]}}))
    settings = load_settings(env)
    lake = open_lake(settings.lake_uri)
    assert not backfill(folder, "test", settings=settings, lake=lake, workers=1).failed
    return lake


def test_the_dag_runs_daily_after_the_days_end_with_parameters(airflow_db: Path) -> None:
    dag = load_dag("citibikes_analytics")
    assert dag.timetable.expression == "0 6 * * *" and dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.params) == {"system", "first_day", "last_day", "catalog"}
    assert dag.get_task("plan").downstream_task_ids == {"refresh_catalog", "measure"}
    assert dag.get_task("refresh_catalog").downstream_task_ids == {"measure"}


def test_a_run_on_demand_writes_the_report_of_the_period(lake_env) -> None:
    lake = lake_env
    run = load_dag("citibikes_analytics").test(run_conf={"system": "test", "first_day": "2026-03-02", "last_day": ""})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    folder = Path(lake.storage.path("reports/analytics/system=test/period=2026-03-02_2026-03-02"))
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "stations.csv", "stations.parquet", "summary.json"]
    stations = pq.read_table(folder / "stations.parquet").to_pylist()
    # the pair is empty 09:00-11:30: 2.5 h in the peak window, $50 for each station
    assert [(s["station_id"], s["peak_instances"], s["peak_fines"], s["neighbour_id"]) for s in stations] == [
        ("a", 1, 50, "b"), ("b", 1, 50, "a")]
    rows = list(csv.DictReader(io.StringIO((folder / "stations.csv").read_text())))
    assert [(r["station_id"], r["fines"]) for r in rows] == [("a", "50"), ("b", "50")]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["system"]["fines"] == 100 and summary["system"]["first"] == str(date(2026, 3, 2))
    html = (folder / "report.html").read_text()
    assert "<svg" in html and "$100" in html and "stations.csv" in html


def test_days_asked_for_without_data_fail_at_once(lake_env) -> None:
    run = load_dag("citibikes_analytics").test(run_conf={"system": "test", "first_day": "2026-05-01", "last_day": ""})
    measure = next(ti for ti in run.get_task_instances() if ti.task_id == "measure")
    assert run.state == "failed" and measure.state == "failed" and measure.try_number == 1


def test_a_daily_run_whose_day_has_no_data_skips(lake_env) -> None:
    """A new stack's first daily run (yesterday: nothing landed yet) is no failure."""
    run = load_dag("citibikes_analytics").test(run_conf={"system": "", "first_day": "", "last_day": ""})
    measure = next(ti for ti in run.get_task_instances() if ti.task_id == "measure")
    assert run.state == "success" and measure.state == "skipped"


@pytest.mark.parametrize("conf", [{"system": "nope", "first_day": "", "last_day": ""},
                                  {"system": "test", "first_day": "March", "last_day": ""}])
def test_bad_parameters_fail_the_plan(lake_env, conf: dict) -> None:
    run = load_dag("citibikes_analytics").test(run_conf=conf)
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan")
    assert run.state == "failed" and plan.state == "failed"
