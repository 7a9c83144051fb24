"""The catalog DAG: its wiring (both paths), and the DuckDB path run for real (dag.test) on a lake the pipeline made."""

from __future__ import annotations

import hashlib
import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from citibikes.catalog import connect
from support.pipeline_lake import pipeline_lake
from support.dags import load_dag

pytestmark = pytest.mark.airflow




@pytest.fixture
def lake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path):
    """A lake of two minute runs (two systems) behind an ``fs`` citibikes_lake connection; a fresh state folder."""
    pipeline = pipeline_lake(tmp_path)
    try:
        pipeline.minute()
        pipeline.minute()
    finally:
        pipeline.close()
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(pipeline.settings.state_dir))
    monkeypatch.setenv("CITIBIKES_LAKE_URI", pipeline.settings.lake_uri)
    monkeypatch.delenv("CITIBIKES_CATALOG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE",
                       json.dumps({"conn_type": "fs", "extra": {"path": pipeline.settings.lake_uri}}))
    return pipeline


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def _asset_events(run_id: str) -> dict[str, dict]:
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(select(AssetModel.name, AssetEvent.extra)
                               .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                               .where(AssetEvent.source_run_id == run_id)).all()
    return dict(rows)


def test_the_dag_runs_on_the_lake_assets_one_at_a_time_with_both_paths_wired(airflow_db: Path) -> None:
    from airflow.sdk import AssetAny

    dag = load_dag("citibikes_catalog")
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert isinstance(dag.timetable.asset_condition, AssetAny)
    assert {asset.name for asset in dag.timetable.asset_condition.objects} == {
        "citibikes.station_status", "citibikes.station_information", "citibikes.pipeline_runs"}
    assert dag.params["catalog"] == "auto"
    assert dag.get_task("choose").downstream_task_ids == {"crawl_duckdb", "glue_crawler_config"}
    assert dag.get_task("glue_crawler_config").downstream_task_ids == {"crawler_exists", "create_crawler", "update_crawler"}
    assert dag.get_task("crawler_exists").downstream_task_ids == {"create_crawler", "update_crawler"}
    assert dag.get_task("run_crawler").upstream_task_ids == {"create_crawler", "update_crawler"}
    run = dag.get_task("run_crawler")
    assert type(run).__name__ == "GlueCrawlerRunOperator" and run.wait_for_completion and not run.fail_on_already_running
    assert run.deferrable == (find_spec("aiobotocore") is not None)  # the provider's trigger needs it
    assert run.trigger_rule == "none_failed_min_one_success" and run.aws_conn_id == "citibikes_lake"
    assert type(dag.get_task("create_crawler")).__name__ == "GlueCrawlerCreateOperator"
    assert type(dag.get_task("update_crawler")).__name__ == "GlueCrawlerUpdateOperator"
    # Both ends emit the catalog asset the checks DAG is scheduled on.
    for task_id in ("crawl_duckdb", "run_crawler"):
        assert [outlet.name for outlet in dag.get_task(task_id).outlets] == ["citibikes.catalog"]


def test_the_duckdb_path_registers_the_lake_and_emits_the_catalog_asset(lake_env) -> None:
    dag = load_dag("citibikes_catalog")
    run = dag.test()
    states = _states(run)
    assert run.state == "success", states
    assert states["crawl_duckdb"] == "success"
    assert {states[t] for t in ("glue_crawler_config", "crawler_exists", "create_crawler", "update_crawler",
                                "run_crawler")} == {"skipped"}
    con = connect(lake_env.settings.catalog_path)
    status_rows = lake_env.lake.read_table("station_status").num_rows
    assert con.sql("SELECT count(*) FROM station_status").fetchone()[0] == status_rows
    event = _asset_events(run.run_id)["citibikes.catalog"]
    assert event["version"] == 1 and event["tables"]["station_status"]["rows"] == status_rows
    assert set(event["tables"]) == {"station_status", "station_information", "quarantine", "pipeline_runs",
                                    "rebalancing", "checks"}  # the last two empty: tables the pipeline writes


def test_a_foreign_file_fails_the_crawl_once_without_retries_and_keeps_the_catalog(lake_env) -> None:
    dag = load_dag("citibikes_catalog")
    assert dag.test().state == "success"
    catalog = lake_env.settings.catalog_path
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    Path(lake_env.lake.storage.path("pipeline_runs/export.csv")).write_text("not a table file")
    run = dag.test()
    assert run.state == "failed"
    (crawl,) = [ti for ti in run.get_task_instances() if ti.task_id == "crawl_duckdb"]
    assert crawl.state == "failed" and crawl.try_number == 1  # bad input: no retry
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    assert "citibikes.catalog" not in _asset_events(run.run_id)


def test_the_catalog_param_sends_a_run_down_the_glue_path(lake_env) -> None:
    """A folder lake cannot be crawled by Glue: the config task says so in one line (no AWS call)."""
    run = load_dag("citibikes_catalog").test(run_conf={"catalog": "glue"})
    states = _states(run)
    assert states["crawl_duckdb"] == "skipped" and states["glue_crawler_config"] == "failed", states
    assert not lake_env.settings.catalog_path.exists()
