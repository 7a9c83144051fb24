"""`citibikes up` / `status` / `down` for real: Kafka from Maven jars, the live consumer, the replay feed
and Airflow standalone, with the broker secured (SASL_SSL, one login per service, ACLs).

Everything runs on free ports with its own state folder, so it never touches a developer's stack.
Then a DAG run triggered through the REST API must succeed under the real scheduler, and a
threshold alert sent to Kafka must start the event-driven alerts DAG through its AssetWatcher. The
default PLAINTEXT broker is the one every other Kafka test runs on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from confluent_kafka import ConsumerGroupState, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from citibikes.live import alerts
from citibikes.stack.airflow import ALERTS_WATCHER_GROUP
from citibikes.stack.kafka import CONSUMER_USER, PIPELINE_USER, KafkaBroker
from citibikes.stack.process import free_port, pid_alive, port_open
from support.kafka_read import read_topic
from support.outages import M, build_store

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
        "CITIBIKES_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
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


def _admin_login(env: dict[str, str]) -> dict[str, str]:
    """The secured broker's administrator, as ``up`` made it."""
    state = Path(env["CITIBIKES_STATE_DIR"])
    broker = KafkaBroker(state / "kafka", state / "run", port=int(env["CITIBIKES_KAFKA_PORT"]), security="SASL_SSL")
    return broker.connection().client_config()


def _wait_for_the_alerts_watcher(login: dict[str, str], timeout_s: float = 120) -> None:
    """Until the triggerer runs the alerts DAG's watcher: its consumer group is stable on the alerts topic."""
    admin = AdminClient(login)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([ALERTS_WATCHER_GROUP])[ALERTS_WATCHER_GROUP].result()
        except KafkaException:  # no coordinator for the group yet
            group = None
        if group and group.state == ConsumerGroupState.STABLE and any(
                tp.topic == "bikes-station-alerts" for m in group.members
                for tp in (m.assignment.topic_partitions if m.assignment else [])):
            time.sleep(2)  # and it has looked up the end offset it starts from
            return
        time.sleep(1)
    raise AssertionError(f"the alerts watcher (group {ALERTS_WATCHER_GROUP}) never joined in {timeout_s:.0f} s")


def _alerts_run(ui: str, headers: dict, timeout_s: float = 120) -> dict:
    """The first citibikes_alerts run, once it finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = requests.get(f"{ui}/api/v2/dags/citibikes_alerts/dagRuns", headers=headers, timeout=10).json()["dag_runs"]
        if runs and runs[0]["state"] in ("success", "failed"):
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no finished citibikes_alerts run within {timeout_s:.0f} s of the alert")


def test_up_runs_the_pipeline_and_down_stops_everything(stack_env: dict[str, str], kafka_broker) -> None:
    env = stack_env
    state_dir = Path(env["CITIBIKES_STATE_DIR"])
    # Two long outages of a system "e2e" in the store the consumer takes up, a day ahead of the replay
    # feed's clock so that the consumer never closes them as silent.
    t0 = int(time.time()) + 86400
    build_store(state_dir / "live" / "live.db", system="e2e", t0=t0).close()
    started = time.monotonic()
    up = _cli(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    ui = f"http://127.0.0.1:{env['CITIBIKES_AIRFLOW_PORT']}"
    assert f"Airflow UI:  {ui}   login: admin / stack-test-password" in up.stdout
    assert "DAGs unpaused: citibikes_alerts, citibikes_analytics, citibikes_catalog, citibikes_checks, citibikes_compaction, citibikes_ingest" in up.stdout
    metrics = f"http://127.0.0.1:{env['CITIBIKES_CONSUMER_METRICS_PORT']}/metrics"
    assert f"Consumer: started (metrics {metrics}, store {state_dir / 'live' / 'live.db'}" in up.stdout
    assert f"over SASL_SSL (data in {state_dir / 'kafka' / 'data'})" in up.stdout
    assert f"ACLs: 10 for {PIPELINE_USER} and {CONSUMER_USER}" in up.stdout
    login = _admin_login(env)
    bootstrap = login.pop("bootstrap.servers")
    print(f"up took {time.monotonic() - started:.1f} s")

    token = requests.post(f"{ui}/auth/token", json={"username": "admin", "password": "stack-test-password"},
                          timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert f"Dashboard:   {ui}/citibikes/" in up.stdout
    assert requests.get(f"{ui}/citibikes/api/systems", timeout=10).status_code == 401
    systems = requests.get(f"{ui}/citibikes/api/systems", headers=headers, timeout=10).json()["systems"]
    assert "e2e" in {s["id"] for s in systems}  # the dashboard, mounted by the plugin, reads the consumer's store
    dag = requests.get(f"{ui}/api/v2/dags/citibikes_ingest", headers=headers, timeout=10).json()
    assert dag["is_paused"] is False
    for _ in range(3):  # the metadata DB is SQLite, shared by four busy processes: a 5xx may pass
        triggered = requests.post(f"{ui}/api/v2/dags/citibikes_ingest/dagRuns", json={"logical_date": None},
                                  headers=headers, timeout=10)
        if triggered.status_code < 500:
            break
        time.sleep(2)
    assert triggered.status_code == 200, (triggered.status_code, triggered.text[:500])
    run = triggered.json()
    deadline = time.monotonic() + 180
    state = None
    while time.monotonic() < deadline:
        state = requests.get(f"{ui}/api/v2/dags/citibikes_ingest/dagRuns/{run['dag_run_id']}",
                             headers=headers, timeout=10).json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    assert state == "success", (Path(env["CITIBIKES_STATE_DIR"]) / "logs" / "airflow.log").read_text()[-3000:]
    health = requests.get(f"{ui}/citibikes/api/health", headers=headers, timeout=10).json()
    assert "citibikes_ingest" in {r["dag_id"] for r in health["dag_runs"]}  # the dashboard's last runs
    lake = Path(env["CITIBIKES_STATE_DIR"]) / "lake"
    assert list(lake.glob("curated/station_status/system=citibike/date=*/hour=*/*.parquet"))
    assert read_topic(bootstrap, "bikes-station-status", **login)

    # Event-driven: a threshold alert on bikes-station-alerts -> AssetWatcher -> a citibikes_alerts run.
    waited = time.monotonic()
    _wait_for_the_alerts_watcher({"bootstrap.servers": bootstrap, **login})
    print(f"alerts watcher running {time.monotonic() - waited:.1f} s after the ingest run")
    threshold = alerts.alert("threshold", "empty", "e2e", "E", t0 + M, t0 + 31 * M, 30 * M)
    producer = Producer({"bootstrap.servers": bootstrap, **login})
    producer.produce("bikes-station-alerts", key=b"e2e:E", value=alerts.encode(threshold))
    assert producer.flush(10) == 0
    sent = time.monotonic()
    run = _alerts_run(ui, headers)
    print(f"citibikes_alerts run finished {time.monotonic() - sent:.1f} s after the alert")
    assert (run["state"], run["run_type"]) == ("success", "asset_triggered"), \
        (state_dir / "logs" / "airflow.log").read_text()[-3000:]
    (notes,) = (state_dir / "alerts").glob("rebalancing-*.jsonl")
    sent_list = json.loads(notes.read_text().splitlines()[0])
    assert sent_list["run_id"] == run["dag_run_id"]
    assert sent_list["triggered_by"] == [json.loads(alerts.encode(threshold))]
    assert sent_list["systems"]["e2e"] == {"as_of": t0 + 45 * M, "empty": 1, "full": 1}
    assert list(state_dir.glob("lake/curated/rebalancing/system=e2e/date=*/*.parquet"))
    logs = list((state_dir / "airflow" / "logs" / "dag_id=citibikes_alerts").glob("run_id=*/task_id=notify/attempt=1.log"))
    assert logs and "empty E E St for 44 min: bikes from A A St (111 m, 10 bikes)" in logs[0].read_text()

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

    # Each service used its own login within its ACLs, and no log holds a password.
    server_log = (state_dir / "kafka" / "logs" / "server.log").read_text()
    assert "is Denied operation" not in server_log, [l for l in server_log.splitlines() if "Denied" in l][:5]
    passwords = json.loads((state_dir / "kafka" / "users.json").read_text()).values()
    for log in [*state_dir.glob("logs/*.log"), *state_dir.glob("airflow/logs/**/*.log")]:
        text = log.read_text(errors="replace")
        assert not any(password in text for password in passwords), log

    # The broker's data survives a restart: the topic still holds the run's messages.
    assert _cli(env, "up").returncode == 0
    assert read_topic(bootstrap, "bikes-station-status", **login)
