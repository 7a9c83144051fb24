"""The lake's tables: fixed Arrow schemas, and tables as Parquet bytes.

Each table has one fixed schema, so every file of it has the same columns and types and DuckDB,
Athena or Glue read the folder as one table. station_status and station_information arrive as
tables already (:mod:`citibikes.gbfs.model`); the quarantine and the run records are made from
their structs here. Every time is ``timestamp[ms, UTC]`` and every row carries ``schema_version``.

Parquet encoding (:func:`parquet_bytes`): only what every engine users point at the lake decodes:
PLAIN, dictionaries (RLE_DICTIONARY), RLE/bit-packed levels, zstd, data pages v1. No DELTA_* or
BYTE_STREAM_SPLIT encodings: Spark's vectorized reader before 3.3 fails with ``Unsupported
encoding: DELTA_BINARY_PACKED``, and Presto's native reader and StarRocks reject them too. A dictionary for every column whose values repeat (counts,
times, codes; the indices are RLE/bit-packed, so a station's unchanged count costs a run), none for
the (nearly) unique ones (ids, names, extras); flags PLAIN, which bit-packs them. Every column
zstd-compressed at level 1 (level 3 is no smaller here, 6 saves 0-10% for 40-100% more time): in a
backfill's hour file a station's unchanged counts, flags and snapshot times compress to almost
nothing. Tiny files (a run's record) uncompressed; statistics for ids and times, what queries
select rows by. Spark reads zstd from 3.2 on (its Parquet library brings the codec; stock Spark
3.1 and older need Hadoop's native library built with zstd: ``native zStandard library not
available``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from citibikes.gbfs.model import (
    SCHEMA_VERSION,
    SCHEMAS,
    TIMESTAMP_UTC,
    QuarantinedRecord,
    optional,
    required,
)
from citibikes.lake.errors import LakeError
from citibikes.lake.layout import DAY_COLUMN, check_system_id

ROW_GROUP_ROWS = 256 * 1024
"""A snapshot (a few thousand stations) is one row group, and so is an hour of Citi Bike minutes
(about 132,000 rows; at 128 Ki rows its last few hundred made a second group, 1% larger files)."""
ZSTD_LEVEL = 1
PLAIN_COLUMNS = frozenset({"station_id", "extras", "raw", "name", "short_name", "address", "run_id", "error",
                           "last_reported"})
"""Columns whose values are (nearly) all different within a file, or repeat only in runs that zstd takes
whole in a file sorted by station (``last_reported``: a compacted day is 1.66 bytes per observation
without its dictionary, 2.30 with it; a minute's file 2% larger): a dictionary only adds a page."""
SMALL_TABLE_ROWS = 16
"""Tables of at most this many rows are written uncompressed: a zstd frame per column costs more than it saves."""
READABLE_EVERYWHERE: dict[str, Any] = {"data_page_version": "1.0", "use_byte_stream_split": False,
                                       "column_encoding": None}
"""Spelled out rather than left to pyarrow's defaults: data pages v1 and no BYTE_STREAM_SPLIT or DELTA_*
encodings, which older readers (Spark before 3.3, Presto, StarRocks) do not decode."""

QUARANTINE_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("feed", pa.string()),
    optional("station_id", pa.string()),
    required("reasons", pa.list_(pa.string())),
    required("raw", pa.string()),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    optional("num_bikes_available", pa.int32()),
    optional("num_bikes_disabled", pa.int32()),
    optional("num_docks_available", pa.int32()),
    optional("is_renting", pa.bool_()),
    optional("is_returning", pa.bool_()),
    required("schema_version", pa.int32()),
])
"""Quarantined records, whole (``raw``) with their reasons; a station_status record also with the counts and
flags that could be read (files written before they were added lack these columns: readers take them by name)."""

PIPELINE_RUNS_SCHEMA = pa.schema([
    required("run_id", pa.string()),
    required("system_id", pa.string()),
    required("started_at", TIMESTAMP_UTC),
    optional("finished_at", TIMESTAMP_UTC),
    optional("duration_s", pa.float64()),
    required("outcome", pa.string()),
    optional("stations_information", pa.int32()),
    optional("stations_status", pa.int32()),
    optional("stations_valid", pa.int32()),
    optional("stations_quarantined", pa.int32()),
    optional("stations_published", pa.int32()),
    required("quarantine_reasons", pa.map_(pa.string(), pa.int32())),
    optional("fetch_s", pa.float64()),
    optional("validate_s", pa.float64()),
    optional("produce_s", pa.float64()),
    optional("write_s", pa.float64()),
    optional("error", pa.string()),
    required("schema_version", pa.int32()),
])

HELPER = pa.struct([
    required("station_id", pa.string()),
    optional("name", pa.string()),
    required("distance_m", pa.int32()),
    required("available", pa.int32()),
])
"""A station that could help an outage (:class:`citibikes.live.rebalance.Helper`)."""

REBALANCING_SCHEMA = pa.schema([
    required("run_id", pa.string()),
    required("system_id", pa.string()),
    required("station_id", pa.string()),
    optional("name", pa.string()),
    required("kind", pa.string()),
    required("started", TIMESTAMP_UTC),
    required("as_of", TIMESTAMP_UTC),
    required("duration_s", pa.int64()),
    required("threshold_s", pa.int32()),
    optional("lat", pa.float64()),
    optional("lon", pa.float64()),
    required("helpers", pa.list_(pa.field("element", HELPER, nullable=False))),
    required("schema_version", pa.int32()),
])
"""One row per long outage of a rebalancing to-do list (:class:`citibikes.live.rebalance.Outage`)."""

CHECKS_SCHEMA = pa.schema([
    required("run_id", pa.string()),
    required("check_name", pa.string()),
    optional("system_id", pa.string()),
    required("metric", pa.string()),
    optional("observed", pa.float64()),
    optional("threshold", pa.float64()),
    required("passed", pa.bool_()),
    required("as_of", TIMESTAMP_UTC),
    required("checked_at", TIMESTAMP_UTC),
    required("schema_version", pa.int32()),
])
"""One row per check (and system, for the checks made per system) of a run of the data-quality checks
(:class:`citibikes.checks.Result`); ``as_of`` is the end of the window the checks read. A check that could
not run has one row, ``metric`` ``not_run``, without observed value or threshold."""

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    **SCHEMAS,
    "quarantine": QUARANTINE_SCHEMA,
    "pipeline_runs": PIPELINE_RUNS_SCHEMA,
    "rebalancing": REBALANCING_SCHEMA,
    "checks": CHECKS_SCHEMA,
}

OUTCOMES = ("success", "no_new_data", "stale", "failed", "skipped")


class RunRecord(msgspec.Struct, kw_only=True):
    """One pipeline run for one system, as the ``pipeline_runs`` table stores it.

    Times are POSIX seconds; the durations of the step's parts are seconds (None when a part did not run).
    """

    run_id: str
    system_id: str
    started_at: float
    outcome: str
    """``success``, ``no_new_data``, ``stale`` (station_status stopped advancing or arrived too old), ``failed``, ``skipped``."""
    finished_at: float | None = None
    stations_information: int | None = None
    stations_status: int | None = None
    stations_valid: int | None = None
    stations_quarantined: int | None = None
    stations_published: int | None = None
    quarantine_reasons: dict[str, int] = {}
    """How many records each reason quarantined, e.g. ``{"capacity_exceeded": 3}``."""
    fetch_s: float | None = None
    validate_s: float | None = None
    produce_s: float | None = None
    write_s: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        check_system_id(self.system_id)
        if self.outcome not in OUTCOMES:
            raise LakeError(f"run outcome {self.outcome!r} is unknown; use one of {', '.join(OUTCOMES)}")

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


def runs_table(runs: Sequence[RunRecord]) -> pa.Table:
    return _records_table("pipeline_runs", [{**msgspec.to_builtins(run), "duration_s": run.duration_s,
                                              "quarantine_reasons": list(run.quarantine_reasons.items())}
                                             for run in runs])


def quarantine_table(records: Sequence[QuarantinedRecord]) -> pa.Table:
    return _records_table("quarantine", msgspec.to_builtins(records))


def rebalancing_table(run_id: str, outages: Sequence[Any]) -> pa.Table:
    """The to-do list a run made (:class:`~citibikes.live.rebalance.Outage` structs or their dicts)."""
    return _records_table("rebalancing", [{**row, "run_id": run_id} for row in msgspec.to_builtins(outages)])


def checks_table(run_id: str, checked_at: float, results: Sequence[Any]) -> pa.Table:
    """A run's check results (:class:`~citibikes.checks.Result` structs or their dicts)."""
    return _records_table("checks", [{**row, "run_id": run_id, "checked_at": checked_at}
                                     for row in msgspec.to_builtins(results)])


def _records_table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts, times in POSIX seconds) as a table of ``name``'s schema; a value that does not fit
    is a one-line LakeError."""
    schema = TABLE_SCHEMAS[name]
    arrays = []
    for field in schema:
        values = [SCHEMA_VERSION] * len(rows) if field.name == "schema_version" else [row[field.name] for row in rows]
        try:
            if pa.types.is_timestamp(field.type):
                values = [None if value is None else round(value * 1000) for value in values]
                array = pa.array(values, pa.int64()).cast(field.type)
            else:
                array = pa.array(values, field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise LakeError(f"{name}.{field.name} cannot be stored as {field.type}: {str(exc).splitlines()[0]}; "
                            "fix the records before writing them") from None
        if not field.nullable and array.null_count:
            raise LakeError(f"{name}.{field.name} is missing in {array.null_count} record(s); it is required, fill it in")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def by_station(table: pa.Table) -> pa.Table:
    """The rows of consecutive snapshots grouped by station (stations in the order the feed first
    lists them), each station's rows in time order: a station's history stays together, which is
    what queries read and what compresses best (2.6 bytes per observation against 7.0 for snapshot
    after snapshot, on Citi Bike minutes; a stable sort of positions, not of the ids' text)."""
    ids = table["station_id"]
    return table.take(pc.sort_indices(pc.index_in(ids, pc.unique(ids))))


def parquet_leaves(field: pa.Field) -> list[tuple[str, pa.DataType]]:
    """The Parquet column paths of a field (``vehicle_types_available.list.element.count``...) with their Arrow types."""
    kind = field.type
    if pa.types.is_map(kind):
        return [(f"{field.name}.key_value.key", kind.key_type), (f"{field.name}.key_value.value", kind.item_type)]
    if pa.types.is_list(kind):
        return [(f"{field.name}.list.{path}", leaf) for path, leaf in parquet_leaves(pa.field("element", kind.value_type))]
    if pa.types.is_struct(kind):
        return [(f"{field.name}.{path}", leaf) for child in kind for path, leaf in parquet_leaves(child)]
    return [(field.name, kind)]


def _write_options(schema: pa.Schema) -> dict[str, Any]:
    """The per-column options of :func:`parquet_bytes` for a schema (see the module doc)."""
    leaves = [(field, path, kind) for field in schema for path, kind in parquet_leaves(field)]
    return {
        "use_dictionary": [path for field, path, kind in leaves
                           if field.name not in PLAIN_COLUMNS and not pa.types.is_boolean(kind)],
        "write_statistics": [path for field, path, _ in leaves
                             if pa.types.is_timestamp(field.type) or path.endswith("_id")],
    }


def day_schema(name: str) -> pa.Schema:
    """The schema of a compacted day's file of table ``name``: the table's, then ``hour`` (the UTC hour
    of ``last_updated``, the partition key it replaces: :data:`citibikes.lake.layout.DAY_COLUMN`)."""
    return TABLE_SCHEMAS[name].append(pa.field(DAY_COLUMN, pa.int32(), nullable=False))


_OPTIONS = {schema: _write_options(schema) for schema in
            [*TABLE_SCHEMAS.values(), *(day_schema(name) for name in ("station_status", "station_information", "quarantine"))]}
"""The options of the lake's own tables, worked out once."""


def parquet_bytes(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """The table as one Parquet file (see the module doc for the encoding), with ``metadata`` as the
    file's key-value metadata (what a compacted file says about itself)."""
    options = _OPTIONS.get(table.schema) or _write_options(table.schema)
    compression: dict[str, Any] = {"compression": "none"}
    if table.num_rows > SMALL_TABLE_ROWS:
        compression = {"compression": "zstd", "compression_level": ZSTD_LEVEL}
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **compression, use_dictionary=options["use_dictionary"],
                          write_statistics=options["write_statistics"], store_schema=False,
                          **READABLE_EVERYWHERE) as writer:
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        if metadata:
            writer.add_key_value_metadata(metadata)
    return sink.getvalue().to_pybytes()


def seconds(column: pa.ChunkedArray | pa.Array, *, whole: bool) -> list[Any]:
    """A timestamp column as POSIX seconds (int when ``whole``, else float), None for nulls."""
    millis = column.cast(pa.int64()).to_pylist()
    if whole:
        return [None if n is None else n // 1000 for n in millis]
    return [None if n is None else n / 1000 for n in millis]


def runs_from_table(table: pa.Table) -> list[RunRecord]:
    columns = {}
    for name in RunRecord.__struct_fields__:
        column = table[name]
        if pa.types.is_timestamp(column.type):
            columns[name] = seconds(column, whole=False)
        elif name == "quarantine_reasons":
            columns[name] = [dict(pairs or []) for pairs in column.to_pylist()]
        else:
            columns[name] = column.to_pylist()
    return [RunRecord(**dict(zip(columns, values))) for values in zip(*columns.values())]
