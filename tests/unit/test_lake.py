"""The lake on a local folder: layout, real Parquet round trips, atomic and idempotent writes,
one schema across files (pyarrow datasets and DuckDB with partition pruning), runs and state."""

from __future__ import annotations

import glob
import gzip
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
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from citibikes.config import load_settings
from citibikes.gbfs.model import (
    QuarantinedRecord,
    StationInformation,
    StationStatus,
    StationStatusColumns,
    VehicleTypeCount,
)
from citibikes.lake import filesystem, layout, tables
from citibikes.lake.errors import LakeError
from citibikes.lake.store import Lake, compress_raw, decompress_raw, encode_station_status, lake_from_settings, open_lake
from citibikes.lake.tables import (
    FEW_VALUES,
    PIPELINE_RUNS_SCHEMA,
    STATION_STATUS_SCHEMA,
    RunRecord,
    as_milliseconds,
    build_table,
    parquet_bytes,
    read_parquet_bytes,
    records_from_table,
    station_status_table,
)
from citibikes.replay.backfill import detect_feed, read_snapshot_file, scan
from citibikes.replay.recordings import recorded

SNAPSHOT_AT = 1710335271  # 2024-03-13 13:07:51 UTC, the first recorded Citi Bike snapshot
STATUS_FIELDS = {
    "station_id", "num_bikes_available", "num_ebikes_available", "num_bikes_disabled",
    "num_docks_available", "num_docks_disabled", "is_installed", "is_renting", "is_returning",
    "last_reported", "vehicle_types_available",
}
INFORMATION_FIELDS = {
    "station_id", "name", "lat", "lon", "short_name", "capacity", "region_id", "address",
    "is_virtual_station", "rental_methods",
}


def recorded_feed(feed: str, index: int = 0) -> dict[str, Any]:
    return json.loads(recorded(feed)[index].read_bytes())


def status_records(document: dict[str, Any], system_id: str = "citibike", shift_s: int = 0) -> list[StationStatus]:
    """Model structs straight from a recorded GBFS 1.1 document (the normalizer is not used here)."""
    last_updated = document["last_updated"] + shift_s
    return [
        StationStatus(
            system_id=system_id,
            station_id=station["station_id"],
            num_bikes_available=station["num_bikes_available"],
            num_ebikes_available=station.get("num_ebikes_available"),
            num_bikes_disabled=station.get("num_bikes_disabled"),
            num_docks_available=station.get("num_docks_available"),
            num_docks_disabled=station.get("num_docks_disabled"),
            is_installed=bool(station["is_installed"]),
            is_renting=bool(station["is_renting"]),
            is_returning=bool(station["is_returning"]),
            last_reported=None if station.get("last_reported") == 86400 else station.get("last_reported"),
            last_updated=last_updated,
            fetched_at=last_updated + 2.345,
            extras={k: v for k, v in station.items() if k not in STATUS_FIELDS},
        )
        for station in document["data"]["stations"]
    ]


def information_records(document: dict[str, Any]) -> list[StationInformation]:
    return [
        StationInformation(
            system_id="citibike",
            station_id=station["station_id"],
            name=station["name"],
            lat=station["lat"],
            lon=station["lon"],
            short_name=station.get("short_name"),
            capacity=station.get("capacity"),
            region_id=station.get("region_id"),
            address=station.get("address"),
            rental_methods=station.get("rental_methods"),
            last_updated=document["last_updated"],
            fetched_at=document["last_updated"] + 0.5,
            extras={k: v for k, v in station.items() if k not in INFORMATION_FIELDS},
        )
        for station in document["data"]["stations"]
    ]


def by_station(records: list[Any]) -> list[Any]:
    return sorted(records, key=lambda r: r.station_id)


@pytest.fixture(scope="module")
def first_status() -> list[StationStatus]:
    return status_records(recorded_feed("station_status"))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return open_lake(str(tmp_path / "lake"))


# -- layout -----------------------------------------------------------------------------------


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
    # Midnight UTC belongs to the new day; one second before to hour 23 of the old one.
    assert layout.hive_partition("citibike", 1710288000) == "system=citibike/date=2024-03-13/hour=0"
    assert layout.hive_partition("citibike", 1710287999) == "system=citibike/date=2024-03-12/hour=23"


def test_run_file_names_are_safe_for_airflow_run_ids() -> None:
    key = layout.run_key("scheduled__2024-03-13T13:00:00+00:00", "citibike", SNAPSHOT_AT)
    assert key == "pipeline_runs/date=2024-03-13/scheduled__2024-03-13T13_00_00_00_00-citibike.parquet"
    assert layout.safe_file_name(".hidden") == "r.hidden"  # readers skip names starting with . or _


@pytest.mark.parametrize("bad", ["../etc", "Citibike", "a/b", ""])
def test_system_ids_that_would_break_paths_are_refused(bad: str) -> None:
    with pytest.raises(LakeError, match="lowercase letters"):
        layout.hive_partition(bad, SNAPSHOT_AT)


# -- round trips of the real data --------------------------------------------------------------


def test_real_status_snapshots_round_trip(lake: Lake) -> None:
    snapshots = [status_records(json.loads(r.read_bytes())) for r in recorded("station_status")]
    for records in snapshots:
        assert lake.write_station_status(records) == [
            layout.curated_key("station_status", "citibike", records[0].last_updated)
        ]
    table = lake.read_table("station_status")
    assert table.num_rows == sum(len(s) for s in snapshots) == 4 * 2208
    assert table.schema.field("last_reported").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("fetched_at").type == pa.timestamp("ms", tz="UTC")
    assert table["hour"].unique().to_pylist() == [13]
    assert table["last_reported"].null_count > 0  # Citi Bike's 86400 "never reported" became null
    written = [r for snapshot in snapshots for r in snapshot]
    in_order = lambda records: sorted(records, key=lambda r: (r.last_updated, r.station_id))  # noqa: E731
    assert in_order(records_from_table(table, StationStatus)) == in_order(written)


def test_real_information_snapshot_round_trips(lake: Lake) -> None:
    records = information_records(recorded_feed("station_information"))
    lake.write_station_information(records)
    table = lake.read_table("station_information", system="citibike")
    assert table.num_rows == 2208
    assert by_station(records_from_table(table, StationInformation)) == by_station(records)
    assert json.loads(table["extras"][0].as_py())["station_type"] == "classic"


def test_vehicle_types_and_missing_counts_round_trip(lake: Lake) -> None:
    record = StationStatus(
        system_id="citibike", station_id="s1", num_bikes_available=3, is_installed=True,
        is_renting=True, is_returning=False, last_updated=SNAPSHOT_AT, fetched_at=SNAPSHOT_AT + 0.001,
        vehicle_types_available=[VehicleTypeCount("classic", 2), VehicleTypeCount("ebike", 1)],
        extras={"z": 1, "a": [1, {"b": None}]},
    )
    lake.write_station_status([record])
    table = lake.read_table("station_status")
    assert table["vehicle_types_available"].to_pylist() == [
        [{"vehicle_type_id": "classic", "count": 2}, {"vehicle_type_id": "ebike", "count": 1}]
    ]
    assert table["num_docks_available"].to_pylist() == [None]
    assert table["extras"].to_pylist() == ['{"a":[1,{"b":null}],"z":1}']  # sorted keys: stable text
    assert records_from_table(table, StationStatus) == [record]


def test_times_are_whole_milliseconds_rounded_like_python(first_status: list[StationStatus]) -> None:
    seconds = [SNAPSHOT_AT + 0.0005, SNAPSHOT_AT + 0.0015, SNAPSHOT_AT + 0.0025, 0.0005, 1.5e-3, SNAPSHOT_AT + 0.123456]
    records = [msgspec.structs.replace(first_status[0], station_id=f"s{i}", fetched_at=value)
               for i, value in enumerate(seconds)]
    table = station_status_table(records)
    assert table["fetched_at"].cast(pa.int64()).to_pylist() == [round(value * 1000) for value in seconds]
    assert table["last_updated"].cast(pa.int64()).to_pylist() == [SNAPSHOT_AT * 1000] * len(seconds)


def test_raw_feed_is_archived_compressed_and_deterministic(lake: Lake, tmp_path: Path) -> None:
    payload = recorded("station_status")[0].read_bytes()
    key = lake.write_raw("citibike", "station_status", SNAPSHOT_AT, payload)
    stored = (tmp_path / "lake" / key).read_bytes()
    assert stored.startswith(b"\x28\xb5\x2f\xfd")  # one standard zstd frame
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


def test_the_raw_archive_can_be_backfilled_again(lake: Lake, tmp_path: Path) -> None:
    for recording in recorded("station_status")[:2] + recorded("station_information"):
        body = recording.read_bytes()
        feed = detect_feed(body)
        lake.write_raw("citibike", feed, json.loads(body)["last_updated"], body)
    found = scan(tmp_path / "lake" / "raw")
    assert [(s.feed, s.path.name.endswith(".json.zst")) for s in found.snapshots] == [
        ("station_information", True), ("station_status", True), ("station_status", True)]
    assert read_snapshot_file(found.snapshots[1].path) == recorded("station_status")[0].read_bytes()


def test_corrupt_or_oversized_raw_archives_are_one_line_errors() -> None:
    packed = compress_raw(b"x" * 10_000)
    with pytest.raises(LakeError, match="not valid zstd"):
        decompress_raw(packed[: len(packed) // 2])
    with pytest.raises(LakeError, match="inflates past 1,000 bytes"):
        decompress_raw(packed, max_bytes=1000)


def test_quarantine_keeps_reasons_and_raw_json(lake: Lake) -> None:
    records = [
        QuarantinedRecord(system_id="citibike", feed="station_status", station_id="s1",
                          reasons=["capacity_exceeded", "future_report"], raw='{"station_id":"s1"}',
                          last_updated=SNAPSHOT_AT, fetched_at=SNAPSHOT_AT + 1.5),
        QuarantinedRecord(system_id="citibike", feed="station_status", station_id=None,
                          reasons=["missing_station_id"], raw="{}", last_updated=SNAPSHOT_AT,
                          fetched_at=SNAPSHOT_AT + 1.5),
        QuarantinedRecord(system_id="citibike", feed="station_information", station_id="s2",
                          reasons=["bad_coordinates"], raw='{"lat":91}', last_updated=SNAPSHOT_AT,
                          fetched_at=SNAPSHOT_AT + 1.5),
    ]
    keys = lake.write_quarantine(records)
    assert sorted(keys) == [
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_information-1710335271.parquet",
        "quarantine/system=citibike/date=2024-03-13/hour=13/station_status-1710335271.parquet",
    ]
    table = lake.read_table("quarantine")
    assert table.schema.field("reasons").type == pa.list_(pa.string())
    by_raw = lambda items: sorted(items, key=lambda r: r.raw)  # noqa: E731
    assert by_raw(records_from_table(table, QuarantinedRecord)) == by_raw(records)


def test_records_that_break_the_schema_give_one_line_errors(lake: Lake, first_status: list[StationStatus]) -> None:
    broken = msgspec.structs.replace(first_status[0], num_bikes_available=None)
    with pytest.raises(LakeError, match=r"station_status.num_bikes_available is missing in 1 record") as missing:
        lake.write_station_status([broken])
    assert "\n" not in str(missing.value)
    wrong = msgspec.structs.replace(first_status[0], num_docks_available="many")
    with pytest.raises(LakeError, match=r"num_docks_available cannot be stored as int32"):
        lake.write_station_status([wrong])
    assert lake.files("station_status") == []


# -- idempotence and atomicity -----------------------------------------------------------------


def test_repeated_write_overwrites_instead_of_duplicating(lake: Lake, tmp_path: Path, first_status: list[StationStatus]) -> None:
    [key] = lake.write_station_status(first_status)
    first_bytes = (tmp_path / "lake" / key).read_bytes()
    assert lake.write_station_status(list(reversed(first_status))) == [key]  # order does not matter
    assert lake.files("station_status") == [key]
    assert (tmp_path / "lake" / key).read_bytes() == first_bytes
    # A retry that saw different data for the same last_updated replaces the file: last write wins.
    lake.write_station_status(first_status[:10])
    assert lake.read_table("station_status").num_rows == 10
    assert [p.name for p in (tmp_path / "lake" / key).parent.iterdir()] == [Path(key).name]


def test_a_write_in_progress_is_invisible_to_readers(lake: Lake, tmp_path: Path, first_status: list[StationStatus],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the writer after the new bytes are on disk but before the rename, and look."""
    root = tmp_path / "lake"
    [key] = lake.write_station_status(first_status[:100])
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

    monkeypatch.setattr(filesystem.os, "fsync", look_while_writing)
    lake.write_station_status(first_status)
    assert len(seen["temporary"]) == 1 and seen["temporary"][0].startswith(".")
    assert seen["glob"] == [str(root / key)]
    assert seen["rows"] == [100] and seen["duckdb"] == 100 and seen["dataset"] == 100  # the old file, whole
    assert lake.read_table("station_status").num_rows == 2208


def test_a_failed_write_leaves_the_old_file_and_no_debris(lake: Lake, tmp_path: Path, first_status: list[StationStatus],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    [key] = lake.write_station_status(first_status[:5])

    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filesystem.os, "replace", disk_full)
    with pytest.raises(LakeError, match=r"cannot write .*No space left on device"):
        lake.write_station_status(first_status)
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


def test_reader_check_catches_a_half_written_file(tmp_path: Path, first_status: list[StationStatus]) -> None:
    """The check used below is able to fail: a non-atomic write is caught."""
    data = parquet_bytes(station_status_table(first_status))
    (tmp_path / "half.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(pa.ArrowInvalid):
        read_every_visible_file(f"{tmp_path}/**/*.parquet")


def test_concurrent_readers_never_see_partial_files(lake: Lake, tmp_path: Path, first_status: list[StationStatus]) -> None:
    big, small = first_status, first_status[:50]
    pattern = f"{tmp_path / 'lake'}/curated/station_status/**/*.parquet"
    lake.write_station_status(small)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                lake.write_station_status(big if i % 2 == 0 else small)
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


# -- one schema across files: pyarrow datasets and DuckDB with partition pruning ----------------


def test_files_read_as_one_table_with_partition_pruning(lake: Lake, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    document = recorded_feed("station_status")
    lake.write_station_status(status_records(document))                        # 2024-03-13 hour 13
    lake.write_station_status(status_records(document, shift_s=-14 * 3600))    # 2024-03-12 hour 23
    lake.write_station_status(status_records(document, system_id="othersys")[:100])
    files = sorted(root.glob("curated/station_status/**/*.parquet"))
    assert len(files) == 3
    assert all(pq.read_schema(f).equals(STATION_STATUS_SCHEMA) for f in files)
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

    con = duckdb.connect()
    source = lake.duckdb_source("station_status")
    rows = con.sql(
        f"SELECT system, date::VARCHAR, hour, count(*), min(station_id IS NOT NULL) FROM {source} "
        "WHERE date < DATE '2024-03-14' GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [("citibike", "2024-03-12", 23, 2208, True), ("citibike", "2024-03-13", 13, 2208, True),
                    ("othersys", "2024-03-13", 13, 100, True)]
    plain = f"read_parquet('{root}/curated/station_status/**/*.parquet', hive_partitioning=true)"
    assert con.sql(f"SELECT count(*) FROM {plain} WHERE system = 'othersys'").fetchone() == (100,)
    assert con.sql(f"SELECT count(*) FROM {plain} WHERE date = DATE '2024-03-13' AND hour = 13").fetchone() == (2308,)
    with pytest.raises(duckdb.Error):
        con.sql(f"SELECT count(*) FROM {plain}").fetchall()  # the trap is real when not pruned
    types = {row[0]: row[1] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    assert types["last_reported"] == "TIMESTAMP WITH TIME ZONE"
    assert types["num_bikes_available"] == "INTEGER"
    assert types["vehicle_types_available"] == "STRUCT(vehicle_type_id VARCHAR, count INTEGER)[]"


def test_status_parquet_is_an_order_of_magnitude_smaller_than_the_feed(first_status: list[StationStatus]) -> None:
    raw_bytes = len(recorded("station_status")[0].read_bytes())
    parquet = parquet_bytes(station_status_table(first_status))
    per_row, raw_per_row = len(parquet) / len(first_status), raw_bytes / len(first_status)
    assert raw_per_row > 300
    assert per_row < 40, f"{per_row:.1f} bytes per status row"
    metadata = pq.ParquetFile(pa.BufferReader(parquet)).metadata
    assert metadata.num_row_groups == 1
    chunks = {chunk.path_in_schema: chunk for chunk in map(metadata.row_group(0).column, range(metadata.num_columns))}
    assert chunks["station_id"].compression == chunks["extras"].compression == "ZSTD"
    # one value per snapshot: zstd would only add its frame; counts and flags: a few bits per value
    assert chunks["system_id"].compression == chunks["last_updated"].compression == "UNCOMPRESSED"
    assert chunks["num_docks_available"].compression == chunks["is_installed"].compression == "UNCOMPRESSED"


SECONDS = st.one_of(st.none(), st.integers(0, 4_000_000_000), st.floats(0, 4e9),
                    st.integers(0, 4_000_000).map(lambda n: n / 2000))  # halves of a millisecond


@given(st.lists(SECONDS, max_size=2 * FEW_VALUES))
def test_times_become_milliseconds_rounded_half_to_even(values: list[float | None]) -> None:
    """Few values are converted in Python, a snapshot's repeated time from one value, many in
    Arrow: all as Arrow rounds the float product half to even."""
    reference = pc.round(pc.multiply(pa.array(values, type=pa.float64()), 1000.0),
                         round_mode="half_to_even").cast(pa.int64()).to_pylist()
    assert as_milliseconds(values).to_pylist() == reference
    if values and values[0] is not None:
        columns = StationStatusColumns(system_id="s", last_updated=int(values[0]), fetched_at=values[0],
                                       station_id=["a"], num_bikes_available=[1], num_ebikes_available=[None],
                                       num_bikes_disabled=[None], num_docks_available=[None],
                                       num_docks_disabled=[None], is_installed=[True], is_renting=[True],
                                       is_returning=[True], last_reported=[None], vehicle_types_available=[None],
                                       extras=[b"{}"])
        fetched = build_table("station_status", columns)["fetched_at"].cast(pa.timestamp("ms")).cast(pa.int64())
        assert fetched.to_pylist() == reference[:1]


def test_rows_are_sorted_by_station_id_whatever_the_order_before(first_status: list[StationStatus]) -> None:
    """The order found for one list of stations is reused for the same list, never for another."""
    first = first_status[0]
    for records in (first_status, first_status, first_status[::-1], first_status[1:], first_status[::-1]):
        columns = StationStatusColumns.from_records(records, system_id=first.system_id, last_updated=first.last_updated,
                                                    fetched_at=first.fetched_at)
        by_id = {record.station_id: record for record in records}
        for table in (station_status_table(columns), station_status_table(records)):
            assert table["station_id"].to_pylist() == sorted(by_id)
            assert table["num_docks_available"].to_pylist() == [by_id[i].num_docks_available for i in sorted(by_id)]


def test_each_table_keeps_its_own_station_order(first_status: list[StationStatus]) -> None:
    """A snapshot's quarantine file is built between two status files: it must not make the next
    status file sort its stations again (one remembered order per table)."""
    first = first_status[0]
    columns = StationStatusColumns.from_records(first_status, system_id=first.system_id,
                                                last_updated=first.last_updated, fetched_at=first.fetched_at)
    quarantined = [QuarantinedRecord(system_id="citibike", feed="station_status", station_id=f"s{i}", reasons=["x"],
                                     raw="{}", last_updated=SNAPSHOT_AT, fetched_at=SNAPSHOT_AT) for i in (2, 1)]
    station_status_table(columns)
    remembered = tables._last_orders["station_status"][1]
    assert build_table("quarantine", quarantined)["station_id"].to_pylist() == ["s1", "s2"]
    station_status_table(columns)
    assert tables._last_orders["station_status"][1] is remembered


def test_status_parquet_has_statistics_of_ids_and_times(first_status: list[StationStatus]) -> None:
    table = station_status_table(first_status)
    parquet = parquet_bytes(table)
    metadata = pq.ParquetFile(pa.BufferReader(parquet)).metadata
    chunks = {chunk.path_in_schema: chunk for chunk in map(metadata.row_group(0).column, range(metadata.num_columns))}
    ids = sorted(record.station_id for record in first_status)
    assert (chunks["station_id"].statistics.min, chunks["station_id"].statistics.max) == (ids[0], ids[-1])
    assert chunks["last_updated"].is_stats_set and chunks["last_reported"].is_stats_set
    assert not chunks["num_bikes_available"].is_stats_set and not chunks["extras"].is_stats_set
    assert b"ARROW:schema" not in (metadata.metadata or {})  # the lake's explicit schemas describe the files
    assert read_parquet_bytes(parquet).equals(table)


def test_encoded_files_are_the_bytes_the_writers_write(lake: Lake, tmp_path: Path,
                                                       first_status: list[StationStatus]) -> None:
    files = encode_station_status(first_status)
    assert [key for key, _ in files] == [layout.curated_key("station_status", "citibike", SNAPSHOT_AT)]
    assert lake.files("station_status") == []  # encoding writes nothing
    assert lake.write_files(files) == [files[0][0]]
    assert (tmp_path / "lake" / files[0][0]).read_bytes() == files[0][1]
    assert parquet_bytes(station_status_table(first_status)) == files[0][1]


def test_tiny_files_are_stored_uncompressed_and_read_the_same(first_status: list[StationStatus]) -> None:
    tiny = parquet_bytes(station_status_table(first_status[:3]))
    metadata = pq.ParquetFile(pa.BufferReader(tiny)).metadata
    assert metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    assert pq.read_table(pa.BufferReader(tiny)).equals(station_status_table(first_status[:3]))


def test_unique_columns_skip_the_dictionary(first_status: list[StationStatus]) -> None:
    metadata = pq.ParquetFile(pa.BufferReader(parquet_bytes(station_status_table(first_status)))).metadata
    encodings = {metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).encodings
                 for i in range(metadata.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["station_id"] and "RLE_DICTIONARY" not in encodings["extras"]
    assert "RLE_DICTIONARY" in encodings["vehicle_types_available.list.element.vehicle_type_id"]
    assert "DELTA_BINARY_PACKED" in encodings["num_bikes_available"]  # whole numbers: delta-encoded instead
    assert "DELTA_BINARY_PACKED" in encodings["vehicle_types_available.list.element.count"]


def test_delta_encoded_counts_read_the_same_in_duckdb(tmp_path: Path, first_status: list[StationStatus]) -> None:
    """Counts (delta-encoded, uncompressed) and flags (bit-packed) as pyarrow and DuckDB read them,
    nulls and nested vehicle type counts included."""
    records = [msgspec.structs.replace(record, num_ebikes_available=None if i % 7 == 0 else record.num_ebikes_available,
                                       is_renting=i % 3 != 0,
                                       vehicle_types_available=[VehicleTypeCount("classic", i % 40),
                                                                VehicleTypeCount("ebike", 2**31 - 1 - i)]
                                       if i % 5 == 0 else None)
               for i, record in enumerate(first_status)]
    table = station_status_table(records)
    path = tmp_path / "status.parquet"
    path.write_bytes(parquet_bytes(table))
    metadata = pq.ParquetFile(path).metadata
    chunks = {chunk.path_in_schema: chunk for chunk in map(metadata.row_group(0).column, range(metadata.num_columns))}
    assert chunks["num_bikes_available"].compression == chunks["is_renting"].compression == "UNCOMPRESSED"
    assert chunks["last_reported"].compression == "ZSTD"
    assert pq.read_table(path).equals(table)
    names = ["station_id", "num_bikes_available", "num_ebikes_available", "num_docks_available", "is_renting",
             "vehicle_types_available"]
    expected = sorted(zip(*(table.column(name).to_pylist() for name in names)), key=lambda row: row[0])
    read = duckdb.sql(f"SELECT {', '.join(names)} FROM read_parquet('{path}') ORDER BY station_id").fetchall()
    assert read == expected


# -- pipeline runs ------------------------------------------------------------------------------


def test_runs_table_from_dataclasses_and_dicts(lake: Lake) -> None:
    success = RunRecord(
        run_id="scheduled__2024-03-13T13:07:00+00:00", system_id="citibike", started_at=SNAPSHOT_AT + 0.25,
        finished_at=SNAPSHOT_AT + 3.75, outcome="success", stations_information=2208, stations_status=2208,
        stations_valid=2200, stations_quarantined=8, stations_published=1300,
        quarantine_reasons={"capacity_exceeded": 5, "future_report": 3},
        fetch_s=0.5, validate_s=0.25, produce_s=1.5, write_s=0.125,
    )
    failed = {"run_id": "manual__1", "system_id": "othersys", "started_at": SNAPSHOT_AT, "outcome": "failed",
              "finished_at": SNAPSHOT_AT + 10.0, "error": "othersys station_status: feed unreachable", "duration_s": 10.0}
    keys = lake.write_runs([success, failed])
    assert keys == [
        "pipeline_runs/date=2024-03-13/scheduled__2024-03-13T13_07_00_00_00-citibike.parquet",
        "pipeline_runs/date=2024-03-13/manual__1-othersys.parquet",
    ]
    lake.write_run(success)  # the retried task: still one row
    table = lake.read_table("pipeline_runs")
    assert table.num_rows == 2
    assert table.schema.field("quarantine_reasons").type == PIPELINE_RUNS_SCHEMA.field("quarantine_reasons").type
    runs = sorted(lake.read_runs(), key=lambda r: r.run_id)
    assert runs == [RunRecord.from_mapping(failed), success]
    assert runs[1].duration_s == 3.5
    assert lake.read_runs(system="othersys") == [RunRecord.from_mapping(failed)]
    con = duckdb.connect()
    assert con.sql(
        f"SELECT outcome, duration_s, quarantine_reasons['capacity_exceeded'] FROM {lake.duckdb_source('pipeline_runs')} "
        "WHERE system_id = 'citibike'"
    ).fetchall() == [("success", 3.5, 5)]


def test_many_runs_share_a_file_per_system_and_date(lake: Lake) -> None:
    day = 86_400
    runs = [RunRecord(run_id=f"backfill__citibike__{i}", system_id="citibike", started_at=SNAPSHOT_AT + i,
                      outcome="success") for i in range(3)]
    runs.append(RunRecord(run_id="backfill__citibike__next-day", system_id="citibike",
                          started_at=SNAPSHOT_AT + day, outcome="failed", error="boom"))
    keys = lake.write_runs(runs)
    assert keys == [
        "pipeline_runs/date=2024-03-13/backfill__citibike__0--backfill__citibike__2-citibike.parquet",
        "pipeline_runs/date=2024-03-14/backfill__citibike__next-day-citibike.parquet",
    ]
    assert sorted(lake.read_runs("citibike"), key=lambda r: r.started_at) == runs


def test_run_records_refuse_unknown_outcomes_and_fields() -> None:
    with pytest.raises(LakeError, match="outcome 'ok' is unknown; use one of success, no_new_data, stale, failed, skipped"):
        RunRecord(run_id="r", system_id="citibike", started_at=0.0, outcome="ok")
    with pytest.raises(LakeError, match=r"unknown fields \['stations'\]"):
        RunRecord.from_mapping({"run_id": "r", "system_id": "citibike", "started_at": 0.0, "outcome": "skipped", "stations": 1})


# -- state store ---------------------------------------------------------------------------------


def test_state_store_round_trips_and_stays_out_of_tables(lake: Lake, tmp_path: Path, first_status: list[StationStatus]) -> None:
    assert lake.read_state("citibike/http.json") is None
    lake.write_state("citibike/http.json", b'{"etag": "v1"}')
    lake.write_state("citibike/http.json", b'{"etag": "v2"}')
    lake.write_state("citibike/changes.bin", bytes(range(256)))
    assert lake.read_state("citibike/http.json") == b'{"etag": "v2"}'
    assert lake.read_state("citibike/changes.bin") == bytes(range(256))
    assert sorted(p.name for p in (tmp_path / "lake/_state/citibike").iterdir()) == ["changes.bin", "http.json"]
    lake.write_station_status(first_status[:3])
    whole_lake = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive")
    assert whole_lake.count_rows() == 3  # the _state folder is skipped like temporary files


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", ".hidden", "a/../b", ""])
def test_state_keys_cannot_escape_the_state_folder(lake: Lake, key: str) -> None:
    with pytest.raises(LakeError, match="state key"):
        lake.write_state(key, b"x")


def test_state_must_be_bytes(lake: Lake) -> None:
    with pytest.raises(LakeError, match="must be bytes, not dict; encode it first"):
        lake.write_state("k", {"etag": "x"})  # type: ignore[arg-type]


# -- configuration errors --------------------------------------------------------------------------


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


def test_empty_tables_read_as_empty_with_the_schema(lake: Lake) -> None:
    table = lake.read_table("station_status")
    assert table.num_rows == 0 and "hour" in table.column_names
    assert table.schema.field("vehicle_types_available").type == STATION_STATUS_SCHEMA.field("vehicle_types_available").type
