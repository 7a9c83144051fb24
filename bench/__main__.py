"""Run the benchmarks, each in its own process: `python -m bench [normalize] [pipeline] [dag]`.

normalize  check a Citi Bike status snapshot from bytes (parse, normalize, validate), one core   (~1 min)
pipeline   citibikes backfill of a recorded archive (lake only, --publish) and of a replayed day
           (--publish), against a naive baseline (~10 min)
dag        scheduled minute-DAG durations under airflow standalone, 1 and 50 systems (~20 min)
consumer   the live consumer applying a backlog with durable commits, against reading only (~5 min)
catalog    the DuckDB catalog over 36,000 hour partitions: crawls, view binding and queries (~2 min)
compaction a replayed day of Citi Bike minute files compacted by hour, then as a day: files, bytes per observation, queries (~3 min)
checks     the data-quality checks on a replayed day: in-process and the checks DAG (dag.test) (~3 min)
dashboard  the live dashboard's time to a drawn map in headless Chromium: Citi Bike and 50 systems (~3 min)

Not run by default (they need the running stack or a lake you provide, or take long): `bench/freshness.py`
(with `make up`: feed -> Kafka -> live state -> alert over 30 minute-runs), `bench/consumer_apply.py
--soak-minutes 10`, `bench/lake_month.py` (30 replayed days backfilled, catalogued, compacted and queried;
10-20 min to build), `bench/catalog_rollup.py --lake <lake_month.py's lake>` (the hourly rollup on it) and
`bench/analytics.py --lake <lake_month.py's lake>` (the service analytics over its 30 days).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "normalize": ["normalize_validate.py"],
    "pipeline": ["pipeline_throughput.py"],
    "dag": ["dag_duration.py"],
    "consumer": ["consumer_apply.py"],
    "catalog": ["catalog_views.py"],
    "compaction": ["compaction.py"],
    "checks": ["checks_duration.py"],
    "dashboard": ["dashboard.py"],
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or list(BENCHMARKS):
        script, *args = BENCHMARKS[name]
        print(f"\n=== {name}: {script} ===", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
