"""Publish validated stations to Kafka: keyed, idempotent, batched, with one flush per step (a
backfill: per batch of snapshots).

Every record is produced asynchronously (librdkafka batches and compresses them) and the step
ends with a single ``flush``; any delivery failure, or a flush that does not finish in time, raises
``DeliveryError`` so the Airflow task (or the CLI run) fails and is retried: nothing is lost
silently. Only failures come back as delivery reports (``delivery.report.only.error``): a report
per acknowledged record would cost more Python time than producing the record, and ``flush``
already says whether any record is still unacknowledged.

Keys are ``<system_id>:<station_id>`` so a station's history stays in one partition (ordered) and
the compacted information topic keeps the latest description of each station. A message's value
is its row as JSON (times in POSIX seconds, the vendor fields as the object ``extras``); which
rows are published is decided by :mod:`citibikes.changes`.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, Producer

from citibikes.config import TopicConfig
from citibikes.gbfs.model import SCHEMA_VERSION, SCHEMAS, STATION_INFORMATION, STATION_STATUS, QuarantinedRecord

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


encode_value = msgspec.json.Encoder().encode

FEED_TOPICS = {STATION_STATUS: "station_status", STATION_INFORMATION: "station_information",
               "quarantine": "quarantine"}
"""The topic (key in the settings' topics) each kind of message goes to."""


def message_key(system_id: str, station_id: str | None) -> bytes:
    return f"{system_id}:{station_id or ''}".encode()


def message_id(feed: str, system_id: str, station_id: str | None, last_updated: int) -> str:
    """Deterministic id: the same observation re-sent by a retry carries the same id (consumers dedupe on it).
    It is ``uuid.uuid5(_NAMESPACE, "<feed>|<system_id>|<station_id>|<last_updated>")``."""
    return message_ids(feed, system_id, [station_id], last_updated)[0].decode()


def message_ids(feed: str, system_id: str, station_ids: Sequence[str | None], last_updated: int) -> list[bytes]:
    """:func:`message_id` of many stations of one snapshot, as header bytes: the hash of what they
    share is computed once, and no ``UUID`` object is built (it runs once per published record)."""
    shared = _NAMESPACE_SHA1.copy()
    shared.update(f"{feed}|{system_id}|".encode())
    suffix = f"|{last_updated}".encode()
    ids = []
    for station_id in station_ids:
        sha1 = shared.copy()
        sha1.update(f"{station_id}".encode() + suffix)
        hex_ = sha1.digest()[:16].hex()
        # version 5 in the 13th hex digit, the RFC 4122 variant in the top bits of the 17th
        ids.append(f"{hex_[:8]}-{hex_[8:12]}-5{hex_[13:16]}-{_VARIANT[hex_[16]]}{hex_[17:20]}-{hex_[20:]}".encode())
    return ids


_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}
_WHOLE_SECONDS = frozenset({"last_updated", "last_reported"})

VALUES = {feed: msgspec.defstruct(f"{feed}_value", [(name, Any) for name in schema.names if name != "schema_version"])
          for feed, schema in SCHEMAS.items()}
"""A message value per station feed: the table's columns in its order but ``schema_version`` (a header)."""


def table_values(feed: str, table: pa.Table, rows: Sequence[int] | None = None) -> list[Any]:
    """Rows of a station table (all, or those at ``rows``) as message values (:data:`VALUES`): times in
    POSIX seconds (``fetched_at`` a float), ``extras`` as its JSON object."""
    kind = VALUES[feed]
    if rows is not None:
        table = table.take(pa.array(rows, pa.int64()))
    columns = []
    for name in kind.__struct_fields__:
        column = table[name]
        if pa.types.is_timestamp(column.type):
            millis = column.cast(pa.int64())
            column = pc.divide(millis, 1000) if name in _WHOLE_SECONDS else pc.divide(millis.cast(pa.float64()), 1000.0)
            columns.append(column.to_pylist())
        elif name == "extras":
            columns.append(list(map(msgspec.Raw, map(str.encode, column.to_pylist()))))
        else:
            columns.append(column.to_pylist())
    return list(map(kind, *columns))


class Publisher:
    """Produces records to the configured topics and verifies every delivery on ``flush``."""

    def __init__(self, producer: Producer, topics: Mapping[str, TopicConfig], flush_timeout_s: float = 60.0) -> None:
        self._producer = producer
        self._topics = {feed: topics[key].name for feed, key in FEED_TOPICS.items()}
        self._flush_timeout_s = flush_timeout_s
        self._errors: list[str] = []
        self.queued = 0
        """Records handed to the producer since the last flush."""

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:  # acknowledged records need nothing (and are not reported, see the module doc)
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def send_table(self, feed: str, table: pa.Table, rows: Sequence[int] | None = None) -> int:
        """Produce rows of one snapshot's station table (all, or those at ``rows``); returns how many."""
        values = table_values(feed, table, rows)
        if values:
            first = values[0]
            self._send(feed, first.system_id, first.last_updated, first.fetched_at,
                       [value.station_id for value in values], list(map(encode_value, values)))
        return len(values)

    def send_quarantine(self, records: Sequence[QuarantinedRecord]) -> int:
        """Produce rejected records (of one snapshot per feed); returns how many."""
        by_snapshot: dict[tuple[str, str, int, float], list[QuarantinedRecord]] = {}
        for record in records:
            by_snapshot.setdefault((record.system_id, record.feed, record.last_updated, record.fetched_at), []).append(record)
        for (system_id, _, last_updated, fetched_at), group in by_snapshot.items():
            ids = [_rejected_id(record) for record in group]
            self._send("quarantine", system_id, last_updated, fetched_at, ids, list(map(encode_value, group)),
                       keys=[record.station_id for record in group])
        return len(records)

    def _send(self, feed: str, system_id: str, last_updated: int, fetched_at: float,
              station_ids: list[str | None], values: list[bytes], *, keys: list[str | None] | None = None) -> None:
        """Produce one snapshot's messages of one feed: each with its key (by station) and id (by
        ``station_ids``: what tells the messages of the snapshot apart), the snapshot's headers."""
        topic, produce, on_delivery = self._topics[feed], self._producer.produce, self._on_delivery
        common = [("schema_version", str(SCHEMA_VERSION).encode()), ("system_id", system_id.encode()),
                  ("feed", feed.encode()), ("last_updated", str(last_updated).encode()),
                  ("fetched_at", repr(float(fetched_at)).encode())]
        prefix = f"{system_id}:"
        ids = message_ids(feed, system_id, station_ids, last_updated)
        for station_id, value, id_ in zip(station_ids if keys is None else keys, values, ids):
            headers = [("message_id", id_), *common]
            key = (prefix + (station_id or "")).encode()
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain, then retry this record
                    self._producer.poll(0.05)
        self.queued += len(values)

    def flush(self) -> int:
        """Wait for every delivery; raise DeliveryError unless all records were acknowledged. Returns
        how many were (since the last flush)."""
        remaining = self._producer.flush(self._flush_timeout_s)
        errors, self._errors = self._errors, []
        queued, self.queued = self.queued, 0
        if remaining or errors:
            cause = errors[0] if errors else f"{remaining} records still queued after {self._flush_timeout_s:.0f} s"
            self._producer.purge()  # drop what is still queued so a retry starts clean
            raise DeliveryError(
                f"Kafka did not acknowledge {len(errors) + max(remaining, 0)} records ({cause}); "
                "check the broker (`make status`, CITIBIKES_KAFKA_BOOTSTRAP) - the run will be retried"
            )
        return queued


def _rejected_id(record: QuarantinedRecord) -> str:
    """What tells one rejected record of a snapshot from another (its id's station part): its feed,
    station and a digest of its text - a record without a usable id, or a later copy of a station,
    is not mistaken for another."""
    digest = hashlib.blake2b(record.raw.encode(), digest_size=8).hexdigest()
    return f"{record.feed}/{record.station_id}/{digest}"
