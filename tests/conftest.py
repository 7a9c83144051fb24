"""Test session wiring: a real Kafka broker and a real Airflow metadata database, both throwaway.

The broker is the project's own (``citibikes.stack.kafka``): jars cached in ``.state/kafka/lib``,
data in a temporary folder, free ports, started once per session and stopped at the end. Airflow
gets a temporary ``AIRFLOW_HOME`` (set before anything imports airflow) and a migrated SQLite DB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))  # what Airflow does for the plugins folder

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="citibikes-test-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
})
# Tests never touch the developer's running stack or its data.
_TEST_STATE = Path(tempfile.mkdtemp(prefix="citibikes-test-state-"))
os.environ["CITIBIKES_STATE_DIR"] = str(_TEST_STATE)
for name in ("CITIBIKES_SYSTEMS_FILE", "CITIBIKES_FEED", "CITIBIKES_LAKE_URI", "CITIBIKES_KAFKA_BOOTSTRAP",
             "CITIBIKES_KAFKA_SECURITY_PROTOCOL", "CITIBIKES_KAFKA_USERNAME", "CITIBIKES_KAFKA_PASSWORD",
             "CITIBIKES_KAFKA_CA_FILE"):
    os.environ.pop(name, None)

from citibikes.stack.kafka import KafkaBroker  # noqa: E402
from citibikes.stack.process import free_port  # noqa: E402

KAFKA_LIB = ROOT / ".state" / "kafka" / "lib"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> KafkaBroker:
    """A real single-node Apache Kafka broker for the whole session."""
    home = tmp_path_factory.mktemp("kafka")
    broker = KafkaBroker(home, home / "run", port=free_port(), controller_port=free_port(), lib_dir=KAFKA_LIB)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) in the session's AIRFLOW_HOME."""
    result = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                            capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-2000:]
    return _AIRFLOW_HOME


@pytest.fixture(scope="module")
def trino_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - support.trino.TrinoServer
    """A real Trino server (Athena's engine) for a test module, started by its first test that asks (and stopped
    after its last: an idle Trino keeps a core busy); Trino and its Hive plugin are downloaded once into
    .state/trino (450 MB, from Maven Central)."""
    from support.trino import JAVA_MAJOR, TrinoServer, install, java_home

    java = java_home()
    if java is None:
        pytest.skip(f"Trino needs Java {JAVA_MAJOR}+ and none was found; install one and set TRINO_JAVA_HOME")
    server = TrinoServer(install(ROOT / ".state" / "trino"), java, tmp_path_factory.mktemp("trino"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL server (Debian's package) for the whole session."""
    from support.postgres import PostgresServer

    server = PostgresServer().start()
    yield server.url
    server.stop()
