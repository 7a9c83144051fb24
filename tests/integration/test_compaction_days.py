"""Compaction of closed days on a lake the pipeline made (minute runs every 15 minutes over the last
four hours of yesterday, UTC, two systems), through the real DuckDB catalog: the hours first, as the
hourly runs do while the day is open, then the day, into one file with ``hour`` as a column; no row
missing or doubled at any stage (also for a reader process querying all along), late files folded
in, the backfill's view of minute files kept.

Expectations come from the catalog before compaction or from the Parquet files, never from the code
under test.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from citibikes import compaction
from citibikes.catalog import connect, refresh_catalog
from citibikes.lake import Lake, layout, open_lake
from citibikes.lake.store import status_file
from citibikes.replay.backfill import minute_files
from support.catalog_reader import start_reader
from support.pipeline_lake import fingerprints, yesterday_evening

HOUR = 3600
TABLES = ("station_status", "quarantine")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Yesterday evening's minute runs (:func:`support.pipeline_lake.yesterday_evening`) and H0."""
    folder = tmp_path_factory.mktemp("made_day")
    first_hour = yesterday_evening(folder)
    assert datetime.fromtimestamp(first_hour, UTC).hour == 20
    return folder, first_hour


@pytest.fixture
def lake(made: tuple[Path, float], tmp_path: Path) -> Lake:
    shutil.copytree(made[0] / "lake", tmp_path / "lake")
    return open_lake(str(tmp_path / "lake"))


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return tmp_path / "state" / "catalog" / "citibikes.duckdb"


def files_below(lake: Lake, day: str, table: str = "station_status") -> list[str]:
    """Every file and folder below a day folder, relative to it."""
    root = Path(lake.storage.path(f"{layout.TABLES[table].prefix}/{day}"))
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def read(catalog: Path) -> dict[str, list[tuple]]:
    con = connect(catalog)
    try:
        return fingerprints(con, TABLES)
    finally:
        con.close()


def test_the_hours_then_the_day_become_one_sorted_file_with_the_hour_as_a_column(
        lake: Lake, catalog: Path, made: tuple[Path, float]) -> None:
    refresh_catalog(lake, catalog)
    expected = read(catalog)
    held = connect(catalog)  # a reader that opened the catalog before compaction
    minutes = {system: minute_files(lake, system) for system in ("citibike", "synth-01")}
    day = f"date={datetime.fromtimestamp(made[1], UTC):%Y-%m-%d}"
    before = {system: files_below(lake, f"system={system}/{day}") for system in minutes}
    assert all(len(minutes[system]) == 12 for system in minutes)

    # While the day is open (10 minutes into H3), the hourly runs compact H0-H2 on their own.
    hours = compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR, now=made[1] + 3 * HOUR + 600)
    assert hours.tables["station_status"].partitions == 6 and hours.tables["station_status"].files_after == 6
    assert read(catalog) == expected
    # Once the day is closed, it becomes one file per system and table: the 3 hour files and H3's minute file.
    days = compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR)
    status = days.tables["station_status"]
    assert (status.partitions, status.files_before, status.files_after) == (2, 8, 2)
    assert status.bytes_after < status.bytes_before and days.tables["quarantine"].partitions == 2
    assert read(catalog) == expected == fingerprints(held, TABLES), "no row missing or doubled"

    for system in minutes:
        key = f"curated/station_status/system={system}/{day}/_compacted/v1/compacted.parquet"
        hour_rows = [0] * 24
        file = pq.ParquetFile(lake.storage.path(key))
        sources = layout.compacted_sources(file.metadata.metadata)
        assert set(sources) == {name for name in before[system] if name.endswith(".parquet")} | {
            f"hour={h}/_compacted/v1/compacted.parquet" for h in (20, 21, 22)}, "every file below the day"
        for _, _, hour, count, _ in (row for row in expected["station_status"] if row[0] == system):
            hour_rows[hour] = count
        assert list(layout.compacted_hour_rows(file.metadata.metadata)) == hour_rows
        table = file.read()
        assert table.schema.field("hour").type == "int32" and table.num_rows == sum(hour_rows)
        assert table["hour"].to_pylist() == [t.hour for t in table["last_updated"].to_pylist()]
        order = table.select(["station_id", "last_updated"]).to_pylist()
        assert order == sorted(order, key=lambda r: (r["station_id"], r["last_updated"]))
        assert all(file.metadata.row_group(i).num_rows >= 100_000 or i == file.metadata.num_row_groups - 1
                   for i in range(file.metadata.num_row_groups))
    partitions = connect(catalog).sql("SELECT partition, files, rows FROM _partitions WHERE table_name = 'station_status' "
                                      "ORDER BY ALL").fetchall()
    assert [(p, n) for p, _, n in partitions] == [(f"system={s}/date={d}/hour={h}", n)
                                                  for s, d, h, n, _ in expected["station_status"]]
    assert all(files == [lake.storage.uri(f"curated/station_status/{p.rsplit('/', 1)[0]}/_compacted/v1/compacted.parquet")]
               for p, files, _ in partitions)

    # Idempotent; the lake alone says what it holds; the backfill still tells the minute files.
    assert compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR).tables == {}
    catalog.unlink()
    refresh_catalog(lake, catalog)
    assert read(catalog) == expected
    assert {system: minute_files(lake, system) for system in minutes} == minutes

    # After the grace period (0 here) every source goes, emptied folders too: the day is one file.
    held.close()
    done = compaction.compact(lake, catalog, settle_s=0, grace_s=0)
    assert done.tables == {} and done.deleted_files == sum(  # the minute files, and the hours' compacted files
        f.files_before for run in (hours, days) for f in run.tables.values())
    assert files_below(lake, f"system=citibike/{day}") == ["_compacted", "_compacted/v1", "_compacted/v1/compacted.parquet"]
    assert read(catalog) == expected
    refresh_catalog(lake, catalog)
    assert read(catalog) == expected
    assert {system: minute_files(lake, system) for system in minutes} == minutes
    table = lake.read_table("station_status")
    assert sorted(pc.unique(table["hour"]).to_pylist()) == [20, 21, 22, 23]
    assert table.num_rows == sum(row[3] for row in expected["station_status"])
    con = connect(catalog)
    assert con.sql("SELECT system, date::VARCHAR, hour, sum(observations) FROM station_status_hourly GROUP BY ALL "
                   "ORDER BY ALL").fetchall() == [row[:4] for row in expected["station_status"]]


def test_a_late_file_in_a_compacted_day_is_read_at_once_and_folded_into_the_next_version(
        lake: Lake, catalog: Path, made: tuple[Path, float]) -> None:
    compaction.compact(lake, catalog, settle_s=0, grace_s=0)
    compaction.compact(lake, catalog, settle_s=0, grace_s=0)  # the sources go
    day = f"system=citibike/date={datetime.fromtimestamp(made[1], UTC):%Y-%m-%d}"
    assert files_below(lake, day) == ["_compacted", "_compacted/v1", "_compacted/v1/compacted.parquet"]
    rows = lake.read_file(f"curated/station_status/{day}/_compacted/v1/compacted.parquet", "station_status")
    first = rows["last_updated"][0].as_py()
    snapshot = rows.filter(pc.equal(rows["last_updated"], first)).drop_columns(["hour"])
    total = connect(catalog).sql("SELECT count(*) FROM station_status").fetchone()[0]
    # A snapshot landed late into the compacted day (a backfill, a retried run): 30 s after one it holds.
    late, data = status_file("citibike", snapshot, int(first.timestamp()) + 30)
    lake.write_files([(late, data)])
    refresh_catalog(lake, catalog)
    assert connect(catalog).sql("SELECT count(*) FROM station_status").fetchone()[0] == total + snapshot.num_rows
    expected = read(catalog)

    summary = compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR)
    assert summary.tables["station_status"].partitions == 1 and summary.tables["station_status"].files_before == 2
    assert read(catalog) == expected
    v2 = lake.storage.path(f"curated/station_status/{day}/_compacted/v2/compacted.parquet")
    assert late.removeprefix(f"curated/station_status/{day}/") in layout.compacted_sources(pq.read_metadata(v2).metadata)
    compaction.compact(lake, catalog, settle_s=0, grace_s=0)  # v1 and the late file go
    assert files_below(lake, day) == ["_compacted", "_compacted/v2", "_compacted/v2/compacted.parquet"]
    assert read(catalog) == expected


def test_readers_never_see_a_row_missing_or_doubled_while_the_hours_then_the_day_are_compacted(
        lake: Lake, catalog: Path, made: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refresh_catalog(lake, catalog)
    expected = sorted(map(tuple, connect(catalog).sql(
        "SELECT system, date::VARCHAR, hour, count(*), sum(num_bikes_available) FROM station_status GROUP BY ALL").fetchall()))
    grace = 3
    # Stretch each step, so that queries fall between the writes, the switches and the deletions.
    for name, pause in (("write_compacted", 0.3), ("_delete", 0.02)):
        original = getattr(compaction, name)
        monkeypatch.setattr(compaction, name, lambda *a, _o=original, _p=pause, **k: (_o(*a, **k), time.sleep(_p))[0])

    results = tmp_path / "results.jsonl"
    reader = start_reader(catalog, results)
    phases: dict[str, list[float]] = {}
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        phases["hours: write and switch"] = [time.time()]
        hours = compaction.compact(lake, catalog, settle_s=0, grace_s=grace, now=made[1] + 3 * HOUR + 600)
        phases["hours: write and switch"].append(time.time())
        reader.stdin.write("release\n")  # the held connection goes before anything is deleted
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "released"
        phases["day: write and switch"] = [time.time()]
        day = compaction.compact_files(lake, catalog, settle_s=0)
        refresh_catalog(lake, catalog, grace_s=grace)
        phases["day: write and switch"].append(time.time())
        time.sleep(grace)
        phases["delete"] = [time.time()]
        deleted, _ = compaction.delete_replaced(lake, catalog, grace_s=grace)
        phases["delete"].append(time.time())
        time.sleep(1)
    finally:
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        assert reader.wait(timeout=60) == 0, reader.stderr.read()

    queries = [json.loads(line) for line in results.read_text().splitlines()]
    for query in queries:
        assert query["error"] is None and sorted(map(tuple, query["rows"])) == expected, query
    for phase, (start, end) in phases.items():
        assert len([q for q in queries if q["kind"] == "new" and q["start"] <= end and q["end"] >= start]) >= 5, phase
    assert any(q["kind"] == "held" for q in queries if q["start"] <= phases["hours: write and switch"][1])
    assert hours.tables["station_status"].partitions == 6 and day.tables["station_status"].partitions == 2
    assert deleted == sum(f.files_before for run in (hours, day) for f in run.tables.values())
    assert files_below(lake, f"system=citibike/date={datetime.fromtimestamp(made[1], UTC):%Y-%m-%d}") == [
        "_compacted", "_compacted/v1", "_compacted/v1/compacted.parquet"]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize(("step", "call"), [("write_compacted", 2), ("refresh_catalog", 1), ("_delete", 3)])
def test_a_crash_while_a_day_is_compacted_leaves_the_data_whole_and_the_next_run_finishes(
        lake: Lake, catalog: Path, made: tuple[Path, float], monkeypatch: pytest.MonkeyPatch, step: str, call: int) -> None:
    compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR, now=made[1] + 3 * HOUR + 600)  # the hours first
    expected = read(catalog)
    original, calls = getattr(compaction, step), []

    def crashing(*args, **kwargs):  # the write and the deletes crash after doing their work, the crawl before
        calls.append(1)
        result = original(*args, **kwargs) if step != "refresh_catalog" or len(calls) != call else None
        if len(calls) == call:
            raise Crash(step)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(compaction, step, crashing)
        with pytest.raises(Crash):
            compaction.compact(lake, catalog, settle_s=0, grace_s=0)
    assert read(catalog) == expected, "the catalog in place reads every row once"
    refresh_catalog(lake, catalog)
    assert read(catalog) == expected, "so does a crawl of what the crash left"

    compaction.compact(lake, catalog, settle_s=0, grace_s=0)
    compaction.compact(lake, catalog, settle_s=0, grace_s=0)  # what the grace period kept after the switch
    assert read(catalog) == expected
    for system in ("citibike", "synth-01"):
        day = f"system={system}/date={datetime.fromtimestamp(made[1], UTC):%Y-%m-%d}"
        assert files_below(lake, day) == ["_compacted", "_compacted/v1", "_compacted/v1/compacted.parquet"]
