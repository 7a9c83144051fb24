"""The lake: curated Parquet, quarantine, raw feeds, pipeline runs and a small state store.

:func:`open_lake` takes the lake URI (a folder, ``file:///folder`` or ``s3://bucket/prefix``) and
checks at once that it can be used, so bad configuration fails at the start of a run with one line
naming the cause and the fix. :class:`Lake` writes one file per feed snapshot under keys derived
from the feed's ``last_updated`` (see :mod:`citibikes.lake.layout`), atomically (see
:mod:`citibikes.lake.filesystem`), and reads tables back for tests and SQL checks.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from citibikes.config import Settings
from citibikes.gbfs.model import QuarantinedRecord, StationInformation, StationStatus, StationStatusColumns
from citibikes.lake import layout
from citibikes.lake.errors import LakeError
from citibikes.lake.filesystem import Storage, parse_lake_uri, s3_filesystem
from citibikes.lake.tables import (
    SCHEMAS,
    RunRecord,
    build_table,
    parquet_bytes,
    runs_from_table,
)

T = TypeVar("T")

PARTITION_TYPES: dict[str, pa.DataType] = {"system": pa.string(), "date": pa.date32(), "hour": pa.int32()}
DUCKDB_PARTITION_TYPES = {"system": "VARCHAR", "date": "DATE", "hour": "INTEGER"}


def open_lake(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> Lake:
    """Open the lake at ``uri`` and check it is usable (folder writable; endpoint, credentials
    and bucket fine). ``filesystem`` is a ready pyarrow filesystem (e.g. from an Airflow hook);
    without it a local folder or a pyarrow S3 filesystem is made from the other arguments."""
    location = parse_lake_uri(uri)
    if filesystem is None:
        if location.scheme == "file":
            filesystem = pafs.LocalFileSystem()
        else:
            filesystem = s3_filesystem(
                endpoint_url=endpoint_url, region=region, access_key=access_key, secret_key=secret_key,
                session_token=session_token,
            )
    storage = Storage(filesystem, location, endpoint=endpoint_url if location.scheme == "s3" else None)
    storage.check_access()
    return Lake(storage)


def lake_from_settings(settings: Settings) -> Lake:
    """The lake configured by :class:`citibikes.config.Settings` (keys from the AWS variables)."""
    return open_lake(settings.lake_uri, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)


LakeFile = tuple[str, bytes]
"""A file to write: its key in the lake and its bytes."""

RAW_ZSTD_LEVEL = 1
"""For GBFS JSON, level 1 is both faster and smaller than 3 (measured on Citi Bike: ~0.7 ms and
~70 KB for a 790 KB station_status body; gzip -6 took ~5.6 ms for ~73 KB)."""
RAW_MAX_BYTES = 256 * 1024 * 1024
"""Refuse to inflate an archived body past this (a corrupt or hostile file, not a feed)."""
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_CODEC = pa.Codec("zstd", RAW_ZSTD_LEVEL)


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


def group_by(records: Sequence[T], key: Callable[[T], Hashable]) -> dict[Hashable, Sequence[T]]:
    """Records by ``key``, in order; the common case of one group returns ``records`` itself."""
    keys = list(map(key, records))
    if len(set(keys)) == 1:
        return {keys[0]: records}
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for group, record in zip(keys, records):
        groups[group].append(record)
    return groups


# Encoding needs no lake (a worker process prepares files that the pipeline's process writes).

LakeTable = tuple[str, pa.Table]
"""A lake file's key and its table, before encoding to Parquet (:func:`encode_tables`)."""


def station_status_tables(records: Sequence[StationStatus] | StationStatusColumns) -> list[LakeTable]:
    """One table per (system, ``last_updated``): a snapshot in columns is one table."""
    if isinstance(records, StationStatusColumns):
        if not len(records):
            return []
        return [(layout.curated_key("station_status", records.system_id, records.last_updated),
                 build_table("station_status", records))]
    return _snapshot_tables("station_status", records)


def station_information_tables(records: Sequence[StationInformation]) -> list[LakeTable]:
    return _snapshot_tables("station_information", records)


def quarantine_tables(records: Sequence[QuarantinedRecord]) -> list[LakeTable]:
    """One table per (system, feed, ``last_updated``)."""
    groups = group_by(records, attrgetter("system_id", "feed", "last_updated"))
    return [(layout.quarantine_key(system_id, feed, last_updated), build_table("quarantine", group))
            for (system_id, feed, last_updated), group in groups.items()]


def _snapshot_tables(table: str, records: Sequence[Any]) -> list[LakeTable]:
    groups = group_by(records, attrgetter("system_id", "last_updated"))
    return [(layout.curated_key(table, system_id, last_updated), build_table(table, group))
            for (system_id, last_updated), group in groups.items()]


def encode_tables(tables: Iterable[LakeTable]) -> list[LakeFile]:
    """Tables as Parquet files."""
    return [(key, parquet_bytes(table)) for key, table in tables]


def encode_station_status(records: Sequence[StationStatus] | StationStatusColumns) -> list[LakeFile]:
    return encode_tables(station_status_tables(records))


def encode_station_information(records: Sequence[StationInformation]) -> list[LakeFile]:
    return encode_tables(station_information_tables(records))


def encode_quarantine(records: Sequence[QuarantinedRecord]) -> list[LakeFile]:
    return encode_tables(quarantine_tables(records))


def encode_status_span(system_id: str, first: int, last: int, snapshots: Sequence[StationStatusColumns]) -> list[LakeFile]:
    """The station_status rows of consecutive snapshots of one system and hour partition as one
    file named after the first and last ``last_updated`` (:func:`layout.curated_key`): rows in
    time order, each snapshot's by station_id. A file per snapshot costs a Parquet writer, a
    file and its fsync each; an hour of Citi Bike minutes in one file is a third of their size."""
    tables = [build_table("station_status", snapshot) for snapshot in snapshots if len(snapshot)]
    if not tables:
        return []
    return [(layout.curated_key("station_status", system_id, first, last), parquet_bytes(pa.concat_tables(tables)))]


def encode_quarantine_span(system_id: str, feed: str, first: int, last: int,
                           records: Sequence[QuarantinedRecord]) -> list[LakeFile]:
    """The quarantined records of ``feed`` of consecutive snapshots as one file (see :func:`encode_status_span`)."""
    if not records:
        return []
    return [(layout.quarantine_key(system_id, feed, first, last), parquet_bytes(build_table("quarantine", records)))]


def raw_file(system_id: str, feed: str, last_updated: int, payload: bytes) -> LakeFile:
    """A feed body's raw archive file (see :meth:`Lake.write_raw`)."""
    return layout.raw_key(system_id, feed, last_updated), compress_raw(payload)


@dataclass
class Lake:
    """An opened lake (see :func:`open_lake`): writers return the keys they wrote, relative to
    :attr:`uri`; every writer replaces the file of the same snapshot rather than adding one."""

    storage: Storage

    @property
    def uri(self) -> str:
        """The lake root as other tools name it: an absolute folder or ``s3://bucket/prefix``."""
        return self.storage.uri()

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.storage.filesystem

    # -- writing -----------------------------------------------------------------------------
    # The module's ``encode_*`` functions make the files of a table (key and Parquet bytes) without
    # writing them, so a caller can prepare them elsewhere (backfill's worker process);
    # ``write_files`` writes them. ``write_*`` does both.

    def write_station_status(self, records: Sequence[StationStatus] | StationStatusColumns) -> list[str]:
        """One Parquet file per (system, ``last_updated``); returns the keys written."""
        return self.write_files(encode_station_status(records))

    def write_station_information(self, records: Sequence[StationInformation]) -> list[str]:
        return self.write_files(encode_station_information(records))

    def write_quarantine(self, records: Sequence[QuarantinedRecord]) -> list[str]:
        """One Parquet file per (system, feed, ``last_updated``); returns the keys written."""
        return self.write_files(encode_quarantine(records))

    def write_files(self, files: Iterable[LakeFile]) -> list[str]:
        """Write encoded files (see ``encode_*``) in order, each atomically, as one group (see
        :meth:`Storage.put_many`: give the files of several snapshots at once where they can be);
        returns their keys."""
        return self.storage.put_many(list(files))

    def write_raw(self, system_id: str, feed: str, last_updated: int, payload: bytes) -> str:
        """Archive the feed's bytes exactly as fetched, zstd-compressed (same input, same bytes)."""
        return self.write_files([raw_file(system_id, feed, last_updated, payload)])[0]

    def write_run(self, run: RunRecord | Mapping[str, Any]) -> str:
        """The run's row as its own file; a retried task with the same run id overwrites it."""
        record = run if isinstance(run, RunRecord) else RunRecord.from_mapping(run)
        key = layout.run_key(record.run_id, record.system_id, record.started_at)
        return self.storage.put(key, parquet_bytes(build_table("pipeline_runs", [record])))

    def write_runs(self, runs: Iterable[RunRecord | Mapping[str, Any]]) -> list[str]:
        """Many runs in few files: one per system and UTC date of their start, named after the first
        and last run (backfill lands hundreds of snapshots a second, each a run). One run is written
        as :meth:`write_run` does."""
        records = [run if isinstance(run, RunRecord) else RunRecord.from_mapping(run) for run in runs]
        groups = group_by(records, lambda r: (r.system_id, layout.utc_date_hour(r.started_at)[0]))
        keys = []
        for group in groups.values():
            first, last = group[0], group[-1]
            run_id = first.run_id if len(group) == 1 else f"{first.run_id}--{last.run_id}"
            key = layout.run_key(run_id, first.system_id, first.started_at)
            keys.append(self.storage.put(key, parquet_bytes(build_table("pipeline_runs", group))))
        return keys

    # -- reading -----------------------------------------------------------------------------

    def files(self, name: str, system: str | None = None) -> list[str]:
        """Keys of a table's Parquet files (``station_status``, ``station_information``,
        ``quarantine``, ``pipeline_runs``), optionally of one system only."""
        table = layout.table_layout(name)
        prefix = table.prefix
        if system is not None and "system" in table.partition_keys:
            prefix = f"{prefix}/system={layout.check_system_id(system)}"
        return [key for key in self.storage.list(prefix) if key.endswith(".parquet")]

    def read_table(self, name: str, system: str | None = None) -> pa.Table:
        """A whole table as Arrow, with the partition columns (``system``, ``date``, ``hour``)."""
        table = layout.table_layout(name)
        partitions = pa.schema([pa.field(key, PARTITION_TYPES[key]) for key in table.partition_keys])
        schema = pa.unify_schemas([SCHEMAS[name], partitions])
        keys = self.files(name, system)
        if not keys:
            return schema.empty_table()
        dataset = ds.dataset(
            [self.storage.path(key) for key in keys],
            filesystem=self.filesystem,
            format="parquet",
            schema=schema,
            partitioning=ds.partitioning(partitions, flavor="hive"),
            partition_base_dir=self.storage.path(table.prefix),
        )
        try:
            result = dataset.to_table()
        except OSError as exc:
            raise self.storage.error(exc, f"cannot read table {name}") from None
        if system is not None and "system" not in table.partition_keys:
            result = result.filter(pc.equal(result["system_id"], system))
        return result

    def read_runs(self, system: str | None = None) -> list[RunRecord]:
        return runs_from_table(self.read_table("pipeline_runs", system))

    def read_raw(self, system_id: str, feed: str, last_updated: int) -> bytes | None:
        """The archived feed bytes (decompressed), or None when that snapshot was not archived.

        Archives written before the switch to zstd (``.json.gz``) are read too."""
        data = self.storage.get(layout.raw_key(system_id, feed, last_updated))
        if data is not None:
            return decompress_raw(data)
        legacy = self.storage.get(layout.legacy_raw_key(system_id, feed, last_updated))
        return None if legacy is None else gzip.decompress(legacy)

    def parquet_glob(self, name: str) -> str:
        """The glob of a table's files, e.g. ``s3://bucket/lake/curated/station_status/**/*.parquet``."""
        return self.storage.uri(f"{layout.table_layout(name).prefix}/**/*.parquet")

    def duckdb_source(self, name: str) -> str:
        """``read_parquet(...)`` for DuckDB's FROM clause, with typed Hive partition columns."""
        table = layout.table_layout(name)
        types = ", ".join(f"'{key}': '{DUCKDB_PARTITION_TYPES[key]}'" for key in table.partition_keys)
        glob = self.parquet_glob(name).replace("'", "''")
        return f"read_parquet('{glob}', hive_partitioning = true, hive_types = {{{types}}})"

    # -- the pipeline's own state -------------------------------------------------------------

    def read_state(self, key: str) -> bytes | None:
        """The bytes last stored under ``_state/<key>``, or None."""
        return self.storage.get(layout.state_key(key))

    def delete_state(self, key: str) -> None:
        """Remove ``_state/<key>`` and everything below it (used for a finished run's staging area)."""
        self.storage.delete_tree(layout.state_key(key))

    def write_state(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``_state/<key>``, replacing the previous value atomically."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LakeError(f"state {key!r} must be bytes, not {type(data).__name__}; encode it first (e.g. JSON)")
        self.storage.put(layout.state_key(key), bytes(data))
