"""Faults against real components: a broker that hangs and dies mid-flush, and systems that are broken or slow."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from citibikes import tasks
from citibikes.config import load_settings
from citibikes.lake import layout, open_lake
from citibikes.replay.server import make_server
from citibikes.stack.kafka import KafkaBroker
from citibikes.stack.process import free_port, pid_alive
from citibikes.stream.publish import DeliveryError, Publisher, make_producer, message_id, producer_config
from citibikes.stream.topics import ensure_topics
from support.live import LiveTopics, live_consumer
from support.kafka_read import read_topic

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def replay():
    server = make_server(tick_s=1.0, slow_s=30.0).start_in_thread()
    yield server
    server.shutdown()


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bootstrap: str, systems: str):
    (tmp_path / "systems.yaml").write_text(systems)
    monkeypatch.setenv("CITIBIKES_SYSTEMS_FILE", str(tmp_path / "systems.yaml"))
    monkeypatch.setenv("CITIBIKES_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("CITIBIKES_KAFKA_BOOTSTRAP", bootstrap)
    return load_settings()


TIMEOUT_CHECK_S = 1.0
"""librdkafka looks for timed-out messages once a second: a failed flush may end that much after
``message.timeout.ms``."""


def _until_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived SIGKILL"
        time.sleep(0.1)


@pytest.mark.airflow
def test_broker_lost_mid_flush_fails_produce_in_bounded_time_and_the_airflow_retry_delivers_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replay, kafka_broker, airflow_db) -> None:
    """The real minute DAG (``dag.test()``, which retries failed tasks) against a broker of its own that
    hangs in the middle of the produce task's flush, after acknowledging part of the records, and then
    dies and comes back: the task fails with the one-line DeliveryError within the producer's
    ``message.timeout.ms``, nothing of the run is landed, and Airflow's retry delivers every record."""
    broker = KafkaBroker(tmp_path / "kafka", tmp_path / "run", port=free_port(), controller_port=free_port(),
                         lib_dir=kafka_broker.lib)
    broker.start()
    try:
        _settings(tmp_path, monkeypatch, broker.bootstrap,
                  f"systems:\n  - id: citibike\n    discovery_url: {replay.url}/citibike/gbfs.json\n")
        # A short message timeout keeps the test short; small batches make the flush many requests,
        # so the broker can acknowledge some before it hangs.
        extra = {"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 8000, "batch.size": 16384}
        timeout_s = producer_config(**extra)["message.timeout.ms"] / 1000
        monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": extra}))
        monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE",
                           json.dumps({"conn_type": "fs", "extra": {"path": str(tmp_path / "lake")}}))
        settings = load_settings()
        ensure_topics(AdminClient({"bootstrap.servers": broker.bootstrap}), settings.topics.values())
        lake = open_lake(settings.lake_uri)

        fault: dict = {}
        real_flush = Publisher.flush

        def flush_while_the_broker_dies(publisher: Publisher):
            if fault:  # Airflow's retry: a plain flush
                return real_flush(publisher)
            producer = publisher._producer
            queued = len(producer)
            deadline = time.monotonic() + timeout_s
            # Until the broker acknowledged a tenth of the records: more than the few quarantined ones, so
            # status or information records are among them.
            while queued - len(producer) < queued // 10 and time.monotonic() < deadline:
                producer.poll(0.001)
            fault["queued"], fault["unacknowledged"] = queued, len(producer)
            pid = broker.pid()
            os.kill(pid, signal.SIGSTOP)  # the broker hangs: connections open, no answers
            started = time.monotonic()
            try:
                return real_flush(publisher)
            except DeliveryError as exc:
                fault["error"], fault["elapsed_s"] = str(exc), time.monotonic() - started
                fault["landed"] = [key for table in ("station_status", "station_information", "quarantine")
                                   for key in lake.files(table)]
                fault["change_capture"] = [lake.read_state(f"citibike/changes-{feed}.json")
                                           for feed in ("station_status", "station_information")]
                raise
            finally:  # then it dies, and is back before Airflow retries the task
                os.kill(pid, signal.SIGKILL)
                _until_gone(pid)
                broker.start()

        monkeypatch.setattr(Publisher, "flush", flush_while_the_broker_dies)
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(ROOT / "dags" / "ingest.py")).dags["citibikes_ingest"]
        run = dag.test()
        tries = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
        assert run.state == "success", tries
        assert tries["produce"] == ("success", 2), tries  # failed once, retried once

        assert 0 < fault["unacknowledged"] <= fault["queued"] * 0.9, "the broker must hang after acknowledging a part"
        assert re.fullmatch(r"Kafka did not acknowledge \d+ records \(.*Message timed out\); check the broker .*",
                            fault["error"]), fault["error"]
        assert "\n" not in fault["error"]
        assert fault["elapsed_s"] <= timeout_s + TIMEOUT_CHECK_S, fault["elapsed_s"]
        assert fault["landed"] == [], "nothing may land before the broker acknowledged the records"
        assert fault["change_capture"] == [None, None], "change capture advanced for records never acknowledged"

        topics = {key: t.name for key, t in settings.topics.items()}
        kafka = {key: read_topic(broker.bootstrap, name) for key, name in topics.items()}
        # Every record is in Kafka; records the broker had acknowledged before it hung were sent again
        # by the retry, as identical copies with the same message_id.
        duplicates = 0
        for messages in kafka.values():
            by_id: dict[str, list] = {}
            for message in messages:
                by_id.setdefault(message["headers"]["message_id"], []).append(message)
            for copies in by_id.values():
                assert all((c["key"], c["value"]) == (copies[0]["key"], copies[0]["value"]) for c in copies), copies
                duplicates += len(copies) - 1
        assert duplicates > 0, "the records acknowledged before the broker hung must be there twice"
        status = lake.read_table("station_status")
        assert {m["headers"]["message_id"] for m in kafka["station_status"]} == {
            message_id("station_status", system, station, int(last_updated.timestamp())) for system, station, last_updated
            in zip(status["system_id"].to_pylist(), status["station_id"].to_pylist(), status["last_updated"].to_pylist())}
        assert len({m["headers"]["message_id"] for m in kafka["quarantine"]}) == lake.read_table("quarantine").num_rows

        # The project's consumer drops the copies and ends with every station once.
        live_topics = LiveTopics(topics["station_status"], topics["station_information"], topics["alerts"],
                                 topics["dead_letter"])
        consumer = live_consumer(broker.bootstrap, live_topics, group="fault-check")
        deadline = time.monotonic() + 60
        consumer.run(should_stop=lambda: time.monotonic() > deadline, until_caught_up=True)
        duplicates = sum(n for (_, outcome), n in consumer.counts.items() if outcome == "duplicate")
        unique = {m["headers"]["message_id"] for key in ("station_status", "station_information") for m in kafka[key]}
        assert sum(consumer.counts.values()) == len(kafka["station_status"]) + len(kafka["station_information"])
        assert duplicates == sum(consumer.counts.values()) - len(unique) > 0
        summary = consumer.store.summary()
        consumer.close()
        assert summary["stations"] == status.num_rows
        assert summary["described"] == lake.read_table("station_information").num_rows

        # The lake: one file per snapshot and table, each record once.
        assert [len(lake.files(t)) for t in ("station_status", "station_information", "quarantine")] == [1, 1, 1]
        assert status.num_rows == len(set(status["station_id"].to_pylist()))
        assert [r.outcome for r in lake.read_runs()] == ["success"]
    finally:
        broker.stop()


@pytest.mark.airflow
def test_broken_and_slow_systems_do_not_block_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replay, kafka_bootstrap: str, airflow_db) -> None:
    systems = "systems:\n" + "".join(
        f"  - id: {sid}\n    discovery_url: {replay.url}/{sid}/gbfs.json\n    timeout_s: 2\n"
        for sid in ("citibike", "fault-html", "fault-500", "fault-slow", "fault-stale", "synth-07")
    )
    settings = _settings(tmp_path, monkeypatch, kafka_bootstrap, systems)
    prefix = f"faults{time.time_ns()}"
    (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
    monkeypatch.setenv("CITIBIKES_PIPELINE_FILE", str(tmp_path / "pipeline.yaml"))
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap}}))
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "fs", "extra": {"path": str(tmp_path / "lake")}}))
    settings = load_settings()
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "ingest.py")).dags["citibikes_ingest"]
    started = time.monotonic()
    run = dag.test()
    elapsed = time.monotonic() - started
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"fetch": "success", "validate": "success", "produce": "success", "write": "success",
                      "report": "failed"}, states
    assert elapsed < 60, f"the slow system held the run for {elapsed:.0f} s"

    lake = open_lake(settings.lake_uri)
    runs = {r.system_id: r for r in lake.read_runs()}
    assert runs["citibike"].outcome == runs["synth-07"].outcome == "success"
    assert {runs[s].outcome for s in ("fault-html", "fault-500", "fault-slow")} == {"failed"}
    assert "HTML" in runs["fault-html"].error
    assert "500" in runs["fault-500"].error
    assert "timed out" in runs["fault-slow"].error or "timeout" in runs["fault-slow"].error.lower()
    assert runs["fault-stale"].outcome == "stale" and "station_status arrived" in runs["fault-stale"].error
    landed = {Path(f).parts[-4] for f in lake.files("station_status")}
    assert landed == {"system=citibike", "system=synth-07"}  # fault-stale: all quarantined (stale_feed)
    report = [ti for ti in run.get_task_instances() if ti.task_id == "report"][0]
    assert report.state == "failed"
    status = read_topic(kafka_bootstrap, settings.topics["station_status"].name)
    assert {m["value"]["system_id"] for m in status} == {"citibike", "synth-07"}


def test_a_system_broken_at_produce_or_write_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replay, kafka_bootstrap: str) -> None:
    systems = ("citibike", "synth-01", "synth-02")
    settings = _settings(tmp_path, monkeypatch, kafka_bootstrap, "systems:\n" + "".join(
        f"  - id: {sid}\n    discovery_url: {replay.url}/{sid}/gbfs.json\n" for sid in systems))
    prefix = f"alone{time.time_ns()}"
    (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
    monkeypatch.setenv("CITIBIKES_PIPELINE_FILE", str(tmp_path / "pipeline.yaml"))
    settings = load_settings()
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
    lake = open_lake(settings.lake_uri)
    run_id = "alone-run"
    fetched = tasks.fetch(settings, lake)
    validated = tasks.validate(settings, lake, run_id, fetched)
    assert all(validated[sid].get("ok", True) and validated[sid]["staged"] for sid in systems)
    valid = {sid: validated[sid]["summary"]["valid"]["station_status"] for sid in systems}

    # synth-01's staged records are corrupted between validate and produce
    lake.write_state(validated["synth-01"]["staged"], b"not msgpack")
    produced = tasks.produce(settings, lake, Publisher(make_producer(kafka_bootstrap), settings.topics), validated)
    assert produced["citibike"].get("ok", True) and produced["synth-02"].get("ok", True)
    assert produced["synth-01"]["ok"] is False and "cannot be read" in produced["synth-01"]["error"]
    assert lake.read_state("synth-01/state.json") is None, "the state moved without a delivery"

    # synth-02's lake write fails: a folder stands where its station_status file goes
    last_updated = fetched["synth-02"]["fetched"]["last_updated"]["station_status"]
    in_the_way = tmp_path / "lake" / layout.curated_key("station_status", "synth-02", last_updated) / "in-the-way"
    in_the_way.mkdir(parents=True)
    written = tasks.write(settings, lake, run_id, fetched, validated, produced)
    assert written["citibike"].get("ok", True) and written["synth-02"]["ok"] is False
    assert written["synth-01"]["ok"] is False and "cannot be read" in written["synth-01"]["error"]

    lines, failed = tasks.report(settings, lake, run_id,
                                  {"fetch": fetched, "validate": validated, "produce": produced, "write": written})
    assert set(failed) == {"synth-01", "synth-02"}, lines
    assert failed["synth-01"].startswith("produce failed: ") and failed["synth-02"].startswith("write failed: ")
    assert lines[0].startswith("citibike: success - ")

    # citibike reached the broker and the lake in full; synth-02 was published before its write failed
    status = read_topic(kafka_bootstrap, settings.topics["station_status"].name)
    by_system = {sid: sum(m["value"]["system_id"] == sid for m in status) for sid in systems}
    assert by_system == {"citibike": valid["citibike"], "synth-01": 0, "synth-02": valid["synth-02"]}
    assert {Path(f).parts[-4] for f in lake.files("station_status")} == {"system=citibike"}
    assert lake.read_table("station_status").num_rows == valid["citibike"]
    runs = {r.system_id: r for r in lake.read_runs()}
    assert {sid: r.outcome for sid, r in runs.items()} == {"citibike": "success", "synth-01": "failed", "synth-02": "failed"}
    assert tasks.landed(written)["station_status"] == {"rows": valid["citibike"], "systems": {"citibike": valid["citibike"]}}


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_feed_that_stops_advancing_is_reported_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        kafka_bootstrap: str) -> None:
    server = make_server(tick_s=1.0, clock=FrozenClock(time.time() - 1)).start_in_thread()  # same document forever
    try:
        settings = _settings(tmp_path, monkeypatch, kafka_bootstrap,
                             f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
        (tmp_path / "pipeline.yaml").write_text("quality: {max_feed_age_s: 4}\ntopics:\n" + "".join(
            f"  {key}: {{name: stale{time.time_ns()}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
        monkeypatch.setenv("CITIBIKES_PIPELINE_FILE", str(tmp_path / "pipeline.yaml"))
        settings = load_settings()
        ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
        lake = open_lake(settings.lake_uri)
        publisher = Publisher(make_producer(kafka_bootstrap), settings.topics)

        first = tasks.run_all(settings, lake, publisher, "stale-1")
        assert first.outcomes == {"success": 1} and not first.failed
        time.sleep(5)
        second = tasks.run_all(settings, lake, publisher, "stale-2")
        assert second.outcomes == {"stale": 1}
        assert "has not advanced for" in second.failed["citibike"]
        assert second.sent == 0, "unchanged data must not be re-emitted"
        assert [r.outcome for r in sorted(lake.read_runs(), key=lambda r: r.started_at)] == ["success", "stale"]
    finally:
        server.shutdown()
