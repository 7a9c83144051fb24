"""The long-lived consumer: station status and information topics -> the live state store -> alerts.

Each batch of messages is applied by the :class:`~citibikes.live.tracker.Tracker` and written,
with the offsets after it, in one store transaction; consumption resumes from the store's offsets,
not Kafka's, so a crash at any moment neither loses nor applies anything twice. One consumer owns
a store and reads every partition of both topics: it assigns them itself (new partitions are picked
up within a minute) rather than joining a group, so a restart resumes at once instead of waiting
out the dead member's session. Offsets are also committed to Kafka under the group id,
asynchronously, only so that lag tools see its progress. Duplicates from producer retries are
dropped by what their ``message_id`` is made of (the station and the snapshot's ``last_updated``):
an observation not newer than the station's known one changes nothing, across restarts too, and
without reading every message's headers (the costliest call per message).

Alerts and dead letters enter the store's outbox in the batch's transaction and are produced after
it; Kafka's acknowledgement removes them from the outbox, so a crash in between sends one again
under the same id, never loses it. A message that cannot be read is counted, logged with its
topic/partition/offset and copied to the dead-letter topic; it never blocks its partition. When the
broker goes away the consumer logs it and carries on when it comes back (librdkafka reconnects).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from citibikes.live.store import LiveStore, StoreError
from citibikes.live.tracker import Tracker

log = logging.getLogger("citibikes.consumer")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": "citibikes-live",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "client.id": "citibikes-consumer",
}
OUTBOX_PRODUCER_DEFAULTS: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "linger.ms": 20,
                                            "client.id": "citibikes-consumer-outbox"}

REASSIGN_EVERY_S = 60.0


def consumer_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The live consumer's settings with ``overrides`` (the connection's, tuning)."""
    config = {**CONSUMER_DEFAULTS, "error_cb": _client_error}
    if bootstrap:
        config["bootstrap.servers"] = bootstrap
    return {**config, **overrides}


_outage_logged = [0.0]


def _client_error(error: KafkaError) -> None:
    """librdkafka's client-level errors (the broker is gone, a connection failed): logged once per
    half minute of an outage; the client reconnects by itself."""
    if error.fatal():
        log.error("Kafka client failed: %s", error.str())
    elif time.monotonic() - _outage_logged[0] > 30:
        log.warning("Kafka unavailable (%s); retrying until it is back", error.str())
        _outage_logged[0] = time.monotonic()


class LiveConsumer:
    """Consumes the status and information topics into a :class:`LiveStore` (see the module doc)."""

    def __init__(self, consumer: Consumer, store: LiveStore, tracker: Tracker, producer: Producer | None = None,
                 *, batch: int = 5000) -> None:
        self.consumer, self.store, self.tracker, self.producer = consumer, store, tracker, producer
        self.batch = batch
        self.counts: Counter[tuple[str, str]] = Counter()
        """(topic, outcome) -> messages: applied, old, duplicate, invalid, tombstone."""
        self.committed_at = 0.0
        self._eof: set[tuple[str, int]] = set()
        self._resume: dict[tuple[str, int], int] = {}
        self._in_flight: set[str] = set()
        self._delivered: list[str] = []
        self._assigned: set[tuple[str, int]] = set()
        self._assigned_at = 0.0

    @property
    def topics(self) -> list[str]:
        return [self.tracker.status_topic, self.tracker.information_topic]

    def start(self) -> None:
        """Take up the store's state, send what its outbox still holds, assign every partition."""
        self._resume = self.tracker.restore(self.store)
        self.send_outbox()
        self.assign()

    def assign(self) -> None:
        """Read every partition of both topics from the store's offsets (the beginning where it has
        none); a no-op when the partitions did not change."""
        try:
            metadata = self.consumer.list_topics(timeout=10).topics
        except KafkaException as exc:
            log.warning("cannot list the topics (%s); retrying", exc.args[0].str() if exc.args else exc)
            return
        partitions = {(topic, p) for topic in self.topics if topic in metadata for p in metadata[topic].partitions}
        if partitions and partitions != self._assigned:
            self.consumer.assign([TopicPartition(t, p, self._resume.get((t, p), OFFSET_BEGINNING))
                                  for t, p in sorted(partitions)])
            self._assigned = partitions
        self._assigned_at = time.monotonic()

    def poll_once(self, timeout_s: float = 0.25) -> int:
        """Apply one batch, commit it to the store with its offsets, send the outbox. Returns the
        number of messages received."""
        if not self._assigned or time.monotonic() - self._assigned_at > REASSIGN_EVERY_S:
            self.assign()
        messages = self.consumer.consume(self.batch, timeout=timeout_s)
        apply, counts, eof, debug = self.tracker.apply, self.counts, self._eof, log.isEnabledFor(logging.DEBUG)
        for message in messages:
            if error := message.error():
                self._on_error(message, error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            eof.discard((topic, partition))
            outcome = apply(topic, partition, offset, message.key(), message.value())
            counts[(topic, outcome)] += 1
            if outcome == "invalid":
                log.warning("skipping an unreadable message at %s[%d]@%d%s", topic, partition, offset,
                            " (copied to the dead-letter topic)" if self.tracker.dead_letter_topic else "")
            elif debug:
                log.debug("%s %s: %s", topic, outcome, describe(message.value()))
        changes = self.tracker.take()
        if changes:
            self.store.commit(changes)  # StoreError stops the consumer: nothing after it is committed
            self.committed_at = time.time()
            for (topic, partition), (offset, _) in changes.offsets.items():
                self._resume[(topic, partition)] = offset
            self._commit_to_kafka(changes.offsets)
        self.send_outbox()
        return len(messages)

    def _on_error(self, message: Any, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self._eof.add((message.topic(), message.partition()))
        elif error.fatal():
            raise KafkaException(error)
        else:
            _client_error(error)

    def _commit_to_kafka(self, offsets: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Tell the group our progress (for lag tools only: the store's offsets are the ones we resume from)."""
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), (o, _) in offsets.items()],
                                 asynchronous=True)
        except KafkaException as exc:
            log.debug("offset commit to Kafka failed (%s); the store has them", exc)

    def send_outbox(self, timeout_s: float = 5.0) -> int:
        """Produce what the outbox holds (not already in flight); forget what Kafka acknowledged.
        Returns how many are still waiting."""
        if self.producer is None:
            return 0
        for id_, topic, key, value in self.store.outbox():
            if id_ in self._in_flight:
                continue
            self._in_flight.add(id_)
            self.producer.produce(topic, key=key, value=value, headers=[("message_id", id_.encode())],
                                  on_delivery=lambda err, msg, id_=id_: self._on_delivery(err, id_))
        if self._in_flight:
            self.producer.flush(timeout_s)
        if self._delivered:
            self.store.sent(self._delivered)
            self._delivered = []
        return len(self._in_flight)

    def _on_delivery(self, error: KafkaError | None, id_: str) -> None:
        self._in_flight.discard(id_)
        if error is None:
            self._delivered.append(id_)
        else:  # stays in the outbox: sent again by the next round
            log.warning("outbox message %s not delivered (%s); will retry", id_, error.str())

    def caught_up(self) -> bool:
        """True when every assigned partition reported end-of-partition since its last message."""
        assignment = self.consumer.assignment()
        return bool(assignment) and all((tp.topic, tp.partition) in self._eof for tp in assignment)

    def run(self, *, should_stop: Callable[[], bool], until_caught_up: bool = False,
            after_batch: Callable[[LiveConsumer], None] | None = None) -> None:
        """Start, then consume until ``should_stop()`` (or, with ``until_caught_up``, until the end of
        every partition); each batch is committed before the next check."""
        self.start()
        while not should_stop():
            self.poll_once()
            if after_batch:
                after_batch(self)
            if until_caught_up and self.caught_up():
                break

    def close(self) -> None:
        """Send what the outbox holds (what cannot be sent stays in it for the next start), commit the
        offsets to Kafka, close the store."""
        try:
            self.send_outbox()
        except (StoreError, KafkaException) as exc:  # already failing: the error that stopped us says why
            log.warning("outbox not sent at shutdown (%s); it is sent at the next start", exc)
        finally:
            self.consumer.close()
            self.store.close()

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages not yet applied, per assigned partition: the end offset last seen in a fetch
        (no broker round trip, so it answers while the broker is away) minus the store's offset."""
        lags = {}
        for tp in self.consumer.assignment():
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - self._resume.get((tp.topic, tp.partition), 0))
        return lags


def describe(value: bytes | None) -> str:
    """A message for the DEBUG log: a description's name and capacity, a status's bikes and docks."""
    try:
        data = json.loads(value) if value is not None else None
    except ValueError:
        return "unreadable"
    if not isinstance(data, dict):
        return "null" if data is None else "unreadable"
    station = f"{data.get('system_id')}:{data.get('station_id')}"
    if "name" in data:
        return f"{station} {data['name']!r}, capacity {data.get('capacity')}"
    return f"{station} bikes {data.get('num_bikes_available')}, docks {data.get('num_docks_available')}"
