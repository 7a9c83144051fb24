"""Publish validated stations to Kafka: keyed, idempotent, batched, with one flush per step.

Every record is produced asynchronously (librdkafka batches and compresses them) and the step
ends with a single ``flush``; any delivery failure, or a flush that does not finish in time, raises
``DeliveryError`` so the Airflow task (or the CLI run) fails and is retried: nothing is lost
silently. Only failures come back as delivery reports (``delivery.report.only.error``): a report
per acknowledged record would cost more Python time than producing the record, and ``flush``
already says whether any record is still unacknowledged.

Keys are ``<system_id>:<station_id>`` so a station's history stays in one partition (ordered) and
the compacted information topic keeps the latest description of each station.

Change capture (``ChangeCapture``) keeps what was last published per station and lets only the
stations whose state changed through, plus a periodic full snapshot so a consumer that starts
from any snapshot boundary sees every station.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import msgspec
from confluent_kafka import KafkaError, Producer

from citibikes.config import TopicConfig
from citibikes.gbfs.model import (
    SCHEMA_VERSION,
    STATION_INFORMATION,
    STATION_STATUS,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,  # no duplicates or reordering from the producer's own retries
    "acks": "all",
    "compression.type": "zstd",
    "linger.ms": 50,
    "delivery.report.only.error": True,  # see the module doc: flush() tells the rest
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 1_048_576,
    # A dead broker must fail the step within a bounded time, not hang it.
    "message.timeout.ms": 30_000,
    "socket.connection.setup.timeout.ms": 10_000,
    "client.id": "citibikes-producer",
}
_NAMESPACE = uuid.UUID("6f1c7d0e-2f7b-4c61-9d1e-6a1f0b9b1e55")
_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE.bytes)


class DeliveryError(RuntimeError):
    """Some records were not acknowledged by the broker; the step must fail and be retried."""


def producer_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    config = dict(PRODUCER_DEFAULTS)
    if bootstrap:
        config["bootstrap.servers"] = bootstrap
    config.update(overrides)
    return config


def make_producer(bootstrap: str | None = None, **overrides: Any) -> Producer:
    """A producer with the pipeline's guarantees; librdkafka's own log lines go to Python logging."""
    return Producer({**producer_config(bootstrap, **overrides), "logger": logging.getLogger("citibikes.kafka")})


def message_key(system_id: str, station_id: str) -> bytes:
    return f"{system_id}:{station_id}".encode()


def message_id(feed: str, system_id: str, station_id: str | None, last_updated: int) -> str:
    """Deterministic id: the same observation re-sent by a retry carries the same id (consumers dedupe on it).

    It is ``uuid.uuid5(_NAMESPACE, "<feed>|<system_id>|<station_id>|<last_updated>")``, computed
    without building a ``UUID`` object (a third of the cost; it runs once per published record).
    """
    sha1 = _NAMESPACE_SHA1.copy()
    sha1.update(f"{feed}|{system_id}|{station_id}|{last_updated}".encode())
    digest = bytearray(sha1.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    hex_ = digest.hex()
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


@dataclass
class PublishReport:
    sent: dict[str, int] = field(default_factory=dict)
    """Records acknowledged per topic."""
    skipped_unchanged: int = 0
    flush_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Publisher:
    """Produces records to the configured topics and verifies every delivery on ``flush``."""

    def __init__(self, producer: Producer, topics: Mapping[str, TopicConfig], flush_timeout_s: float = 60.0) -> None:
        self._producer = producer
        self._topics = {key: topic.name for key, topic in topics.items()}
        self._flush_timeout_s = flush_timeout_s
        self._encoder = msgspec.json.Encoder()
        self._queued: dict[str, int] = {}
        self._errors: list[str] = []
        self._skipped = 0

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:  # acknowledged records need nothing (and are not reported, see the module doc)
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def _produce(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain, then retry this record
                self._producer.poll(0.05)

    def _publish(self, feed_key: str, feed: str, records: Sequence[Any]) -> None:
        topic = self._topics[feed_key]
        encode = self._encoder.encode
        schema, feed_header = str(SCHEMA_VERSION).encode(), feed.encode()
        snapshot: tuple[Any, ...] | None = None
        common: list[tuple[str, bytes]] = []
        for record in records:
            system_id, last_updated, fetched_at = record.system_id, record.last_updated, record.fetched_at
            if snapshot != (system_id, last_updated, fetched_at):  # the same for all records of a snapshot
                snapshot = (system_id, last_updated, fetched_at)
                common = [
                    ("schema_version", schema),
                    ("system_id", system_id.encode()),
                    ("feed", feed_header),
                    ("last_updated", str(last_updated).encode()),
                    ("fetched_at", repr(fetched_at).encode()),
                ]
            headers = [("message_id", message_id(feed, system_id, record.station_id, last_updated).encode()), *common]
            self._produce(topic, message_key(system_id, record.station_id or ""), encode(record), headers)
        self._queued[topic] = self._queued.get(topic, 0) + len(records)
        self._producer.poll(0)

    def publish_information(self, records: Sequence[StationInformation]) -> None:
        self._publish(STATION_INFORMATION, STATION_INFORMATION, records)

    def publish_status(self, records: Sequence[StationStatus]) -> None:
        self._publish(STATION_STATUS, STATION_STATUS, records)

    def publish_quarantine(self, records: Sequence[QuarantinedRecord]) -> None:
        self._publish("quarantine", "quarantine", records)

    def note_skipped(self, count: int) -> None:
        self._skipped += count

    def flush(self) -> PublishReport:
        """Wait for every delivery; raise DeliveryError unless all records were acknowledged."""
        started = time.monotonic()
        remaining = self._producer.flush(self._flush_timeout_s)
        elapsed = time.monotonic() - started
        errors, self._errors = self._errors, []
        queued, self._queued = self._queued, {}
        if remaining or errors:
            cause = errors[0] if errors else f"{remaining} records still queued after {self._flush_timeout_s:.0f} s"
            self._producer.purge()  # drop what is still queued so a retry starts clean
            raise DeliveryError(
                f"Kafka did not acknowledge {len(errors) + max(remaining, 0)} records ({cause}); "
                "check the broker (`make status`, CITIBIKES_KAFKA_BOOTSTRAP) - the run will be retried"
            )
        report = PublishReport(sent=queued, skipped_unchanged=self._skipped, flush_s=elapsed)
        self._skipped = 0
        return report


def status_fingerprint(record: StationStatus) -> list:
    """What counts as a change: counts and flags, not the heartbeat ``last_reported``.

    JSON-shaped (lists, not tuples) so the state round-trips through JSON and compares equal.
    """
    vehicle_types = [[v.vehicle_type_id, v.count] for v in record.vehicle_types_available or ()]
    return [
        record.num_bikes_available, record.num_ebikes_available, record.num_bikes_disabled,
        record.num_docks_available, record.num_docks_disabled,
        record.is_installed, record.is_renting, record.is_returning, vehicle_types,
    ]


_information_encoder = msgspec.json.Encoder()


def information_fingerprint(record: StationInformation) -> str:
    """A station's description minus the feed times: changes when anything users see changes."""
    content = msgspec.structs.replace(record, last_updated=0, fetched_at=0.0)
    return hashlib.blake2b(_information_encoder.encode(content), digest_size=8).hexdigest()


FINGERPRINTS = {STATION_STATUS: status_fingerprint, STATION_INFORMATION: information_fingerprint}


class ChangeCaptureState(msgspec.Struct):
    """Per system and feed: the fingerprint last published per station and when the last full snapshot went out."""

    fingerprints: dict[str, Any] = {}
    last_snapshot_at: int = 0


class ChangeCapture:
    """Lets through only the stations that changed, plus a full snapshot every ``snapshot_every_s``."""

    def __init__(self, state: ChangeCaptureState | None = None, snapshot_every_s: int = 900,
                 feed: str = STATION_STATUS) -> None:
        self.state = state or ChangeCaptureState()
        self.snapshot_every_s = snapshot_every_s
        self.fingerprint = FINGERPRINTS[feed]

    def select(self, records: Iterable[Any], last_updated: int) -> tuple[list[Any], int, bool]:
        """(records to publish, number skipped as unchanged, whether this is a full snapshot)."""
        full = last_updated - self.state.last_snapshot_at >= self.snapshot_every_s
        known, fingerprint = self.state.fingerprints, self.fingerprint
        selected: list[Any] = []
        skipped = 0
        for record in records:
            if full or known.get(record.station_id) != fingerprint(record):
                selected.append(record)
            else:
                skipped += 1
        return selected, skipped, full

    def commit(self, published: Iterable[Any], last_updated: int, full: bool) -> None:
        """Record what was delivered; call only after a successful flush."""
        for record in published:
            self.state.fingerprints[record.station_id] = self.fingerprint(record)
        if full:
            self.state.last_snapshot_at = last_updated

    def dumps(self) -> bytes:
        return msgspec.json.encode(self.state)

    @classmethod
    def loads(cls, data: bytes | None, snapshot_every_s: int = 900, feed: str = STATION_STATUS) -> ChangeCapture:
        state = msgspec.json.decode(data, type=ChangeCaptureState) if data else None
        return cls(state, snapshot_every_s, feed)
