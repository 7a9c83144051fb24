"""Compaction of a replayed day of Citi Bike minute files: files, bytes per observation, time, queries.

Usage (from the repository root):

    .venv/bin/python bench/compaction.py [--minutes 1440] [--repeat 5]

1. A lake of ``--minutes`` station_status files of the replay feed's Citi Bike (about 2,200 stations),
   one a minute from 2026-01-01 00:00 UTC, each written by the lake writer as the minute DAG writes it
   (``status_file``: the snapshot's rows in the feed's order), and its catalog.
2. Queries through the catalog, each in a fresh connection (medians of ``--repeat``): the whole
   table's count and bikes, and one station's history over the day.
3. ``compact`` as the hourly DAG runs it late on that day (``now`` one second before midnight, settle 0:
   hours 0-22 closed, the day open; grace 1 h, so nothing is deleted), then the same queries.
4. ``compact`` once the day is closed (settle 0, grace 0): the day's 23 hour files and hour 23's minute
   files become one day file, and every replaced file is deleted; then the same queries.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from bench.common import machine_info  # noqa: E402
from citibikes.catalog import connect, refresh_catalog  # noqa: E402
from citibikes.compaction import compact  # noqa: E402
from citibikes.gbfs.normalize import normalize_status  # noqa: E402
from citibikes.gbfs.parse import parse_feed  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.lake.store import status_file  # noqa: E402
from citibikes.replay.evolve import ReplayFeed, citibike_spec  # noqa: E402

SYSTEM_ID = "citibike"
START = 1_767_225_600  # 2026-01-01T00:00:00Z
QUERIES = {
    "count_and_bikes": "SELECT count(*), sum(num_bikes_available) FROM station_status",
    "one_station_day": "SELECT count(*), max(num_bikes_available) FROM station_status WHERE station_id = ?",
}


def land_minutes(lake, minutes: int) -> str:
    """One file per minute snapshot; returns a station id for the history query."""
    feed = ReplayFeed(citibike_spec(system_id=SYSTEM_ID))
    station = None
    for i in range(minutes):
        status = feed.station_status(START + 60 * i)
        table = normalize_status(parse_feed(status.body, "station_status"), SYSTEM_ID, status.last_updated + 1.0).table
        station = station or table["station_id"][0].as_py()
        lake.write_files([status_file(SYSTEM_ID, table, status.last_updated)])
    return station


def query_times(catalog: Path, station: str, repeat: int) -> dict[str, object]:
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    answers = {}
    for _ in range(repeat):
        for name, sql in QUERIES.items():
            con = connect(catalog)
            began = time.perf_counter()
            answers[name] = con.execute(sql, [station] if "?" in sql else []).fetchone()
            times[name].append(time.perf_counter() - began)
            con.close()
    return {**{f"{name}_s": round(statistics.median(values), 4) for name, values in times.items()},
            "answers": {name: list(map(int, row)) for name, row in answers.items()}}


def lake_files(root: Path) -> dict[str, int]:
    files = [p for p in (root / "curated" / "station_status").rglob("*.parquet")]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="citibikes-bench-compaction-"))
    report: dict[str, object] = {"machine": machine_info(duckdb=duckdb.__version__)}
    try:
        root = workdir / "lake"
        lake, catalog = open_lake(str(root)), workdir / "state" / "catalog" / "citibikes.duckdb"
        began = time.perf_counter()
        station = land_minutes(lake, args.minutes)
        report["landing_s"] = round(time.perf_counter() - began, 1)
        refresh_catalog(lake, catalog)
        report["before"] = {**lake_files(root), **query_times(catalog, station, args.repeat)}
        hours = compact(lake, catalog, settle_s=0, grace_s=3600, now=START + 86_399)
        report["hours"] = hours.as_dict()
        report["after_hours"] = {**lake_files(root), **query_times(catalog, station, args.repeat)}
        day = compact(lake, catalog, settle_s=0, grace_s=0)
        report["day"] = day.as_dict()
        report["after_day"] = {**lake_files(root), **query_times(catalog, station, args.repeat)}
        report["bytes_per_observation"] = {
            "minute_files": round(report["before"]["bytes"] / day.tables["station_status"].rows, 2),
            "hour_files": round(hours.tables["station_status"].bytes_after / hours.tables["station_status"].rows, 2),
            "day_file": round(report["after_day"]["bytes"] / day.tables["station_status"].rows, 2)}
        assert report["before"]["answers"] == report["after_hours"]["answers"] == report["after_day"]["answers"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
