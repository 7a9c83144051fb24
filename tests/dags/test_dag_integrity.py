"""Every DAG imports cleanly and carries what operators rely on: owner, retries, tags, docs."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports(dagbag) -> None:
    assert not dagbag.import_errors, dagbag.import_errors
    files = {p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert files <= {Path(dag.fileloc).name for dag in dagbag.dags.values()}


def test_dags_have_owner_retries_tags_and_docs(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no documentation for the UI"
        assert dag.owner and dag.owner != "airflow", f"{dag_id} has no owner"
        assert dag.catchup is False, f"{dag_id} would backfill every missed interval"
        for task in dag.tasks:  # TaskFlow tasks get their function's docstring as doc_md
            docs = [task.doc, task.doc_md, task.doc_rst, task.doc_json, task.doc_yaml]
            assert any(doc and doc.strip() for doc in docs), f"{dag_id}.{task.task_id} has no docstring or doc"
            assert task.retries >= 1 or task.trigger_rule == "all_done", f"{dag_id}.{task.task_id} never retries"


def test_dags_have_no_cycles(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        order = [task.task_id for task in dag.topological_sort()]
        assert sorted(order) == sorted(dag.task_ids), f"{dag_id} has a cycle"


def test_ingest_dag_shape(dagbag) -> None:
    dag = dagbag.dags["citibikes_ingest"]
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "* * * * *"
    chain = ["fetch", "validate", "produce", "write", "report"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    # One alias, to which `write` adds events only for the tables that got files (see test_ingest_dag).
    assert [outlet.name for outlet in dag.get_task("write").outlets] == ["citibikes.lake_writes"]
    assert dag.get_task("fetch").retry_exponential_backoff


def test_alerts_dag_is_scheduled_on_the_watched_alerts_asset(dagbag) -> None:
    dag = dagbag.dags["citibikes_alerts"]
    assert dag.max_active_runs == 1
    assert "notify" in dag.get_task("plan").downstream_task_ids
    (asset,) = dag.timetable.asset_condition.objects
    assert asset.name == "citibikes.station_alerts" and asset.uri.endswith("/bikes-station-alerts")
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger"
    assert kwargs["topics"] == ["bikes-station-alerts"] and kwargs["kafka_config_id"] == "citibikes_alerts_watcher"
    assert kwargs["apply_function"] == "citibikes_airflow.watchers.worth_a_run" and kwargs["poll_interval"] == 0
