"""Explicit Arrow schemas of the lake's tables, and model structs to Parquet bytes and back.

Each table has one fixed schema, so every file of it has the same columns and types and DuckDB,
Athena or Glue read the folder as one table: every time is ``timestamp[ms, UTC]`` (Parquet has no
seconds unit, so declaring ``s`` would still store, and show other readers, milliseconds), counts
nullable ``int32``, ``extras`` a JSON text column,
``vehicle_types_available`` ``list<struct<vehicle_type_id, count>>``, and every row carries
``schema_version``. Text, times and floats are zstd-compressed (files of a few rows, such as a
run's record, and the columns with one value per snapshot are left uncompressed: see
:data:`SMALL_TABLE_ROWS` and :data:`UNCOMPRESSED_COLUMNS`); whole numbers are delta-encoded and
flags bit-packed, uncompressed (:func:`_column_codecs`); the other columns are dictionary-encoded
but those whose values are unique per row (:data:`PLAIN_COLUMNS`); rows are sorted by ``station_id``
so the same snapshot always gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from citibikes.gbfs.model import (
    SCHEMA_VERSION,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
    StationStatusColumns,
    extras_text,
)
from citibikes.lake.errors import LakeError
from citibikes.lake.layout import check_system_id

T = TypeVar("T")

TIMESTAMP_UTC = pa.timestamp("ms", tz="UTC")
VEHICLE_TYPE_COUNT = pa.struct([pa.field("vehicle_type_id", pa.string()), pa.field("count", pa.int32())])

ROW_GROUP_ROWS = 128 * 1024
"""A snapshot (a few thousand stations) is one row group; compacted day files get ~1 MB groups."""
ZSTD_LEVEL = 1
"""Level 1 is both faster and smaller than 3 on these tables (Citi Bike status: 1.6 ms and 56.8 KB
per snapshot file at 1, 1.9 ms and 59.4 KB at 3; the small pages leave level 3 little to gain)."""
PLAIN_COLUMNS = frozenset({"station_id", "extras", "raw", "name", "short_name", "address", "run_id", "error"})
"""Columns whose values are (nearly) all different within a file: a dictionary only adds a page
(a Citi Bike status snapshot: 31.1 bytes per row with a dictionary for every column, 28.1 without
one for station_id and extras, both at zstd level 3)."""
UNCOMPRESSED_COLUMNS = frozenset({"system_id", "feed", "last_updated", "fetched_at", "schema_version"})
"""Columns with one value in a snapshot's file: a dictionary of one entry and a run, a few bytes that
zstd cannot shrink (it adds its frame) but that cost a compression call each (a Citi Bike status
snapshot: 1.59 ms and 56,905 bytes with every column compressed, 1.47 ms and 56,863 bytes without
these)."""
SMALL_TABLE_ROWS = 16
"""Tables of at most this many rows are written uncompressed: a zstd frame per column chunk costs
more than it saves there (a one-row run record: 0.9 ms and 5.4 KB with zstd, 0.3 ms and 5.0 KB
without). Readers see no difference; the codec is recorded per column chunk."""


def required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


STATION_STATUS_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("station_id", pa.string()),
    required("num_bikes_available", pa.int32()),
    optional("num_ebikes_available", pa.int32()),
    optional("num_bikes_disabled", pa.int32()),
    optional("num_docks_available", pa.int32()),
    optional("num_docks_disabled", pa.int32()),
    required("is_installed", pa.bool_()),
    required("is_renting", pa.bool_()),
    required("is_returning", pa.bool_()),
    optional("last_reported", TIMESTAMP_UTC),
    optional("vehicle_types_available", pa.list_(VEHICLE_TYPE_COUNT)),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    required("extras", pa.string()),
    required("schema_version", pa.int32()),
])

STATION_INFORMATION_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("station_id", pa.string()),
    required("name", pa.string()),
    required("lat", pa.float64()),
    required("lon", pa.float64()),
    optional("short_name", pa.string()),
    optional("capacity", pa.int32()),
    optional("region_id", pa.string()),
    optional("address", pa.string()),
    optional("is_virtual_station", pa.bool_()),
    optional("rental_methods", pa.list_(pa.string())),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    required("extras", pa.string()),
    required("schema_version", pa.int32()),
])

QUARANTINE_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("feed", pa.string()),
    optional("station_id", pa.string()),
    required("reasons", pa.list_(pa.string())),
    required("raw", pa.string()),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    required("schema_version", pa.int32()),
])

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

SCHEMAS: dict[str, pa.Schema] = {
    "station_status": STATION_STATUS_SCHEMA,
    "station_information": STATION_INFORMATION_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "pipeline_runs": PIPELINE_RUNS_SCHEMA,
}

OUTCOMES = ("success", "no_new_data", "stale", "failed", "skipped")


@dataclass
class RunRecord:
    """One pipeline run for one system, as the ``pipeline_runs`` table stores it.

    Times are POSIX seconds; stage durations are seconds (None when the stage did not run).
    """

    run_id: str
    system_id: str
    started_at: float
    outcome: str
    """One of ``success``, ``no_new_data``, ``stale`` (station_status stopped advancing or arrived too old), ``failed``, ``skipped``."""
    finished_at: float | None = None
    stations_information: int | None = None
    stations_status: int | None = None
    stations_valid: int | None = None
    stations_quarantined: int | None = None
    stations_published: int | None = None
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
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

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunRecord:
        """A RunRecord from a dict with the same keys (``duration_s`` is derived, so ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known - {"duration_s"}
        if unknown:
            raise LakeError(f"pipeline run has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})


def as_milliseconds(values: Sequence[float | None]) -> pa.Array:
    """POSIX seconds (int or float) as whole milliseconds (int64), rounded half to even like
    Python's ``round``; finer fractions are rounded away."""
    if len(values) <= FEW_VALUES:  # (a quarantine file's times): Python does the same without 4 Arrow calls
        try:
            return pa.array([None if value is None else round(float(value) * 1000.0) for value in values],
                            type=pa.int64())
        except (TypeError, ValueError, OverflowError):  # not a finite number: the Arrow path says why
            pass
    seconds = pa.array(values, type=pa.float64())
    return pc.round(pc.multiply(seconds, 1000.0), round_mode="half_to_even").cast(pa.int64())


FEW_VALUES = 64
"""Up to this many times, :func:`as_milliseconds` converts them in Python (fewer calls than Arrow's four)."""


def as_json_text(values: Sequence[Any]) -> list[bytes]:
    """JSON with sorted keys (stable text), as UTF-8 bytes: Arrow takes them for a string column."""
    return list(map(extras_text, values))


def as_vehicle_type_rows(values: Sequence[Any]) -> list[list[dict[str, Any]] | None]:
    return msgspec.to_builtins(values)  # structs -> dicts in C


COLUMN_CONVERTERS: dict[str, Callable[[Sequence[Any]], Sequence[Any]]] = {
    "extras": as_json_text,
    "vehicle_types_available": as_vehicle_type_rows,
}
"""Columns whose Python values need converting first; times (POSIX seconds) are converted by
:func:`column_array` for every timestamp column; all other columns are taken as they are."""
SNAPSHOT_COLUMN_CONVERTERS = {name: convert for name, convert in COLUMN_CONVERTERS.items() if name != "extras"}
"""The same for a snapshot in columns (:class:`StationStatusColumns`): it holds ``extras`` as JSON text already."""


def record_columns(records: Sequence[Any], names: Sequence[str]) -> dict[str, Sequence[Any]]:
    """The records' values column by column. A list of structs of one type is transposed in C
    (``astuple`` per record, then ``zip``); anything else (dataclasses, mixed types) field by field."""
    kind = type(records[0]) if records else None
    if (kind is not None and issubclass(kind, msgspec.Struct) and set(names) <= set(kind.__struct_fields__)
            and set(map(type, records)) == {kind}):
        columns = dict(zip(kind.__struct_fields__, zip(*map(msgspec.structs.astuple, records))))
        return {name: columns[name] for name in names}
    return {name: [getattr(record, name) for record in records] for name in names}


@dataclass(frozen=True)
class Repeated:
    """A column with one value in every row (made as one Arrow value, repeated)."""

    value: Any
    rows: int


def snapshot_columns(snapshot: StationStatusColumns) -> dict[str, Sequence[Any] | Repeated]:
    """The station_status table's columns of a snapshot kept as columns (the per-snapshot values repeated)."""
    n = len(snapshot)
    return {"system_id": Repeated(snapshot.system_id, n), **snapshot.columns(),
            "last_updated": Repeated(snapshot.last_updated, n), "fetched_at": Repeated(snapshot.fetched_at, n)}


def build_table(table: str, records: Sequence[Any] | StationStatusColumns) -> pa.Table:
    """An Arrow table with the table's fixed schema, of ``records`` (structs or dataclasses) or of a
    station_status snapshot already in columns (:class:`StationStatusColumns`)."""
    schema = SCHEMAS[table]
    names = [name for name in schema.names if name != "schema_version"]
    columnar = isinstance(records, StationStatusColumns)
    columns = snapshot_columns(records) if columnar else record_columns(records, names)
    converters = SNAPSHOT_COLUMN_CONVERTERS if columnar else COLUMN_CONVERTERS
    arrays = []
    for column in schema:
        values: Any = Repeated(SCHEMA_VERSION, len(records)) if column.name == "schema_version" else columns[column.name]
        if isinstance(values, Repeated):
            arrays.append(pa.repeat(column_array(table, column, [values.value])[0], values.rows))
            continue
        if column.name in converters:
            values = converters[column.name](values)
        arrays.append(column_array(table, column, values))
    result = pa.Table.from_arrays(arrays, schema=schema)
    if "station_id" not in schema.names:
        return result
    return result.take(_station_order(table, columns["station_id"], result))  # type: ignore[arg-type]


_last_orders: dict[str, tuple[list[str], pa.Array]] = {}


def _station_order(table_name: str, station_ids: Sequence[str], table: pa.Table) -> pa.Array:
    """The rows' order by ``station_id``; kept per table for its next call, since a feed lists its
    stations in the same order each time (comparing the ids costs a third of sorting them again).
    Per table: a snapshot's quarantine file, built between two status files, must not evict the
    status order (it did, and every status file was sorted again)."""
    ids = station_ids if type(station_ids) is list else list(station_ids)
    last = _last_orders.get(table_name)
    if last is not None and last[0] == ids:
        return last[1]
    order = pc.sort_indices(table, sort_keys=[("station_id", "ascending")])
    _last_orders[table_name] = (ids.copy(), order)
    return order


def column_array(table: str, column: pa.Field, values: Sequence[Any]) -> pa.Array:
    """The column's values as an Arrow array of its type (timestamps from POSIX seconds); a value
    that does not fit, or a missing required value, is a one-line LakeError."""
    try:
        if pa.types.is_timestamp(column.type):
            array = as_milliseconds(values).cast(column.type)
        else:
            array = pa.array(values, type=column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise LakeError(
            f"{table}.{column.name} cannot be stored as {column.type}: {str(exc).splitlines()[0]}; "
            "fix the records before writing them"
        ) from None
    if not column.nullable and array.null_count:
        raise LakeError(f"{table}.{column.name} is missing in {array.null_count} record(s); it is required, fill it in")
    return array


def station_status_table(records: Sequence[StationStatus] | StationStatusColumns) -> pa.Table:
    return build_table("station_status", records)


def station_information_table(records: Sequence[StationInformation]) -> pa.Table:
    return build_table("station_information", records)


def quarantine_table(records: Sequence[QuarantinedRecord]) -> pa.Table:
    return build_table("quarantine", records)


def pipeline_runs_table(runs: Sequence[RunRecord]) -> pa.Table:
    return build_table("pipeline_runs", runs)


def parquet_leaves(field: pa.Field) -> list[tuple[str, pa.DataType]]:
    """The Parquet column paths of a field (``vehicle_types_available.list.element.count``...), each
    with its leaf's Arrow type."""
    kind = field.type
    if pa.types.is_map(kind):
        return [(f"{field.name}.key_value.key", kind.key_type), (f"{field.name}.key_value.value", kind.item_type)]
    if pa.types.is_list(kind):
        return [(f"{field.name}.list.{path}", leaf) for path, leaf in parquet_leaves(pa.field("element", kind.value_type))]
    if pa.types.is_struct(kind):
        return [(f"{field.name}.{path}", leaf) for child in kind for path, leaf in parquet_leaves(child)]
    return [(field.name, kind)]


def _unpacked(field: pa.Field, kind: pa.DataType) -> bool:
    """Whole numbers and flags (but the one-value columns): delta-encoded or bit-packed, they are a
    few bits per value that zstd hardly shrinks, at a compression call per column (a Citi Bike status
    snapshot: 1.44 ms and 54.3 KB with dictionaries and zstd for them, 1.05 ms and 56.4 KB without)."""
    return field.name not in UNCOMPRESSED_COLUMNS and (pa.types.is_integer(kind) or pa.types.is_boolean(kind))


@functools.lru_cache(maxsize=16)
def dictionary_columns(schema: pa.Schema) -> list[str]:
    return [path for field in schema if field.name not in PLAIN_COLUMNS
            for path, kind in parquet_leaves(field) if not _unpacked(field, kind)]


@functools.lru_cache(maxsize=16)
def _column_codecs(schema: pa.Schema) -> dict[str, str]:
    return {path: "none" if field.name in UNCOMPRESSED_COLUMNS or _unpacked(field, kind) else "zstd"
            for field in schema for path, kind in parquet_leaves(field)}


@functools.lru_cache(maxsize=16)
def _column_encodings(schema: pa.Schema) -> dict[str, str]:
    """Integers: DELTA_BINARY_PACKED; booleans keep Parquet's plain encoding (bit-packed)."""
    return {path: "DELTA_BINARY_PACKED" for field in schema for path, kind in parquet_leaves(field)
            if _unpacked(field, kind) and pa.types.is_integer(kind)}


@functools.lru_cache(maxsize=16)
def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [path for field in schema for path, _ in parquet_leaves(field)
            if pa.types.is_timestamp(field.type) or path.endswith("_id")]


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as one Parquet file: zstd (unless tiny; see the module doc for which columns), dictionary
    encoding, statistics of the ids and times (what queries select a file's rows by: min/max of counts
    or flags over a snapshot of thousands of stations rule nothing out), fixed row groups."""
    compression: dict[str, Any] = {"compression": "none"}
    if table.num_rows > SMALL_TABLE_ROWS:
        codecs = _column_codecs(table.schema)
        compression = {"compression": codecs,
                       "compression_level": {path: ZSTD_LEVEL for path, codec in codecs.items() if codec == "zstd"}}
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        **compression,
        use_dictionary=dictionary_columns(table.schema),
        column_encoding=_column_encodings(table.schema),
        row_group_size=ROW_GROUP_ROWS,
        write_statistics=_statistics_columns(table.schema),
        store_schema=False,  # the explicit schemas above are what readers use (see read_table)
    )
    return sink.getvalue().to_pybytes()


def read_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


WHOLE_SECOND_COLUMNS = frozenset({"last_updated", "last_reported"})
"""Times the model keeps as int seconds; the other times are float seconds."""


def table_rows(table: pa.Table, names: Iterable[str]) -> list[dict[str, Any]]:
    """Rows as dicts with times back as POSIX seconds, as the model and RunRecord hold them."""
    columns: dict[str, list[Any]] = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            millis = column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist()
            whole = name in WHOLE_SECOND_COLUMNS
            columns[name] = [None if n is None else (n // 1000 if whole else n / 1000) for n in millis]
        elif name == "extras":
            columns[name] = [msgspec.json.decode(text) for text in column.to_pylist()]
        elif name == "quarantine_reasons":
            columns[name] = [dict(pairs or []) for pairs in column.to_pylist()]
        else:
            columns[name] = column.to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def records_from_table(table: pa.Table, struct_type: type[T]) -> list[T]:
    """Model structs (StationStatus, StationInformation, QuarantinedRecord) read back from a table."""
    names = [f for f in struct_type.__struct_fields__ if f in table.column_names]
    return msgspec.convert(table_rows(table, names), list[struct_type])


def runs_from_table(table: pa.Table) -> list[RunRecord]:
    names = [f.name for f in dataclasses.fields(RunRecord)]
    return [RunRecord(**row) for row in table_rows(table, names)]
