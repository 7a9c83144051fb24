"""End to end: the real ingest DAG (dag.test) against the real broker, the replay feed and a lake folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from confluent_kafka.admin import AdminClient

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.replay.server import make_server
from citibikes.stream.topics import ensure_topics
from support.dags import load_dag
from support.kafka_read import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.airflow]


class Clock:
    """The replay feed's clock: frozen, advanced by the test, so each run sees a known document."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, airflow_db: Path):
    import time

    clock = Clock(time.time() - 120)  # in the past, so advancing it never reaches the future
    server = make_server(tick_s=1.0, clock=clock).start_in_thread()
    systems = tmp_path / "systems.yaml"
    systems.write_text(f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
    lake_dir = tmp_path / "lake"
    prefix = f"t{time.time_ns()}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")
    ))
    env = {
        "CITIBIKES_SYSTEMS_FILE": str(systems),
        "CITIBIKES_PIPELINE_FILE": str(pipeline),
        "CITIBIKES_LAKE_URI": str(lake_dir),
        "CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap}}),
        "AIRFLOW_CONN_CITIBIKES_LAKE": json.dumps({"conn_type": "fs", "extra": {"path": str(lake_dir)}}),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
    yield settings, server, clock
    server.shutdown()



def _feed_station_ids(server_url: str) -> set[str]:
    doc = requests.get(f"{server_url}/citibike/2.3/en/station_status.json", timeout=10).json()
    return {s["station_id"] for s in doc["data"]["stations"]}


def test_ingest_dag_lands_every_record_in_kafka_and_the_lake(pipeline_env, kafka_bootstrap: str) -> None:
    settings, server, clock = pipeline_env
    topics = {key: t.name for key, t in settings.topics.items()}
    dag = load_dag("citibikes_ingest")

    run = dag.test()
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}

    feed_ids = _feed_station_ids(server.url)
    status = read_topic(kafka_bootstrap, topics["station_status"])
    information = read_topic(kafka_bootstrap, topics["station_information"])
    quarantine = read_topic(kafka_bootstrap, topics["quarantine"])
    status_ids = {m["value"]["station_id"] for m in status}
    quarantined_status_ids = {m["value"]["station_id"] for m in quarantine if m["value"]["feed"] == "station_status"}
    # Every station of the feed is either published (first run: a full snapshot) or quarantined, once.
    assert len(status) == len(status_ids)
    assert status_ids | quarantined_status_ids == feed_ids
    assert not status_ids & quarantined_status_ids
    assert len(information) > 2000
    assert all(m["key"] == f"citibike:{m['value']['station_id']}" for m in status + information)
    assert {"message_id", "schema_version", "system_id", "last_updated", "fetched_at"} <= set(status[0]["headers"])
    assert all(m["value"]["reasons"] for m in quarantine)

    lake = open_lake(settings.lake_uri)
    assert lake.read_table("station_status").num_rows == len(status)
    assert lake.read_table("station_information").num_rows == len(information)
    assert lake.read_table("quarantine").num_rows == len(quarantine)
    assert len(lake.files("station_status")) == 1
    (run_row,) = lake.read_runs()
    assert run_row.outcome == "success" and run_row.stations_status == len(feed_ids)
    assert run_row.stations_valid == len(status) and run_row.stations_quarantined == len(quarantine)

    # A minute later: the lake gets every observation again, Kafka only the stations that changed.
    clock.now += 60
    import time

    time.sleep(1.1)  # the feed's ttl (1 s) must pass, or the fetch is skipped by design
    run = dag.test()
    assert run.state == "success"
    status_after = read_topic(kafka_bootstrap, topics["station_status"])
    changed = len(status_after) - len(status)
    assert 0 < changed < len(status) // 2, changed
    runs = sorted(lake.read_runs(), key=lambda r: r.started_at)
    assert [r.outcome for r in runs] == ["success", "success"]
    # every valid observation of both minutes (a station may pass one minute and be quarantined the next)
    assert runs[0].stations_valid == len(status)
    assert runs[1].stations_status == len(feed_ids) and runs[1].stations_valid > len(feed_ids) - 100
    assert lake.read_table("station_status").num_rows == len(status) + runs[1].stations_valid
    assert lake.read_table("quarantine").num_rows == runs[0].stations_quarantined + runs[1].stations_quarantined
    assert len(lake.files("station_status")) == 2


DOWNSTREAM = '''
import pendulum
from airflow.sdk import dag, task
from citibikes_airflow.assets import STATION_STATUS


@dag(dag_id="citibikes_test_downstream", schedule=[STATION_STATUS], start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def downstream():
    @task
    def read():
        """Would read the new station_status files."""

    read()


downstream()
'''


def _register_downstream_dag(folder: Path) -> str:
    """A DAG scheduled on the citibikes.station_status Asset, in the metadata DB and unpaused (as the
    scheduler would have it from the DAG processor)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    folder.mkdir()
    (folder / "downstream.py").write_text(DOWNSTREAM)
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.get(DagModel, "citibikes_test_downstream").is_paused = False
    return "citibikes_test_downstream"


def _asset_events(run_id: str) -> dict[str, dict]:
    """The asset events a DAG run emitted: asset name -> the event's extra."""
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(select(AssetModel.name, AssetEvent.extra)
                               .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                               .where(AssetEvent.source_run_id == run_id)).all()
    assert len(rows) == len({name for name, _ in rows}), rows  # at most one event per asset and run
    return {name: extra for name, extra in rows}


def _queued_for(dag_id: str) -> set[str]:
    """The assets whose events queued a run of ``dag_id`` (what the scheduler turns into an asset-triggered run)."""
    from sqlalchemy import delete, select

    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        names = set(session.scalars(select(AssetModel.name)
                                    .join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
                                    .where(AssetDagRunQueue.target_dag_id == dag_id)))
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))
    return names


def test_asset_events_only_for_tables_that_got_data(pipeline_env, tmp_path: Path) -> None:
    settings, server, clock = pipeline_env
    downstream = _register_downstream_dag(tmp_path / "downstream_dags")
    dag = load_dag("citibikes_ingest")

    run = dag.test()
    assert run.state == "success"
    lake = open_lake(settings.lake_uri)
    (first,) = lake.read_runs()
    events = _asset_events(run.run_id)
    assert set(events) == {"citibikes.station_status", "citibikes.station_information", "citibikes.pipeline_runs"}
    valid = first.stations_valid
    assert events["citibikes.station_status"] == {"rows": valid, "systems": {"citibike": valid}}
    assert events["citibikes.station_information"]["rows"] == lake.read_table("station_information").num_rows
    assert events["citibikes.pipeline_runs"] == {"rows": 1, "systems": {"citibike": 1}}
    assert _queued_for(downstream) == {"citibikes.station_status"}

    # The same minute again: the feed has nothing new, so no station_status event and no downstream run.
    import time

    time.sleep(1.1)  # past the feed's ttl (1 s), so the feed is asked and answers with the same document
    run = dag.test()
    assert run.state == "success"
    assert [r.outcome for r in sorted(lake.read_runs(), key=lambda r: r.started_at)] == ["success", "no_new_data"]
    assert set(_asset_events(run.run_id)) == {"citibikes.pipeline_runs"}
    assert _queued_for(downstream) == set()
