"""The lake on a local folder: layout, real snapshots round-tripped through Parquet, atomic and
idempotent writes, one schema across files (pyarrow datasets and DuckDB with partition pruning),
the Parquet encoding, multi-snapshot files grouped by station, runs and state.

Status and information tables come from the real normalizer run on the recorded Citi Bike feeds,
so what is written here is what the pipeline writes.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import itertools
import json
import os
import shutil
import subprocess
import threading
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from citibikes.config import load_settings
from citibikes.gbfs.model import (
    QUARANTINED_COUNTS,
    STATION_INFORMATION_SCHEMA,
    STATION_STATUS_SCHEMA,
    QuarantinedRecord,
)
from citibikes.gbfs.normalize import Normalized, normalize_information, normalize_status
from citibikes.gbfs.parse import parse_feed
from citibikes.lake import filesystem, layout, store
from citibikes.lake.errors import LakeError
from citibikes.lake.store import (
    Lake,
    compress_raw,
    decompress_raw,
    information_file,
    lake_from_settings,
    open_lake,
    quarantine_file,
    raw_file,
    status_file,
)
from citibikes.lake.tables import (
    PIPELINE_RUNS_SCHEMA,
    QUARANTINE_SCHEMA,
    SMALL_TABLE_ROWS,
    RunRecord,
    by_station,
    parquet_bytes,
    quarantine_table,
    runs_table,
    seconds,
)
from citibikes.replay.recordings import recorded
from citibikes.replay.scan import read_snapshot_file, scan

SNAPSHOT_AT = 1710335271  # 2024-03-13 13:07:51 UTC, the first recorded Citi Bike snapshot
LAST_SNAPSHOT_AT = 1710337610  # 13:46:50 UTC, the fourth and last
FETCH_DELAY_S = 2.345
DUCKDB_PARTITION_TYPES = {"system": "VARCHAR", "date": "DATE", "hour": "INTEGER"}


# -- helpers -------------------------------------------------------------------------------------


def normalized(body: bytes, feed: str = "station_status", *, system_id: str = "citibike",
               last_updated: int | None = None) -> Normalized:
    """What the pipeline makes of a feed body: parse_feed, then the feed's normalizer."""
    parsed = parse_feed(body, feed)
    if last_updated is not None:
        parsed = dataclasses.replace(parsed, last_updated=last_updated)
    normalize = normalize_status if feed == "station_status" else normalize_information
    return normalize(parsed, system_id, parsed.last_updated + FETCH_DELAY_S)


def recorded_document(feed: str = "station_status", index: int = 0) -> dict[str, Any]:
    return json.loads(recorded(feed)[index].read_bytes())


def document_body(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def in_order(table: pa.Table) -> pa.Table:
    """The table's schema columns, rows sorted by time and station (partition columns dropped)."""
    names = [name for name in table.column_names if name not in DUCKDB_PARTITION_TYPES]
    return table.select(names).sort_by([("last_updated", "ascending"), ("station_id", "ascending")])


def write_status(lake: Lake, table: pa.Table) -> str:
    """One snapshot's station_status file, named after its last_updated."""
    moment = seconds(table["last_updated"], whole=True)[0]
    [key] = lake.write_files([status_file(table["system_id"][0].as_py(), table, moment)])
    return key


def parquet_glob(lake: Lake, name: str) -> str:
    """Every Parquet file below a table's folder (an uncompacted lake's whole table)."""
    return lake.storage.uri(f"{layout.table_layout(name).prefix}/**/*.parquet")


def duckdb_source(lake: Lake, name: str) -> str:
    """``read_parquet(...)`` of a table's glob with typed Hive partition columns."""
    keys = layout.table_layout(name).partition_keys
    types = ", ".join(f"'{key}': '{DUCKDB_PARTITION_TYPES[key]}'" for key in keys)
    return f"read_parquet('{parquet_glob(lake, name)}', hive_partitioning = true, hive_types = {{{types}}})"


def column_chunks(data: bytes | Path) -> dict[str, Any]:
    source = pa.BufferReader(data) if isinstance(data, bytes) else data
    metadata = pq.ParquetFile(source).metadata
    assert metadata.num_row_groups == 1
    group = metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i) for i in range(metadata.num_columns)}


def quarantined_from_table(table: pa.Table) -> list[QuarantinedRecord]:
    columns = {name: table[name].to_pylist() for name in ("system_id", "feed", "station_id", "reasons", "raw",
                                                          *QUARANTINED_COUNTS)}
    columns["last_updated"] = seconds(table["last_updated"], whole=True)
    columns["fetched_at"] = seconds(table["fetched_at"], whole=False)
    return [QuarantinedRecord(**dict(zip(columns, values))) for values in zip(*columns.values())]


@pytest.fixture(scope="module")
def snapshots() -> list[pa.Table]:
    """The four recorded Citi Bike station_status snapshots (13:07 to 13:46 UTC), normalized."""
    return [normalized(recording.read_bytes()).table for recording in recorded("station_status")]


@pytest.fixture(scope="module")
def first_status(snapshots: list[pa.Table]) -> pa.Table:
    return snapshots[0]


@pytest.fixture(scope="module")
def information() -> pa.Table:
    return normalized(recorded("station_information")[0].read_bytes(), "station_information").table


@pytest.fixture(scope="module")
def rejected() -> list[QuarantinedRecord]:
    """What the normalizer quarantines from a recorded snapshot with three stations broken."""
    document = recorded_document()
    stations = document["data"]["stations"]
    del stations[0]["station_id"]
    stations[1]["num_bikes_available"] = "many"
    stations[2]["is_renting"] = "maybe"
    stations[2]["last_reported"] = None
    result = normalized(document_body(document))
    assert len(result.quarantined) == 3
    return result.quarantined


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return open_lake(str(tmp_path / "lake"))


# -- layout ---------------------------------------------------------------------------------------


def test_partitions_and_names_derive_from_last_updated_in_utc() -> None:
    assert layout.curated_key("station_status", "citibike", SNAPSHOT_AT) == (
        "curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271.parquet"
    )
    assert layout.curated_key("station_information", "citibike", SNAPSHOT_AT) == (
        "curated/station_information/system=citibike/date=2024-03-13/hour=13/1710335271.parquet"
    )
    assert layout.quarantine_key("citibike", "station_status", SNAPSHOT_AT) == (
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_status-1710335271.parquet"
    )
    assert layout.raw_key("citibike", "station_status", SNAPSHOT_AT) == (
        "raw/system=citibike/feed=station_status/date=2024-03-13/hour=13/1710335271.json.zst"
    )
    # Several snapshots: named after the first and the last, in the partition of the first.
    assert layout.curated_key("station_status", "citibike", SNAPSHOT_AT, LAST_SNAPSHOT_AT) == (
        "curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271-1710337610.parquet"
    )
    assert layout.quarantine_key("citibike", "station_status", SNAPSHOT_AT, LAST_SNAPSHOT_AT) == (
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_status-1710335271-1710337610.parquet"
    )
    assert layout.curated_key("station_status", "citibike", SNAPSHOT_AT, SNAPSHOT_AT) == (
        layout.curated_key("station_status", "citibike", SNAPSHOT_AT)
    )
    # Midnight UTC belongs to the new day; one second before to hour 23 of the old one.
    assert layout.hive_partition("citibike", 1710288000) == "system=citibike/date=2024-03-13/hour=0"
    assert layout.hive_partition("citibike", 1710287999) == "system=citibike/date=2024-03-12/hour=23"
    # The file makers use the same names.
    assert raw_file("citibike", "station_status", SNAPSHOT_AT, b"{}")[0] == layout.raw_key(
        "citibike", "station_status", SNAPSHOT_AT)


def test_run_file_names_are_safe_for_airflow_run_ids() -> None:
    key = layout.run_key("scheduled__2024-03-13T13:00:00+00:00", "citibike", SNAPSHOT_AT)
    assert key == "pipeline_runs/date=2024-03-13/scheduled__2024-03-13T13_00_00_00_00-citibike.parquet"
    assert layout.safe_file_name(".hidden") == "r.hidden"  # readers skip names starting with . or _
    assert layout.safe_file_name("_x") == "r_x"
    with pytest.raises(LakeError, match="needs a run_id"):
        layout.run_key("", "citibike", SNAPSHOT_AT)


@pytest.mark.parametrize("bad", ["../etc", "Citibike", "a/b", "", "city bike"])
def test_system_ids_that_would_break_paths_are_refused(bad: str, lake: Lake, first_status: pa.Table) -> None:
    with pytest.raises(LakeError, match="lowercase letters"):
        layout.hive_partition(bad, SNAPSHOT_AT)
    with pytest.raises(LakeError, match="lowercase letters"):
        status_file(bad, first_status, SNAPSHOT_AT)
    with pytest.raises(LakeError, match="lowercase letters"):
        raw_file(bad, "station_status", SNAPSHOT_AT, b"{}")
    with pytest.raises(LakeError, match="lowercase letters"):
        RunRecord(run_id="r", system_id=bad, started_at=SNAPSHOT_AT, outcome="success")
    with pytest.raises(LakeError, match="lowercase letters"):
        lake.files("station_status", system=bad)
    assert not (Path(lake.uri) / "curated").exists()


@pytest.mark.parametrize("bad", ["../x", "Station_Status", "feed/x", ""])
def test_feed_names_that_would_break_paths_are_refused(bad: str) -> None:
    with pytest.raises(LakeError, match="cannot name a lake file"):
        layout.raw_key("citibike", bad, SNAPSHOT_AT)
    with pytest.raises(LakeError, match="cannot name a lake file"):
        quarantine_file("citibike", bad, [], SNAPSHOT_AT)


def test_only_the_curated_tables_have_curated_keys() -> None:
    with pytest.raises(LakeError, match="no curated table 'quarantine'"):
        layout.curated_key("quarantine", "citibike", SNAPSHOT_AT)


# -- real snapshots round-trip through Parquet ------------------------------------------------------


def test_real_status_snapshots_round_trip(lake: Lake, snapshots: list[pa.Table]) -> None:
    keys = [write_status(lake, table) for table in snapshots]
    assert keys == [layout.curated_key("station_status", "citibike", r.last_updated) for r in recorded("station_status")]
    table = lake.read_table("station_status")
    assert table.num_rows == sum(t.num_rows for t in snapshots) == 4 * 2208
    assert table["system"].unique().to_pylist() == ["citibike"]
    assert table["date"].unique().to_pylist() == [date(2024, 3, 13)]
    assert table["hour"].unique().to_pylist() == [13]
    assert table.select(STATION_STATUS_SCHEMA.names).schema.equals(STATION_STATUS_SCHEMA)
    assert in_order(table).equals(in_order(pa.concat_tables(snapshots)))
    # Each file on its own is the snapshot as the normalizer made it, rows in the feed's order.
    for key, snapshot in zip(keys, snapshots):
        assert pq.read_table(Path(lake.uri) / key).equals(snapshot)


def test_real_information_snapshot_round_trips(lake: Lake, information: pa.Table) -> None:
    assert lake.write_files([information_file("citibike", information, SNAPSHOT_AT)]) == [
        "curated/station_information/system=citibike/date=2024-03-13/hour=13/1710335271.parquet"]
    table = lake.read_table("station_information", system="citibike")
    assert table.num_rows == information.num_rows == 2208
    assert table.select(STATION_INFORMATION_SCHEMA.names).equals(information)
    assert json.loads(table["extras"][0].as_py())["station_type"] == "classic"
    assert lake.read_table("station_information", system="othersys").num_rows == 0


def test_a_file_of_several_snapshots_round_trips(lake: Lake, snapshots: list[pa.Table]) -> None:
    file = status_file("citibike", pa.concat_tables(snapshots), SNAPSHOT_AT, LAST_SNAPSHOT_AT)
    assert lake.write_files([file]) == [
        "curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271-1710337610.parquet"]
    table = lake.read_table("station_status", system="citibike")
    assert in_order(table).equals(in_order(pa.concat_tables(snapshots)))
    assert table.select(STATION_STATUS_SCHEMA.names).schema.equals(STATION_STATUS_SCHEMA)


def test_vehicle_types_missing_counts_and_extras_round_trip(lake: Lake) -> None:
    document = {"last_updated": SNAPSHOT_AT, "ttl": 60, "version": "2.3", "data": {"stations": [{
        "station_id": "s1", "num_bikes_available": 3, "is_installed": True, "is_renting": True,
        "is_returning": False, "last_reported": SNAPSHOT_AT - 5,
        "vehicle_types_available": [{"vehicle_type_id": "classic", "count": 2}, {"vehicle_type_id": "ebike", "count": 1}],
        "z": 1, "a": [1, {"b": None}],
    }]}}
    snapshot = normalized(document_body(document)).table
    write_status(lake, snapshot)
    table = lake.read_table("station_status")
    assert table["vehicle_types_available"].to_pylist() == [
        [{"vehicle_type_id": "classic", "count": 2}, {"vehicle_type_id": "ebike", "count": 1}]
    ]
    assert table["num_docks_available"].to_pylist() == [None]
    assert table["extras"].to_pylist() == ['{"a":[1,{"b":null}],"z":1}']  # sorted keys: stable text
    assert table.select(STATION_STATUS_SCHEMA.names).equals(snapshot)


def test_times_are_stored_as_whole_milliseconds_in_utc(lake: Lake, first_status: pa.Table,
                                                      rejected: list[QuarantinedRecord]) -> None:
    run = RunRecord(run_id="r", system_id="citibike", started_at=SNAPSHOT_AT + 0.25, finished_at=SNAPSHOT_AT + 1.0,
                    outcome="success")
    keys = [write_status(lake, first_status.slice(0, 20)),
            *lake.write_files([quarantine_file("citibike", "station_status", rejected, SNAPSHOT_AT)]),
            *lake.write_runs([run])]
    for key in keys:
        schema = pq.ParquetFile(Path(lake.uri) / key).schema
        times = [schema.column(i) for i in range(len(schema)) if schema.column(i).logical_type.type == "TIMESTAMP"]
        assert times, key
        for column in times:
            logical = json.loads(column.logical_type.to_json())
            assert (logical["isAdjustedToUTC"], logical["timeUnit"]) == (True, "milliseconds"), (key, column.name)
    fetched = lake.read_table("station_status")["fetched_at"].cast(pa.int64()).to_pylist()
    assert set(fetched) == {round((SNAPSHOT_AT + FETCH_DELAY_S) * 1000)}


SUB_MILLISECONDS = [SNAPSHOT_AT + 0.0005, SNAPSHOT_AT + 0.0015, SNAPSHOT_AT + 0.0025, 0.0005, 1.5e-3,
                    SNAPSHOT_AT + 0.123456, SNAPSHOT_AT + 0.9999]


def test_record_times_become_milliseconds_rounded_like_python(rejected: list[QuarantinedRecord]) -> None:
    records = [msgspec.structs.replace(rejected[0], fetched_at=value) for value in SUB_MILLISECONDS]
    table = quarantine_table(records)
    assert table["fetched_at"].cast(pa.int64()).to_pylist() == [round(value * 1000) for value in SUB_MILLISECONDS]
    assert table["last_updated"].cast(pa.int64()).to_pylist() == [SNAPSHOT_AT * 1000] * len(SUB_MILLISECONDS)
    runs = [RunRecord(run_id=f"r{i}", system_id="citibike", started_at=value, outcome="success")
            for i, value in enumerate(SUB_MILLISECONDS)]
    assert runs_table(runs)["started_at"].cast(pa.int64()).to_pylist() == [round(v * 1000) for v in SUB_MILLISECONDS]


@given(st.lists(st.one_of(st.integers(0, 4_000_000_000), st.floats(0, 4e9),
                          st.integers(0, 4_000_000).map(lambda n: n / 2000)), max_size=20))  # halves of a ms
def test_any_record_time_is_rounded_to_the_nearest_millisecond(values: list[float]) -> None:
    records = [QuarantinedRecord(system_id="citibike", feed="station_status", station_id="s", reasons=["x"],
                                 raw="{}", last_updated=SNAPSHOT_AT, fetched_at=value) for value in values]
    assert quarantine_table(records)["fetched_at"].cast(pa.int64()).to_pylist() == [round(v * 1000) for v in values]


def test_seconds_of_a_time_column() -> None:
    column = pa.array([SNAPSHOT_AT * 1000 + 999, None, -1], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    assert seconds(column, whole=True) == [SNAPSHOT_AT, None, -1]
    assert seconds(column, whole=False) == [SNAPSHOT_AT + 0.999, None, -0.001]


# -- the raw archive -----------------------------------------------------------------------------------


def test_raw_feed_is_archived_compressed_and_deterministic(lake: Lake, tmp_path: Path) -> None:
    payload = recorded("station_status")[0].read_bytes()
    key = lake.write_raw("citibike", "station_status", SNAPSHOT_AT, payload)
    assert key == layout.raw_key("citibike", "station_status", SNAPSHOT_AT)
    stored = (tmp_path / "lake" / key).read_bytes()
    assert stored.startswith(b"\x28\xb5\x2f\xfd")  # one standard zstd frame
    assert stored == raw_file("citibike", "station_status", SNAPSHOT_AT, payload)[1] == compress_raw(payload)
    assert decompress_raw(stored) == payload == lake.read_raw("citibike", "station_status", SNAPSHOT_AT)
    assert len(stored) < len(payload) / 5
    lake.write_raw("citibike", "station_status", SNAPSHOT_AT, payload)
    assert (tmp_path / "lake" / key).read_bytes() == stored
    assert lake.read_raw("citibike", "station_status", SNAPSHOT_AT + 1) is None


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_raw_archive_is_readable_by_the_zstd_tool(lake: Lake, tmp_path: Path) -> None:
    payload = recorded("station_status")[0].read_bytes()
    key = lake.write_raw("citibike", "station_status", SNAPSHOT_AT, payload)
    result = subprocess.run(["zstd", "-dc", str(tmp_path / "lake" / key)], capture_output=True, check=True)
    assert result.stdout == payload


def test_raw_archives_from_before_zstd_are_still_read(lake: Lake, tmp_path: Path) -> None:
    payload = recorded("station_status")[0].read_bytes()
    legacy = tmp_path / "lake" / layout.legacy_raw_key("citibike", "station_status", SNAPSHOT_AT)
    assert legacy.name == "1710335271.json.gz"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(gzip.compress(payload, mtime=0))
    assert lake.read_raw("citibike", "station_status", SNAPSHOT_AT) == payload
    # A zstd archive of the same snapshot (written since) is the one read.
    lake.write_raw("citibike", "station_status", SNAPSHOT_AT, b'{"newer": true}')
    assert lake.read_raw("citibike", "station_status", SNAPSHOT_AT) == b'{"newer": true}'


def test_the_raw_archive_can_be_ingested_again(lake: Lake, tmp_path: Path) -> None:
    recordings = recorded("station_status")[:2] + recorded("station_information")
    for recording in recordings:
        lake.write_raw("citibike", recording.feed, recording.last_updated, recording.read_bytes())
    found = scan(tmp_path / "lake" / "raw")
    assert found.skipped == {}
    assert [(s.feed, s.last_updated, s.path.name.endswith(".json.zst")) for s in found.snapshots] == [
        ("station_information", SNAPSHOT_AT, True), ("station_status", SNAPSHOT_AT, True),
        ("station_status", recordings[1].last_updated, True)]
    body = read_snapshot_file(found.snapshots[1].path)
    assert body == recordings[0].read_bytes()
    assert normalized(body).table.equals(normalized(recordings[0].read_bytes()).table)


def test_corrupt_or_oversized_raw_archives_are_one_line_errors() -> None:
    packed = compress_raw(b"x" * 10_000)
    for corrupt in (packed[: len(packed) // 2], b"\x28\xb5\x2f\xfd" + b"\x00" * 20, b"not zstd at all"):
        with pytest.raises(LakeError, match="not valid zstd") as error:
            decompress_raw(corrupt)
        assert "\n" not in str(error.value)
    with pytest.raises(LakeError, match="inflates past 1,000 bytes; it is not a feed snapshot"):
        decompress_raw(packed, max_bytes=1000)
    assert decompress_raw(packed, max_bytes=10_000) == b"x" * 10_000  # the limit itself is allowed


def test_corrupt_legacy_archives_are_one_line_errors(lake: Lake, tmp_path: Path) -> None:
    legacy = tmp_path / "lake" / layout.legacy_raw_key("citibike", "station_status", SNAPSHOT_AT)
    legacy.parent.mkdir(parents=True)
    packed = gzip.compress(recorded("station_status")[0].read_bytes())
    for corrupt in (packed[: len(packed) // 2], b"not gzip at all"):
        legacy.write_bytes(corrupt)
        with pytest.raises(LakeError, match="archived body is not valid gzip") as error:
            lake.read_raw("citibike", "station_status", SNAPSHOT_AT)
        assert "\n" not in str(error.value)
    with pytest.raises(LakeError, match="inflates past 1,000 bytes; it is not a feed snapshot"):
        store._decompress_legacy(gzip.compress(b"x" * 10_000), max_bytes=1000)


# -- quarantine ----------------------------------------------------------------------------------------


def test_quarantine_keeps_reasons_and_raw_json(lake: Lake, rejected: list[QuarantinedRecord]) -> None:
    broken_information = recorded_document("station_information")
    broken_information["data"]["stations"][0]["lat"] = "north"
    rejected_information = normalized(document_body(broken_information), "station_information").quarantined
    assert [r.station_id for r in rejected_information] == [broken_information["data"]["stations"][0]["station_id"]]
    keys = lake.write_files([quarantine_file("citibike", "station_status", rejected, SNAPSHOT_AT),
                             quarantine_file("citibike", "station_information", rejected_information, SNAPSHOT_AT)])
    assert keys == [
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_status-1710335271.parquet",
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_information-1710335271.parquet",
    ]
    table = lake.read_table("quarantine")
    assert table.select(QUARANTINE_SCHEMA.names).schema.equals(QUARANTINE_SCHEMA)
    assert table.schema.field("reasons").type == pa.list_(pa.string())
    by_raw = lambda items: sorted(items, key=lambda r: r.raw)  # noqa: E731
    assert by_raw(quarantined_from_table(table)) == by_raw(rejected + rejected_information)
    assert rejected[0].station_id is None and "missing_field:station_id" in rejected[0].reasons
    stored = {record.raw: record for record in quarantined_from_table(table)}
    for record in rejected:  # the raw record is whole, as JSON text
        assert json.loads(stored[record.raw].raw) == json.loads(record.raw)
        assert stored[record.raw].reasons == record.reasons


def test_a_quarantine_file_of_several_snapshots(lake: Lake, rejected: list[QuarantinedRecord]) -> None:
    later = [msgspec.structs.replace(record, last_updated=LAST_SNAPSHOT_AT) for record in rejected]
    [key] = lake.write_files([quarantine_file("citibike", "station_status", rejected + later, SNAPSHOT_AT,
                                              LAST_SNAPSHOT_AT)])
    assert key.endswith("/hour=13/station_status-1710335271-1710337610.parquet")
    assert quarantined_from_table(lake.read_table("quarantine")) == rejected + later


def test_records_that_break_the_schema_give_one_line_errors(lake: Lake, rejected: list[QuarantinedRecord]) -> None:
    missing = msgspec.structs.replace(rejected[1], system_id=None)
    with pytest.raises(LakeError, match=r"^quarantine.system_id is missing in 1 record\(s\); it is required") as error:
        quarantine_file("citibike", "station_status", [rejected[0], missing], SNAPSHOT_AT)
    assert "\n" not in str(error.value)
    wrong = msgspec.structs.replace(rejected[1], station_id=17)
    with pytest.raises(LakeError, match=r"^quarantine.station_id cannot be stored as string: .*; fix the records") as error:
        quarantine_file("citibike", "station_status", [wrong], SNAPSHOT_AT)
    assert "\n" not in str(error.value)
    too_many = RunRecord(run_id="r", system_id="citibike", started_at=SNAPSHOT_AT, outcome="success",
                         stations_status=2**31)
    with pytest.raises(LakeError, match=r"^pipeline_runs.stations_status cannot be stored as int32") as error:
        lake.write_runs([too_many])
    assert "\n" not in str(error.value)
    for started_at in ("noon", None, float("nan"), 1e20):
        no_time = RunRecord(run_id="r", system_id="citibike", started_at=started_at, outcome="success")  # type: ignore[arg-type]
        with pytest.raises(LakeError, match=r"^.* is not a POSIX time in seconds .*; it cannot name a lake partition$"):
            lake.write_runs([no_time])
    with pytest.raises(LakeError, match=r"^'1710335271' is not a POSIX time in seconds"):
        raw_file("citibike", "station_status", "1710335271", b"{}")  # type: ignore[arg-type]
    assert lake.files("pipeline_runs") == [] and lake.files("quarantine") == []


def test_tables_that_break_the_schema_give_one_line_errors(lake: Lake, first_status: pa.Table,
                                                           information: pa.Table) -> None:
    """A status or information table must have its feed's schema exactly, or every file of the table
    would no longer read as one table."""
    index = first_status.schema.get_field_index("num_bikes_available")
    wider = first_status.set_column(index, pa.field("num_bikes_available", pa.int64(), nullable=False),
                                    first_status["num_bikes_available"].cast(pa.int64()))
    broken = {
        "a column of another type": wider,
        "a missing column": first_status.drop_columns(["extras"]),
        "an extra column": first_status.append_column("note", pa.repeat(pa.scalar("x"), first_status.num_rows)),
        "another feed's table": information,
    }
    for why, table in broken.items():
        for last in (None, LAST_SNAPSHOT_AT):  # one snapshot, or several grouped by station
            with pytest.raises(LakeError, match=r"^station_status table does not have the lake's schema: expected "
                                                r".*; make the table with the feed's normalizer$") as error:
                status_file("citibike", table, SNAPSHOT_AT, last)
            assert "\n" not in str(error.value), why
    with pytest.raises(LakeError, match=r"expected column num_bikes_available int32 not null, "
                                        r"got column num_bikes_available int64 not null;"):
        status_file("citibike", wider, SNAPSHOT_AT)
    with pytest.raises(LakeError, match=r"expected column extras string not null, got column schema_version"):
        status_file("citibike", first_status.drop_columns(["extras"]), SNAPSHOT_AT)
    with pytest.raises(LakeError, match=r"^station_information table does not have the lake's schema: "
                                        r"expected column name string not null, got column num_bikes_available"):
        information_file("citibike", first_status, SNAPSHOT_AT)
    assert lake.files("station_status") == []


# -- rewriting and atomicity ------------------------------------------------------------------------------


def test_rewriting_a_snapshot_overwrites_instead_of_duplicating(lake: Lake, tmp_path: Path,
                                                                first_status: pa.Table) -> None:
    key = write_status(lake, first_status)
    first_bytes = (tmp_path / "lake" / key).read_bytes()
    assert write_status(lake, first_status) == key
    assert lake.files("station_status") == [key]
    assert (tmp_path / "lake" / key).read_bytes() == first_bytes  # same table, same bytes
    # A retry that saw different data for the same last_updated replaces the file: last write wins.
    write_status(lake, first_status.slice(0, 10))
    assert lake.read_table("station_status").num_rows == 10
    assert [p.name for p in (tmp_path / "lake" / key).parent.iterdir()] == [Path(key).name]


def test_a_write_in_progress_is_invisible_to_readers(lake: Lake, tmp_path: Path, first_status: pa.Table,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the writer after the new bytes are on disk but before the rename, and look."""
    root = tmp_path / "lake"
    key = write_status(lake, first_status.slice(0, 100))
    pattern = f"{root}/curated/station_status/**/*.parquet"
    seen: dict[str, Any] = {}
    real_fsync = os.fsync

    def look_while_writing(descriptor: int) -> None:
        real_fsync(descriptor)
        if "temporary" in seen:
            return
        folder = root / Path(key).parent
        seen["temporary"] = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        seen["glob"] = sorted(glob.glob(pattern, recursive=True))
        seen["rows"] = [pq.read_table(path).num_rows for path in seen["glob"]]
        seen["duckdb"] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchone()[0]
        seen["dataset"] = ds.dataset(root / "curated/station_status", partitioning="hive").count_rows()
        seen["lake"] = lake.read_table("station_status").num_rows

    monkeypatch.setattr(filesystem.os, "fsync", look_while_writing)
    write_status(lake, first_status)
    assert len(seen["temporary"]) == 1 and seen["temporary"][0].startswith(".")
    assert seen["glob"] == [str(root / key)]
    assert seen["rows"] == [100] and seen["duckdb"] == 100 and seen["dataset"] == 100 == seen["lake"]  # the old file
    assert lake.read_table("station_status").num_rows == 2208


def test_a_failed_write_leaves_the_old_file_and_no_debris(lake: Lake, tmp_path: Path, first_status: pa.Table,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key = write_status(lake, first_status.slice(0, 5))

    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filesystem.os, "replace", disk_full)
    with pytest.raises(LakeError, match=r"^cannot write .*1710335271\.parquet: .*No space left on device") as error:
        write_status(lake, first_status)
    assert "\n" not in str(error.value)
    folder = tmp_path / "lake" / Path(key).parent
    assert [p.name for p in folder.iterdir()] == [Path(key).name]
    assert lake.read_table("station_status").num_rows == 5


def test_files_written_together_are_one_group_commit(lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All written, then all fsync'd, then renamed in order, then each folder fsync'd once."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = filesystem.os.fsync, filesystem.os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str, target: str) -> None:
        events.append(("rename", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "replace", replace)
    files = [(f"a/{name}.bin", name.encode()) for name in ("one", "two")] + [("b/three.bin", b"three")]
    assert lake.write_files(files) == [key for key, _ in files]
    root = tmp_path / "lake"
    assert [(root / key).read_bytes() for key, _ in files] == [data for _, data in files]
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync"] * 3 + ["rename"] * 3 + ["fsync"] * 2
    assert all(Path(path).name.startswith(".") and path.endswith(".tmp") for _, path in events[:3])
    assert [path for _, path in events[3:6]] == [str(root / key) for key, _ in files]
    assert {path for _, path in events[6:]} == {str(root / "a"), str(root / "b")}
    assert not list(root.rglob("*.tmp"))
    assert lake.write_files([]) == []


def test_a_failed_file_in_a_group_keeps_those_before_and_leaves_no_debris(lake: Lake, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = filesystem.os.replace

    def replace(source: str, target: str) -> None:
        if str(target).endswith("two.bin"):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(filesystem.os, "replace", replace)
    files = [("a/one.bin", b"1"), ("a/two.bin", b"2"), ("b/three.bin", b"3")]
    with pytest.raises(LakeError, match=r"cannot write .*/a/two\.bin: .*No space left on device"):
        lake.write_files(files)
    root = tmp_path / "lake"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == ["a/one.bin"]


def read_every_visible_file(pattern: str) -> int:
    """What a reader does: glob, then read each file whole. Raises on a partial file.

    Each file is opened once and read through that handle: ``pq.read_table(path)`` opens the path
    twice (footer, then pages), and a rewrite between the two opens would mix two complete
    versions, which is a different race from a partial file."""
    rows = 0
    for path in glob.glob(pattern, recursive=True):
        with open(path, "rb") as handle:
            rows += pq.read_table(handle).num_rows
    return rows


def test_reader_check_catches_a_half_written_file(tmp_path: Path, first_status: pa.Table) -> None:
    """The check used below is able to fail: a non-atomic write is caught."""
    data = status_file("citibike", first_status, SNAPSHOT_AT)[1]
    (tmp_path / "half.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(pa.ArrowInvalid):
        read_every_visible_file(f"{tmp_path}/**/*.parquet")


def test_concurrent_readers_never_see_partial_files(lake: Lake, tmp_path: Path, first_status: pa.Table) -> None:
    big, small = first_status, first_status.slice(0, 50)
    pattern = f"{tmp_path / 'lake'}/curated/station_status/**/*.parquet"
    write_status(lake, small)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                write_status(lake, big if i % 2 == 0 else small)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    row_counts = set()
    while not done.is_set():
        row_counts.add(read_every_visible_file(pattern))
        reads += 1
    thread.join()
    assert not errors
    assert reads > 5
    assert row_counts <= {50, 2208}  # always one whole file, old or new
    assert lake.files("station_status") == [layout.curated_key("station_status", "citibike", SNAPSHOT_AT)]
    leftovers = [p for p in (tmp_path / "lake").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


# -- one table across files: pyarrow datasets and DuckDB with partition pruning ---------------------------


def test_files_read_as_one_table_with_partition_pruning(lake: Lake, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    body = recorded("station_status")[0].read_bytes()
    write_status(lake, normalized(body).table)                                         # 2024-03-13 hour 13
    write_status(lake, normalized(body, last_updated=SNAPSHOT_AT - 14 * 3600).table)   # 2024-03-12 hour 23
    write_status(lake, normalized(body, system_id="othersys").table.slice(0, 100))
    files = sorted(root.glob("curated/station_status/**/*.parquet"))
    assert len(files) == 3
    assert all(pq.read_schema(f).equals(STATION_STATUS_SCHEMA) for f in files)
    assert lake.files("station_status", system="othersys") == [
        "curated/station_status/system=othersys/date=2024-03-13/hour=13/1710335271.parquet"]
    assert lake.read_table("station_status", system="othersys").num_rows == 100
    assert lake.read_table("station_status").num_rows == 2 * 2208 + 100
    # A broken file in a partition the filters exclude: read only if pruning did not happen.
    # (It sorts after the good ones: DuckDB takes the schema from the first file.)
    trap = root / "curated/station_status/system=citibike/date=2024-03-14/hour=1/1.parquet"
    trap.parent.mkdir(parents=True)
    trap.write_bytes(b"not parquet")

    partitions = pa.schema([("system", pa.string()), ("date", pa.date32()), ("hour", pa.int32())])
    dataset = ds.dataset(
        root / "curated/station_status", format="parquet",
        schema=pa.unify_schemas([STATION_STATUS_SCHEMA, partitions]),
        partitioning=ds.partitioning(partitions, flavor="hive"),
    )
    system, day, hour = ds.field("system"), ds.field("date"), ds.field("hour")
    assert dataset.count_rows(filter=(system == "citibike") & (hour == 13)) == 2208
    assert dataset.count_rows(filter=system == "othersys") == 100
    assert dataset.count_rows(filter=(day == pa.scalar(date(2024, 3, 12), pa.date32())) & (hour == 23)) == 2208
    with pytest.raises(pa.ArrowInvalid):
        dataset.count_rows()  # the trap is real when not pruned

    con = duckdb.connect()
    source = duckdb_source(lake, "station_status")
    rows = con.sql(
        f"SELECT system, date::VARCHAR, hour, count(*), min(station_id IS NOT NULL) FROM {source} "
        "WHERE date < DATE '2024-03-14' GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [("citibike", "2024-03-12", 23, 2208, True), ("citibike", "2024-03-13", 13, 2208, True),
                    ("othersys", "2024-03-13", 13, 100, True)]
    plain = f"read_parquet('{parquet_glob(lake, 'station_status')}', hive_partitioning=true)"
    assert con.sql(f"SELECT count(*) FROM {plain} WHERE system = 'othersys'").fetchone() == (100,)
    assert con.sql(f"SELECT count(*) FROM {plain} WHERE date = DATE '2024-03-13' AND hour = 13").fetchone() == (2308,)
    with pytest.raises(duckdb.Error):
        con.sql(f"SELECT count(*) FROM {plain}").fetchall()  # the trap is real when not pruned
    types = {row[0]: row[1] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    assert types["last_reported"] == types["last_updated"] == "TIMESTAMP WITH TIME ZONE"
    assert types["num_bikes_available"] == "INTEGER"
    assert types["vehicle_types_available"] == "STRUCT(vehicle_type_id VARCHAR, count INTEGER)[]"




# -- files of several snapshots: grouped by station ---------------------------------------------------------


def test_a_file_of_several_snapshots_groups_rows_by_station_in_time_order(snapshots: list[pa.Table]) -> None:
    """Stations in the order they first appear, each station's rows together and in time order.
    The first snapshot misses three stations: they first appear in the second, so they come last."""
    missing = {0, 5, 100}
    first = snapshots[0].filter(pa.array([i not in missing for i in range(snapshots[0].num_rows)]))
    given_tables = [first, *snapshots[1:]]
    given_rows = pa.concat_tables(given_tables)
    assert snapshots[0]["station_id"] != snapshots[1]["station_id"]  # the feed's order changes between snapshots
    key, data = status_file("citibike", given_rows, SNAPSHOT_AT, LAST_SNAPSHOT_AT)
    written = pq.read_table(pa.BufferReader(data))
    ids = written["station_id"].to_pylist()
    stations = [station for station, _ in itertools.groupby(ids)]
    assert len(stations) == len(set(ids)) == 2208  # each station's rows are together
    assert stations == list(dict.fromkeys(given_rows["station_id"].to_pylist()))  # in order of first appearance
    late = [station for station in snapshots[0]["station_id"].to_pylist() if station not in set(first["station_id"].to_pylist())]
    assert stations[-3:] == [s for s in snapshots[1]["station_id"].to_pylist() if s in late]
    times = [seconds(t["last_updated"], whole=True)[0] for t in given_tables]
    per_station = {station: [moment for _, moment in rows] for station, rows in itertools.groupby(
        zip(ids, seconds(written["last_updated"], whole=True)), key=lambda pair: pair[0])}
    assert all(moments == times for station, moments in per_station.items() if station not in late)
    assert all(moments == times[1:] for station, moments in per_station.items() if station in late)
    assert in_order(written).equals(in_order(given_rows))  # the same rows, nothing lost or added
    assert written.equals(by_station(given_rows))


def test_a_file_of_one_snapshot_keeps_the_feeds_order(first_status: pa.Table) -> None:
    for last in (None, SNAPSHOT_AT):
        key, data = status_file("citibike", first_status, SNAPSHOT_AT, last)
        assert key.endswith("/1710335271.parquet")
        assert pq.read_table(pa.BufferReader(data)).equals(first_status)


def test_grouping_by_station_makes_files_markedly_smaller(snapshots: list[pa.Table]) -> None:
    rows = pa.concat_tables(snapshots)
    grouped = status_file("citibike", rows, SNAPSHOT_AT, LAST_SNAPSHOT_AT)[1]
    snapshot_after_snapshot = parquet_bytes(rows)  # the same rows, written without by_station
    per_row, plain_per_row = len(grouped) / rows.num_rows, len(snapshot_after_snapshot) / rows.num_rows
    assert len(grouped) <= 0.75 * len(snapshot_after_snapshot), (
        f"{per_row:.1f} bytes per row grouped by station, {plain_per_row:.1f} snapshot after snapshot")
    assert pq.read_table(pa.BufferReader(grouped)).num_rows == rows.num_rows


def test_a_file_of_several_snapshots_has_statistics_of_its_time_span(snapshots: list[pa.Table]) -> None:
    chunks = column_chunks(status_file("citibike", pa.concat_tables(snapshots), SNAPSHOT_AT, LAST_SNAPSHOT_AT)[1])
    times = chunks["last_updated"].statistics
    assert (times.min.timestamp(), times.max.timestamp()) == (SNAPSHOT_AT, LAST_SNAPSHOT_AT)


def test_grouping_by_station_of_no_rows(first_status: pa.Table) -> None:
    empty = first_status.slice(0, 0)
    assert by_station(empty).equals(empty)


# -- Parquet encoding ----------------------------------------------------------------------------------------


def test_status_parquet_is_an_order_of_magnitude_smaller_than_the_feed(first_status: pa.Table) -> None:
    raw_bytes = len(recorded("station_status")[0].read_bytes())
    parquet = status_file("citibike", first_status, SNAPSHOT_AT)[1]
    per_row, raw_per_row = len(parquet) / first_status.num_rows, raw_bytes / first_status.num_rows
    assert raw_per_row > 300
    assert per_row < 40, f"{per_row:.1f} bytes per status row"
    assert {chunk.compression for chunk in column_chunks(parquet).values()} == {"ZSTD"}


def test_status_parquet_has_statistics_of_ids_and_times(first_status: pa.Table) -> None:
    parquet = status_file("citibike", first_status, SNAPSHOT_AT)[1]
    metadata = pq.ParquetFile(pa.BufferReader(parquet)).metadata
    chunks = column_chunks(parquet)
    ids = sorted(first_status["station_id"].to_pylist())
    assert (chunks["station_id"].statistics.min, chunks["station_id"].statistics.max) == (ids[0], ids[-1])
    assert chunks["system_id"].is_stats_set
    assert chunks["last_updated"].is_stats_set and chunks["last_reported"].is_stats_set
    assert chunks["fetched_at"].is_stats_set
    assert not chunks["num_bikes_available"].is_stats_set and not chunks["extras"].is_stats_set
    assert b"ARROW:schema" not in (metadata.metadata or {})  # the lake's explicit schemas describe the files
    assert pq.read_table(pa.BufferReader(parquet)).equals(first_status)


def test_the_file_makers_make_the_bytes_the_lake_writes(lake: Lake, tmp_path: Path, first_status: pa.Table,
                                                        information: pa.Table) -> None:
    files = [status_file("citibike", first_status, SNAPSHOT_AT), information_file("citibike", information, SNAPSHOT_AT)]
    assert lake.files("station_status") == [] and lake.files("station_information") == []  # making writes nothing
    assert lake.write_files(files) == [key for key, _ in files]
    assert [(tmp_path / "lake" / key).read_bytes() for key, _ in files] == [data for _, data in files]
    assert files[0][1] == parquet_bytes(first_status)
    assert files[1][1] == parquet_bytes(information)


def test_tiny_files_are_stored_uncompressed_and_read_the_same(first_status: pa.Table) -> None:
    for rows, codecs in ((3, {"UNCOMPRESSED"}), (SMALL_TABLE_ROWS, {"UNCOMPRESSED"}), (SMALL_TABLE_ROWS + 1, {"ZSTD"})):
        table = first_status.slice(0, rows)
        data = parquet_bytes(table)
        assert {chunk.compression for chunk in column_chunks(data).values()} == codecs, rows
        assert pq.read_table(pa.BufferReader(data)).equals(table)
    run = RunRecord(run_id="r", system_id="citibike", started_at=SNAPSHOT_AT, outcome="success", error="x" * 500)
    assert {chunk.compression for chunk in column_chunks(parquet_bytes(runs_table([run]))).values()} == {"UNCOMPRESSED"}


def test_unique_columns_skip_the_dictionary(first_status: pa.Table, information: pa.Table) -> None:
    encodings = {path: chunk.encodings for path, chunk in column_chunks(parquet_bytes(first_status)).items()}
    assert "RLE_DICTIONARY" not in encodings["station_id"] and "RLE_DICTIONARY" not in encodings["extras"]
    assert "RLE_DICTIONARY" in encodings["vehicle_types_available.list.element.vehicle_type_id"]
    assert "RLE_DICTIONARY" in encodings["num_bikes_available"]  # counts repeat: a dictionary, runs of indices
    assert "RLE_DICTIONARY" in encodings["vehicle_types_available.list.element.count"]
    assert set(encodings["is_renting"]) == {"PLAIN", "RLE"}  # flags: PLAIN bit-packs them (RLE: the levels)
    described = {path: chunk.encodings for path, chunk in column_chunks(parquet_bytes(information)).items()}
    for unique in ("station_id", "name", "short_name", "address", "extras"):
        assert "RLE_DICTIONARY" not in described[unique], unique
    assert "RLE_DICTIONARY" in described["region_id"]


def test_dictionary_encoded_counts_read_the_same_in_duckdb(tmp_path: Path) -> None:
    """Counts (dictionaries, the largest int32 included) and flags (bit-packed) as pyarrow and DuckDB
    read them, nulls and nested vehicle type counts included (Spark and polars: tests/integration/test_lake_engines.py)."""
    document = recorded_document()
    for i, station in enumerate(document["data"]["stations"]):
        if i % 7 == 0:
            del station["num_ebikes_available"]
        station["is_renting"] = i % 3 != 0
        if i % 5 == 0:
            station["vehicle_types_available"] = [{"vehicle_type_id": "classic", "count": i % 40},
                                                  {"vehicle_type_id": "ebike", "count": 2**31 - 1 - i}]
    table = normalized(document_body(document)).table
    assert table["num_ebikes_available"].null_count == len(range(0, 2208, 7))
    path = tmp_path / "status.parquet"
    path.write_bytes(status_file("citibike", table, SNAPSHOT_AT)[1])
    chunks = column_chunks(path)
    assert chunks["num_bikes_available"].compression == chunks["is_renting"].compression == "ZSTD"
    assert "RLE_DICTIONARY" in chunks["num_ebikes_available"].encodings
    assert "RLE_DICTIONARY" in chunks["vehicle_types_available.list.element.count"].encodings
    assert pq.read_table(path).equals(table)
    names = ["station_id", "num_bikes_available", "num_ebikes_available", "num_docks_available", "is_renting",
             "vehicle_types_available"]
    expected = sorted(zip(*(table.column(name).to_pylist() for name in names)), key=lambda row: row[0])
    read = duckdb.sql(f"SELECT {', '.join(names)} FROM read_parquet('{path}') ORDER BY station_id").fetchall()
    assert read == expected


# -- pipeline runs ------------------------------------------------------------------------------------------


def test_runs_round_trip_and_a_retried_run_overwrites_its_file(lake: Lake) -> None:
    success = RunRecord(
        run_id="scheduled__2024-03-13T13:07:00+00:00", system_id="citibike", started_at=SNAPSHOT_AT + 0.25,
        finished_at=SNAPSHOT_AT + 3.75, outcome="success", stations_information=2208, stations_status=2208,
        stations_valid=2200, stations_quarantined=8, stations_published=1300,
        quarantine_reasons={"capacity_exceeded": 5, "future_report": 3},
        fetch_s=0.5, validate_s=0.25, produce_s=1.5, write_s=0.125,
    )
    failed = RunRecord(run_id="manual__1", system_id="othersys", started_at=SNAPSHOT_AT, outcome="failed",
                       finished_at=SNAPSHOT_AT + 10.0, error="othersys station_status: feed unreachable")
    keys = lake.write_runs([success, failed])
    assert keys == [
        "pipeline_runs/date=2024-03-13/scheduled__2024-03-13T13_07_00_00_00-citibike.parquet",
        "pipeline_runs/date=2024-03-13/manual__1-othersys.parquet",
    ]
    assert lake.write_runs([success]) == keys[:1]  # the retried task: still one row
    table = lake.read_table("pipeline_runs")
    assert table.num_rows == 2
    assert table.select(PIPELINE_RUNS_SCHEMA.names).schema.equals(PIPELINE_RUNS_SCHEMA)
    runs = sorted(lake.read_runs(), key=lambda r: r.run_id)
    assert runs == [failed, success]
    assert runs[1].duration_s == 3.5 and runs[0].duration_s == 10.0
    assert runs[1].quarantine_reasons == {"capacity_exceeded": 5, "future_report": 3}
    assert lake.read_runs(system="othersys") == [failed]
    assert lake.read_runs(system="nobody") == []
    con = duckdb.connect()
    assert con.sql(
        f"SELECT outcome, duration_s, quarantine_reasons['capacity_exceeded'], date::VARCHAR "
        f"FROM {duckdb_source(lake, 'pipeline_runs')} WHERE system_id = 'citibike'"
    ).fetchall() == [("success", 3.5, 5, "2024-03-13")]


def test_a_run_without_optional_values(lake: Lake) -> None:
    run = RunRecord(run_id="r1", system_id="citibike", started_at=SNAPSHOT_AT, outcome="skipped")
    lake.write_runs([run])
    [read] = lake.read_runs()
    assert read == run and read.finished_at is None and read.duration_s is None and read.quarantine_reasons == {}
    assert lake.read_table("pipeline_runs")["duration_s"].to_pylist() == [None]


def test_many_runs_share_a_file_per_system_and_date(lake: Lake) -> None:
    day = 86_400
    runs = [RunRecord(run_id=f"backfill__citibike__{i}", system_id="citibike", started_at=SNAPSHOT_AT + i,
                      outcome="success") for i in range(3)]
    runs.append(RunRecord(run_id="backfill__citibike__next-day", system_id="citibike",
                          started_at=SNAPSHOT_AT + day, outcome="failed", error="boom"))
    runs.append(RunRecord(run_id="backfill__othersys__0", system_id="othersys", started_at=SNAPSHOT_AT,
                          outcome="stale"))
    runs.append(RunRecord(run_id="backfill__citibike__3", system_id="citibike", started_at=SNAPSHOT_AT + 3,
                          outcome="no_new_data"))
    keys = lake.write_runs(runs)
    assert keys == [
        "pipeline_runs/date=2024-03-13/backfill__citibike__0--backfill__citibike__3-citibike.parquet",
        "pipeline_runs/date=2024-03-14/backfill__citibike__next-day-citibike.parquet",
        "pipeline_runs/date=2024-03-13/backfill__othersys__0-othersys.parquet",
    ]
    assert pq.read_metadata(Path(lake.uri) / keys[0]).num_rows == 4
    assert sorted(lake.read_runs("citibike"), key=lambda r: r.started_at) == sorted(
        [run for run in runs if run.system_id == "citibike"], key=lambda r: r.started_at)
    assert lake.read_runs("othersys") == [runs[4]]
    assert lake.write_runs(runs) == keys  # the same batch again: the same files, no duplicates
    assert lake.read_table("pipeline_runs").num_rows == len(runs)


def test_run_records_refuse_unknown_outcomes() -> None:
    with pytest.raises(LakeError, match="^run outcome 'ok' is unknown; use one of success, no_new_data, stale, "
                                        "failed, skipped$"):
        RunRecord(run_id="r", system_id="citibike", started_at=0.0, outcome="ok")
    for outcome in ("success", "no_new_data", "stale", "failed", "skipped"):
        RunRecord(run_id="r", system_id="citibike", started_at=0.0, outcome=outcome)
    with pytest.raises(TypeError, match="stations"):
        RunRecord(run_id="r", system_id="citibike", started_at=0.0, outcome="skipped", stations=1)  # type: ignore[call-arg]


# -- state store ---------------------------------------------------------------------------------------------


def test_state_store_round_trips_and_stays_out_of_tables(lake: Lake, tmp_path: Path, first_status: pa.Table) -> None:
    assert lake.read_state("citibike/http.json") is None
    lake.write_state("citibike/http.json", b'{"etag": "v1"}')
    lake.write_state("citibike/http.json", b'{"etag": "v2"}')
    lake.write_state("citibike/changes.bin", bytes(range(256)))
    lake.write_state("citibike/staging/run-1/a.parquet", parquet_bytes(first_status.slice(0, 2)))
    assert lake.read_state("citibike/http.json") == b'{"etag": "v2"}'
    assert lake.read_state("citibike/changes.bin") == bytes(range(256))
    assert sorted(p.name for p in (tmp_path / "lake/_state/citibike").iterdir()) == ["changes.bin", "http.json",
                                                                                      "staging"]
    write_status(lake, first_status.slice(0, 3))
    whole_lake = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive")
    assert whole_lake.count_rows() == 3  # the _state folder is skipped like temporary files
    assert lake.list_state("citibike") == ["citibike/changes.bin", "citibike/http.json", "citibike/staging/run-1/a.parquet"]
    assert lake.list_state("nothing-here") == []
    lake.delete_state("citibike/staging")
    assert lake.read_state("citibike/staging/run-1/a.parquet") is None
    assert lake.read_state("citibike/http.json") == b'{"etag": "v2"}'
    lake.delete_state("citibike/staging")  # already gone: no error


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", ".hidden", "a/../b", ""])
def test_state_keys_cannot_escape_the_state_folder(lake: Lake, key: str) -> None:
    with pytest.raises(LakeError, match="state key"):
        lake.write_state(key, b"x")
    with pytest.raises(LakeError, match="state key"):
        lake.read_state(key)


def test_state_must_be_bytes(lake: Lake) -> None:
    with pytest.raises(LakeError, match="must be bytes, not dict; encode it first"):
        lake.write_state("k", {"etag": "x"})  # type: ignore[arg-type]


def test_a_folder_where_a_state_file_should_be_is_named(lake: Lake) -> None:
    lake.write_state("a/b", b"x")
    with pytest.raises(LakeError, match=r"cannot read .*/_state/a: it is a folder, not a file; remove it"):
        lake.read_state("a")


# -- configuration errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/lake", "unsupported scheme 'gs'; set CITIBIKES_LAKE_URI to a folder, file:///folder or s3://bucket/prefix"),
        ("s3:///lake", "has no bucket; write s3://bucket/prefix"),
        ("s3://Bad_Bucket/lake", "'Bad_Bucket' is not a valid S3 bucket name"),
        ("file://server/lake", "names host 'server'; write file:///absolute/path"),
        ("  ", "the lake URI is empty"),
    ],
)
def test_bad_lake_uris_fail_with_one_line(uri: str, message: str) -> None:
    with pytest.raises(LakeError) as error:
        open_lake(uri)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_local_lake_uris(tmp_path: Path) -> None:
    assert open_lake(f"file://{tmp_path}/a").uri == f"{tmp_path}/a"
    assert open_lake(str(tmp_path / "b")).uri == str(tmp_path / "b")
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LakeError, match=r"lake folder .*file is a file; remove it or choose another lake URI"):
        open_lake(str(tmp_path / "file"))
    with pytest.raises(LakeError, match=r"cannot create lake folder .*: .*; choose another lake URI"):
        open_lake(str(tmp_path / "file" / "below"))


def test_lake_from_settings_uses_the_configured_uri(tmp_path: Path) -> None:
    systems = tmp_path / "systems.yaml"
    systems.write_text("systems:\n  - id: citibike\n    discovery_url: file:///dev/null\n")
    env = {"CITIBIKES_SYSTEMS_FILE": str(systems), "CITIBIKES_LAKE_URI": f"file://{tmp_path}/configured",
           "CITIBIKES_PIPELINE_FILE": str(tmp_path / "none.yaml")}
    lake = lake_from_settings(load_settings(env))
    lake.write_state("k", b"v")
    assert (tmp_path / "configured/_state/k").read_bytes() == b"v"


def test_bad_s3_endpoint_setting_is_named() -> None:
    with pytest.raises(LakeError, match="S3 endpoint '127.0.0.1:7070' is not an http.s. URL; set CITIBIKES_S3_ENDPOINT_URL"):
        open_lake("s3://bucket/lake", endpoint_url="127.0.0.1:7070")
    with pytest.raises(LakeError, match="access key and secret key must be given together"):
        open_lake("s3://bucket/lake", endpoint_url="http://127.0.0.1:7070", access_key="only-one")


def test_unknown_table_names_are_listed(lake: Lake) -> None:
    with pytest.raises(LakeError, match="unknown lake table 'status'; use one of station_status, station_information"):
        lake.read_table("status")
    with pytest.raises(LakeError, match="unknown lake table 'status'"):
        lake.files("status")


def test_empty_tables_read_as_empty_with_the_schema(lake: Lake) -> None:
    for name, schema in (("station_status", STATION_STATUS_SCHEMA), ("station_information", STATION_INFORMATION_SCHEMA),
                         ("quarantine", QUARANTINE_SCHEMA), ("pipeline_runs", PIPELINE_RUNS_SCHEMA)):
        table = lake.read_table(name)
        assert table.num_rows == 0 and "date" in table.column_names
        assert table.select(schema.names).schema.equals(schema)
    assert lake.read_runs() == []


def test_live_keys_leave_out_what_each_folders_newest_compacted_file_holds_and_older_versions() -> None:
    day = "curated/station_status/system=a/date=2024-03-13"
    hour = f"{day}/hour=9"
    sources = {
        f"{hour}/_compacted/v1/compacted.parquet": ["1.parquet", "2.parquet"],
        f"{hour}/_compacted/v2/compacted.parquet": ["1.parquet", "2.parquet", "3.parquet"],
        f"{day}/_compacted/v1/compacted.parquet": ["hour=9/_compacted/v2/compacted.parquet", "hour=9/4.parquet",
                                                   "hour=10/5.parquet"],
    }
    keys = [f"{hour}/{n}.parquet" for n in range(1, 7)] + [f"{day}/hour=10/5.parquet", *sources]
    live = layout.live_keys(keys, sources.__getitem__)
    # The day's file holds hour 9's newest version (which holds 1-3), 4 and hour 10's file; 5 and 6 came later.
    assert live == [f"{hour}/5.parquet", f"{hour}/6.parquet", f"{day}/_compacted/v1/compacted.parquet"]
    assert layout.is_day_file(f"{day}/_compacted/v1/compacted.parquet")
    assert not layout.is_day_file(f"{hour}/_compacted/v1/compacted.parquet") and not layout.is_day_file(f"{hour}/5.parquet")
    assert layout.live_keys(keys[:3], sources.__getitem__) == keys[:3]
