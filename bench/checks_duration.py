"""How long the data-quality checks take on a lake of a replayed day: in-process, and as the checks DAG.

Usage (from the repository root):

    .venv/bin/python bench/checks_duration.py [--days 1] [--repeat 3] [--json out.json]

1. A lake made by the pipeline: ``citibikes backfill`` of ``--days`` replayed days of Citi Bike minute
   snapshots (1,440 a day x 2,208 stations), crawled into the DuckDB catalog.
2. The checks over the last 24 hours of it (``as_of``: the day's last snapshot), in one process on
   the catalog (what ``citibikes checks`` runs): each check's ``results_sql`` and what its operator
   runs; medians of ``--repeat``.
3. The checks DAG run whole with ``dag.test()`` (every task in this process, no scheduler: the tasks'
   own time; under the scheduler each task start adds about 0.9 s, see ENVIRONMENT notes in
   BENCHMARKS.md), medians of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include"), str(ROOT / "plugins")]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bench-checks-airflow-"))
os.environ.update({"AIRFLOW_HOME": str(AIRFLOW_HOME), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                   "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})

from bench.common import machine_info  # noqa: E402
from bench.pipeline_throughput import START, SYSTEM_ID, write_day  # noqa: E402
from citibikes.catalog import connect, refresh_catalog  # noqa: E402
from citibikes.checks import CheckParams, build_checks, run_on_duckdb  # noqa: E402
from citibikes.config import load_settings  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.replay.backfill import backfill  # noqa: E402


def make_lake(root: Path, days: int) -> tuple[dict[str, str], datetime, int]:
    """The backfilled lake's environment, the end of its data and its station_status rows."""
    (root / "systems.yaml").write_text(f"systems:\n  - id: {SYSTEM_ID}\n    discovery_url: http://127.0.0.1:9/gbfs.json\n")
    (root / "pipeline.yaml").write_text("quality: {max_feed_age_s: 100000000}\n")
    env = {"CITIBIKES_STATE_DIR": str(root / "state"), "CITIBIKES_LAKE_URI": str(root / "lake"),
           "CITIBIKES_SYSTEMS_FILE": str(root / "systems.yaml"), "CITIBIKES_PIPELINE_FILE": str(root / "pipeline.yaml")}
    settings = load_settings(env)
    write_day(root / "day", 1440 * days)
    lake = open_lake(settings.lake_uri)
    report = backfill(root / "day", SYSTEM_ID, settings=settings, lake=lake)
    assert not report.failed, report.errors[:3]
    summary = refresh_catalog(lake, settings.catalog_path)
    return env, datetime.fromtimestamp(START + 60 * (1440 * days - 1), UTC), summary.tables["station_status"]["rows"]


def in_process(env: dict[str, str], as_of: datetime, repeat: int) -> dict[str, float]:
    settings = load_settings(env)
    checks = build_checks(CheckParams.from_settings(settings, as_of))
    times: dict[str, list[float]] = {"all": []}
    for _ in range(repeat):
        con = connect(settings.catalog_path)
        began = time.perf_counter()
        results, _ = run_on_duckdb(con, checks, as_of)
        times["all"].append(time.perf_counter() - began)
        assert all(r.passed for r in results), [r.line() for r in results if not r.passed]
        for check in checks:
            operator_sql = check.operator_args.get("sql")
            if operator_sql:
                began = time.perf_counter()
                con.execute(operator_sql).fetchall()
                times.setdefault(f"{check.name} (operator's SQL)", []).append(time.perf_counter() - began)
            began = time.perf_counter()
            con.execute(check.results_sql).fetchall()
            times.setdefault(f"{check.name} (results)", []).append(time.perf_counter() - began)
        con.close()
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def dag_runs(env: dict[str, str], as_of: datetime, repeat: int) -> list[float]:
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)
    os.environ.update(env)
    os.environ["AIRFLOW_CONN_CITIBIKES_LAKE"] = json.dumps({"conn_type": "fs", "extra": {"path": env["CITIBIKES_LAKE_URI"]}})
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "checks.py")).dags["citibikes_checks"]
    seconds = []
    for _ in range(repeat + 1):  # the first warms the imports and the DB
        began = time.perf_counter()
        run = dag.test(run_conf={"as_of": as_of.isoformat()})
        seconds.append(round(time.perf_counter() - began, 2))
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-checks-") as folder:
        began = time.perf_counter()
        env, as_of, rows = make_lake(Path(folder), args.days)
        made = time.perf_counter() - began
        checks = in_process(env, as_of, args.repeat)
        dag = dag_runs(env, as_of, args.repeat)
    report = {"machine": machine_info(), "lake": {"days": args.days, "station_status_rows": rows,
                                                  "made_in_s": round(made, 1)},
              "in_process_median_s": checks, "dag_test_s": {"warm_up": dag[0], "runs": dag[1:],
                                                             "median": statistics.median(dag[1:])}}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
