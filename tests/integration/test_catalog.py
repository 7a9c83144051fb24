"""The embedded catalog against a lake the pipeline made: real minute runs, real DuckDB, real files.

The lake comes from ``tasks.run_all`` over the replay feed (two systems, minutes in two hours);
every expectation is read back from the Parquet files themselves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from citibikes import cli
from citibikes.catalog import CatalogError, CatalogInputError, connect, describe, refresh_catalog
from citibikes.catalog.duckdb_catalog import writer_lock
from citibikes.lake import Lake, open_lake
from citibikes.lake.tables import parquet_bytes
from support.pipeline_lake import PipelineLake, pipeline_lake

LAKE_TABLES = {"station_status", "station_information", "quarantine", "pipeline_runs", "rebalancing", "checks"}
"""The tables the pipeline writes (the last two empty in these lakes: registered with their columns)."""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of 3 minute runs of 2 systems, 20 minutes apart (two hour partitions per system: at minutes
    40, 0 and 20, whatever the time of day)."""
    folder = tmp_path_factory.mktemp("made")
    pipeline = pipeline_lake(folder, start=(time.time() // 3600 - 3) * 3600 + 30 * 60)  # runs at :50, :10, :30
    try:
        for _ in range(3):
            pipeline.minute(20 * 60)
    finally:
        pipeline.close()
    return folder / "lake"


@pytest.fixture
def lake(made: Path, tmp_path: Path) -> Lake:
    """A copy of the made lake, for one test to change."""
    shutil.copytree(made, tmp_path / "lake")
    return open_lake(str(tmp_path / "lake"))


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return tmp_path / "state" / "catalog" / "citibikes.duckdb"


def parquet_rows(lake: Lake, table: str) -> int:
    return sum(pq.read_metadata(lake.storage.path(key)).num_rows for key in lake.files(table))


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.sql(f"SELECT count(*) FROM {table}").fetchone()[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partition_of(lake: Lake, table: str = "station_status") -> str:
    """The first partition folder of a table (``system=.../date=.../hour=...``)."""
    return lake.files(table)[0].removeprefix(f"curated/{table}/").rsplit("/", 1)[0]


def python(code: str, *args: str) -> subprocess.Popen:
    """Another process (a user's notebook, the dashboard) running ``code``."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- what users query ----------------------------------------------------------------------------

def test_each_table_is_queried_by_name_and_counts_equal_the_parquet_rows(lake: Lake, catalog: Path) -> None:
    summary = refresh_catalog(lake, catalog)
    assert set(summary.tables) == LAKE_TABLES
    assert summary.footers_read == sum(len(lake.files(t)) for t in LAKE_TABLES)
    # The README's line, in a process of its own, from the folder above the state folder.
    readme = subprocess.run(
        [sys.executable, "-c", "import duckdb; print(duckdb.connect('state/catalog/citibikes.duckdb', read_only=True)"
                               ".sql('select count(*) from station_status').fetchone()[0])"],
        cwd=catalog.parents[2], capture_output=True, text=True, check=True)
    assert int(readme.stdout) == parquet_rows(lake, "station_status") > 8000

    con = connect(catalog)
    for table in LAKE_TABLES:
        assert count(con, table) == parquet_rows(lake, table) == lake.read_table(table).num_rows == summary.tables[table]["rows"]
    names = {row[0] for row in con.sql("SELECT table_name FROM duckdb_tables() UNION ALL "
                                       "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert names == LAKE_TABLES | {"_crawl", "_files", "_partitions", "_schemas", "_tables", "_rollups",
                                   "_rollup_retired", "station_status_hourly"}  # no raw, no _state
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE station_status)").fetchall())
    assert (types["system"], types["date"], types["hour"]) == ("VARCHAR", "DATE", "INTEGER")
    assert types["num_bikes_available"] == "INTEGER" and types["last_updated"] == "TIMESTAMP WITH TIME ZONE"
    runs = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE pipeline_runs)").fetchall())
    assert runs["date"] == "DATE" and "hour" not in runs and "system" not in runs
    # The partitions the catalog lists are those the data has, typed.
    seen = con.sql("SELECT DISTINCT system, date, hour FROM station_status ORDER BY ALL").fetchall()
    listed = con.sql("SELECT system, date, hour FROM _partitions WHERE table_name = 'station_status' ORDER BY ALL").fetchall()
    assert seen == listed and len(listed) == 4 and {s for s, _, _ in listed} == {"citibike", "synth-01"}
    # Partition pruning works through the view.
    system, day, hour = listed[0]
    expected = con.execute("SELECT rows FROM _partitions WHERE table_name = 'station_status' AND system = ? AND date = ? "
                       "AND hour = ?", [system, day, hour]).fetchone()[0]
    assert con.execute("SELECT count(*) FROM station_status WHERE system = ? AND date = ? AND hour = ?",
                   [system, day, hour]).fetchone()[0] == expected


def test_a_new_minute_file_is_queried_without_a_crawl_and_a_crawl_reads_only_new_footers(tmp_path: Path) -> None:
    hour = (time.time() - 3 * 3600) // 3600 * 3600
    pipeline: PipelineLake = pipeline_lake(tmp_path, start=hour + 600)  # both minutes in one hour partition
    try:
        lake = pipeline.lake
        pipeline.minute()
        catalog = pipeline.settings.catalog_path
        refresh_catalog(lake, catalog)
        con = connect(catalog)
        before = {table: set(lake.files(table)) for table in LAKE_TABLES}
        assert count(con, "station_status") == parquet_rows(lake, "station_status")
        pipeline.minute(60)
        new = sum(len(set(lake.files(table)) - before[table]) for table in LAKE_TABLES)
        assert len(set(lake.files("station_status")) - before["station_status"]) == 2  # a file per system
        assert count(con, "station_status") == parquet_rows(lake, "station_status"), "no crawl needed"
        assert refresh_catalog(lake, catalog).footers_read == new
        assert refresh_catalog(lake, catalog).footers_read == 0  # nothing new: no footer read
        # A file written again under its name (a retried run) is read again.
        path = Path(lake.storage.path(lake.files("pipeline_runs")[0]))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        assert refresh_catalog(lake, catalog).footers_read == 1
    finally:
        pipeline.close()


def test_a_reader_keeps_its_catalog_while_a_crawl_replaces_it_and_a_new_reader_gets_the_new_one(
        lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    rows = parquet_rows(lake, "station_status")
    reader = python("""
        import sys, duckdb
        con = duckdb.connect(sys.argv[1], read_only=True)
        tables = lambda: sorted(r[0] for r in con.sql("select view_name from duckdb_views() where not internal").fetchall())
        print(con.sql("select count(*) from station_status").fetchone()[0], tables(), flush=True)
        sys.stdin.readline()  # meanwhile the crawler replaces the catalog
        print(con.sql("select count(*) from station_status").fetchone()[0], tables(), flush=True)
    """, str(catalog))
    try:
        first = reader.stdout.readline().split(" ", 1)
        assert int(first[0]) == rows and "bike_moves" not in first[1]
        # A new table appears in the lake; the crawler does not wait for the reader.
        folder = Path(lake.storage.path("curated/bike_moves/system=citibike/date=2024-03-13"))
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"station_id": ["a", "b"], "moved": pa.array([3, 4], pa.int32())}), folder / "1.parquet")
        assert refresh_catalog(lake, catalog, lock_wait_s=5).version == 2
        reader.stdin.write("\n")
        reader.stdin.flush()
        second = reader.stdout.readline().split(" ", 1)
        assert int(second[0]) == rows and "bike_moves" not in second[1], "the open catalog stays as it was"
        assert reader.wait(timeout=30) == 0, reader.stderr.read()
    finally:
        reader.kill()
    new = subprocess.run([sys.executable, "-c", "import sys, duckdb; print(duckdb.connect(sys.argv[1], read_only=True)"
                                                ".sql('select sum(moved) from bike_moves').fetchone()[0])", str(catalog)],
                         capture_output=True, text=True, check=True)
    assert new.stdout.strip() == "7"
    con = connect(catalog)
    assert con.sql("SELECT date, system FROM bike_moves LIMIT 1").fetchone() == (date(2024, 3, 13), "citibike")
    assert not list(catalog.parent.glob(".*.tmp*")), "no temporary catalog left behind"


def test_an_empty_table_of_the_pipeline_is_there_with_its_columns(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    columns = {name: connect(catalog).sql(f"DESCRIBE {name}").fetchall() for name in ("quarantine", "station_status_hourly")}
    shutil.rmtree(lake.storage.path("quarantine"))
    shutil.rmtree(lake.storage.path("curated/station_status"))  # the rollup too: no day file, its columns
    refresh_catalog(lake, catalog)
    con = connect(catalog)
    for name in columns:
        assert count(con, name) == 0
        assert con.sql(f"DESCRIBE {name}").fetchall() == columns[name]


def test_a_table_the_pipeline_does_not_write_is_found_below_curated(lake: Lake, catalog: Path) -> None:
    """Another engineer's table (curated/bike_moves/system=/date=/): its schema and keys come from its files."""
    root = Path(lake.storage.path("curated/bike_moves"))
    first = pa.table({"station_id": ["a", "b"], "moved": pa.array([3, 4], pa.int32())})
    for day in ("2024-03-13", "2024-03-14"):
        (root / f"system=citibike/date={day}").mkdir(parents=True)
        pq.write_table(first, root / f"system=citibike/date={day}/1.parquet")
    refresh_catalog(lake, catalog)
    con = connect(catalog)
    assert con.sql("SELECT date, sum(moved) FROM bike_moves GROUP BY ALL ORDER BY ALL").fetchall() == [
        (date(2024, 3, 13), 7), (date(2024, 3, 14), 7)]
    assert con.sql("SELECT partition_keys, union_by_name FROM _tables WHERE table_name = 'bike_moves'").fetchone() == (
        ["system", "date"], False)
    # A later file with one more column: read by column name, the older rows NULL there.
    pq.write_table(first.append_column("reason", pa.array(["empty", "full"])), root / "system=citibike/date=2024-03-14/2.parquet")
    refresh_catalog(lake, catalog)
    con = connect(catalog)
    assert con.sql("SELECT count(*), count(reason) FROM bike_moves").fetchone() == (6, 2)
    # A file whose column changed type, one in a folder of other keys: refused, named.
    bad = root / "system=citibike/date=2024-03-14/3.parquet"
    pq.write_table(pa.table({"station_id": ["c"], "moved": ["three"]}), bad)
    assert_refused(lake, catalog, str(bad), "its column moved is string, the table's is int32")
    bad.unlink()
    (root / "system=citibike/date=2024-03-14/hour=1").mkdir()
    pq.write_table(first, root / "system=citibike/date=2024-03-14/hour=1/1.parquet")
    assert_refused(lake, catalog, "hour=1/1.parquet", "not in a system=/date= folder")
    assert count(connect(catalog), "bike_moves") == 6


# -- bad input -----------------------------------------------------------------------------------

def assert_refused(lake: Lake, catalog: Path, *phrases: str) -> str:
    """The crawl fails with one line containing ``phrases``; the catalog is byte for byte as it was."""
    before = digest(catalog)
    with pytest.raises(CatalogInputError) as caught:
        refresh_catalog(lake, catalog)
    message = str(caught.value)
    assert "\n" not in message and all(phrase in message for phrase in phrases), message
    assert "nothing registered" in message
    assert digest(catalog) == before
    assert not list(catalog.parent.glob(".*.tmp*"))
    return message


def test_a_file_of_another_schema_is_named_and_nothing_is_registered(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    rows = count(connect(catalog), "station_status")
    partition = partition_of(lake)
    good = pq.read_table(lake.storage.path(lake.files("station_status")[0]))
    bad = good.set_column(good.schema.get_field_index("num_bikes_available"), "num_bikes_available",
                          pa.array([str(v) for v in good["num_bikes_available"].to_pylist()]))
    key = f"curated/station_status/{partition}/1700000000.parquet"
    Path(lake.storage.path(key)).write_bytes(parquet_bytes(bad))
    assert_refused(lake, catalog, lake.storage.uri(key), "column num_bikes_available is string, the table's is int32",
                   "write it again with the table's schema or move it out of the lake")
    missing = good.drop_columns(["station_id"])
    Path(lake.storage.path(key)).write_bytes(parquet_bytes(missing))
    assert_refused(lake, catalog, "it has no column station_id, which the table requires")
    Path(lake.storage.path(key)).write_bytes(b"PAR1 this is not parquet")
    assert_refused(lake, catalog, lake.storage.uri(key), "not a readable Parquet file")
    Path(lake.storage.path(key)).unlink()
    assert count(connect(catalog), "station_status") == rows
    assert refresh_catalog(lake, catalog).version == 2  # fixed: the next crawl goes through


def test_foreign_files_are_named_and_files_that_are_not_data_are_skipped(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    partition = partition_of(lake)
    root = Path(lake.storage.path("curated/station_status"))
    # Not data by the lake's convention: in-flight temporary files, markers, folders starting with _ or .
    (root / partition / ".1700000000.parquet.0123456789ab.tmp").write_bytes(b"half a file")
    (root / partition / "_SUCCESS").write_bytes(b"")
    (root / "_staging").mkdir()
    (root / "_staging" / "x.parquet").write_bytes(b"not yet")
    Path(lake.storage.path("exports")).mkdir()
    Path(lake.storage.path("exports/report.csv")).write_text("not a table folder")
    assert refresh_catalog(lake, catalog).version == 2

    notes = root / partition / "notes.txt"
    notes.write_text("a note")
    assert_refused(lake, catalog, lake.storage.uri(f"curated/station_status/{partition}/notes.txt"),
                               "not a .parquet file", "move it out of the lake's table folders")
    notes.unlink()
    stray = root / "stray.parquet"
    stray.write_bytes(Path(lake.storage.path(lake.files("station_status")[0])).read_bytes())
    assert_refused(lake, catalog, "stray.parquet", "not in a key=value partition folder")
    stray.unlink()
    wrong = root / partition.rsplit("/", 1)[0] / "minute=5"
    wrong.mkdir()
    (wrong / "1.parquet").write_bytes(b"")
    assert_refused(lake, catalog, "minute=5/1.parquet", "not in a system=/date=/hour= folder")
    shutil.rmtree(wrong)
    padded = root / partition.replace("hour=", "hour=0")
    padded.mkdir(parents=True)
    (padded / "1.parquet").write_bytes(b"")
    (root / "zz-notes.md").write_text("and one more")  # named second: problems are named in path order
    assert_refused(lake, catalog, "hour=0", "no leading zero", "1 more file(s) like it")
    shutil.rmtree(padded)
    (root / "zz-notes.md").unlink()
    assert refresh_catalog(lake, catalog).version == 3


def test_a_catalog_held_open_for_writing_is_refused_with_the_fix(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    writer = python("""
        import sys, duckdb
        con = duckdb.connect(sys.argv[1])  # not read_only: holds the file's write lock
        print("open", flush=True)
        sys.stdin.readline()
    """, str(catalog))
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(CatalogError) as caught:
            refresh_catalog(lake, catalog)
        assert not isinstance(caught.value, CatalogInputError)  # a retry helps once the writer is gone
        assert f"PID {writer.pid}" in str(caught.value) and "read_only=True" in str(caught.value)
    finally:
        writer.kill()
        writer.wait()
    assert refresh_catalog(lake, catalog).version == 2


def test_writers_take_turns(lake: Lake, catalog: Path) -> None:
    refresh_catalog(lake, catalog)
    with writer_lock(catalog):
        with pytest.raises(CatalogError, match="another crawl has been writing"):
            refresh_catalog(lake, catalog, lock_wait_s=0.2)
    assert refresh_catalog(lake, catalog).version == 2


def test_an_unreadable_catalog_is_named_with_the_fix(lake: Lake, catalog: Path) -> None:
    catalog.parent.mkdir(parents=True)
    catalog.write_bytes(b"not a duckdb file")
    with pytest.raises(CatalogError, match="move it away, and the next crawl builds it anew"):
        refresh_catalog(lake, catalog)


# -- the command ---------------------------------------------------------------------------------------

def test_the_command_refreshes_and_prints_tables_partitions_and_rows(
        lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CITIBIKES_LAKE_URI", lake.uri)
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["catalog"]) == 2
    assert "no catalog at" in capsys.readouterr().err
    assert cli.main(["catalog", "--refresh", "--partitions"]) == 0
    out = capsys.readouterr().out
    rows = parquet_rows(lake, "station_status")
    line = next(line for line in out.splitlines() if line.strip().startswith("station_status"))
    assert f"{rows:,} rows" in line and "4 partitions" in line and "partitioned by system, date, hour" in line
    assert out.count("system=citibike/date=") == 5  # status 2, quarantine 2, information 1 (first minute only)
    Path(lake.storage.path("pipeline_runs/notes.txt")).write_text("foreign")
    assert cli.main(["catalog", "--refresh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pipeline_runs/notes.txt" in err
    assert describe(tmp_path / "state" / "catalog" / "citibikes.duckdb")[0].startswith("catalog ")


def test_a_catalog_of_an_older_format_is_built_anew_and_one_of_a_newer_format_refused(lake: Lake, catalog: Path) -> None:
    first = refresh_catalog(lake, catalog)
    with duckdb.connect(str(catalog)) as con:
        con.execute("UPDATE _crawl SET format = format - 1")
    again = refresh_catalog(lake, catalog)  # the lake says everything the catalog holds: read it all again
    assert again.version == first.version + 1 and again.footers_read == first.footers_read and again.tables == first.tables
    with duckdb.connect(str(catalog)) as con:
        con.execute("UPDATE _crawl SET format = format + 1")
    with pytest.raises(CatalogError, match="upgrade citibikes, or move the file away"):
        refresh_catalog(lake, catalog)
