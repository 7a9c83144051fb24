"""Compaction on a lake the pipeline made (minute runs every 15 minutes over four hours, two systems),
through the real DuckDB catalog: no row missing or doubled for readers, during and after; idempotent;
whole after a crash at any point.

Expectations come from the catalog before compaction (a fingerprint of every row per hour) or from
the Parquet files themselves, never from the code under test.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from citibikes import cli, compaction
from citibikes.catalog import CatalogError, CatalogInputError, connect, refresh_catalog
from citibikes.lake import Lake, layout, open_lake
from citibikes.lake.store import status_file
from support.pipeline_lake import fingerprints as table_fingerprints
from support.catalog_reader import start_reader
from support.pipeline_lake import minute_runs, pipeline_lake

HOUR = 3600
TABLES = ("station_status", "quarantine")
"""The tables with a file per minute run (station_information gets one only when a description changes)."""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """12 minute runs, 15 minutes apart, from the start of the hour H0 four hours ago: 3 runs in H0, 4 in
    H1 and H2, 1 in H3. Returns the folder, H0 and the feed's clock at the end."""
    folder = tmp_path_factory.mktemp("made")
    pipeline, first_hour = minute_runs(folder, 12, 15 * 60, hours_ago=4)
    return folder, first_hour, pipeline.clock.now


@pytest.fixture
def lake(made: tuple[Path, float, float], tmp_path: Path) -> Lake:
    shutil.copytree(made[0] / "lake", tmp_path / "lake")
    return open_lake(str(tmp_path / "lake"))


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return tmp_path / "state" / "catalog" / "citibikes.duckdb"


@pytest.fixture
def settle(made: tuple[Path, float, float]) -> int:
    """A settle time that closes H0-H2 and not H3 (half an hour either side)."""
    return int(time.time() - (made[1] + 3 * HOUR) - HOUR / 2)


def fingerprints(catalog: Path, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, list[tuple]]:
    return table_fingerprints(con or connect(catalog), TABLES)


def folder_files(lake: Lake, table: str = "station_status") -> dict[str, list[str]]:
    """Every file below each hour folder of a table (compacted ones as ``_compacted/v1/compacted.parquet``)."""
    root = Path(lake.storage.path(layout.TABLES[table].prefix))
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            relative = path.relative_to(root).as_posix()
            hour = "/".join(relative.split("/")[:3])
            found.setdefault(hour, []).append(relative.removeprefix(hour + "/"))
    return {hour: sorted(names, key=lambda name: (name[0] != "_", name)) for hour, names in found.items()}


def closed_hours(made: tuple[Path, float, float]) -> set[int]:
    return {int(time.gmtime(made[1] + n * HOUR).tm_hour) for n in range(3)}


def test_closed_hours_become_one_sorted_file_each_and_readers_see_the_same_rows(
        lake: Lake, catalog: Path, settle: int, made: tuple[Path, float, float]) -> None:
    refresh_catalog(lake, catalog)
    expected = fingerprints(catalog)
    held = connect(catalog)  # a reader that opened the catalog before compaction
    before = folder_files(lake)
    sources = {hour: names for hour, names in before.items() if int(hour.rsplit("=", 1)[1]) in closed_hours(made)}
    assert len(sources) == 6 and all(len(names) >= 3 for names in sources.values())  # 2 systems x H0-H2

    summary = compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    status = summary.tables["station_status"]
    assert (status.partitions, status.files_before, status.files_after) == (6, sum(map(len, sources.values())), 6)
    assert status.rows == sum(pq.read_metadata(lake.storage.path(f"curated/station_status/{hour}/{name}")).num_rows
                              for hour, names in sources.items() for name in names)
    assert status.bytes_after < status.bytes_before / 2 and summary.deleted_files == 0
    assert summary.tables["quarantine"].partitions == 6
    assert fingerprints(catalog) == expected == fingerprints(catalog, held), "no row missing or doubled"

    after = folder_files(lake)
    for hour, names in sources.items():
        assert after[hour] == ["_compacted/v1/compacted.parquet", *names]  # the sources stay for the grace period
        file = pq.ParquetFile(lake.storage.path(f"curated/station_status/{hour}/_compacted/v1/compacted.parquet"))
        assert layout.compacted_sources(file.metadata.metadata) == tuple(names)
        assert file.metadata.num_row_groups == 1
        rows = file.read(columns=["station_id", "last_updated"]).to_pylist()
        assert rows == sorted(rows, key=lambda r: (r["station_id"], r["last_updated"]))
    open_hour = next(hour for hour in after if hour not in sources)
    assert after[open_hour] == before[open_hour], "the open hour is left alone"
    partitions = connect(catalog).sql(
        "SELECT partition, file_count, files FROM _partitions WHERE table_name = 'station_status' ORDER BY ALL").fetchall()
    assert [(p, n) for p, n, _ in partitions if p in sources] == [(p, 1) for p in sorted(sources)]
    assert all(f == [lake.storage.uri(f"curated/station_status/{p}/_compacted/v1/compacted.parquet")]
               for p, _, f in partitions if p in sources)
    assert [(n, f) for p, n, f in partitions if p == open_hour] == [(len(before[open_hour]), None)]

    # Idempotent: a second run compacts nothing, changes no file and reads the same.
    views = view_sql(catalog)
    again = compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    assert again.tables == {} and again.deleted_files == 0
    assert folder_files(lake) == after and view_sql(catalog) == views
    # The lake alone says what each partition holds: a catalog built anew reads the same.
    catalog.unlink()
    refresh_catalog(lake, catalog)
    assert view_sql(catalog) == views and fingerprints(catalog) == expected

    # After the grace period (0 here) the next run deletes the sources; readers of the catalog see the same rows.
    held.close()
    done = compaction.compact(lake, catalog, settle_s=settle, grace_s=0)
    assert done.tables == {} and done.deleted_files == sum(status.files_before for status in summary.tables.values())
    assert all(folder_files(lake)[hour] == ["_compacted/v1/compacted.parquet"] for hour in sources)
    assert fingerprints(catalog) == expected
    refresh_catalog(lake, catalog)
    assert fingerprints(catalog) == expected and lake.read_table("station_status").num_rows == \
        sum(rows for _, _, _, rows, _ in expected["station_status"])
    assert compaction.compact(lake, catalog, settle_s=settle, grace_s=0).deleted_files == 0


def view_sql(catalog: Path) -> list[str]:
    return [sql for (sql,) in connect(catalog).sql("SELECT sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()]


def test_a_late_file_is_read_beside_the_compacted_one_and_folded_into_the_next_version(
        lake: Lake, catalog: Path, settle: int, made: tuple[Path, float, float]) -> None:
    compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    hour = sorted(h for h in folder_files(lake) if h.startswith("system=citibike") and
                  int(h.rsplit("=", 1)[1]) in closed_hours(made))[0]
    first = folder_files(lake)[hour][1]
    rows = lake.read_file(f"curated/station_status/{hour}/{first}", "station_status")
    total = connect(catalog).sql("SELECT count(*) FROM station_status").fetchone()[0]
    # A snapshot landed late into the compacted hour (a backfill, a retried run): 30 s after the first.
    late, data = status_file("citibike", rows, int(first.removesuffix(".parquet")) + 30)
    lake.write_files([(late, data)])
    refresh_catalog(lake, catalog)
    assert connect(catalog).sql("SELECT count(*) FROM station_status").fetchone()[0] == total + rows.num_rows
    expected = fingerprints(catalog)

    summary = compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    assert summary.tables["station_status"].partitions == 1 and summary.tables["station_status"].files_before == 2
    assert fingerprints(catalog) == expected
    v2 = lake.storage.path(f"curated/station_status/{hour}/_compacted/v2/compacted.parquet")
    assert late.rsplit("/", 1)[1] in layout.compacted_sources(pq.read_metadata(v2).metadata)
    assert connect(catalog).execute("SELECT files FROM _partitions WHERE partition = ? AND table_name = 'station_status'",
                                    [hour]).fetchone() == ([lake.storage.uri(v2.removeprefix(lake.storage.path() + "/"))],)
    compaction.compact(lake, catalog, settle_s=settle, grace_s=0)  # v1, the minute files and the late one go
    assert folder_files(lake)[hour] == ["_compacted/v2/compacted.parquet"]
    assert fingerprints(catalog) == expected


class Crash(RuntimeError):
    pass


def crash_on_call(monkeypatch: pytest.MonkeyPatch, name: str, call: int) -> None:
    """``compaction.<name>`` raises on its ``call``-th call (after doing its work, for a write)."""
    original, calls = getattr(compaction, name), []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and name != "write_compacted":
            raise Crash(name)
        result = original(*args, **kwargs)
        if len(calls) == call:
            raise Crash(name)
        return result

    monkeypatch.setattr(compaction, name, crashing)


@pytest.mark.parametrize(("step", "call"), [("write_compacted", 3), ("refresh_catalog", 1), ("_delete", 5)])
def test_a_crash_at_any_point_leaves_the_data_whole_and_the_next_run_finishes(
        lake: Lake, catalog: Path, settle: int, made: tuple[Path, float, float], monkeypatch: pytest.MonkeyPatch,
        step: str, call: int) -> None:
    refresh_catalog(lake, catalog)
    expected = fingerprints(catalog)
    # What a writer killed in the middle leaves: a temporary file in a version folder.
    hour = max(h for h in folder_files(lake) if int(h.rsplit("=", 1)[1]) in closed_hours(made))
    leftover = Path(lake.storage.path(f"curated/station_status/{hour}/_compacted/v1/.compacted.parquet.0123.tmp"))
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"PAR1 half a file")
    with monkeypatch.context() as patch:
        crash_on_call(patch, step, call)
        with pytest.raises(Crash):
            compaction.compact(lake, catalog, settle_s=settle, grace_s=0)
    assert fingerprints(catalog) == expected, "the catalog in place reads every row once"
    refresh_catalog(lake, catalog)
    assert fingerprints(catalog) == expected, "so does a crawl of what the crash left"

    compaction.compact(lake, catalog, settle_s=settle, grace_s=0)
    assert fingerprints(catalog) == expected
    files = folder_files(lake)
    compacted = [h for h, names in files.items() if names[0].startswith("_compacted/")]
    assert len(compacted) == 6 and all(files[h] == ["_compacted/v1/compacted.parquet"] for h in compacted)
    assert not leftover.exists()


def test_a_file_in_a_compacted_folder_that_compaction_did_not_write_is_refused(lake: Lake, catalog: Path, settle: int) -> None:
    compaction.compact(lake, catalog, settle_s=settle, grace_s=HOUR)
    hour = next(h for h, names in folder_files(lake).items() if names[0].startswith("_compacted/"))
    folder = Path(lake.storage.path(f"curated/station_status/{hour}/_compacted"))
    before = connect(catalog).sql("SELECT catalog_version FROM _crawl").fetchone()
    (folder / "v2").mkdir()
    pq.write_table(pq.read_table(folder / "v1" / "compacted.parquet").replace_schema_metadata(None),
                   folder / "v2" / "mine.parquet")
    for attempt in (lambda: refresh_catalog(lake, catalog),
                    lambda: compaction.compact(lake, catalog, settle_s=settle, grace_s=0)):
        with pytest.raises(CatalogInputError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and "v2/mine.parquet" in message and "citibikes.compaction metadata" in message
        assert "delete it" in message and "nothing registered" in message
    assert connect(catalog).sql("SELECT catalog_version FROM _crawl").fetchone() == before
    assert (folder / "v1" / "compacted.parquet").exists() and len(list(folder.parent.glob("*.parquet"))) > 1
    (folder / "v2" / "mine.parquet").unlink()
    shutil.copy(folder / "v1" / "compacted.parquet", folder / "v1" / "another.parquet")
    with pytest.raises(CatalogInputError, match="a second file in compacted version 1"):
        refresh_catalog(lake, catalog)


def test_a_file_changed_under_compaction_fails_it_for_a_retry(lake: Lake, catalog: Path, settle: int) -> None:
    refresh_catalog(lake, catalog)
    work = compaction.plan(compaction.lake_state(lake, catalog), settle_s=settle, now=time.time())
    Path(lake.storage.path(work[0].reads[0].key)).unlink()  # a hand that deleted it
    with pytest.raises(CatalogError) as caught:
        compaction.write_compacted(lake, work[0])
    assert not isinstance(caught.value, CatalogInputError) and "run the compaction again" in str(caught.value)
    assert not Path(lake.storage.path(layout.compacted_key(f"curated/{work[0].table}/{work[0].partition}", 1))).exists()


# -- readers during compaction --------------------------------------------------------------------

def test_readers_never_see_a_row_missing_or_doubled_while_compaction_runs_and_minutes_land(
        made: tuple[Path, float, float], tmp_path: Path, settle: int, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(made[0] / "lake", tmp_path / "lake")
    pipeline = pipeline_lake(tmp_path, start=made[2])  # goes on landing minutes into the open hour H3
    lake, catalog, grace = pipeline.lake, pipeline.settings.catalog_path, 3
    refresh_catalog(lake, catalog)
    before_compaction = tmp_path / "before.duckdb"
    shutil.copy(catalog, before_compaction)
    closed = {(s, d, h): (n, b) for s, d, h, n, b in connect(catalog).sql(
        "SELECT system, date::VARCHAR, hour, count(*), sum(num_bikes_available) FROM station_status GROUP BY ALL").fetchall()
        if h in closed_hours(made)}
    open_hour = f"hour={time.gmtime(made[1] + 3 * HOUR).tm_hour}"

    # What the lake holds per system after each landing, and when each landing began and ended.
    def system_totals() -> dict[str, tuple[int, int]]:
        totals = {}
        for system in ("citibike", "synth-01"):
            files = [lake.storage.path(k) for k in lake.files("station_status", system) if f"/{open_hour}/" in k]
            table = pq.ParquetDataset(files).read(columns=["num_bikes_available"]) if files else None
            rows = table.num_rows if table else 0
            bikes = sum(table["num_bikes_available"].to_pylist()) if table else 0
            hours = [v for (s, _, _), v in closed.items() if s == system]
            totals[system] = (rows + sum(n for n, _ in hours), bikes + sum(b for _, b in hours))
        return totals

    states = [(float("-inf"), float("-inf"), system_totals())]
    stop = threading.Event()

    def land() -> None:
        while not stop.is_set():
            began = time.time()
            pipeline.minute(60)
            states.append((began, time.time(), system_totals()))

    # Stretch each step, so that queries fall between the writes, the switch and the deletions.
    for name, pause in (("write_compacted", 0.3), ("_delete", 0.05)):
        original = getattr(compaction, name)
        monkeypatch.setattr(compaction, name, lambda *a, _o=original, _p=pause, **k: (_o(*a, **k), time.sleep(_p))[0])

    results = tmp_path / "results.jsonl"
    reader = start_reader(catalog, results)
    lander = threading.Thread(target=land)
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        lander.start()
        phases = {"write and switch": [time.time()]}
        summary = compaction.compact(lake, catalog, settle_s=settle, grace_s=grace)
        phases["write and switch"].append(time.time())
        time.sleep(grace)
        reader.stdin.write("release\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "released"
        phases["delete"] = [time.time()]
        cleaned = compaction.compact(lake, catalog, settle_s=settle, grace_s=grace)
        phases["delete"].append(time.time())
        time.sleep(1)
    finally:
        stop.set()
        if lander.is_alive():
            lander.join()
        pipeline.close()
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        assert reader.wait(timeout=60) == 0, reader.stderr.read()

    queries = [json.loads(line) for line in results.read_text().splitlines()]
    for query in queries:
        assert query["error"] is None, query
        rows = {(s, d, h): (n, b) for s, d, h, n, b in query["rows"]}
        assert {key: rows.get(key) for key in closed} == closed, f"a compacted hour read wrong: {query}"
        for system in ("citibike", "synth-01"):
            seen = tuple(map(sum, zip(*(v for (s, _, _), v in rows.items() if s == system))))
            valid = {states[k][2][system] for k in range(len(states))
                     if states[k][0] <= query["end"] and (k + 1 == len(states) or states[k + 1][1] >= query["start"])}
            assert seen in valid, f"{system} read {seen}, the lake held one of {valid} meanwhile"
    for phase, (start, end) in phases.items():
        overlapping = [q for q in queries if q["start"] <= end and q["end"] >= start]
        assert len([q for q in overlapping if q["kind"] == "new"]) >= 5, phase
    assert any(q["kind"] == "held" for q in queries if q["start"] <= phases["write and switch"][1])

    assert summary.tables["station_status"].partitions == 6 and summary.deleted_files == 0
    assert cleaned.deleted_files == sum(f.files_before for f in summary.tables.values())
    assert len(states) >= 4, "minutes landed during compaction"

    # Why the grace period: the catalog of before compaction, opened now, misses the deleted files' rows.
    stale = duckdb.connect(str(before_compaction), read_only=True)
    assert stale.sql("SELECT count(*) FROM station_status").fetchone()[0] < sum(n for n, _ in closed.values())


# -- the command --------------------------------------------------------------------------------------

def test_the_command_prints_files_and_bytes_before_and_after(
        lake: Lake, tmp_path: Path, settle: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CITIBIKES_LAKE_URI", lake.uri)
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CITIBIKES_COMPACTION_SETTLE", str(settle))
    before = folder_files(lake)
    assert cli.main(["compact", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "station_status: would compact 6 partitions" in out and "bytes/observation" in out and "would delete 0" in out
    assert folder_files(lake) == before and not (tmp_path / "state" / "catalog" / "citibikes.duckdb").exists()
    assert cli.main(["compact"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("station_status"))
    assert "compacted 6 partitions" in line and "-> 6 files" in line
    monkeypatch.setenv("CITIBIKES_COMPACTION_GRACE", "0")
    assert cli.main(["compact", "--dry-run"]) == 0
    assert "would delete" in capsys.readouterr().out and folder_files(lake) != before
    monkeypatch.setenv("CITIBIKES_CATALOG", "glue")
    assert cli.main(["compact"]) == 2 and "Glue catalogs an S3 lake; set CITIBIKES_CATALOG=duckdb" in capsys.readouterr().err
    monkeypatch.setenv("CITIBIKES_COMPACTION_SETTLE", "-1")
    assert cli.main(["compact"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CITIBIKES_COMPACTION_SETTLE" in err
