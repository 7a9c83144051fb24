"""The live consumer against the real broker: duplicates dropped, old observations ignored, offsets kept."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from citibikes.config import TopicConfig
from citibikes.stream.consume import LiveConsumer, consumer_config
from citibikes.stream.publish import message_id
from citibikes.stream.topics import ensure_topics

pytestmark = pytest.mark.kafka


def _status(station: str, last_updated: int, bikes: int, docks: int = 5) -> dict:
    return {"system_id": "s", "station_id": station, "num_bikes_available": bikes, "num_docks_available": docks,
            "is_installed": True, "is_renting": True, "is_returning": True, "last_updated": last_updated}


def _send(producer: Producer, topic: str, value: dict, duplicate_of: dict | None = None) -> None:
    source = duplicate_of or value
    mid = message_id("station_status", "s", source["station_id"], source["last_updated"])
    producer.produce(topic, key=f"s:{value['station_id']}".encode(), value=json.dumps(value).encode(),
                     headers=[("message_id", mid.encode())])


def _consume_all(bootstrap: str, group: str, status: str, information: str) -> LiveConsumer:
    live = LiveConsumer(Consumer(consumer_config(bootstrap, **{"group.id": group})), status, information)
    live.run(should_stop=lambda: False, until_caught_up=True)
    return live


def test_live_state_dedupes_orders_and_resumes(kafka_bootstrap: str) -> None:
    status, information = (f"live-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("status", "info"))
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}),
                  [TopicConfig(status, partitions=2), TopicConfig(information, partitions=1)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    first = _status("A", 100, bikes=3)
    newer = _status("A", 200, bikes=0)
    _send(producer, status, first)
    _send(producer, status, newer)
    _send(producer, status, newer, duplicate_of=newer)      # a producer retry: same message id
    _send(producer, status, _status("A", 150, bikes=7))     # late and older: must not win
    _send(producer, status, _status("B", 200, bikes=4, docks=0))
    producer.produce(information, key=b"s:A", value=json.dumps({"station_id": "A", "name": "Main St"}).encode())
    assert producer.flush(10) == 0

    group = f"live-{uuid.uuid4().hex[:6]}"
    live = _consume_all(kafka_bootstrap, group, status, information)
    assert live.stats.consumed == 6 and live.stats.duplicates == 1
    assert live.state.status["s:A"]["num_bikes_available"] == 0  # the newest observation
    summary = live.state.summary()
    assert summary["stations"] == 2 and summary["empty"] == 1 and summary["full"] == 1 and summary["described"] == 1
    live.consumer.close()

    _send(producer, status, _status("B", 260, bikes=2, docks=3))
    producer.flush(10)
    resumed = _consume_all(kafka_bootstrap, group, status, information)
    assert resumed.stats.consumed == 1, "committed offsets were not honoured after the restart"
    resumed.consumer.close()


def test_tombstones_remove_descriptions_and_never_crash(kafka_bootstrap: str) -> None:
    """A null value on the compacted information topic removes the station's description; on the
    status topic it is counted and ignored."""
    status, information = (f"tomb-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("status", "info"))
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}),
                  [TopicConfig(status, partitions=1), TopicConfig(information, partitions=1)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for station in ("A", "B"):
        producer.produce(information, key=f"s:{station}".encode(), value=json.dumps({"station_id": station}).encode())
    producer.produce(information, key=b"s:A", value=None)  # station A was removed
    _send(producer, status, _status("A", 100, bikes=3))
    producer.produce(status, key=b"s:A", value=None)
    assert producer.flush(10) == 0

    live = _consume_all(kafka_bootstrap, f"tomb-{uuid.uuid4().hex[:6]}", status, information)
    live.consumer.close()
    assert live.state.information.keys() == {"s:B"}
    assert live.state.status["s:A"]["num_bikes_available"] == 3
    assert live.stats.consumed == 5 and live.stats.tombstones == 2 and live.stats.invalid == 0
