"""`citibikes status` against real parts: the session's broker (topics, end offsets, a group's lag),
a real `citibikes consume` process (alive, lag, age; then stopped by SIGTERM), and nothing at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from citibikes.config import KafkaConnection, TopicConfig, load_settings
from citibikes.stack import health
from citibikes.stack.process import free_port
from citibikes.stream.topics import ensure_topics
from support.live import send_status, status_value

CLI = [sys.executable, "-m", "citibikes.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A stack of its own: a fresh state folder and free ports, so nothing of a developer's stack answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CITIBIKES_"))}
    env.update({"CITIBIKES_STATE_DIR": str(tmp_path / "state"), "CITIBIKES_FEED": "replay", **extra})
    for name in ("CITIBIKES_KAFKA_PORT", "CITIBIKES_REPLAY_PORT", "CITIBIKES_AIRFLOW_PORT",
                 "CITIBIKES_CONSUMER_METRICS_PORT"):
        env.setdefault(name, str(free_port()))
    return env


def _line(output: str, name: str) -> str:
    [line] = [line for line in output.splitlines() if line.split()[:1] == [name]]
    return line


@pytest.mark.kafka
def test_broker_health_reports_topics_end_offsets_and_a_groups_lag(kafka_bootstrap: str) -> None:
    topic, group = f"health-{uuid.uuid4().hex[:6]}", f"health-group-{uuid.uuid4().hex[:6]}"
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicConfig(topic, partitions=2)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in ((0, 6), (1, 4)):
        for n in range(count):
            producer.produce(topic, value=b"%d" % n, partition=partition)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    read: list = []
    deadline = time.monotonic() + 20
    while len(read) < 4 and time.monotonic() < deadline:
        read += [m for m in consumer.consume(4 - len(read), timeout=1) if m.error() is None]
    consumer.commit(message=read[-1], asynchronous=False)  # 4 of partition 0's 6 consumed
    consumer.close()

    check = health.check_broker(KafkaConnection(kafka_bootstrap), [topic], [group, "health-never-consumed"])
    assert check.ok, check.lines()
    assert check.facts["end_offsets"] == {(topic, 0): 6, (topic, 1): 4}
    assert check.facts["lag"][group] == {(topic, 0): 2, (topic, 1): 4}  # partition 1: nothing committed, all 4
    assert check.facts["lag"]["health-never-consumed"] == {}
    assert f"group {group} lag 6" in check.summary and "10 messages" in check.summary
    assert f"topic {topic}: 2 partitions, end offsets 6, 4" in check.details

    missing = health.check_broker(KafkaConnection(kafka_bootstrap), [topic, "health-missing"], [])
    assert not missing.ok and "topics are missing: health-missing" in missing.summary
    assert "citibikes topics" in missing.fix


@pytest.mark.kafka
def test_a_running_consumer_is_reported_alive_with_its_lag_and_age(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"health-{uuid.uuid4().hex[:6]}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("topics:\n" + "".join(f"  {key}: {{name: {prefix}-{key}}}\n" for key in (
        "station_information", "station_status", "quarantine", "alerts", "dead_letter")))
    env = _env(tmp_path, CITIBIKES_KAFKA_BOOTSTRAP=kafka_bootstrap, CITIBIKES_PIPELINE_FILE=str(pipeline))
    settings = load_settings(env)
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
    status_topic = settings.topics["station_status"].name
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    newest = int(time.time()) - 60
    for station in ("A", "B", "C"):
        send_status(producer, status_topic, status_value(station, newest, bikes=3))
    assert producer.flush(10) == 0

    log = tmp_path / "consumer.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*CLI, "consume", "--log-file", ""], env=env, stdout=out, stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{env['CITIBIKES_CONSUMER_METRICS_PORT']}/metrics"
    try:
        deadline = time.monotonic() + 60
        check = None
        while time.monotonic() < deadline:  # the metrics refresh every 5 s
            check = health.check_consumer(metrics_url, settings.live_store, pid=process.pid, log_file=log)
            if check.ok and check.facts["lag"] == 0 and check.facts["messages"] >= 3:
                break
            time.sleep(0.5)
        assert check.ok and check.facts["lag"] == 0, (check, log.read_text()[-2000:])
        assert 55 <= check.facts["newest_age_s"] <= 120

        status = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 1, status.stdout + status.stderr  # the consumer and broker run, Airflow does not
        consumer_line = _line(status.stdout, "consumer")
        assert "OK" in consumer_line and "lag 0, newest event" in consumer_line and metrics_url in consumer_line
        assert "OK" in _line(status.stdout, "broker") and "group citibikes-live lag 0" in status.stdout
        assert "DOWN" in _line(status.stdout, "scheduler") and "DOWN: scheduler" in status.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "Consumer stopped" in log.read_text()

    send_status(producer, status_topic, status_value("A", newest + 60, bikes=1))
    send_status(producer, status_topic, status_value("B", newest + 60, bikes=1))
    assert producer.flush(10) == 0
    after = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=30)
    consumer_line = _line(after.stdout, "consumer")
    assert "DOWN" in consumer_line and "not running" in consumer_line and "the store's newest event is" in consumer_line
    assert "fix: start it with `make up`" in consumer_line
    assert "group citibikes-live lag 2" in _line(after.stdout, "broker"), after.stdout  # committed before it left


def test_nothing_running_exits_3_and_names_the_broker_and_the_fix(tmp_path: Path) -> None:
    env = _env(tmp_path)
    started = time.monotonic()
    result = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    broker = _line(result.stdout, "broker")
    assert "DOWN" in broker and "no Kafka broker answers at 127.0.0.1:" in broker and "fix: start it with `make up`" in broker
    assert "Nothing runs: start the stack with `make up`." in result.stdout
    assert f"127.0.0.1:{env['CITIBIKES_REPLAY_PORT']}/citibike/gbfs.json does not answer" in _line(result.stdout, "feed")
    assert elapsed < 10, f"status took {elapsed:.1f} s with nothing running"
