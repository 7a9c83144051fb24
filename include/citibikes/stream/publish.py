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
from itertools import compress
from operator import ne
from typing import Any, Mapping, Optional, Sequence, Union

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
    StationStatusColumns,
    VehicleTypeCount,
)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,  # no duplicates or reordering from the producer's own retries
    "acks": "all",
    "compression.type": "zstd",
    # Level 1 (librdkafka's default is 3): a third less of the producer thread's CPU, and smaller batches
    # of these JSON records (BENCHMARKS.md).
    "compression.level": 1,
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


GUARANTEES: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    # (a setting with its librdkafka alias, the values that keep it, lower-cased)
    (("enable.idempotence",), frozenset({"true"})),
    (("acks", "request.required.acks"), frozenset({"all", "-1"})),
    (("compression.type", "compression.codec"), frozenset({"zstd"})),
)
"""The producer settings no override may change. Idempotence with acks=all is what lets a retried
step neither lose nor duplicate records within a producer session; zstd is the compression the
README and BENCHMARKS.md promise. Other settings (``linger.ms``, security, ...) may be tuned."""


class ProducerConfigError(ValueError):
    """A producer setting would weaken the pipeline's guarantees (idempotence, acks=all, zstd)."""


def producer_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The pipeline's producer settings with ``overrides`` (tuning, security); raises
    ProducerConfigError when an override would weaken a guarantee (see :data:`GUARANTEES`)."""
    for names, keeps in GUARANTEES:
        for name in names:
            if name in overrides and str(overrides[name]).lower() not in keeps:
                needs = ", ".join(f"{n[0]}={str(PRODUCER_DEFAULTS[n[0]]).lower()}" for n, _ in GUARANTEES)
                raise ProducerConfigError(
                    f"Kafka producer setting {name}={overrides[name]} is not allowed: the pipeline's producer "
                    f"needs {needs}; remove {name} from the producer settings (in Airflow: the Kafka connection's extra)"
                )
    config = dict(PRODUCER_DEFAULTS)
    if bootstrap:
        config["bootstrap.servers"] = bootstrap
    config.update(overrides)
    return config


def make_producer(bootstrap: str | None = None, **overrides: Any) -> Producer:
    """A producer with the pipeline's guarantees; librdkafka's own log lines go to Python logging."""
    return Producer({**producer_config(bootstrap, **overrides), "logger": logging.getLogger("citibikes.kafka")})


encode_value = msgspec.json.Encoder(order="deterministic").encode
"""A record as a message value: JSON, the keys of its dicts (``extras``) sorted as the lake stores them,
so a record has the same bytes whatever the order of the feed's keys."""


def message_key(system_id: str, station_id: str) -> bytes:
    return f"{system_id}:{station_id}".encode()


def message_id(feed: str, system_id: str, station_id: str | None, last_updated: int) -> str:
    """Deterministic id: the same observation re-sent by a retry carries the same id (consumers dedupe on it).

    It is ``uuid.uuid5(_NAMESPACE, "<feed>|<system_id>|<station_id>|<last_updated>")``, computed
    without building a ``UUID`` object (a third of the cost; it runs once per published record).
    """
    sha1 = _NAMESPACE_SHA1.copy()
    sha1.update(f"{feed}|{system_id}|{station_id}|{last_updated}".encode())
    hex_ = sha1.digest()[:16].hex()
    # version 5 in the 13th hex digit, the RFC 4122 variant in the top bits of the 17th
    return f"{hex_[:8]}-{hex_[8:12]}-5{hex_[13:16]}-{_VARIANT[hex_[16]]}{hex_[17:20]}-{hex_[20:]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


class Encoded(msgspec.Struct, array_like=True, gc=False):
    """Messages of one feed and one snapshot, encoded but not produced (:func:`encode_messages`):
    the headers they all carry, then each one's key, value and ``message_id`` header. This form
    crosses from the process that prepares snapshots to the one that produces them cheaply (the
    shared headers once, not per message)."""

    feed: str
    """``station_information``, ``station_status`` or ``quarantine``: which topic they go to."""
    headers: list[tuple[str, bytes]]
    keys: list[bytes] = []
    values: list[bytes] = []
    ids: list[bytes] = []


def encode_messages(feed: str, records: Sequence[Any]) -> list[Encoded]:
    """The Kafka messages of ``records`` of ``feed`` (structs with ``system_id``, ``station_id``,
    ``last_updated`` and ``fetched_at``), in their order, grouped by the snapshot they come from."""
    encode = encode_value
    schema, feed_header = str(SCHEMA_VERSION).encode(), feed.encode()
    snapshot: tuple[Any, ...] | None = None
    batches: list[Encoded] = []
    for record in records:
        system_id, last_updated, fetched_at = record.system_id, record.last_updated, record.fetched_at
        if snapshot != (system_id, last_updated, fetched_at):  # the same for all records of a snapshot
            snapshot = (system_id, last_updated, fetched_at)
            batch = Encoded(feed, [
                ("schema_version", schema),
                ("system_id", system_id.encode()),
                ("feed", feed_header),
                ("last_updated", str(last_updated).encode()),
                ("fetched_at", repr(fetched_at).encode()),
            ], [], [], [])
            batches.append(batch)
            keys, values, ids = batch.keys.append, batch.values.append, batch.ids.append
        station_id = record.station_id
        keys(f"{system_id}:{station_id or ''}".encode())  # message_key()
        values(encode(record))
        ids(message_id(feed, system_id, station_id, last_updated).encode())
    return batches


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

    def send(self, batches: Sequence[Encoded]) -> None:
        """Hand encoded messages (:func:`encode_messages`) to the producer (no waiting for the broker:
        see :meth:`flush`)."""
        produce, on_delivery, queued = self._producer.produce, self._on_delivery, self._queued
        for batch in batches:
            topic, common = self._topics[batch.feed], batch.headers
            for key, value, id_ in zip(batch.keys, batch.values, batch.ids):
                headers = [("message_id", id_), *common]
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                except BufferError:  # local queue full: the retrying path
                    self._produce(topic, key, value, headers)
            queued[topic] = queued.get(topic, 0) + len(batch.keys)

    def _publish(self, feed: str, records: Sequence[Any]) -> None:
        self.send(encode_messages(feed, records))

    def publish_information(self, records: Sequence[StationInformation]) -> None:
        self._publish(STATION_INFORMATION, records)

    def publish_status(self, records: Sequence[StationStatus]) -> None:
        self._publish(STATION_STATUS, records)

    def publish_quarantine(self, records: Sequence[QuarantinedRecord]) -> None:
        self._publish("quarantine", records)

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


FINGERPRINT_FIELDS = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                      "num_docks_disabled", "is_installed", "is_renting", "is_returning")
"""What counts as a change of a station's status (with its vehicle type counts): not the heartbeat
``last_reported``."""


def _vehicle_types_fingerprint(vehicle_types: Sequence[VehicleTypeCount] | None) -> tuple[tuple[str, int], ...]:
    return tuple((v.vehicle_type_id, v.count) for v in vehicle_types) if vehicle_types else ()


def status_fingerprint(record: StationStatus) -> tuple:
    """The fingerprint of one station's status (see :data:`FINGERPRINT_FIELDS`); JSON-ready (an array)."""
    return (*(getattr(record, name) for name in FINGERPRINT_FIELDS),
            _vehicle_types_fingerprint(record.vehicle_types_available))


def status_fingerprints(columns: StationStatusColumns) -> list[tuple]:
    """:func:`status_fingerprint` of every record of a snapshot in columns, computed column-wise."""
    vehicle_types = columns.vehicle_types_available
    if any(vehicle_types):
        vehicle_types = list(map(_vehicle_types_fingerprint, vehicle_types))
    else:
        vehicle_types = [()] * len(columns)
    return list(zip(*(getattr(columns, name) for name in FINGERPRINT_FIELDS), vehicle_types))


def _frozen_status_fingerprint(value: Any) -> Any:
    """A status fingerprint read back from JSON (lists) as the tuple :func:`status_fingerprint` makes."""
    if type(value) is list and value and type(value[-1]) is list:
        return (*value[:-1], tuple(tuple(pair) if type(pair) is list else pair for pair in value[-1]))
    return value


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


StatusFingerprint = tuple[int, Optional[int], Optional[int], Optional[int], Optional[int], bool, bool, bool,
                          tuple[tuple[str, int], ...]]
"""What :func:`status_fingerprint` makes, as a type (so a fingerprint sent between processes is decoded as it was)."""


class CaptureChange(msgspec.Struct, array_like=True, gc=False):
    """What committing a selection changes in a feed's change capture: the fingerprints of the
    stations it published, and whether it was a full snapshot. Light enough to send between
    processes: the worker that selects sends it to the process that commits once delivered."""

    feed: str
    station_ids: list[str]
    fingerprints: list[Union[StatusFingerprint, str]]
    full: bool
    last_updated: int


@dataclass
class Selection:
    """What change capture let through for one snapshot of one feed (see :meth:`ChangeCapture.select`)."""

    records: list[Any]
    """The records to publish, in feed order (of a snapshot in columns: ``extras`` as raw JSON text)."""
    skipped: int
    """Records left out as unchanged."""
    change: CaptureChange
    """What committing it changes (:meth:`ChangeCapture.commit`)."""

    @property
    def full(self) -> bool:
        """A full snapshot: every record selected."""
        return self.change.full


class ChangeCapture:
    """Lets through only the stations that changed, plus a full snapshot every ``snapshot_every_s``."""

    def __init__(self, state: ChangeCaptureState | None = None, snapshot_every_s: int = 900,
                 feed: str = STATION_STATUS) -> None:
        self.state = state or ChangeCaptureState()
        self.snapshot_every_s = snapshot_every_s
        self.feed = feed
        self.fingerprint = FINGERPRINTS[feed]
        if feed == STATION_STATUS and self.state.fingerprints:  # from JSON: lists where the fingerprints have tuples
            self.state.fingerprints = {station_id: _frozen_status_fingerprint(value)
                                       for station_id, value in self.state.fingerprints.items()}

    def copy(self) -> ChangeCapture:
        """An independent copy (what is committed to it does not change this one)."""
        state = ChangeCaptureState(dict(self.state.fingerprints), self.state.last_snapshot_at)
        return ChangeCapture(state, self.snapshot_every_s, self.feed)

    def select(self, records: Sequence[Any] | StationStatusColumns, last_updated: int) -> Selection:
        """The records to publish: those whose fingerprint changed, or all of them when a full snapshot is due.

        ``records`` are structs, or a station_status snapshot in columns (then fingerprints are
        computed column-wise and structs made only for the selected records).
        """
        known = self.state.fingerprints
        full = last_updated - self.state.last_snapshot_at >= self.snapshot_every_s
        if isinstance(records, StationStatusColumns):
            station_ids, fingerprints = records.station_id, status_fingerprints(records)
        else:
            station_ids = [record.station_id for record in records]
            fingerprints = list(map(self.fingerprint, records))
        if full:
            chosen: Sequence[int] = range(len(station_ids))
        else:  # `!=` of the previous and the new fingerprint, station by station (None: never published)
            chosen = list(compress(range(len(station_ids)),
                                   map(ne, map(known.get, station_ids), fingerprints)))
        if isinstance(records, StationStatusColumns):
            selected = records.records(chosen, raw_extras=True)  # only encoded into messages
        else:
            selected = list(records) if full else [records[i] for i in chosen]
        if not full:
            station_ids, fingerprints = [station_ids[i] for i in chosen], [fingerprints[i] for i in chosen]
        change = CaptureChange(self.feed, list(station_ids), fingerprints, full, last_updated)
        return Selection(selected, len(records) - len(chosen), change)

    def commit(self, change: CaptureChange) -> None:
        """Record what was delivered (a selection's :attr:`Selection.change`); call only after a successful flush."""
        self.state.fingerprints.update(zip(change.station_ids, change.fingerprints))
        if change.full:
            self.state.last_snapshot_at = change.last_updated

    def dumps(self) -> bytes:
        return msgspec.json.encode(self.state)

    @classmethod
    def loads(cls, data: bytes | None, snapshot_every_s: int = 900, feed: str = STATION_STATUS) -> ChangeCapture:
        state = msgspec.json.decode(data, type=ChangeCaptureState) if data else None
        return cls(state, snapshot_every_s, feed)
