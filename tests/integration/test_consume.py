"""The live consumer against the real broker: durable state, offsets from the store, duplicates
dropped, unreadable messages dead-lettered, alerts on their topic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from citibikes.live.store import LiveStore
from support.kafka_read import read_topic
from support.live import LiveTopics, live_consumer, send_status, status_value

pytestmark = pytest.mark.kafka
M = 60


def _consume_all(consumer) -> None:
    consumer.run(should_stop=lambda: False, until_caught_up=True)


def test_state_dedupes_orders_and_resumes_from_the_stores_offsets(kafka_bootstrap: str, tmp_path) -> None:
    topics = LiveTopics.create(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    newer = status_value("A", 200, bikes=0)
    for value in (status_value("A", 100, bikes=3), newer, newer,  # the copy: a producer retry, same message id
                  status_value("A", 150, bikes=7),  # late and older: must not win
                  status_value("B", 200, bikes=4, docks=0)):
        send_status(producer, topics.status, value)
    producer.produce(topics.information, key=b"s:A",
                     value=json.dumps({"system_id": "s", "station_id": "A", "last_updated": 1, "name": "Main St"}).encode())
    assert producer.flush(10) == 0

    path = str(tmp_path / "live.db")
    live = live_consumer(kafka_bootstrap, topics, path, group="g1")
    _consume_all(live)
    counts = dict(live.counts)
    live.close()
    assert counts[(topics.status, "duplicate")] == 1 and counts[(topics.status, "old")] == 1
    store = LiveStore.open(path, readonly=True)
    stations = {s["station_id"]: s for s in store.stations()}
    assert stations["A"]["num_bikes_available"] == 0 and stations["A"]["name"] == "Main St"
    assert store.summary()["stations"] == 2

    send_status(producer, topics.status, status_value("B", 260, bikes=2, docks=3))
    producer.flush(10)
    # A new group: Kafka knows no offsets for it, so only the store's offsets can make it resume.
    resumed = live_consumer(kafka_bootstrap, topics, path, group="g2")
    _consume_all(resumed)
    assert sum(resumed.counts.values()) == 1, "the store's offsets were not honoured after the restart"
    resumed.close()
    assert {s["station_id"]: s["num_docks_available"] for s in store.stations()} == {"A": 5, "B": 3}


def test_alerts_and_dead_letters_reach_their_topics_with_stable_ids(kafka_bootstrap: str) -> None:
    topics = LiveTopics.create(kafka_bootstrap, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (status_value("A", 0, 3), status_value("A", M, 0), status_value("A", 31 * M, 0), status_value("A", 35 * M, 2)):
        send_status(producer, topics.status, value)
    producer.produce(topics.status, key=b"s:X", value=b"{broken")
    producer.produce(topics.information, key=b"s:A", value=None)  # a tombstone never crashes the consumer
    assert producer.flush(10) == 0
    live = live_consumer(kafka_bootstrap, topics)
    _consume_all(live)
    assert live.store.summary()["outbox"] == 0, "everything in the outbox was acknowledged"
    live.close()

    alerts = read_topic(kafka_bootstrap, topics.alerts)
    assert [(a["value"]["event"], a["value"]["at"]) for a in alerts] == [("opened", M), ("threshold", 31 * M), ("closed", 35 * M)]
    assert all(a["key"] == "s:A" and a["headers"]["message_id"] == a["value"]["alert_id"] for a in alerts)
    [letter] = read_topic(kafka_bootstrap, topics.dead_letter, )
    assert letter["value"]["value"] == "{broken" and letter["value"]["topic"] == topics.status


def test_test_mode_reads_both_topics_and_reports_counts(kafka_bootstrap: str, tmp_path) -> None:
    from citibikes.config import load_settings

    settings = load_settings()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    send_status(producer, settings.topics["station_status"].name, status_value("T", 100, 1))
    producer.flush(10)
    env = {"CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap, "CITIBIKES_STATE_DIR": str(tmp_path),
           "CITIBIKES_FEED": "replay", "PATH": "/usr/bin:/bin"}
    from citibikes.stream.topics import ensure_topics
    from confluent_kafka.admin import AdminClient
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
    result = subprocess.run([sys.executable, "-m", "citibikes.cli", "consume", "--test-mode", "--log-file", ""],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["messages"][settings.topics["station_status"].name]["applied"] >= 1
    assert not (tmp_path / "live").exists(), "test mode must not touch the real store"
