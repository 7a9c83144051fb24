"""Benchmark: thirty replayed days of Citi Bike backfilled into the lake, catalogued, compacted and queried through the catalog.

Usage, from the repository root: ``.venv/bin/python bench/lake_month.py [--days 30] [--lake DIR]
[--repeat 5] [--json out.json]`` (building the 30 days takes 10-20 minutes and 250 MB; ``--lake DIR``
keeps them for the next run, which then only catalogs, compacts and queries).

1. **Build** (skipped for the days a reused ``--lake`` already has): for each day, the replay feed's
   Citi Bike (2,208 stations) writes the day's 1,440 minute snapshots to a temporary folder, which
   :func:`citibikes.replay.backfill.backfill` (what ``citibikes backfill`` runs; lake only) lands; the
   folder's station_status JSON bytes are counted (the raw feed), then it is deleted.
2. **Crawl**: :func:`citibikes.catalog.refresh_catalog` into a new catalog (every footer read), then
   again with nothing new (what the ``citibikes_catalog`` DAG's task does).
3. **Compaction**: :func:`citibikes.compaction.compact` with every day closed and no grace (what
   ``citibikes compact`` does: each day's 24 hour files become one day file), its summary, and
   station_status's files and bytes before and after; three questions of ``station_status`` (one
   hour, one station's period, per station and hour of day) timed before and after, same answers.
4. **Queries through the catalog**, each in a new read-only connection (:func:`citibikes.catalog.connect`),
   median of ``--repeat``: hourly availability per station over the whole period (per station and hour of
   day: mean bikes and docks available, share of observations empty and full), the same per station
   and clock hour, and a count.
5. **Sizes**: lake bytes per station_status observation against the raw JSON's.
6. **DAG durations**: ``citibikes_catalog`` and ``citibikes_checks`` (its window: the last 24 hours
   before the last snapshot) run whole with ``dag.test()`` on the lake, against a throwaway Airflow
   database (every task in this process, no scheduler), medians of ``--repeat`` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include"), str(ROOT / "plugins")]
os.environ.update({"AIRFLOW_HOME": tempfile.mkdtemp(prefix="bench-month-airflow-"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                   "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})

from bench.common import machine_info  # noqa: E402
from citibikes.catalog import connect, refresh_catalog  # noqa: E402
from citibikes.compaction import compact  # noqa: E402
from citibikes.config import load_settings  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.replay.backfill import backfill  # noqa: E402
from citibikes.replay.evolve import ReplayFeed, citibike_spec  # noqa: E402

SYSTEM_ID = "citibike"
START = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY_S = 86_400
QUERIES = {
    "hourly availability per station and hour of day": (
        """SELECT station_id, hour, sum(bikes_mean * observations) / sum(observations) AS bikes,
                  sum(docks_mean * observations) / sum(observations) AS docks,
                  sum(empty_observations) / sum(observations) AS share_empty,
                  sum(full_observations) / sum(observations) AS share_full
           FROM station_status_hourly WHERE system = 'citibike' GROUP BY station_id, hour""",
        """SELECT station_id, hour, avg(num_bikes_available) AS bikes, avg(num_docks_available) AS docks,
                  count_if(num_bikes_available = 0) / count(*) AS share_empty,
                  count_if(num_docks_available = 0) / count(*) AS share_full
           FROM station_status WHERE system = 'citibike' GROUP BY station_id, hour"""),
    "hourly availability per station and clock hour": (
        """SELECT station_id, date, hour, bikes_mean AS bikes, docks_mean AS docks
           FROM station_status_hourly WHERE system = 'citibike'""",
        """SELECT station_id, date, hour, avg(num_bikes_available) AS bikes, avg(num_docks_available) AS docks
           FROM station_status WHERE system = 'citibike' GROUP BY station_id, date, hour"""),
}
"""Each question twice: from the catalog's hourly rollup (``station_status_hourly``) and from
``station_status`` itself; the answers must agree."""
SCANS = {
    "one hour of one day": """SELECT count(*), sum(num_bikes_available) FROM station_status
                              WHERE system = 'citibike' AND date = DATE '2026-01-15' AND hour = 17""",
    "one station, the whole period": """SELECT date, avg(num_bikes_available), count(*) FROM station_status
                                        WHERE station_id = (SELECT min(station_id) FROM station_status_hourly)
                                        GROUP BY date ORDER BY date""",
    "per station and hour of day": QUERIES["hourly availability per station and hour of day"][1],
}
"""Questions of ``station_status`` timed before and after compaction (hour files, then day files); the
answers must agree."""


def build(lake_root: Path, state: Path, days: int, work: Path) -> dict[str, Any]:
    """Backfill the days the lake does not have yet; the raw JSON bytes of every day's status files."""
    settings = load_settings({"CITIBIKES_STATE_DIR": str(state), "CITIBIKES_LAKE_URI": str(lake_root)})
    lake = open_lake(str(lake_root))
    feed = ReplayFeed(citibike_spec(system_id=SYSTEM_ID))
    sizes_file = lake_root.parent / "raw_bytes.json"
    raw = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
    for day in range(days):
        if str(day) in raw:
            continue
        folder = Path(tempfile.mkdtemp(prefix="day-", dir=work))
        start = START + day * DAY_S
        began = time.perf_counter()
        (folder / "station_information.json").write_bytes(feed.station_information(start).body)
        status_bytes = 0
        for minute in range(1440):
            status = feed.station_status(start + 60 * minute)
            (folder / f"station_status-{status.last_updated}.json").write_bytes(status.body)
            status_bytes += len(status.body)
        written = time.perf_counter()
        report = backfill(folder, SYSTEM_ID, settings=settings, lake=lake)
        if report.failed:
            raise RuntimeError(f"day {day}: {report.failed} snapshots failed: {report.errors[:3]}")
        raw[str(day)] = {"status_json_bytes": status_bytes, "records": report.records,
                         "generate_s": round(written - began, 1), "backfill_s": round(time.perf_counter() - written, 1)}
        sizes_file.write_text(json.dumps(raw))
        shutil.rmtree(folder)
        print(f"day {day + 1}/{days}: {report.records:,} records, generated in {raw[str(day)]['generate_s']} s, "
              f"backfilled in {raw[str(day)]['backfill_s']} s", flush=True)
    return {d: raw[str(d)] for d in range(days)}


def lake_bytes(lake_root: Path, table: str = "station_status") -> tuple[int, int]:
    """Files and bytes of what the table holds (compacted files and the files they do not hold)."""
    lake = open_lake(str(lake_root))
    keys = lake.files(table)
    return len(keys), sum(Path(lake.storage.path(key)).stat().st_size for key in keys)


def timed_queries(catalog: Path, repeat: int) -> dict[str, Any]:
    """Each query in a new read-only connection, ``repeat`` times: seconds (median, min, max) and its rows."""
    results = {}
    for name, pair in QUERIES.items():
        answers = []
        for source, sql in zip(("station_status_hourly", "station_status"), pair):
            times, rows = [], []
            for _ in range(repeat):
                con = connect(catalog)
                began = time.perf_counter()
                rows = con.execute(sql).fetchall()
                times.append(time.perf_counter() - began)
                con.close()
            answers.append(sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows))
            results[f"{name}, from {source}"] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                                                 "max_s": round(max(times), 3), "result_rows": len(rows)}
            print(f"{name}, from {source}: median {statistics.median(times):.3f} s ({len(rows):,} rows)", flush=True)
        if answers[0] != answers[1]:
            raise AssertionError(f"{name}: the rollup's answer differs from station_status's")
    return results


def timed_scans(catalog: Path, repeat: int, label: str, answers: dict[str, list]) -> dict[str, Any]:
    """:data:`SCANS`, each in a new read-only connection, ``repeat`` times; the answers must equal
    ``answers`` (filled by the first call)."""
    results = {}
    for name, sql in SCANS.items():
        times = []
        for _ in range(repeat):
            con = connect(catalog)
            began = time.perf_counter()
            rows = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in con.execute(sql).fetchall())
            times.append(time.perf_counter() - began)
            con.close()
        if answers.setdefault(name, rows) != rows:
            raise AssertionError(f"{name}: {label} answers differently")
        results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                         "max_s": round(max(times), 3)}
        print(f"{name}, {label}: median {statistics.median(times):.3f} s", flush=True)
    return results


def dag_durations(base: Path, days: int, repeat: int) -> dict[str, Any]:
    """``dag.test()`` of the catalog and checks DAGs on the lake, seconds per run (the first is a warm-up)."""
    (base / "systems.yaml").write_text(f"systems:\n  - id: {SYSTEM_ID}\n    discovery_url: http://127.0.0.1:9/gbfs.json\n")
    (base / "pipeline.yaml").write_text("quality: {max_feed_age_s: 100000000}\n")
    os.environ.update({"CITIBIKES_STATE_DIR": str(base / "state"), "CITIBIKES_LAKE_URI": str(base / "lake"),
                       "CITIBIKES_SYSTEMS_FILE": str(base / "systems.yaml"),
                       "CITIBIKES_PIPELINE_FILE": str(base / "pipeline.yaml"), "CITIBIKES_CATALOG": "duckdb",
                       "AIRFLOW_CONN_CITIBIKES_LAKE": json.dumps({"conn_type": "fs", "extra": {"path": str(base / "lake")}})})
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    as_of = datetime.fromtimestamp(START + days * DAY_S - 60, UTC).isoformat()
    results = {}
    for dag_id, module, conf in (("citibikes_catalog", "catalog.py", {}), ("citibikes_checks", "checks.py", {"as_of": as_of})):
        dag = DagBag(dag_folder=str(ROOT / "dags" / module)).dags[dag_id]
        seconds = []
        for _ in range(repeat + 1):
            began = time.perf_counter()
            run = dag.test(run_conf=conf)
            seconds.append(round(time.perf_counter() - began, 2))
            assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
        results[dag_id] = {"warm_up_s": seconds[0], "runs_s": seconds[1:], "median_s": statistics.median(seconds[1:])}
        print(f"{dag_id}: dag.test median {results[dag_id]['median_s']} s ({seconds[1:]})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--lake", type=Path, help="folder kept between runs (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    base = args.lake or Path(tempfile.mkdtemp(prefix="bench-month-"))
    base.mkdir(parents=True, exist_ok=True)
    lake_root, catalog = base / "lake", base / "state" / "catalog" / "citibikes.duckdb"
    days = build(lake_root, base / "state", args.days, base)
    observations = sum(d["records"] for d in days.values())
    raw_per_obs = sum(d["status_json_bytes"] for d in days.values()) / observations

    catalog.unlink(missing_ok=True)
    lake = open_lake(str(lake_root))
    crawls = []
    for _ in range(2):
        summary = refresh_catalog(lake, catalog)
        crawls.append({"seconds": round(summary.duration_s, 2), "footers_read": summary.footers_read})
        print(f"crawl: {summary.line()}", flush=True)
    before, answers = lake_bytes(lake_root), {}
    scans = {"before_compaction": timed_scans(catalog, args.repeat, "before compaction", answers)}
    compaction = compact(lake, catalog, settle_s=0, grace_s=0)
    print("\n".join(compaction.lines()), flush=True)
    after = lake_bytes(lake_root)
    scans["after_compaction"] = timed_scans(catalog, args.repeat, "after compaction", answers)
    sizes = {label: {"files": files, "bytes": size, "bytes_per_observation": round(size / observations, 3),
                     "raw_json_over_lake": round(raw_per_obs / (size / observations), 1)}
             for label, (files, size) in (("before_compaction", before), ("after_compaction", after))}
    report = {
        "machine": machine_info(),
        "days": args.days, "observations": observations,
        "raw_json_bytes_per_observation": round(raw_per_obs, 1),
        "station_status": sizes,
        "crawls": crawls,
        "compaction": compaction.as_dict(),
        "scans": scans,
        "queries": timed_queries(catalog, args.repeat),
        "dags": dag_durations(base, args.days, args.repeat),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
