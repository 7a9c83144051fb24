"""The hourly availability rollup (``station_status_hourly``) against lakes the pipeline made, real DuckDB.

Every expectation is a GROUP BY over the catalog's ``station_status`` view written out here, or the
Parquet files' own row counts; the rollup must equal it after every kind of crawl: the first, one with
nothing new, one after a new minute file, after compaction and after the catalog is built anew. And a
crawl writes only the day files whose partitions changed (their names and modification times say so);
files no longer listed stay for the grace period, for readers of older catalogs, then go.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from citibikes import compaction
from citibikes.catalog import CatalogError, CatalogInputError, connect, refresh_catalog
from citibikes.catalog.rollup import folder
from citibikes.lake import Lake, open_lake
from support.pipeline_lake import minute_runs, pipeline_lake

HOUR = 3600
EXPECTED = """
    SELECT system, date, hour, station_id, count(*), avg(num_bikes_available), min(num_bikes_available),
           max(num_bikes_available), avg(num_ebikes_available), avg(num_docks_available),
           sum(CASE WHEN num_bikes_available = 0 THEN 1 ELSE 0 END), sum(CASE WHEN num_docks_available = 0 THEN 1 ELSE 0 END),
           sum(CASE WHEN is_renting THEN 1 ELSE 0 END), min(last_updated), max(last_updated)
    FROM station_status GROUP BY system, date, hour, station_id ORDER BY system, date, hour, station_id"""
ROLLUP = """
    SELECT system, date, hour, station_id, observations, bikes_mean, bikes_min, bikes_max, ebikes_mean, docks_mean,
           empty_observations, full_observations, renting_observations, first_observed, last_observed
    FROM station_status_hourly ORDER BY system, date, hour, station_id"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """12 minute runs of 2 systems, 15 minutes apart, from the hour H0 four hours ago (H0-H3); returns the folder and H0."""
    folder = tmp_path_factory.mktemp("made")
    return folder, minute_runs(folder, 12, 15 * 60, hours_ago=4)[1]


@pytest.fixture
def lake(made: tuple[Path, float], tmp_path: Path) -> Lake:
    shutil.copytree(made[0] / "lake", tmp_path / "lake")
    return open_lake(str(tmp_path / "lake"))


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return tmp_path / "state" / "catalog" / "citibikes.duckdb"


def rollup_and_expected(catalog: Path) -> tuple[list[tuple], list[tuple]]:
    con = connect(catalog)
    try:
        return con.sql(ROLLUP).fetchall(), con.sql(EXPECTED).fetchall()
    finally:
        con.close()


def aggregated_in(catalog: Path) -> dict[str, int]:
    """Per partition, the catalog version that aggregated it."""
    con = connect(catalog)
    try:
        return dict(con.sql("SELECT partition, aggregated_in FROM _rollups").fetchall())
    finally:
        con.close()


def day_files(catalog: Path) -> dict[str, int]:
    """Every file of the rollup's folder (relative name: modification time), temporary ones included."""
    root = folder(catalog)
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def listed(catalog: Path) -> dict[tuple[str, str], str]:
    """Per (system, date), the day file the catalog lists."""
    con = connect(catalog)
    try:
        return {(s, str(d)): f for s, d, f in con.sql("SELECT DISTINCT system, date, file FROM _rollups").fetchall()}
    finally:
        con.close()


def parquet_rows(lake: Lake) -> int:
    return sum(pq.read_metadata(lake.storage.path(key)).num_rows for key in lake.files("station_status"))


def test_the_rollup_equals_a_group_by_over_station_status_and_a_second_crawl_aggregates_nothing(
        lake: Lake, catalog: Path) -> None:
    first = refresh_catalog(lake, catalog)
    rollup, expected = rollup_and_expected(catalog)
    assert rollup == expected and len(rollup) > 4 * 2000  # 4 hours of ~2,200 Citi Bike stations, and synth-01
    assert sum(row[4] for row in rollup) == parquet_rows(lake) == first.tables["station_status"]["rows"]
    assert any(row[10] for row in rollup) and any(row[8] is not None for row in rollup)  # empty stations, e-bikes
    con = connect(catalog)
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE station_status_hourly)").fetchall())
    assert (types["date"], types["hour"], types["observations"], types["bikes_mean"], types["last_observed"]) == (
        "DATE", "INTEGER", "BIGINT", "DOUBLE", "TIMESTAMP WITH TIME ZONE")
    partitions = con.sql("SELECT partition, rows, file_count FROM _partitions WHERE table_name = 'station_status' "
                         "ORDER BY ALL").fetchall()
    assert con.sql("SELECT partition, rows, files FROM _rollups ORDER BY ALL").fetchall() == partitions
    con.close()
    assert first.rollup_partitions_aggregated == len(partitions) == 8
    assert set(aggregated_in(catalog).values()) == {first.version}
    days = listed(catalog)  # one file per system and day, and nothing else in the folder
    assert len(days) == first.rollup_files_written == len({(row[0], row[1]) for row in rollup}) >= 2
    assert set(day_files(catalog)) == set(days.values()) and first.rollup_bytes_written > 0
    files = day_files(catalog)

    again = refresh_catalog(lake, catalog)
    assert (again.footers_read, again.rollup_partitions_aggregated, again.rollup_files_written) == (0, 0, 0)
    assert day_files(catalog) == files, "nothing written"
    assert set(aggregated_in(catalog).values()) == {first.version}, "every row kept"
    assert rollup_and_expected(catalog) == (rollup, expected)
    # A file written again under its name (a retried run) is aggregated again, with its partition only,
    # into a new file for its day; a reader holding the catalog before keeps reading the old one.
    reader = connect(catalog)
    key = lake.files("station_status")[0]
    path = Path(lake.storage.path(key))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    retried = refresh_catalog(lake, catalog)
    assert (retried.rollup_partitions_aggregated, retried.rollup_files_written, retried.rollup_files_deleted) == (1, 1, 0)
    partition = key.removeprefix("curated/station_status/").rsplit("/", 1)[0]
    day = tuple(part.split("=", 1)[1] for part in partition.split("/")[:2])
    assert {p for p, v in aggregated_in(catalog).items() if v == retried.version} == {partition}
    after = listed(catalog)
    assert {d for d in days if after[d] != days[d]} == {day}
    assert day_files(catalog) == {**files, after[day]: day_files(catalog)[after[day]]}, "one file added, none touched"
    assert rollup_and_expected(catalog) == (rollup, expected)
    # The old day file is retired, not deleted, for the grace period: the reader still gets its rows.
    assert refresh_catalog(lake, catalog).rollup_files_deleted == 0 and days[day] in day_files(catalog)
    assert reader.sql(ROLLUP).fetchall() == rollup
    # A crawl that died after writing a day file left it (and a temporary file): unlisted, retired alike.
    leftover = folder(catalog) / "system=x/date=2024-01-01"
    leftover.mkdir(parents=True)
    for name in ("0" * 32 + ".parquet", ".tmp.parquet.abc.tmp"):
        (leftover / name).write_bytes(b"left")
    assert refresh_catalog(lake, catalog).rollup_files_deleted == 0 and leftover.exists()
    # Past the grace period (here 0) they all go: the old day file, the leftovers and their folders.
    gone = refresh_catalog(lake, catalog, grace_s=0)
    assert gone.rollup_files_deleted == 3 and not leftover.parent.exists()
    assert set(day_files(catalog)) == set(after.values())
    with pytest.raises(duckdb.Error):  # what the grace period is for
        reader.sql(ROLLUP).fetchall()
    reader.close()
    assert rollup_and_expected(catalog) == (rollup, expected)
    # A partition removed from the lake (a retention job) leaves the rollup; nothing else is aggregated.
    shutil.rmtree(path.parent)
    removed = refresh_catalog(lake, catalog)
    assert (removed.rollup_partitions_aggregated, removed.rollup_files_written) == (0, 1)
    assert partition not in aggregated_in(catalog)
    rollup_after, expected_after = rollup_and_expected(catalog)
    assert rollup_after == expected_after == [row for row in rollup if f"system={row[0]}/date={row[1]}/hour={row[2]}"
                                              != partition]
    assert len(rollup_after) < len(rollup)


def test_a_new_minute_file_aggregates_only_its_partition(tmp_path: Path) -> None:
    hour = (time.time() - 3 * HOUR) // HOUR * HOUR
    pipeline = pipeline_lake(tmp_path, start=hour + 60)
    try:
        for _ in range(4):
            pipeline.minute(20 * 60)  # H0 twice, H1 twice
        catalog = pipeline.settings.catalog_path
        first = refresh_catalog(pipeline.lake, catalog)
        assert first.rollup_partitions_aggregated == 4
        before = set(pipeline.lake.files("station_status"))
        pipeline.minute(60)
        new = {key.removeprefix("curated/station_status/").rsplit("/", 1)[0]
               for key in set(pipeline.lake.files("station_status")) - before}
        assert len(new) == 2 and all(f"hour={time.gmtime(hour + HOUR).tm_hour}" in p for p in new)  # one per system, H1
        days, files = listed(catalog), day_files(catalog)
        second = refresh_catalog(pipeline.lake, catalog)
        assert (second.rollup_partitions_aggregated, second.rollup_files_written) == (2, 2)  # the hour's day, per system
        versions = aggregated_in(catalog)
        assert {p for p, v in versions.items() if v == second.version} == new
        after = listed(catalog)
        changed = {tuple(part.split("=", 1)[1] for part in p.split("/")[:2]) for p in new}
        assert {d for d in after if after[d] != days.get(d)} == changed
        assert {name: t for name, t in day_files(catalog).items() if name in files} == files, "other days untouched"
        rollup, expected = rollup_and_expected(catalog)
        assert rollup == expected and sum(row[4] for row in rollup) == parquet_rows(pipeline.lake)
    finally:
        pipeline.close()


def test_compaction_re_aggregates_each_compacted_hour_once_to_the_same_rows_as_a_catalog_built_anew(
        lake: Lake, catalog: Path, made: tuple[Path, float]) -> None:
    settle = int(time.time() - (made[1] + 3 * HOUR) - HOUR / 2)  # closes H0-H2, not H3
    refresh_catalog(lake, catalog)
    rollup, expected = rollup_and_expected(catalog)
    before, days_before = aggregated_in(catalog), listed(catalog)

    summary = compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    assert summary.tables["station_status"].partitions == 6
    con = connect(catalog)
    compacted = {p for p, in con.sql("SELECT partition FROM _partitions WHERE table_name = 'station_status' AND "
                                     "files[1] LIKE '%/_compacted/%'").fetchall()}
    version = con.sql("SELECT catalog_version FROM _crawl").fetchone()[0]
    con.close()
    after = aggregated_in(catalog)
    assert len(compacted) == 6 and {p for p, v in after.items() if v == version} == compacted
    days_after = listed(catalog)  # the compacted hours' days got new files, the others kept theirs
    assert {d for d in days_after if days_after[d] != days_before[d]} == {
        tuple(part.split("=", 1)[1] for part in p.split("/")[:2]) for p in compacted}
    assert {p: v for p, v in after.items() if p not in compacted} == {p: v for p, v in before.items() if p not in compacted}
    assert rollup_and_expected(catalog) == (rollup, expected), "the same numbers from the compacted files"

    # Deleting the replaced files changes nothing the catalog reads: nothing aggregated again.
    done = compaction.compact(lake, catalog, settle_s=settle, grace_s=0)
    assert done.deleted_files > 0 and aggregated_in(catalog) == after
    assert rollup_and_expected(catalog) == (rollup, expected)

    # A catalog built anew finds the day files under their digest names: nothing aggregated or written.
    days, files = listed(catalog), day_files(catalog)
    catalog.unlink()
    anew = refresh_catalog(lake, catalog)
    assert (anew.rollup_partitions_aggregated, anew.rollup_files_written) == (0, 0) and day_files(catalog) == files
    assert listed(catalog) == days and set(aggregated_in(catalog).values()) == {None}
    assert rollup_and_expected(catalog) == (rollup, expected)
    # Without them, it aggregates everything again, into files of the same names.
    catalog.unlink()
    shutil.rmtree(folder(catalog))
    anew = refresh_catalog(lake, catalog)
    assert anew.rollup_partitions_aggregated == 8 and anew.rollup_files_written == len(days)
    assert listed(catalog) == days and rollup_and_expected(catalog) == (rollup, expected)


def test_a_partition_that_cannot_be_read_fails_the_crawl_and_leaves_the_catalog(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    before, files = hashlib.sha256(catalog.read_bytes()).hexdigest(), day_files(catalog)
    key = lake.files("station_status")[0]
    data = bytearray(Path(lake.storage.path(key)).read_bytes())
    data[4:2004] = b"\xff" * 2000  # the first pages damaged, the footer intact: the crawl registers the file
    damaged = Path(lake.storage.path(key.rsplit("/", 1)[0])) / "1700000000.parquet"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CatalogError) as caught:
        refresh_catalog(lake, catalog)
    message = str(caught.value)
    assert not isinstance(caught.value, CatalogInputError)
    assert "\n" not in message and f"cannot aggregate {damaged} of station_status into station_status_hourly" in message
    assert "write it again or move it out of the lake" in message, message
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    assert not list(catalog.parent.glob(".*.tmp*")) and day_files(catalog) == files
    damaged.unlink()
    again = refresh_catalog(lake, catalog)
    assert (again.rollup_partitions_aggregated, again.rollup_files_written) == (0, 0)  # the lake as it was: all kept
    rollup, expected = rollup_and_expected(catalog)
    assert rollup == expected
