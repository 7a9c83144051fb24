"""Benchmark: the service analytics over thirty replayed days of Citi Bike, after compaction.

Usage, from the repository root: ``.venv/bin/python bench/analytics.py --lake DIR [--days 30] [--repeat 3]
[--json out.json]``. ``DIR`` is a lake ``bench/lake_month.py --lake DIR`` built and compacted (30 days of
the replay feed's Citi Bike: 2,208 stations every minute, 95 million records); a folder without one is
built the same way first (10-20 minutes).

Times, each the median of ``--repeat`` runs in a new read-only catalog connection:

1. **The measures and the report**: :func:`citibikes.analytics.run.run` (what ``citibikes analytics`` and
   the ``citibikes_analytics`` DAG run after the catalog refresh) for every record of the replayed days (the
   local days they touch in New York), and for one local day (what the daily DAG run does); peak memory of
   the process.
2. **A baseline in the same run**: one scan of the period's ``station_status`` through the catalog
   (``count(*)`` and ``sum(num_bikes_available)``), the least any computation over every record costs,
   so the ratio says how the analytics compares on a faster or slower machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include")]

from bench.common import machine_info  # noqa: E402
from bench.lake_month import SYSTEM_ID, START, build  # noqa: E402
from citibikes.analytics.engines import DuckDBEngine  # noqa: E402
from citibikes.analytics.measures import Period  # noqa: E402
from citibikes.analytics.run import run  # noqa: E402
from citibikes.catalog import connect, refresh_catalog  # noqa: E402
from citibikes.compaction import compact  # noqa: E402
from citibikes.config import SystemConfig  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402

TIMEZONE = "America/New_York"
SCAN = ("SELECT count(*), sum(num_bikes_available) FROM station_status WHERE system = $system "
        "AND last_updated >= $start AND last_updated < $end")


def timed(catalog: Path, repeat: int, work) -> tuple[list[float], Any]:  # noqa: ANN001 - a callable of a connection
    """``work(connection)`` ``repeat`` times, each in a new read-only catalog connection: seconds and the last result."""
    seconds, result = [], None
    for _ in range(repeat):
        con = connect(catalog)
        began = time.perf_counter()
        result = work(con)
        seconds.append(round(time.perf_counter() - began, 2))
        con.close()
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", type=Path, required=True, help="a folder bench/lake_month.py --lake built (or to build)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    base = args.lake
    catalog = base / "state" / "catalog" / "citibikes.duckdb"
    lake = open_lake(str(base / "lake"))
    build(base / "lake", base / "state", args.days, base)
    refresh_catalog(lake, catalog)
    compact(lake, catalog, settle_s=0, grace_s=0)  # nothing left to do on a compacted lake
    system = SystemConfig(SYSTEM_ID, "http://127.0.0.1:9/gbfs.json", timezone=TIMEZONE)
    # every record of the replayed days: they start at midnight UTC, 19:00 the day before in New York
    zone = ZoneInfo(TIMEZONE)
    first = datetime.fromtimestamp(START, zone).date()
    last = datetime.fromtimestamp(START + args.days * 86400 - 1, zone).date()
    middle = first + timedelta(days=args.days // 2)
    report: dict[str, Any] = {"machine": machine_info(), "days": args.days, "first": str(first), "last": str(last)}
    for label, (a, b) in (("period", (first, last)), ("one day", (middle, middle))):
        seconds, (analytics, _) = timed(catalog, args.repeat, lambda con: run(DuckDBEngine(con), lake, system, a, b))  # noqa: B023
        s = analytics.system
        report[label] = {"runs_s": seconds, "median_s": statistics.median(seconds), "records": s.records,
                         "snapshots": s.snapshots, "stations": s.stations, "episodes": s.episodes, "fines": s.fines}
        print(f"{label} {a} to {b}: median {statistics.median(seconds)} s {seconds}; {s.records:,} records, "
              f"{s.episodes:,} episodes, ${s.fines:,} fines", flush=True)
    start, end = Period(SYSTEM_ID, TIMEZONE, first, last).bounds()
    seconds, rows = timed(catalog, args.repeat, lambda con: con.execute(
        SCAN, {"system": SYSTEM_ID, "start": start, "end": end}).fetchall())
    report["baseline_scan"] = {"runs_s": seconds, "median_s": statistics.median(seconds), "rows": rows[0][0]}
    report["analytics_over_scan"] = round(report["period"]["median_s"] / statistics.median(seconds), 1)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"baseline scan: median {statistics.median(seconds)} s {seconds}; the analytics take "
          f"{report['analytics_over_scan']}x; peak memory {report['peak_rss_mib']:,} MiB", flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
