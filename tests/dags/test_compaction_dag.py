"""The compaction DAG run for real (dag.test on the metadata DB) on a lake the pipeline made."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from citibikes.catalog import connect, refresh_catalog
from support.dags import load_dag
from support.glue_lake import REGION, athena, glue_lake, locations, prepare
from support.moto_server import moto_server
from support.pipeline_lake import minute_runs, yesterday_evening

pytestmark = pytest.mark.airflow

HOUR = 3600
COUNTS = "SELECT system, hour, count(*), sum(num_bikes_available) FROM station_status GROUP BY ALL ORDER BY ALL"



@pytest.fixture
def lake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path):
    """Minute runs 20 minutes apart from the start of the hour three hours ago (hours H0-H2), behind an
    ``fs`` citibikes_lake connection; the settle time that closes H0 and H1 but not H2."""
    pipeline, first_hour = minute_runs(tmp_path, 7, 20 * 60, hours_ago=3)
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(pipeline.settings.state_dir))
    monkeypatch.setenv("CITIBIKES_LAKE_URI", pipeline.settings.lake_uri)
    monkeypatch.delenv("CITIBIKES_CATALOG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE",
                       json.dumps({"conn_type": "fs", "extra": {"path": pipeline.settings.lake_uri}}))
    refresh_catalog(pipeline.lake, pipeline.settings.catalog_path)
    return pipeline, int(time.time() - (first_hour + 2 * HOUR) - HOUR / 2)


def _instances(run) -> dict[str, list]:
    found: dict[str, list] = {}
    for ti in run.get_task_instances():
        found.setdefault(ti.task_id, []).append(ti)
    return found


def _compacted(lake) -> list[Path]:
    return sorted(Path(lake.storage.path("curated/station_status")).rglob("_compacted/v*/*.parquet"))


def test_the_dag_runs_hourly_one_at_a_time_a_task_per_system(airflow_db: Path) -> None:
    dag = load_dag("citibikes_compaction")
    assert dag.max_active_runs == 1 and dag.catchup is False and dag.timetable.expression == "0 * * * *"
    assert set(dag.params) == {"settle_s", "grace_s", "dry_run"}
    assert dag.get_task("plan").downstream_task_ids == {"compact"}
    assert dag.get_task("compact").downstream_task_ids == {"refresh"}
    assert dag.get_task("refresh").downstream_task_ids == {"delete"}
    assert [outlet.name for outlet in dag.get_task("refresh").outlets] == ["citibikes.catalog"]


def test_closed_hours_are_compacted_switched_and_later_deleted_with_the_same_rows(lake_env) -> None:
    pipeline, settle = lake_env
    catalog = pipeline.settings.catalog_path
    expected = connect(catalog).sql(COUNTS).fetchall()
    dag = load_dag("citibikes_compaction")

    run = dag.test(run_conf={"settle_s": settle, "grace_s": HOUR, "dry_run": False})
    tasks = _instances(run)
    assert run.state == "success", {k: [t.state for t in v] for k, v in tasks.items()}
    assert sorted(ti.rendered_map_index for ti in tasks["compact"]) == ["citibike", "synth-01"]
    assert {ti.state for ti in tasks["compact"]} == {"success"}
    compacted = _compacted(pipeline.lake)
    assert len(compacted) == 4  # H0 and H1 of two systems
    assert all(pq.read_metadata(path).num_row_groups == 1 for path in compacted)
    assert connect(catalog).sql(COUNTS).fetchall() == expected
    assert connect(catalog).sql("SELECT count(*) FROM _partitions WHERE table_name = 'station_status' "
                                "AND files[1] LIKE '%/_compacted/v1/%'").fetchone() == (4,)

    dry = dag.test(run_conf={"settle_s": settle, "grace_s": 0, "dry_run": True})
    assert dry.state == "success" and _instances(dry)["refresh"][0].state == "skipped"
    assert all(len(list(p.parent.parent.parent.glob("*.parquet"))) > 1 for p in compacted), "nothing deleted"

    done = dag.test(run_conf={"settle_s": settle, "grace_s": 0, "dry_run": False})  # dag.test keeps the last params in-process
    tasks = _instances(done)
    assert done.state == "success" and tasks["compact"][0].state == "skipped"  # nothing left to compact
    assert tasks["delete"][0].state == "success"
    assert all(not list(p.parent.parent.parent.glob("*.parquet")) for p in compacted), "sources deleted"
    assert connect(catalog).sql(COUNTS).fetchall() == expected


def test_a_file_compaction_did_not_write_fails_the_plan_without_retries(lake_env) -> None:
    pipeline, settle = lake_env
    folder = Path(pipeline.lake.storage.path(pipeline.lake.files("station_status")[0])).parent / "_compacted" / "v1"
    folder.mkdir(parents=True)
    pq.write_table(pq.read_table(next(folder.parent.parent.glob("*.parquet"))), folder / "mine.parquet")
    run = load_dag("citibikes_compaction").test(run_conf={"settle_s": settle})
    (plan,) = _instances(run)["plan"]
    assert run.state == "failed" and plan.state == "failed" and plan.try_number == 1
    assert _compacted(pipeline.lake) == [folder / "mine.parquet"], "nothing compacted"


def test_a_folder_lake_told_to_use_glue_fails_the_plan_without_retries(lake_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITIBIKES_CATALOG", "glue")
    run = load_dag("citibikes_compaction").test(run_conf={"settle_s": lake_env[1]})
    (plan,) = _instances(run)["plan"]
    assert run.state == "failed" and plan.state == "failed" and plan.try_number == 1
    assert not _compacted(lake_env[0].lake)


def test_a_lake_catalogued_by_glue_is_compacted_by_hour_and_its_partitions_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    folder = tmp_path / "made"
    folder.mkdir()
    yesterday_evening(folder)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "CITIBIKES_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(tmp_path / "state"))
    with moto_server(tmp_path / "moto") as endpoint:
        prepare(endpoint)
        lake, glue, s3 = glue_lake(endpoint, folder / "lake", "dag")
        monkeypatch.setenv("CITIBIKES_GLUE_DATABASE", glue.database)
        monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"lake_uri": lake.uri, "region_name": REGION, "endpoint_url": endpoint}}))
        expected = athena(glue, s3)

        run = load_dag("citibikes_compaction").test(run_conf={"settle_s": 0, "grace_s": 0, "dry_run": False})
        tasks = _instances(run)
        assert run.state == "success", {k: [t.state for t in v] for k, v in tasks.items()}
        moved = {p: location for p, (location, at) in locations(glue, "station_status").items() if at}
        assert len(moved) == 6 and all(loc == lake.storage.uri(f"curated/station_status/{p}/_compacted/v1/")
                                       for p, loc in moved.items()), "H0-H2 of two systems, by hour"
        assert athena(glue, s3) == expected
        assert tasks["delete"][0].xcom_pull(task_ids="delete")["files"] == 2 * 2 * 11  # two tables' minute files
