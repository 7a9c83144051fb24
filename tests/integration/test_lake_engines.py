"""The lake's own files read by other engines: Spark 3.2, polars and DuckDB see the rows, types and
values pyarrow (the pipeline's reader) sees, and no file uses an encoding older readers reject.

The lake is made by the pipeline's own code paths (and a copy of it compacted: a day's file): a backfill of a recorded archive (station_status
hour files grouped by station, station_information versions, quarantine, run records), a minute
step of the recorded Citi Bike feed landed the way the minute DAG's write task lands it (a
station_status file per snapshot in the feed's order, the descriptions, the quarantine, the run),
a rebalancing to-do list planned from a live state store the way the alerts DAG plans it and the
results of the data-quality checks run on the lake's catalog.

Spark 3.2 (pyspark in local mode, one session for the module) is the strictest reader at hand: its
vectorized Parquet reader, which Spark uses whenever the selected columns are all flat, decodes
PLAIN, dictionaries and RLE only (``Unsupported encoding: DELTA_BINARY_PACKED``: the issue's
failure); nested columns go through parquet-mr's row reader. Both are read and compared.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from bench.archive import write_archive
from citibikes import compaction
from citibikes.catalog import connect, refresh_catalog
from citibikes.checks import CheckParams, build_checks, run_on_duckdb
from citibikes.config import QualityConfig, load_settings
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.ingest import Fetched, check_fetched, run_record, select, step_files
from citibikes.lake import Lake, layout, open_lake
from citibikes.lake.layout import TABLES
from citibikes.lake.store import PARTITION_TYPES
from citibikes.lake.tables import TABLE_SCHEMAS, day_schema
from citibikes.rebalancing import plan
from citibikes.replay.backfill import backfill
from citibikes.replay.recordings import recorded
from citibikes.state import SystemState
from support.outages import build_store

READABLE_ENCODINGS = {"PLAIN", "PLAIN_DICTIONARY", "RLE", "RLE_DICTIONARY"}
"""What every reader decodes: Spark's vectorized reader before 3.3 knows these only."""
READABLE_CODECS = {"ZSTD", "UNCOMPRESSED"}
JAVA_17_OPENS = " ".join(f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
    "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "sun.nio.ch", "sun.nio.cs", "sun.security.action",
    "sun.util.calendar"))
"""What Spark 3.3+ passes to Java 17 itself (JavaModuleOptions); Spark 3.2 needs them given."""


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("engines")
    lake = open_lake(str(root / "lake"))
    _minute_step(lake)
    archive = root / "archive" / "citibike"
    write_archive(archive, 8, seed=5, information_changes=1)
    settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_STATE_DIR": str(root / "state")})
    report = backfill(archive, "citibike", settings=settings, lake=lake, workers=1)
    assert report.processed == 8 and not report.failed, report.errors
    build_store(root / "live.db").close()
    live = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LIVE_STORE": str(root / "live.db")})
    assert plan(live, lake, "asset_triggered__2027-01-15T08:50:00+00:00", 1_800_003_000)["files"]
    _checks(lake, settings)
    return lake


def _checks(lake: Lake, settings) -> None:  # noqa: ANN001 - Settings
    """The data-quality checks' results for the lake's last day, landed the way the checks DAG lands them
    (some fail and some values are missing: the lake is old and one system has no data)."""
    refresh_catalog(lake, settings.catalog_path)
    newest = lake.read_table(STATION_STATUS)["last_updated"].to_pylist()
    params = CheckParams.from_settings(settings, max(newest), systems=("citibike", "synth-01"))
    con = connect(settings.catalog_path)
    try:
        results, _ = run_on_duckdb(con, build_checks(params), params.as_of)
    finally:
        con.close()
    assert {r.passed for r in results} == {True, False} and any(r.observed is None for r in results)
    lake.write_checks("asset_triggered__2027-01-15T08:51:00+00:00", 1_800_003_060, 1_800_003_065, results)


def _minute_step(lake: Lake) -> None:
    """The first recorded Citi Bike snapshot, landed as the minute DAG's write task lands a step; some
    stations given vehicle type counts (the recording has none) and some counts left out (nulls)."""
    status = json.loads(recorded(STATION_STATUS)[0].read_bytes())
    for i, station in enumerate(status["data"]["stations"]):
        ebikes = station.get("num_ebikes_available", 0)
        if i % 5 == 0:
            station["vehicle_types_available"] = [
                {"vehicle_type_id": "classic", "count": station["num_bikes_available"] - ebikes},
                {"vehicle_type_id": "ebike", "count": ebikes}]
        elif i % 7 == 0:
            station.pop("num_ebikes_available", None)
    bodies = {STATION_STATUS: json.dumps(status).encode(),
              STATION_INFORMATION: recorded(STATION_INFORMATION)[0].read_bytes()}
    last_updated = {feed: json.loads(body)["last_updated"] for feed, body in bodies.items()}
    fetched = Fetched(system_id="citibike", fetched_at=max(last_updated.values()) + 5.0,
                      outcomes=dict.fromkeys(bodies, "new"), last_updated=last_updated, bodies=bodies)
    started = time.time()
    step = select(SystemState(), check_fetched(fetched, SystemState(), QualityConfig()), system_id="citibike",
                  snapshot_every_s=900)
    lake.write_files(step_files(step, lake))
    lake.write_runs([run_record("scheduled__minute", "citibike", started, "success", step=step, published=0,
                                durations={"fetch": 0.5, "validate": 0.25})])


@pytest.fixture(scope="module")
def spark() -> Iterable[SparkSession]:
    session = (SparkSession.builder.master("local[1]").appName("citibikes-lake-engines")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.extraJavaOptions", JAVA_17_OPENS).getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# -- what every engine should see ----------------------------------------------------------------------------


def _root(lake: Lake, name: str) -> str:
    return str(Path(lake.uri) / TABLES[name].prefix)


def _columns(name: str) -> list[pa.Field]:
    """A table's columns as users query them: the file's, then the Hive partition columns."""
    return [*TABLE_SCHEMAS[name], *(pa.field(key, PARTITION_TYPES[key]) for key in TABLES[name].partition_keys)]


def _canonical(value: Any, kind: pa.DataType) -> Any:
    """One engine's Python value in one form: timestamps as epoch milliseconds (engines select them
    so), structs and lists as tuples, maps as sorted pairs (a dict in Spark and DuckDB, pairs in pyarrow)."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        pairs = value.items() if isinstance(value, dict) else value
        return tuple(sorted((key, _canonical(item, kind.item_type)) for key, item in pairs))
    if pa.types.is_list(kind):
        return tuple(_canonical(item, kind.value_type) for item in value)
    if pa.types.is_struct(kind):
        return tuple(_canonical(value[field.name], field.type) for field in kind)
    if isinstance(value, dt.datetime):
        raise AssertionError(f"timestamps are compared as epoch milliseconds, got {value!r}")
    return value


def _rows(columns: list[pa.Field], rows: Iterable[Iterable[Any]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_canonical(v, f.type) for f, v in zip(columns, row, strict=True)) for row in rows), key=repr)


def _expected(lake: Lake, name: str, columns: list[pa.Field]) -> list[tuple[Any, ...]]:
    table = lake.read_table(name)
    arrays = [pc.cast(table[f.name], pa.int64()) if pa.types.is_timestamp(f.type) else table[f.name] for f in columns]
    return _rows(columns, zip(*(array.to_pylist() for array in arrays)))


TABLE_NAMES = list(TABLES)


def test_every_table_has_files_of_both_paths(lake: Lake) -> None:
    """The fixture lake holds what the comparisons need: every table, hour and minute status files."""
    for name in TABLE_NAMES:
        assert lake.read_table(name).num_rows > 0, name
    names = [key.rsplit("/", 1)[-1] for key in lake.files(STATION_STATUS)]
    assert any("-" in n for n in names) and any("-" not in n for n in names), names
    assert any(v is not None for v in lake.read_table(STATION_STATUS)["vehicle_types_available"].to_pylist())


def test_no_file_uses_an_encoding_or_codec_older_readers_reject(lake: Lake) -> None:
    checked = 0
    for name in TABLE_NAMES:
        for key in lake.files(name):
            metadata = pq.read_metadata(Path(lake.uri) / key)
            for group in range(metadata.num_row_groups):
                for column in range(metadata.num_columns):
                    chunk = metadata.row_group(group).column(column)
                    assert set(chunk.encodings) <= READABLE_ENCODINGS, (key, chunk.path_in_schema, chunk.encodings)
                    assert chunk.compression in READABLE_CODECS, (key, chunk.path_in_schema, chunk.compression)
                    checked += 1
    assert checked > 100


# -- Spark 3.2 -------------------------------------------------------------------------------------------------

SPARK_TYPES: dict[Callable[[pa.DataType], bool], str] = {
    pa.types.is_string: "string", pa.types.is_int32: "int", pa.types.is_int64: "bigint",
    pa.types.is_boolean: "boolean", pa.types.is_float64: "double", pa.types.is_timestamp: "timestamp",
    pa.types.is_date32: "date",
}


def _spark_type(kind: pa.DataType) -> str:
    if pa.types.is_map(kind):
        return f"map<{_spark_type(kind.key_type)},{_spark_type(kind.item_type)}>"
    if pa.types.is_list(kind):
        return f"array<{_spark_type(kind.value_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ",".join(f"{field.name}:{_spark_type(field.type)}" for field in kind) + ">"
    return next(spark for test, spark in SPARK_TYPES.items() if test(kind))


def _spark_select(df: Any, columns: list[pa.Field]) -> Any:
    return df.selectExpr(*(f"unix_millis(`{f.name}`)" if pa.types.is_timestamp(f.type) else f"`{f.name}`"
                           for f in columns))


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_spark_3_2_reads_every_table_like_pyarrow(lake: Lake, spark: SparkSession, name: str) -> None:
    assert spark.version.startswith("3.2.")
    columns = _columns(name)
    df = spark.read.parquet(_root(lake, name))  # partitions discovered and typed by Spark itself
    assert {f.name: f.dataType.simpleString() for f in df.schema} == {f.name: _spark_type(f.type) for f in columns}

    flat = [f for f in columns if not pa.types.is_nested(f.type)]
    selected = _spark_select(df, flat)
    plan = selected._jdf.queryExecution().executedPlan().toString()
    assert "Batched: true" in plan, plan  # the vectorized reader, the one that rejects DELTA_* encodings
    assert _rows(flat, selected.collect()) == _expected(lake, name, flat)
    assert _rows(columns, _spark_select(df, columns).collect()) == _expected(lake, name, columns)


# -- polars and DuckDB -------------------------------------------------------------------------------------------


def _polars_type(kind: pa.DataType) -> pl.DataType:
    if pa.types.is_map(kind):
        return pl.Map(_polars_type(kind.key_type), _polars_type(kind.item_type))
    if pa.types.is_list(kind):
        return pl.List(_polars_type(kind.value_type))
    if pa.types.is_struct(kind):
        return pl.Struct({field.name: _polars_type(field.type) for field in kind})
    if pa.types.is_timestamp(kind):
        return pl.Datetime("ms", "UTC")
    return {pa.string(): pl.String(), pa.int32(): pl.Int32(), pa.int64(): pl.Int64(), pa.bool_(): pl.Boolean(),
            pa.float64(): pl.Float64(), pa.date32(): pl.Date()}[kind]


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_polars_reads_every_table_like_pyarrow(lake: Lake, name: str) -> None:
    columns = _columns(name)
    frame = pl.read_parquet(f"{_root(lake, name)}/**/*.parquet", hive_partitioning=True)
    assert dict(frame.schema) == {  # polars types an integer partition Int64
        f.name: pl.Int64() if f.name == "hour" else _polars_type(f.type) for f in columns}
    selected = frame.select(pl.col(f.name).dt.epoch("ms") if pa.types.is_timestamp(f.type) else pl.col(f.name)
                            for f in columns)
    assert _rows(columns, selected.rows()) == _expected(lake, name, columns)


DUCKDB_KEYWORDS = {row[0] for row in duckdb.sql("SELECT keyword_name FROM duckdb_keywords()").fetchall()}
DUCKDB_TYPES = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "bool": "BOOLEAN", "double": "DOUBLE",
                "timestamp[ms, tz=UTC]": "TIMESTAMP WITH TIME ZONE", "date32[day]": "DATE"}


def _duckdb_type(kind: pa.DataType) -> str:
    if pa.types.is_map(kind):
        return f"MAP({_duckdb_type(kind.key_type)}, {_duckdb_type(kind.item_type)})"
    if pa.types.is_list(kind):
        return f"{_duckdb_type(kind.value_type)}[]"
    if pa.types.is_struct(kind):
        return "STRUCT(" + ", ".join(f"{_duckdb_name(field.name)} {_duckdb_type(field.type)}" for field in kind) + ")"
    return DUCKDB_TYPES[str(kind)]


def _duckdb_name(name: str) -> str:
    """A struct field's name as DuckDB writes it in a type: quoted when it is a keyword (``"name"``)."""
    return f'"{name}"' if name in DUCKDB_KEYWORDS else name


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_duckdb_reads_every_table_like_pyarrow(lake: Lake, name: str) -> None:
    columns = _columns(name)
    with duckdb.connect() as con:
        source = f"read_parquet('{_root(lake, name)}/**/*.parquet', hive_partitioning = true)"
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})").fetchall())
        assert types == {  # DuckDB types an integer partition BIGINT
            f.name: "BIGINT" if f.name == "hour" else _duckdb_type(f.type) for f in columns}
        rows = con.execute("SELECT " + ", ".join(f"epoch_ms(\"{f.name}\")" if pa.types.is_timestamp(f.type)
                                                 else f'"{f.name}"' for f in columns) + f" FROM {source}").fetchall()
    assert _rows(columns, rows) == _expected(lake, name, columns)


# -- a compacted day -------------------------------------------------------------------------------------------


def test_a_compacted_day_is_read_by_spark_3_2_polars_and_duckdb_like_pyarrow(
        lake: Lake, spark: SparkSession, tmp_path: Path) -> None:
    """Compaction's day file (a table's columns, then ``hour``): the same encodings, the same rows everywhere."""
    copy = open_lake(str(shutil.copytree(Path(lake.uri), tmp_path / "lake")))
    compaction.compact(copy, tmp_path / "catalog.duckdb", settle_s=0, grace_s=3600)
    days = [key for key in copy.files(STATION_STATUS) if layout.is_day_file(key)]
    assert days, "the backfilled day is compacted"
    columns = list(day_schema(STATION_STATUS))
    flat = [f for f in columns if not pa.types.is_nested(f.type)]
    for key in days:
        path = Path(copy.uri) / key
        metadata = pq.read_metadata(path)
        assert {e for g in range(metadata.num_row_groups) for c in range(metadata.num_columns)
                for e in metadata.row_group(g).column(c).encodings} <= READABLE_ENCODINGS
        table = pq.read_table(path)
        expected = _rows(columns, zip(*((pc.cast(table[f.name], pa.int64()) if pa.types.is_timestamp(f.type)
                                         else table[f.name]).to_pylist() for f in columns)))
        df = spark.read.parquet(str(path))
        selected = _spark_select(df, flat)
        assert "Batched: true" in selected._jdf.queryExecution().executedPlan().toString()
        assert _rows(columns, _spark_select(df, columns).collect()) == expected
        frame = pl.read_parquet(path).select(pl.col(f.name).dt.epoch("ms") if pa.types.is_timestamp(f.type)
                                             else pl.col(f.name) for f in columns)
        assert _rows(columns, frame.rows()) == expected
        with duckdb.connect() as con:
            rows = con.execute("SELECT " + ", ".join(f"epoch_ms(\"{f.name}\")" if pa.types.is_timestamp(f.type)
                                                     else f'"{f.name}"' for f in columns)
                               + f" FROM read_parquet('{path}')").fetchall()
        assert _rows(columns, rows) == expected
