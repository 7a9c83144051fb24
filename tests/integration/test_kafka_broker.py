"""The project's Kafka broker is a real Apache Kafka: produce, consume in a group, offsets survive restarts;
the project's topics get the settings config/pipeline.yaml declares."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from citibikes.config import TopicConfig
from citibikes.stream.topics import ensure_topics

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def _consume(consumer: Consumer, count: int, timeout_s: float = 20.0) -> list:
    messages = []
    remaining = timeout_s
    while len(messages) < count and remaining > 0:
        batch = consumer.consume(count - len(messages), timeout=1.0)
        remaining -= 1.0
        messages += [m for m in batch if m.error() is None]
    return messages


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })


def test_broker_reports_kafka_4_kraft(kafka_broker) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert len(metadata.brokers) == 1
    assert "__cluster_metadata" not in metadata.topics  # KRaft metadata is internal, not a topic
    assert (kafka_broker.data_dir / "meta.properties").exists()


def test_committed_offsets_are_honoured_after_consumer_restart(kafka_bootstrap: str) -> None:
    topic, group = f"test-offsets-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicConfig(topic, partitions=3)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(100):
        producer.produce(topic, key=f"station-{i % 7}".encode(), value=str(i).encode())
    assert producer.flush(10) == 0

    first = _consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    read = _consume(first, 60)
    assert len(read) == 60
    first.commit(asynchronous=False)
    first.close()

    second = _consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    rest = _consume(second, 40)
    assert not _consume(second, 1, timeout_s=3), "the group re-read committed messages"
    second.close()

    seen = sorted(int(m.value()) for m in read + rest)
    assert seen == list(range(100)), "messages were lost or duplicated across the restart"
    # Keys stay in one partition: per-station order is kept.
    partitions_by_key: dict[bytes, set[int]] = {}
    for message in read + rest:
        partitions_by_key.setdefault(message.key(), set()).add(message.partition())
    assert all(len(p) == 1 for p in partitions_by_key.values())


def test_committed_offsets_match_what_was_consumed(kafka_bootstrap: str) -> None:
    topic, group = f"test-commit-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicConfig(topic, partitions=1)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, value=str(i).encode())
    producer.flush(10)
    consumer = _consumer(kafka_bootstrap, group)
    consumer.subscribe([topic])
    assert len(_consume(consumer, 4)) == 4
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 4


def test_topics_are_created_idempotently_and_drift_is_repaired(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = f"test-topic-{uuid.uuid4().hex[:8]}"
    spec = TopicConfig(name, partitions=2, config={"cleanup.policy": "compact"})
    assert [c.action for c in ensure_topics(admin, [spec])] == ["created"]
    assert [c.action for c in ensure_topics(admin, [spec])] == ["unchanged"]

    wider = TopicConfig(name, partitions=4, config={"cleanup.policy": "compact", "retention.ms": "3600000"})
    (change,) = ensure_topics(admin, [wider])
    assert "partitions 2 -> 4" in change.action and "retention.ms=3600000" in change.action
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 4
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.ms"].value == "3600000"


def test_citibikes_topics_gives_the_broker_the_topics_of_pipeline_yaml(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``citibikes topics`` with the shipped config/pipeline.yaml, read back from the broker: partitions,
    replicas and every declared config, set on the topic itself (not inherited from a broker default)."""
    declared = yaml.safe_load((ROOT / "config" / "pipeline.yaml").read_text())["topics"]
    # What the pipeline relies on: the latest description per station survives, status and rejects expire.
    assert declared["station_information"]["config"]["cleanup.policy"] == "compact"
    assert declared["station_status"]["config"]["cleanup.policy"] == "delete"
    assert declared["quarantine"]["config"]["cleanup.policy"] == "delete"
    assert {"retention.ms"} <= declared["station_status"]["config"].keys() & declared["quarantine"]["config"].keys()

    env = {k: v for k, v in os.environ.items() if not k.startswith("CITIBIKES_")}
    env.update({"CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap, "CITIBIKES_STATE_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, "-m", "citibikes.cli", "topics"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic["name"]) for topic in declared.values()]
    described = {resource.name: future.result() for resource, future in admin.describe_configs(resources).items()}
    for topic in declared.values():
        name = topic["name"]
        assert f"{name}: " in result.stdout
        partitions = metadata[name].partitions.values()
        assert len(partitions) == topic["partitions"]
        assert all(len(p.replicas) == topic["replication_factor"] for p in partitions)
        for key, value in topic["config"].items():
            entry = described[name][key]
            assert (entry.value, entry.source) == (str(value), ConfigSource.DYNAMIC_TOPIC_CONFIG.value), (name, key)
