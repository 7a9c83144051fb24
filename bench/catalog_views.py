"""What the embedded catalog costs on a big lake: crawls, and binding and querying its views.

Usage (from the repository root):

    .venv/bin/python bench/catalog_views.py [--systems 50] [--days 30] [--files-per-hour 1] [--repeat 3]

1. A lake of ``systems x days x 24`` hour partitions of ``station_status``, each with
   ``--files-per-hour`` files (hard links of one real 50-station file, so the lake costs no space).
2. Crawls: the first (every footer read), one with nothing new, one after a new minute file per system.
3. Queries through the catalog, each in a fresh read-only connection (a user opening the file):
   ``DESCRIBE`` (binding the view: expanding its globs), a count of one hour (partition pruning) and of
   the whole table; for the catalog as the crawler writes it (a glob per system and day) and for two
   alternatives with the same partitions: a glob per hour, and every hour compacted (one explicit
   file per hour, what compaction leads to). Medians of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from bench.common import machine_info  # noqa: E402
from citibikes.catalog import refresh_catalog  # noqa: E402
from citibikes.catalog.duckdb_catalog import load_state, view_sql  # noqa: E402
from citibikes.gbfs.normalize import normalize_status  # noqa: E402
from citibikes.gbfs.parse import parse_feed  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.lake.store import status_file  # noqa: E402
from citibikes.replay.recordings import recorded  # noqa: E402

FIRST_DAY = date(2024, 3, 1)


def make_lake(root: Path, systems: int, days: int, per_hour: int) -> int:
    recording = recorded("station_status")[0]
    table = normalize_status(parse_feed(recording.read_bytes(), "station_status"), "citibike",
                             recording.last_updated + 1.0).table.slice(0, 50)
    _, data = status_file("citibike", table, recording.last_updated)
    source = root / "source.parquet"
    source.write_bytes(data)
    count = 0
    for s in range(systems):
        for d in range(days):
            day = FIRST_DAY + timedelta(days=d)
            for hour in range(24):
                folder = root / "lake" / f"curated/station_status/system=sys-{s:02d}/date={day}/hour={hour}"
                folder.mkdir(parents=True)
                for minute in range(per_hour):
                    os.link(source, folder / f"{1709251200 + d * 86400 + hour * 3600 + minute * 60}.parquet")
                    count += 1
    return count


def timed(func) -> float:
    began = time.perf_counter()
    func()
    return time.perf_counter() - began


def query_times(path: Path, repeat: int) -> dict[str, float]:
    queries = {
        "describe": "DESCRIBE station_status",
        "count_one_hour": "SELECT count(*) FROM station_status WHERE system = 'sys-03' AND date = DATE '2024-03-05' AND hour = 7",
        "count_all": "SELECT count(*) FROM station_status",
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(repeat):
        for name, sql in queries.items():
            con = duckdb.connect(str(path), read_only=True)
            times[name].append(timed(lambda: con.sql(sql).fetchall()))
            con.close()
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def alternative(path: Path, target: Path, layout: str) -> None:
    """A copy of the catalog whose station_status view reads per hour: globs, or one explicit file each."""
    state = load_state(path)
    table = state.tables["station_status"]
    for partition in table.partitions.values():
        if layout == "compacted":
            first = next(Path(partition.location).glob("*.parquet"))
            partition.files = (str(first),)
        else:  # per-hour globs: what a view of uncompacted hours would read without the per-day grouping
            partition.files = (f"{partition.location}/*.parquet",)
    shutil.copy(path, target)
    con = duckdb.connect(str(target))
    con.execute("DROP VIEW station_status")
    con.execute(view_sql(table))
    con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--files-per-hour", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="citibikes-bench-catalog-"))
    report: dict[str, Any] = {"machine": machine_info(duckdb=duckdb.__version__)}
    try:
        files = make_lake(workdir, args.systems, args.days, args.files_per_hour)
        lake = open_lake(str(workdir / "lake"))
        catalog = workdir / "state" / "catalog" / "citibikes.duckdb"
        report["lake"] = {"systems": args.systems, "days": args.days, "hour_partitions": args.systems * args.days * 24,
                          "files": files}
        crawls = {}
        began = time.perf_counter()
        first = refresh_catalog(lake, catalog)
        crawls["first_s"], crawls["first_footers"] = round(time.perf_counter() - began, 2), first.footers_read
        crawls["nothing_new_s"] = round(timed(lambda: refresh_catalog(lake, catalog)), 2)
        for s in range(args.systems):
            folder = Path(lake.storage.path(f"curated/station_status/system=sys-{s:02d}/date={FIRST_DAY}/hour=0"))
            os.link(workdir / "source.parquet", folder / "1709251259.parquet")
        began = time.perf_counter()
        crawls["one_minute_footers"] = refresh_catalog(lake, catalog).footers_read
        crawls["one_minute_s"] = round(time.perf_counter() - began, 2)
        report["crawl"] = crawls
        layouts = {"per_day_globs (the catalog)": catalog}
        for layout in ("per_hour_globs", "compacted"):
            layouts[layout] = workdir / f"{layout}.duckdb"
            alternative(catalog, layouts[layout], layout)
        report["views"] = {name: {"entries": len(_entries(path)), "catalog_bytes": path.stat().st_size,
                                  **query_times(path, args.repeat)} for name, path in layouts.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


def _entries(path: Path) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        sql = con.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'station_status'").fetchone()[0]
    finally:
        con.close()
    return [part for part in sql.split("list_value(", 1)[1].split("),", 1)[0].split(", ")]


if __name__ == "__main__":
    sys.exit(main())
