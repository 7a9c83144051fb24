"""Airflow 3 standalone for the local stack: environment, login, readiness and unpausing the DAGs.

``airflow standalone`` runs the scheduler, DAG processor, API server (UI) and triggerer on the
embedded SQLite metadata database with the LocalExecutor. Everything it needs comes from the
environment built here (no airflow.cfg edits): the DAG and plugin folders of this repository, no
examples, parallelism sized for small machines, and the Kafka, alerts-watcher and lake connections
as ``AIRFLOW_CONN_*`` derived from the project's own settings.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import requests

from citibikes.config import PROJECT_ROOT, Settings
from citibikes.stack.process import Service, StackError

ADMIN_USER = "admin"
ALERTS_WATCHER_GROUP = "citibikes-alerts-dag"


def lake_connection(settings: Settings) -> dict:
    """The ``citibikes_lake`` connection: a folder (``fs``) or S3 (``aws``, endpoint and keys)."""
    uri = settings.lake_uri
    if uri.startswith("s3://"):
        extra = {"region_name": settings.s3_region, "lake_uri": uri}
        if settings.s3_endpoint_url:
            extra["endpoint_url"] = settings.s3_endpoint_url
        conn = {"conn_type": "aws", "extra": extra}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            conn["login"] = os.environ["AWS_ACCESS_KEY_ID"]
            conn["password"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        return conn
    path = uri.removeprefix("file://")
    return {"conn_type": "fs", "extra": {"path": str(Path(path).resolve())}}


def alerts_watcher_connection(settings: Settings) -> dict:
    """The ``citibikes_alerts_watcher`` connection of the alerts DAG's AssetWatcher: its own consumer
    group, starting at the end of the topic when new, offsets committed by the trigger alone."""
    return {"conn_type": "kafka", "extra": {**settings.kafka.client_config(), "group.id": ALERTS_WATCHER_GROUP,
                                            "auto.offset.reset": "latest", "enable.auto.commit": False}}


def airflow_env(settings: Settings, *, port: int, worker_log_port: int = 8793, trigger_log_port: int = 8794,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Airflow process of the local stack."""
    env = dict(os.environ if base is None else base)
    home = settings.state_dir / "airflow"
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "AIRFLOW_HOME": str(home),
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__HOST": env.get("AIRFLOW__API__HOST", "127.0.0.1"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": env.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps(
            {"conn_type": "kafka", "extra": settings.kafka.client_config()}
        ),
        "AIRFLOW_CONN_CITIBIKES_LAKE": json.dumps(lake_connection(settings)),
        "AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER": json.dumps(alerts_watcher_connection(settings)),
        # The tasks load the same settings as the CLI.
        "CITIBIKES_STATE_DIR": str(settings.state_dir),
        "CITIBIKES_SYSTEMS_FILE": str(settings.systems_file),
        "CITIBIKES_PIPELINE_FILE": str(settings.pipeline_file),
        **settings.kafka.environment(),
        "CITIBIKES_LAKE_URI": settings.lake_uri,
    })
    return env


def _stored_passwords(home: Path) -> dict:
    try:
        return json.loads((home / "passwords.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def known_password(home: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The admin password if one is set or stored (None before the first ``up``); writes nothing."""
    env = os.environ if env is None else env
    return env.get("CITIBIKES_AIRFLOW_PASSWORD") or _stored_passwords(home).get(ADMIN_USER)


def admin_password(home: Path) -> str:
    """The admin password: ``CITIBIKES_AIRFLOW_PASSWORD`` or one generated once and kept in the state folder."""
    passwords_file = home / "passwords.json"
    stored = _stored_passwords(home)
    password = known_password(home) or secrets.token_urlsafe(12)
    if stored.get(ADMIN_USER) != password:
        home.mkdir(parents=True, exist_ok=True)
        passwords_file.write_text(json.dumps({ADMIN_USER: password}) + "\n")
        passwords_file.chmod(0o600)
    return password


@dataclass
class AirflowStandalone:
    settings: Settings
    port: int = 8080
    worker_log_port: int = 8793
    trigger_log_port: int = 8794

    @property
    def home(self) -> Path:
        return self.settings.state_dir / "airflow"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def service(self) -> Service:
        return Service(
            name="airflow",
            command=[str(Path(sys.executable).parent / "airflow"), "standalone"],
            run_dir=self.settings.state_dir / "run",
            log_file=self.settings.state_dir / "logs" / "airflow.log",
            ports=[("127.0.0.1", self.port), ("127.0.0.1", self.worker_log_port), ("127.0.0.1", self.trigger_log_port)],
            env=airflow_env(self.settings, port=self.port, worker_log_port=self.worker_log_port,
                            trigger_log_port=self.trigger_log_port),
            cwd=self.home,
            ready=self.healthy,
            start_timeout_s=180,
            stop_signal=2,  # SIGINT: standalone shuts its components down in order
            stop_timeout_s=8,  # a clean shutdown takes 1-2 s; past that a child holds it up
            fix_hint="set CITIBIKES_AIRFLOW_PORT (UI), CITIBIKES_AIRFLOW_WORKER_LOG_PORT or CITIBIKES_AIRFLOW_TRIGGER_LOG_PORT to free ports",
        )

    def healthy(self) -> bool:
        try:
            health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).json()
        except (requests.RequestException, ValueError):
            return False
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
        )

    def start(self) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        admin_password(self.home)
        return self.service().start()

    def stop(self) -> str:
        return self.service().stop()

    def token(self) -> str:
        response = requests.post(
            f"{self.url}/auth/token",
            json={"username": ADMIN_USER, "password": admin_password(self.home)},
            timeout=10,
        )
        if response.status_code >= 300:
            raise StackError(f"Airflow refused the admin login ({response.status_code}); delete {self.home / 'passwords.json'} and run `make up` again")
        return response.json()["access_token"]

    def unpause_project_dags(self, timeout_s: float = 120.0) -> tuple[list[str], dict[str, str]]:
        """Wait until every file in dags/ is parsed; unpause its DAGs. Returns (dag ids, import errors)."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        files = {p.name for p in (PROJECT_ROOT / "dags").glob("*.py") if not p.name.startswith("_")}
        deadline = time.monotonic() + timeout_s
        while True:
            dags = requests.get(f"{self.url}/api/v2/dags", params={"limit": 1000}, headers=headers, timeout=10).json()["dags"]
            errors = requests.get(f"{self.url}/api/v2/importErrors", headers=headers, timeout=10).json()["import_errors"]
            failed = {Path(e["filename"]).name: e["stack_trace"].strip().splitlines()[-1] for e in errors}
            parsed = {Path(d["fileloc"]).name for d in dags} | set(failed)
            if files <= parsed or time.monotonic() > deadline:
                break
            time.sleep(1)
        ours = [d for d in dags if Path(d["fileloc"]).parent == PROJECT_ROOT / "dags"]
        for dag in ours:
            if dag["is_paused"]:
                requests.patch(f"{self.url}/api/v2/dags/{dag['dag_id']}", json={"is_paused": False},
                               headers=headers, timeout=10).raise_for_status()
        missing = files - parsed
        if missing:
            failed.update({name: "not parsed yet" for name in missing})
        return sorted(d["dag_id"] for d in ours), failed
