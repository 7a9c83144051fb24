"""Read back what a test published: every message of a topic, and the record batches the broker stored."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from confluent_kafka import Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0, **login: str) -> list[dict[str, Any]]:
    """All messages currently in ``topic`` as dicts: key, headers, value (decoded JSON), partition
    (``login``: a secured cluster's client settings)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False, **login})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for pid in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout=10)
            if high > low:
                ends[pid] = high
        consumer.assign([TopicPartition(topic, pid, 0) for pid in ends])
        messages: list[dict[str, Any]] = []
        done: set[int] = set()
        waited = 0.0
        while len(done) < len(ends) and waited < timeout_s:
            batch = consumer.consume(10_000, timeout=0.5)
            if not batch:
                waited += 0.5
            for message in batch:
                if message.error():
                    continue
                messages.append({
                    "key": message.key().decode() if message.key() else None,
                    "headers": {k: v.decode() for k, v in (message.headers() or [])},
                    "value": json.loads(message.value()),
                    "partition": message.partition(),
                })
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
        return messages
    finally:
        consumer.close()


def stored_batches(broker: Any, topic: str) -> list[dict[str, str]]:
    """The record batches the broker wrote for ``topic``, as Kafka's own ``DumpLogSegments`` describes them
    (``producerId``, ``baseSequence``, ``compresscodec``, ...; a producerId of -1 is a non-idempotent producer)."""
    from citibikes.stack.kafka import require_java

    partitions = [d for d in broker.data_dir.iterdir() if re.fullmatch(re.escape(topic) + r"-\d+", d.name)]
    segments = sorted(str(segment) for d in partitions for segment in d.glob("*.log"))
    assert segments, f"no log segments of {topic} in {broker.data_dir}"
    result = subprocess.run(
        [require_java(), "-cp", f"{broker.lib}/*", "kafka.tools.DumpLogSegments", "--files", ",".join(segments)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [dict(re.findall(r"(\w+): (\S+)", line)) for line in result.stdout.splitlines() if line.startswith("baseOffset:")]
