"""The long-lived consumer: station status and information topics -> the live state of every station.

Messages are applied in partition order (a station's key always maps to one partition), duplicates
from producer retries are dropped by their ``message_id`` header, and offsets are committed only
after the messages were applied, so a restart never skips data (at-least-once, made idempotent by
the dedupe and by applying only observations newer than what is known). A tombstone (a null value)
on the compacted information topic removes the station's description; one on the status topic is
counted and ignored.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from citibikes.live.store import LiveState

log = logging.getLogger("citibikes.consumer")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "citibikes-live",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "session.timeout.ms": 30_000,
    "client.id": "citibikes-consumer",
}


def consumer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    return {**CONSUMER_DEFAULTS, "bootstrap.servers": bootstrap, **overrides}


class RecentIds:
    """The last ``size`` message ids seen, to drop redelivered duplicates."""

    def __init__(self, size: int = 200_000) -> None:
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        self._size = size

    def seen(self, message_id: bytes) -> bool:
        if message_id in self._ids:
            return True
        self._ids[message_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False


@dataclass
class ConsumeStats:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0
    tombstones: int = 0
    started: float = field(default_factory=time.monotonic)


class LiveConsumer:
    """Consumes the status and information topics into a :class:`LiveState`."""

    def __init__(self, consumer: Consumer, status_topic: str, information_topic: str,
                 state: LiveState | None = None) -> None:
        self.consumer = consumer
        self.status_topic = status_topic
        self.information_topic = information_topic
        self.state = state or LiveState()
        self.stats = ConsumeStats()
        self._recent = RecentIds()
        self._eof: set[tuple[str, int]] = set()

    def _apply(self, message: Any) -> None:
        self.stats.consumed += 1
        headers = dict(message.headers() or [])
        message_id = headers.get("message_id")
        if message_id is not None and self._recent.seen(message_id):
            self.stats.duplicates += 1
            return
        raw = message.value()
        try:
            key = message.key().decode()
            value = None if raw is None else json.loads(raw)
        except (ValueError, AttributeError, UnicodeDecodeError):
            key = value = None
        if raw is None and key is not None:  # a tombstone: on the information topic the station was removed
            self.stats.tombstones += 1
            if message.topic() == self.information_topic:
                self.state.remove_information(key)
                self.stats.applied += 1
            return
        if key is None or not isinstance(value, dict):
            self.stats.invalid += 1
            log.warning("skipping an unreadable message at %s[%d]@%d", message.topic(), message.partition(), message.offset())
            return
        apply = self.state.apply_status if message.topic() == self.status_topic else self.state.apply_information
        self.stats.applied += apply(key, value)

    def poll_once(self, timeout_s: float = 1.0, batch: int = 1000) -> int:
        """Apply one batch and commit its offsets; returns the number of messages received."""
        messages = self.consumer.consume(batch, timeout=timeout_s)
        received = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._eof.add((message.topic(), message.partition()))
                    continue
                if error.fatal() or error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    raise KafkaException(error)
                log.warning("consumer: %s", error.str())
                continue
            self._eof.discard((message.topic(), message.partition()))
            self._apply(message)
            received += 1
        if received:
            self.consumer.commit(asynchronous=False)
        return received

    def caught_up(self) -> bool:
        """True when every assigned partition reported end-of-partition since its last message."""
        assignment = self.consumer.assignment()
        return bool(assignment) and all((tp.topic, tp.partition) in self._eof for tp in assignment)

    def run(self, *, should_stop: Callable[[], bool], until_caught_up: bool = False,
            on_interval: Callable[[LiveConsumer], None] | None = None, interval_s: float = 30.0) -> None:
        """Consume until ``should_stop()`` (or, with ``until_caught_up``, until the end of every partition)."""
        self.consumer.subscribe([self.status_topic, self.information_topic])
        last_report = time.monotonic()
        while not should_stop():
            self.poll_once()
            if on_interval and time.monotonic() - last_report >= interval_s:
                on_interval(self)
                last_report = time.monotonic()
            if until_caught_up and self.caught_up():
                break

    def lag(self) -> int:
        """Messages not yet consumed across the assigned partitions."""
        total = 0
        positions = self.consumer.position(self.consumer.assignment())
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
            total += max(0, high - max(tp.offset, 0))
        return total
