"""The checks DAG run for real (dag.test) on DuckDB catalogs of lakes the pipeline made: every check
passes on good data; each deliberate breakage fails exactly its check, whose task logs the offending
rows; every result lands in the lake's ``checks`` table; a missing catalog is one line and a retry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from citibikes.catalog import refresh_catalog
from citibikes.checks import CHECK_OPERATORS
from support.checks_lake import ChecksLake, checks_lake
from support.dags import load_dag

pytestmark = pytest.mark.airflow




@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> ChecksLake:
    return checks_lake(tmp_path_factory.mktemp("checks-lake"))


def _use(lake: ChecksLake, monkeypatch: pytest.MonkeyPatch, *, crawl: bool = True) -> ChecksLake:
    """Point the settings and the lake connection at ``lake``; crawl it into its catalog."""
    for name, value in lake.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CITIBIKES_CATALOG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "fs", "extra": {"path": lake.env["CITIBIKES_LAKE_URI"]}}))
    if crawl:
        refresh_catalog(lake.lake, lake.settings.catalog_path)
    return lake


@pytest.fixture
def broken(good: ChecksLake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> ChecksLake:
    return _use(good.copy(tmp_path), monkeypatch, crawl=False)


def _run(lake: ChecksLake, **conf):
    refresh_catalog(lake.lake, lake.settings.catalog_path)
    run = load_dag("citibikes_checks").test(run_conf={"window_hours": 4, **conf})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run, states


def _results(lake: ChecksLake, run_id: str) -> list[dict]:
    table = lake.lake.read_table("checks")
    return [row for row in table.to_pylist() if row["run_id"] == run_id]


def _log(capfd: pytest.CaptureFixture) -> str:
    """What the run logged (dag.test logs the tasks to the console; warnings and errors at the tests' log level)."""
    out, err = capfd.readouterr()
    return out + err


def _failed_only(states: dict[str, str], check: str) -> None:
    assert states[check] == "failed", states
    assert {states[name] for name in CHECK_OPERATORS if name != check} == {"success"}, states
    assert states["record"] == "failed", states


def test_the_dag_follows_the_catalog_asset_with_one_task_per_check(airflow_db: Path) -> None:
    dag = load_dag("citibikes_checks")
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["citibikes.catalog"]
    operators = {name: dag.get_task(name).operator_class.__name__ for name in CHECK_OPERATORS}
    assert operators == {
        "freshness": "LakeTableCheckOperator", "rows_per_hour": "LakeSQLCheckOperator",
        "duplicates": "LakeSQLCheckOperator", "value_ranges": "LakeColumnCheckOperator",
        "described_stations": "LakeSQLCheckOperator", "quarantine_rate": "LakeTableCheckOperator",
        "failed_runs": "LakeTableCheckOperator"}
    from airflow.providers.common.sql.operators.sql import SQLCheckOperator, SQLColumnCheckOperator, SQLTableCheckOperator

    for name, base in (("value_ranges", SQLColumnCheckOperator), ("freshness", SQLTableCheckOperator),
                       ("duplicates", SQLCheckOperator)):
        assert issubclass(dag.get_task(name).operator_class, base)
    record = dag.get_task("record")
    assert record.trigger_rule == "all_done" and record.upstream_task_ids == {*CHECK_OPERATORS, "plan"}


def test_every_check_passes_on_the_lake_the_pipeline_made_and_the_results_land_in_the_lake(
        good: ChecksLake, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    lake = _use(good, monkeypatch)
    run, states = _run(lake)
    assert run.state == "success", states
    results = _results(lake, run.run_id)
    assert {r["check_name"] for r in results} == set(CHECK_OPERATORS)
    assert all(r["passed"] for r in results), [r for r in results if not r["passed"]]
    per_system = {(r["check_name"], r["system_id"]): r for r in results if r["system_id"]}
    assert {system for _, system in per_system} == {"citibike", "synth-01"}
    assert 0 <= per_system["freshness", "citibike"]["observed"] < 300  # the last minute run, a minute before the lake was made
    assert per_system["rows_per_hour", "citibike"]["observed"] > 0.95
    assert 0 < per_system["quarantine_rate", "citibike"]["observed"] < 0.05
    assert per_system["duplicates", "synth-01"]["observed"] == 0 and per_system["failed_runs", "synth-01"]["observed"] == 0
    ranges = {r["metric"]: r["observed"] for r in results if r["check_name"] == "value_ranges"}
    assert ranges["min(num_docks_available)"] == 0 and 0 < ranges["max(num_bikes_available)"] < 1000


def test_a_duplicated_file_fails_the_duplicates_check(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    copy = broken.duplicate_a_file("synth-01")
    copied = broken.lake.read_file(copy, "station_status").num_rows
    run, states = _run(broken)
    _failed_only(states, "duplicates")
    log = _log(capfd)
    assert f"FAIL  duplicates synth-01: extra_rows = {copied} (threshold 0)" in log
    assert "duplicates: 20 offending row(s) (the first 20):" in log
    assert log.count("system=synth-01, station_id=") == 20 and log.count("copies=2") == 20
    failed = [r for r in _results(broken, run.run_id) if not r["passed"]]
    assert [(r["check_name"], r["system_id"]) for r in failed] == [("duplicates", "synth-01")]


def test_a_negative_count_fails_the_value_ranges_check(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    broken.rewrite_newest("citibike", "num_docks_available", 7, -3)
    run, states = _run(broken)
    _failed_only(states, "value_ranges")
    log = _log(capfd)
    assert "FAIL  value_ranges: min(num_docks_available) = -3 (threshold 0)" in log
    assert "value_ranges: 1 offending row(s):" in log and "num_docks_available=-3" in log


def test_an_undescribed_station_fails_the_described_stations_check(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    broken.rewrite_newest("citibike", "station_id", 0, "ghost-1")
    run, states = _run(broken)
    _failed_only(states, "described_stations")
    log = _log(capfd)
    assert "FAIL  described_stations citibike: undescribed_stations = 1" in log
    assert "system=citibike, station_id=ghost-1, observations=1" in log


def test_a_failed_run_fails_the_failed_runs_check(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    broken.fail_a_run("synth-01")
    run, states = _run(broken)
    _failed_only(states, "failed_runs")
    log = _log(capfd)
    assert "FAIL  failed_runs synth-01: failed_runs = 1" in log
    assert "run_id=manual__broken-run, system_id=synth-01" in log and "HTTP 503" in log


def test_a_high_quarantine_rate_fails_the_quarantine_rate_check(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    broken.quarantine_many("synth-01", 200)
    run, states = _run(broken)
    _failed_only(states, "quarantine_rate")
    assert "system=synth-01, reasons=['negative_count:num_docks_available'], records=200" in _log(capfd)
    (rate,) = [r for r in _results(broken, run.run_id) if r["check_name"] == "quarantine_rate" and not r["passed"]]
    assert rate["system_id"] == "synth-01" and rate["observed"] > 0.05 and rate["threshold"] == 0.05


def test_a_stale_system_fails_the_freshness_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  airflow_db: Path, capfd: pytest.CaptureFixture) -> None:
    lake = _use(checks_lake(tmp_path, stale="synth-01"), monkeypatch, crawl=False)
    run, states = _run(lake)
    _failed_only(states, "freshness")
    log = _log(capfd)
    (stale,) = [r for r in _results(lake, run.run_id) if r["check_name"] == "freshness" and not r["passed"]]
    assert stale["system_id"] == "synth-01" and stale["observed"] > 1500  # its minute runs stopped 25 minutes ago
    assert f"FAIL  freshness synth-01: age_s = {stale['observed']:g} (threshold 900)" in log
    assert "freshness: 1 offending row(s):" in log and "system=synth-01, newest=" in log


def test_a_truncated_snapshot_fails_rows_per_hour(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    lake = broken.lake
    key = broken.newest_status_file("synth-01")
    table = lake.read_file(key, "station_status")
    from citibikes.lake.store import status_file

    lake.write_files([status_file("synth-01", table.slice(0, 100), int(key.rsplit("/", 1)[1][:-8]))])
    run, states = _run(broken)
    _failed_only(states, "rows_per_hour")
    (row,) = re.findall(r"system=synth-01, date=\S+, hour=\d+, last_updated=[^,]+, stations=100, hour_stations=(\d+), "
                        r"coverage=([\d.]+)", _log(capfd))
    assert int(row[0]) > 400 and float(row[1]) == 100 / int(row[0])  # the other snapshots of its hour: all stations


def test_no_catalog_is_one_line_a_retry_and_a_not_run_result(broken: ChecksLake, capfd: pytest.CaptureFixture) -> None:
    run = load_dag("citibikes_checks").test(run_conf={"window_hours": 4})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and {states[name] for name in CHECK_OPERATORS} == {"failed"}, states
    log = _log(capfd)
    assert f"no catalog at {broken.settings.catalog_path} yet; let the citibikes_catalog DAG run" in log
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    assert tries["freshness"] == 3  # retried: the catalog may appear
    results = _results(broken, run.run_id)
    assert {(r["check_name"], r["metric"], r["passed"]) for r in results} == {
        (name, "not_run", False) for name in CHECK_OPERATORS}
