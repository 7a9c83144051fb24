"""Minute DAG duration under `airflow standalone`: scheduled runs of citibikes_ingest, p50/p95.

Starts its own stack (Kafka, the replay feed, Airflow) on free ports with a throwaway state
folder, lets the scheduler run the DAG every minute for ``--runs`` minutes with 1 system (Citi Bike)
and then with ``--systems`` replayed systems (Citi Bike + synthetic ones), and reads each run's
start and end from the REST API. The first run of each configuration (cold caches, first full
snapshot) is reported but left out of the percentiles.

    .venv/bin/python bench/dag_duration.py [--runs 8] [--systems 50] [--json out.json]
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
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine_info, percentile  # noqa: E402

from citibikes.stack.process import free_port  # noqa: E402

PASSWORD = "bench-password"


def systems_file(folder: Path, count: int, replay_port: int) -> Path:
    ids = ["citibike"] + [f"synth-{n:02d}" for n in range(1, count)]
    path = folder / f"systems-{count}.yaml"
    path.write_text("systems:\n" + "".join(
        f"  - id: {sid}\n    discovery_url: http://127.0.0.1:{replay_port}/{sid}/gbfs.json\n" for sid in ids))
    return path


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citibikes.cli", *args], env=env, capture_output=True, text=True)


def measure(env: dict[str, str], runs: int) -> list[dict]:
    ui = f"http://127.0.0.1:{env['CITIBIKES_AIRFLOW_PORT']}"
    up = cli(env, "up")
    if up.returncode != 0:
        raise SystemExit(f"citibikes up failed:\n{up.stdout}\n{up.stderr}")
    try:
        token = requests.post(f"{ui}/auth/token", json={"username": "admin", "password": PASSWORD}, timeout=10).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + (runs + 3) * 60
        seen = 0
        while time.monotonic() < deadline:
            listed = [r for r in requests.get(f"{ui}/api/v2/dags/citibikes_ingest/dagRuns", headers=headers,
                                              params={"limit": 100}, timeout=10).json()["dag_runs"]
                      if r["run_type"] == "scheduled" and r["state"] in ("success", "failed")]
            if len(listed) > seen:
                seen = len(listed)
                print(f"  {seen}/{runs} scheduled runs finished", flush=True)
            if len(listed) >= runs:
                break
            time.sleep(5)
        results = []
        for run in sorted(listed, key=lambda r: r["start_date"])[:runs]:
            start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
            scheduled = datetime.fromisoformat(run["run_after"])
            results.append({"run_id": run["dag_run_id"], "state": run["state"],
                            "duration_s": (end - start).total_seconds(),
                            "after_schedule_s": (end - scheduled).total_seconds()})
        return results
    finally:
        cli(env, "down")


def summarize(name: str, runs: list[dict]) -> dict:
    steady = [r["duration_s"] for r in runs[1:]] or [r["duration_s"] for r in runs]
    summary = {
        "config": name, "runs": len(runs), "failed": sum(r["state"] != "success" for r in runs),
        "first_run_s": runs[0]["duration_s"] if runs else None,
        "p50_s": statistics.median(steady) if steady else None,
        "p95_s": percentile(steady, 0.95) if steady else None,
        "max_s": max(steady) if steady else None,
        "durations_s": [round(r["duration_s"], 2) for r in runs],
    }
    print(f"{name:>12}: {summary['runs']} scheduled runs, {summary['failed']} failed; first {summary['first_run_s']:.1f} s; "
          f"steady p50 {summary['p50_s']:.1f} s, p95 {summary['p95_s']:.1f} s, max {summary['max_s']:.1f} s")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--systems", type=int, default=50)
    parser.add_argument("--configs", default="1,many", help="which configurations: 1, many or both (1,many)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(json.dumps(machine_info(), indent=2))
    results = []
    with tempfile.TemporaryDirectory(prefix="citibikes-bench-dag-") as tmp:
        wanted = args.configs.split(",")
        for count in [c for c, name in ((1, "1"), (args.systems, "many")) if name in wanted]:
            state = Path(tmp) / f"state-{count}"
            (state / "kafka").mkdir(parents=True)
            lib = ROOT / ".state" / "kafka" / "lib"
            if lib.exists():
                (state / "kafka" / "lib").symlink_to(lib)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CITIBIKES_"))}
            ports = {name: str(free_port()) for name in (
                "CITIBIKES_KAFKA_PORT", "CITIBIKES_KAFKA_CONTROLLER_PORT", "CITIBIKES_REPLAY_PORT",
                "CITIBIKES_AIRFLOW_PORT", "CITIBIKES_AIRFLOW_WORKER_LOG_PORT", "CITIBIKES_AIRFLOW_TRIGGER_LOG_PORT")}
            env.update(ports)
            env.update({
                "CITIBIKES_STATE_DIR": str(state),
                "CITIBIKES_FEED": "replay",
                "CITIBIKES_SYSTEMS_FILE": str(systems_file(Path(tmp), count, int(ports["CITIBIKES_REPLAY_PORT"]))),
                "CITIBIKES_AIRFLOW_PASSWORD": PASSWORD,
            })
            # CITIBIKES_SYSTEMS_FILE wins over CITIBIKES_FEED, but `up` starts the replay feed only in replay
            # mode: start it here so the generated systems file has something to read.
            replay = subprocess.Popen([sys.executable, "-m", "citibikes.cli", "replay", "--port", ports["CITIBIKES_REPLAY_PORT"]],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                runs = measure(env, args.runs)
            finally:
                replay.terminate()
                replay.wait(10)
            results.append(summarize(f"{count} system{'s' if count > 1 else ''}", runs))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
