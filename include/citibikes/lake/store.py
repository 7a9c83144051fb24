"""The lake: curated Parquet, quarantine, raw feeds, pipeline runs and a small state store.

:func:`open_lake` takes the lake URI (a folder, ``file:///folder`` or ``s3://bucket/prefix``) and
checks at once that it can be used, so bad configuration fails at the start of a run with one line
naming the cause and the fix. The ``*_file`` functions make a file (its key, derived from the
feed's ``last_updated`` by :mod:`citibikes.lake.layout`, and its bytes) without writing it, so that
the files of a step are written together; :class:`Lake` writes them atomically (see
:mod:`citibikes.lake.filesystem`) and reads tables back.
"""

from __future__ import annotations

import gzip
import io
import itertools
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from citibikes.config import Settings
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS, QuarantinedRecord
from citibikes.lake import layout
from citibikes.lake.errors import LakeError
from citibikes.lake.filesystem import Storage, parse_lake_uri, s3_filesystem
from citibikes.lake.tables import (
    TABLE_SCHEMAS,
    RunRecord,
    checks_table,
    day_schema,
    parquet_bytes,
    quarantine_table,
    rebalancing_table,
    runs_from_table,
    runs_table,
    by_station,
)

PARTITION_TYPES: dict[str, pa.DataType] = {"system": pa.string(), "date": pa.date32(), "hour": pa.int32()}

LakeFile = tuple[str, bytes]
"""A file to write: its key in the lake and its bytes."""

RAW_ZSTD_LEVEL = 1
"""For GBFS JSON, level 1 is both faster and smaller than 3 (Citi Bike: ~0.7 ms and ~70 KB for a
790 KB station_status body; gzip -6 took ~5.6 ms for ~73 KB)."""
RAW_MAX_BYTES = 256 * 1024 * 1024
"""Refuse to inflate an archived body past this (a corrupt or hostile file, not a feed)."""
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_CODEC = pa.Codec("zstd", RAW_ZSTD_LEVEL)


def open_lake(uri: str, *, endpoint_url: str | None = None, region: str | None = None,
              access_key: str | None = None, secret_key: str | None = None, session_token: str | None = None,
              filesystem: pafs.FileSystem | None = None) -> Lake:
    """Open the lake at ``uri`` and check it is usable (folder writable; endpoint, credentials
    and bucket fine). ``filesystem`` is a ready pyarrow filesystem (e.g. from an Airflow hook);
    without it a local folder or a pyarrow S3 filesystem is made from the other arguments."""
    location = parse_lake_uri(uri)
    if filesystem is None:
        if location.scheme == "file":
            filesystem = pafs.LocalFileSystem()
        else:
            filesystem = s3_filesystem(endpoint_url=endpoint_url, region=region, access_key=access_key,
                                       secret_key=secret_key, session_token=session_token)
    storage = Storage(filesystem, location, endpoint=endpoint_url if location.scheme == "s3" else None)
    storage.check_access()
    return Lake(storage)


def lake_from_settings(settings: Settings) -> Lake:
    """The lake configured by :class:`citibikes.config.Settings` (keys from the AWS variables)."""
    return open_lake(settings.lake_uri, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)


def compress_raw(payload: bytes) -> bytes:
    """One standard zstd frame (readable by ``zstd -d``, DuckDB, Athena), the same bytes for the same input."""
    return _RAW_CODEC.compress(payload, asbytes=True)


def decompress_raw(data: bytes, max_bytes: int = RAW_MAX_BYTES) -> bytes:
    """The body of a zstd frame (see :func:`compress_raw`); LakeError if it is corrupt or too large."""
    try:
        with pa.CompressedInputStream(pa.BufferReader(data), "zstd") as stream:
            body = stream.read(max_bytes + 1)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LakeError(f"archived body is not valid zstd ({str(exc).splitlines()[0]}); re-archive the snapshot") from None
    if len(body) > max_bytes:
        raise LakeError(f"archived body inflates past {max_bytes:,} bytes; it is not a feed snapshot")
    return body


def _decompress_legacy(data: bytes, max_bytes: int = RAW_MAX_BYTES) -> bytes:
    """The body of a gzip archive (written before the switch to zstd), like :func:`decompress_raw`."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            body = stream.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise LakeError(f"archived body is not valid gzip ({str(exc).splitlines()[0]}); re-archive the snapshot") from None
    if len(body) > max_bytes:
        raise LakeError(f"archived body inflates past {max_bytes:,} bytes; it is not a feed snapshot")
    return body


def _checked(name: str, table: pa.Table) -> pa.Table:
    """``table`` if it has the lake's schema for ``name`` (a file of another schema would not read as
    one table with the others); else a one-line LakeError naming the first column that differs."""
    expected = TABLE_SCHEMAS[name]
    if table.schema.equals(expected):
        return table
    pairs = itertools.zip_longest(map(_described, table.schema), map(_described, expected), fillvalue="nothing")
    given, wanted = next(((g, w) for g, w in pairs if g != w), (str(table.schema), str(expected)))
    raise LakeError(f"{name} table does not have the lake's schema: expected {wanted}, got {given}; "
                    "make the table with the feed's normalizer")


def _described(field: pa.Field) -> str:
    return f"column {field.name} {field.type}{'' if field.nullable else ' not null'}"


def raw_file(system_id: str, feed: str, last_updated: int, payload: bytes) -> LakeFile:
    """A feed body's raw archive: the bytes exactly as fetched, zstd-compressed."""
    return layout.raw_key(system_id, feed, last_updated), compress_raw(payload)


def status_file(system_id: str, table: pa.Table, first: int, last: int | None = None) -> LakeFile:
    """The station_status rows of one snapshot (in the feed's order), or of the consecutive snapshots
    ``first`` to ``last`` of one hour partition (a backfill) as one file, grouped by station
    (:func:`~citibikes.lake.tables.by_station`): a file per snapshot costs a Parquet writer, a file and
    its fsync each, and an hour of minute snapshots in one file is a fifth of their size."""
    key, table = layout.curated_key(STATION_STATUS, system_id, first, last), _checked(STATION_STATUS, table)
    rows = by_station(table) if last is not None and last != first else table
    return key, parquet_bytes(rows)


def information_file(system_id: str, table: pa.Table, last_updated: int) -> LakeFile:
    """The description versions that took effect at ``last_updated``."""
    key = layout.curated_key(STATION_INFORMATION, system_id, last_updated)
    return key, parquet_bytes(_checked(STATION_INFORMATION, table))


def quarantine_file(system_id: str, feed: str, records: Sequence[QuarantinedRecord], first: int,
                    last: int | None = None) -> LakeFile:
    """The rejected records of one feed of one snapshot (or of the snapshots ``first`` to ``last``)."""
    return layout.quarantine_key(system_id, feed, first, last), parquet_bytes(quarantine_table(records))


@dataclass
class Lake:
    """An opened lake (see :func:`open_lake`): writers return the keys they wrote, relative to
    :attr:`uri`; a file written again for the same snapshot replaces the old one."""

    storage: Storage

    @property
    def uri(self) -> str:
        """The lake root as other tools name it: an absolute folder or ``s3://bucket/prefix``."""
        return self.storage.uri()

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.storage.filesystem

    # -- writing -----------------------------------------------------------------------------

    def write_files(self, files: Iterable[LakeFile]) -> list[str]:
        """Write files in order, each atomically, as one group (see :meth:`Storage.put_many`); returns their keys."""
        return self.storage.put_many(list(files))

    def write_raw(self, system_id: str, feed: str, last_updated: int, payload: bytes) -> str:
        """Archive the feed's bytes exactly as fetched, zstd-compressed (same input, same bytes)."""
        return self.write_files([raw_file(system_id, feed, last_updated, payload)])[0]

    def write_runs(self, runs: Sequence[RunRecord]) -> list[str]:
        """Run records in few files: one per system and UTC date of their start, named after the first
        and last run (one run: after it), so a retried run with the same id overwrites its file."""
        groups: dict[tuple[str, str], list[RunRecord]] = {}
        for run in runs:
            groups.setdefault((run.system_id, layout.utc_date_hour(run.started_at)[0]), []).append(run)
        files = []
        for group in groups.values():
            first, last = group[0], group[-1]
            run_id = first.run_id if len(group) == 1 else f"{first.run_id}--{last.run_id}"
            files.append((layout.run_key(run_id, first.system_id, first.started_at), parquet_bytes(runs_table(group))))
        return self.write_files(files)

    def write_rebalancing(self, run_id: str, run_after: float, outages: Sequence[Any],
                          systems: Iterable[str]) -> list[str]:
        """A run's to-do lists (:class:`~citibikes.live.rebalance.Outage` rows or their dicts): one file
        per system of the outages and of ``systems`` (empty when it has none), named after the run
        (:func:`~citibikes.lake.layout.rebalancing_key`), so a rerun replaces it."""
        by_system: dict[str, list[Any]] = {system: [] for system in systems}
        for outage in msgspec.to_builtins(outages):
            by_system.setdefault(outage["system_id"], []).append(outage)
        return self.write_files((layout.rebalancing_key(run_id, system, run_after),
                                 parquet_bytes(rebalancing_table(run_id, rows)))
                                for system, rows in sorted(by_system.items()))

    def write_checks(self, run_id: str, run_after: float, checked_at: float, results: Sequence[Any]) -> str:
        """A run's check results (:class:`~citibikes.checks.Result` rows or their dicts) as one file
        named after the run (:func:`~citibikes.lake.layout.checks_key`), so a rerun replaces it."""
        key = layout.checks_key(run_id, run_after)
        return self.write_files([(key, parquet_bytes(checks_table(run_id, checked_at, results)))])[0]

    def write_report(self, report: str, system_id: str, period: str, files: Sequence[tuple[str, bytes]]) -> list[str]:
        """A report's ``(name, bytes)`` files under :func:`~citibikes.lake.layout.report_key` (replacing a former run's)."""
        return self.write_files((layout.report_key(report, system_id, period, name), data) for name, data in files)

    # -- reading -----------------------------------------------------------------------------

    def files(self, name: str, system: str | None = None) -> list[str]:
        """Keys of the Parquet files holding a table's rows (a table of :data:`~citibikes.lake.layout.TABLES`),
        optionally of one system only: every file but those a newer compacted file holds
        (:func:`~citibikes.lake.layout.live_keys`)."""
        table = layout.table_layout(name)
        prefix = table.prefix
        if system is not None and "system" in table.partition_keys:
            prefix = f"{prefix}/system={layout.check_system_id(system)}"
        keys = [key for key in self.storage.list(prefix) if key.endswith(".parquet")]
        return layout.live_keys(keys, self.compacted_sources)

    def compacted_sources(self, key: str) -> tuple[str, ...]:
        """The paths below its folder of the files the compacted file ``key`` holds (its metadata says)."""
        try:
            with self.filesystem.open_input_file(self.storage.path(key)) as source:
                metadata = pq.ParquetFile(source).metadata.metadata
        except (OSError, pa.ArrowInvalid) as exc:
            raise LakeError(f"cannot read {self.storage.uri(key)}: {str(exc).splitlines()[0]}; the next compaction "
                            "writes the partition again if you delete it") from None
        return layout.compacted_sources(metadata) or ()

    def read_table(self, name: str, system: str | None = None) -> pa.Table:
        """A whole table as Arrow, with the partition columns (``system``, ``date``, ``hour``)."""
        table = layout.table_layout(name)
        partitions = pa.schema([pa.field(key, PARTITION_TYPES[key]) for key in table.partition_keys])
        schema = pa.unify_schemas([TABLE_SCHEMAS[name], partitions])
        keys = self.files(name, system)
        if not keys:
            return schema.empty_table()
        dataset = ds.dataset([self.storage.path(key) for key in keys], filesystem=self.filesystem, format="parquet",
                             schema=schema, partitioning=ds.partitioning(partitions, flavor="hive"),
                             partition_base_dir=self.storage.path(table.prefix))
        try:
            result = dataset.to_table()
        except OSError as exc:
            raise self.storage.error(exc, f"cannot read table {name}") from None
        if system is not None and "system" not in table.partition_keys:
            result = result.filter(pc.equal(result["system_id"], system))
        return result

    def read_file(self, key: str, table: str) -> pa.Table | None:
        """One Parquet file of ``table`` (its columns, not the partition ones; a compacted day's file
        with its ``hour`` column), or None when it does not exist."""
        data = self.storage.get(key)
        if data is None:
            return None
        try:
            return pq.read_table(pa.BufferReader(data),
                                 schema=day_schema(table) if layout.is_day_file(key) else TABLE_SCHEMAS[table])
        except (OSError, pa.ArrowInvalid) as exc:
            raise LakeError(f"cannot read {self.storage.uri(key)}: {str(exc).splitlines()[0]}; remove the file "
                            "or write it again") from None

    def read_runs(self, system: str | None = None) -> list[RunRecord]:
        return runs_from_table(self.read_table("pipeline_runs", system))

    def read_raw(self, system_id: str, feed: str, last_updated: int) -> bytes | None:
        """The archived feed bytes (decompressed), or None when that snapshot was not archived.
        Archives written before the switch to zstd (``.json.gz``) are read too."""
        data = self.storage.get(layout.raw_key(system_id, feed, last_updated))
        if data is not None:
            return decompress_raw(data)
        legacy = self.storage.get(layout.legacy_raw_key(system_id, feed, last_updated))
        return None if legacy is None else _decompress_legacy(legacy)

    # -- the pipeline's own state -------------------------------------------------------------

    def read_state(self, key: str) -> bytes | None:
        """The bytes last stored under ``_state/<key>``, or None."""
        return self.storage.get(layout.state_key(key))

    def list_state(self, prefix: str) -> list[str]:
        """The keys of the state store below ``prefix`` (a folder), sorted."""
        return [key.split("/", 1)[1] for key in self.storage.list(layout.state_key(prefix) + "/")]  # minus "_state/"

    def delete_state(self, key: str) -> None:
        """Remove ``_state/<key>`` and everything below it (used for a finished run's staging area)."""
        self.storage.delete_tree(layout.state_key(key))

    def write_state(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``_state/<key>``, replacing the previous value atomically."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LakeError(f"state {key!r} must be bytes, not {type(data).__name__}; encode it first (e.g. JSON)")
        self.storage.put(layout.state_key(key), bytes(data))
