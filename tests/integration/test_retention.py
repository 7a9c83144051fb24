"""Kafka's time retention goes by the messages' own timestamps (CreateTime), not by when they arrived:
a station_status message stamped older than its topic's ``retention.ms`` is deleted at the broker's
next retention check although it was produced a moment ago, even from the active segment. One
produced without a timestamp is stamped by librdkafka with the time of ``produce()`` and stays.

So a backfill that stamped its messages with their snapshot's ``last_updated`` would have those older
than the topic's retention (7 days for station_status) deleted within a check interval (a segment
goes as a whole once its newest timestamp is older than ``retention.ms``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from citibikes.config import TopicConfig
from citibikes.stack.kafka import KafkaBroker
from citibikes.stack.process import free_port
from citibikes.stream.publish import make_producer, message_key
from citibikes.stream.topics import ensure_topics

pytestmark = pytest.mark.kafka
KAFKA_LIB = Path(__file__).resolve().parents[2] / ".state" / "kafka" / "lib"
RETENTION_MS = 60_000


@dataclass(frozen=True)
class PromptRetentionBroker(KafkaBroker):
    """The project's broker, checking retention every second from its start (the project's broker
    checks every 60 s, the first time 30 s after it starts: too slow for a test)."""

    def write_properties(self) -> None:
        super().write_properties()
        with self.properties_file.open("a") as properties:  # the last value of a key wins
            properties.write("log.retention.check.interval.ms=1000\nlog.initial.task.delay.ms=0\n")


@pytest.fixture(scope="module")
def prompt_broker(tmp_path_factory: pytest.TempPathFactory) -> str:
    home = tmp_path_factory.mktemp("kafka-retention")
    broker = PromptRetentionBroker(home, home / "run", port=free_port(), controller_port=free_port(),
                                   lib_dir=KAFKA_LIB)
    broker.start()
    yield broker.bootstrap
    broker.stop()


def _watermarks(consumer: Consumer, topic: str) -> tuple[int, int]:
    return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)


def test_status_message_stamped_older_than_retention_is_deleted(prompt_broker: str) -> None:
    old, fresh = (f"test-retention-{name}-{uuid.uuid4().hex[:8]}" for name in ("old", "fresh"))
    config = {"cleanup.policy": "delete", "retention.ms": str(RETENTION_MS)}
    ensure_topics(AdminClient({"bootstrap.servers": prompt_broker}),
                  [TopicConfig(topic, partitions=1, config=config) for topic in (old, fresh)])
    producer = make_producer(prompt_broker)
    key, value = message_key("citibike", "station-1"), b'{"num_bikes_available": 3}'
    stamped_ms = int(time.time() * 1000) - 2 * RETENTION_MS
    producer.produce(old, key=key, value=value, timestamp=stamped_ms)
    before_ms = int(time.time() * 1000)
    producer.produce(fresh, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer({"bootstrap.servers": prompt_broker, "group.id": f"g-{uuid.uuid4().hex[:8]}"})
    try:
        consumer.assign([TopicPartition(fresh, 0, 0)])
        kind, fresh_ms = consumer.poll(10).timestamp()
        assert kind == TIMESTAMP_CREATE_TIME and before_ms <= fresh_ms <= time.time() * 1000

        deadline = time.monotonic() + 30
        while _watermarks(consumer, old) != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _watermarks(consumer, old) == (1, 1), "the message stamped older than retention.ms was kept"
        assert _watermarks(consumer, fresh) == (0, 1), "a message produced without a timestamp was deleted"
    finally:
        consumer.close()
