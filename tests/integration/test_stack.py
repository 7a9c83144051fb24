"""`citibikes up` / `status` / `down` for real: Kafka from Maven jars, the live consumer, the replay feed
and Airflow standalone.

Everything runs on free ports with its own state folder, so it never touches a developer's stack.
Then a DAG run triggered through the REST API must succeed under the real scheduler.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from citibikes.stack.process import free_port, pid_alive, port_open
from support.kafka_read import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.airflow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "citibikes.cli"]


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "state"
    (state / "kafka").mkdir(parents=True)
    (state / "kafka" / "lib").symlink_to(ROOT / ".state" / "kafka" / "lib")  # jars already fetched this session
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CITIBIKES_"))}
    env.update({
        "CITIBIKES_STATE_DIR": str(state),
        "CITIBIKES_FEED": "replay",
        "CITIBIKES_AIRFLOW_PASSWORD": "stack-test-password",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        **{name: str(free_port()) for name in (
            "CITIBIKES_KAFKA_PORT", "CITIBIKES_KAFKA_CONTROLLER_PORT", "CITIBIKES_REPLAY_PORT",
            "CITIBIKES_AIRFLOW_PORT", "CITIBIKES_AIRFLOW_WORKER_LOG_PORT", "CITIBIKES_AIRFLOW_TRIGGER_LOG_PORT",
            "CITIBIKES_CONSUMER_METRICS_PORT")},
    })
    yield env
    subprocess.run([*CLI, "down"], env=env, capture_output=True, timeout=120)


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _line(output: str, name: str) -> str:
    """The status line of one check."""
    [found] = [line for line in output.splitlines() if line.startswith(f"{name} ")]
    return found


def _pid(env: dict[str, str], name: str) -> int:
    return int((Path(env["CITIBIKES_STATE_DIR"]) / "run" / f"{name}.pid").read_text())


def test_up_runs_the_pipeline_and_down_stops_everything(stack_env: dict[str, str], kafka_broker) -> None:
    env = stack_env
    started = time.monotonic()
    up = _cli(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    ui = f"http://127.0.0.1:{env['CITIBIKES_AIRFLOW_PORT']}"
    assert f"Airflow UI:  {ui}   login: admin / stack-test-password" in up.stdout
    assert "DAGs unpaused: citibikes_catalog, citibikes_ingest" in up.stdout
    state_dir = Path(env["CITIBIKES_STATE_DIR"])
    metrics = f"http://127.0.0.1:{env['CITIBIKES_CONSUMER_METRICS_PORT']}/metrics"
    assert f"Consumer: started (metrics {metrics}, store {state_dir / 'live' / 'live.db'}" in up.stdout
    print(f"up took {time.monotonic() - started:.1f} s")

    token = requests.post(f"{ui}/auth/token", json={"username": "admin", "password": "stack-test-password"},
                          timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    dag = requests.get(f"{ui}/api/v2/dags/citibikes_ingest", headers=headers, timeout=10).json()
    assert dag["is_paused"] is False
    run = requests.post(f"{ui}/api/v2/dags/citibikes_ingest/dagRuns", json={"logical_date": None},
                        headers=headers, timeout=10).json()
    deadline = time.monotonic() + 180
    state = None
    while time.monotonic() < deadline:
        state = requests.get(f"{ui}/api/v2/dags/citibikes_ingest/dagRuns/{run['dag_run_id']}",
                             headers=headers, timeout=10).json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    assert state == "success", (Path(env["CITIBIKES_STATE_DIR"]) / "logs" / "airflow.log").read_text()[-3000:]
    lake = Path(env["CITIBIKES_STATE_DIR"]) / "lake"
    assert list(lake.glob("curated/station_status/system=citibike/date=*/hour=*/*.parquet"))
    assert read_topic(f"127.0.0.1:{env['CITIBIKES_KAFKA_PORT']}", "bikes-station-status")

    kafka_pid = _pid(env, "kafka")
    again = _cli(env, "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 4
    assert _pid(env, "kafka") == kafka_pid, "a second up started a second broker"

    pids = {name: _pid(env, name) for name in ("kafka", "consumer", "replay", "airflow")}
    status = _cli(env, "status", timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    shown = {name: _line(status.stdout, name)
             for name in ("broker", "consumer", "scheduler", "dag citibikes_ingest", "feed citibike", "lake")}
    assert f"(pid {pids['kafka']})" in shown["broker"] and "group citibikes-live lag" in shown["broker"]
    assert f"pid {pids['consumer']}, lag " in shown["consumer"] and f"metrics {metrics}" in shown["consumer"]
    assert f"(pid {pids['airflow']})" in shown["scheduler"] and "succeeded" in shown["dag citibikes_ingest"]
    assert f"replay feed pid {pids['replay']}" in shown["feed citibike"] and "last write" in shown["lake"]

    down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        (line,) = [line for line in down.stdout.splitlines() if f"(pid {pid})" in line]
        assert "stopped" in line and "killed" not in line, down.stdout  # Airflow may need the group SIGTERM
        assert not pid_alive(pid)
    assert down.stdout.index("Consumer: stopped") < down.stdout.index("Kafka: stopped"), down.stdout
    assert "Consumer stopped" in (state_dir / "logs" / "consumer.log").read_text(), "SIGTERM: the batch in hand committed, closed cleanly"
    for name in ("CITIBIKES_KAFKA_PORT", "CITIBIKES_REPLAY_PORT", "CITIBIKES_AIRFLOW_PORT", "CITIBIKES_CONSUMER_METRICS_PORT"):
        assert not port_open("127.0.0.1", int(env[name]))
    assert _cli(env, "status").returncode == 3
    assert "not running" in _cli(env, "down").stdout

    # The broker's data survives a restart: the topic still holds the run's messages.
    assert _cli(env, "up").returncode == 0
    assert read_topic(f"127.0.0.1:{env['CITIBIKES_KAFKA_PORT']}", "bikes-station-status")
