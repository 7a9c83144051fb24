"""A secured broker (SASL/SCRAM-SHA-512 over TLS, ACLs), as ``CITIBIKES_KAFKA_SECURITY_PROTOCOL=SASL_SSL make up``
starts it: strangers are refused, each login reaches only its topics, and the pipeline, the Airflow DAG,
the live consumer and the CLI all work through their configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from citibikes.config import KafkaConnection, load_settings
from citibikes.stack.airflow import ALERTS_WATCHER_GROUP
from citibikes.stack.kafka import CONSUMER_USER, PIPELINE_USER, KafkaBroker
from citibikes.stack.process import free_port
from citibikes.stream.acls import ensure_acls, project_acls
from citibikes.stream.consume import CONSUMER_DEFAULTS
from citibikes.stream.topics import BrokerUnavailable, contact, ensure_topics, require_broker

pytestmark = pytest.mark.kafka
CLI = [str(Path(sys.executable).parent / "citibikes")]
KAFKA_LIB = Path(__file__).resolve().parents[2] / ".state" / "kafka" / "lib"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> KafkaBroker:
    """A broker of its own, secured, with the project's topics and ACLs (its clients log in as ``up``'s do)."""
    home = tmp_path_factory.mktemp("secured-kafka")
    broker = KafkaBroker(home, home / "run", port=free_port(), controller_port=free_port(), lib_dir=KAFKA_LIB,
                         security="SASL_SSL")
    broker.start()
    topics = load_settings().topics
    admin = contact(broker.connection())
    ensure_topics(admin, topics.values())
    ensure_acls(admin, project_acls(topics, pipeline=PIPELINE_USER, consumer=CONSUMER_USER,
                                    consumer_group=CONSUMER_DEFAULTS["group.id"], watcher_group=ALERTS_WATCHER_GROUP))
    yield broker
    broker.stop()


def test_the_broker_keeps_its_secrets_to_its_owner(secured: KafkaBroker) -> None:
    for path in (secured.users_file, secured.properties_file, secured.tls.keystore):
        assert path.stat().st_mode & 0o077 == 0, path
    assert "BEGIN PRIVATE KEY" not in secured.tls.ca_file.read_text()
    properties = secured.properties_file.read_text()
    assert f"listeners=SASL_SSL://{secured.bootstrap}," in properties and "PLAINTEXT://" not in properties


def test_strangers_are_refused_with_the_fix(secured: KafkaBroker) -> None:
    good = secured.connection(PIPELINE_USER)
    cases = {
        "no login": (KafkaConnection(secured.bootstrap), "no Kafka broker answers"),
        "wrong password": (KafkaConnection(good.bootstrap, "SASL_SSL", good.username, "not-the-password", good.ca_file),
                           f"refused the login of '{PIPELINE_USER}'"),
        "unknown user": (KafkaConnection(good.bootstrap, "SASL_SSL", "mallory", good.password, good.ca_file),
                         "refused the login of 'mallory'"),
        "a CA that did not sign it": (KafkaConnection(good.bootstrap, "SASL_SSL", good.username, good.password),
                                      "TLS with Kafka at"),
    }
    for name, (connection, message) in cases.items():
        with pytest.raises(BrokerUnavailable, match=message) as caught:
            require_broker(connection, timeout=2)
        assert "\n" not in str(caught.value), name
    # The same login without TLS (SASL_PLAINTEXT, which the project's settings refuse to build) gets nowhere.
    no_tls = {**good.client_config(), "security.protocol": "SASL_PLAINTEXT"}
    no_tls.pop("ssl.ca.location")
    for config in (no_tls, KafkaConnection(secured.bootstrap).client_config()):
        assert _produce(config, "bikes-station-status") is not None


def test_each_login_reaches_only_its_own_topics(secured: KafkaBroker) -> None:
    pipeline = secured.connection(PIPELINE_USER).client_config()
    consumer = secured.connection(CONSUMER_USER).client_config()
    topics = load_settings().topics
    status, alerts = topics["station_status"].name, topics["alerts"].name
    denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
    for topic in (topics["station_status"], topics["station_information"], topics["quarantine"]):
        assert _produce(pipeline, topic.name) is None, topic.name
    assert _produce(pipeline, alerts).code() == denied
    assert _produce(consumer, status).code() == denied
    assert _produce(consumer, alerts) is None
    assert _produce(consumer, topics["dead_letter"].name) is None

    assert _read_one(consumer, status, group="citibikes-live") is None
    assert _read_one(consumer, status, group="citibikes-live-test-1") is None
    assert _read_one(consumer, status, group="someone-else") == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert _read_one(consumer, alerts, group="citibikes-live") == denied
    assert _read_one(pipeline, status, group=ALERTS_WATCHER_GROUP) == denied
    assert _read_one(pipeline, alerts, group=ALERTS_WATCHER_GROUP) is None


@pytest.mark.airflow
def test_the_dag_the_consumer_and_the_cli_work_through_their_logins(
        secured: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    from citibikes.replay.server import make_server
    from support.dags import load_dag
    from support.kafka_read import read_topic

    server = make_server(tick_s=60.0).start_in_thread()
    systems = tmp_path / "systems.yaml"
    systems.write_text(f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
    pipeline = secured.connection(PIPELINE_USER)
    lake_dir = tmp_path / "lake"
    env = {"CITIBIKES_SYSTEMS_FILE": str(systems), "CITIBIKES_LAKE_URI": str(lake_dir), **pipeline.environment(),
           "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps({"conn_type": "kafka", "extra": pipeline.client_config()}),
           "AIRFLOW_CONN_CITIBIKES_LAKE": json.dumps({"conn_type": "fs", "extra": {"path": str(lake_dir)}})}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        run = load_dag("citibikes_ingest").test()
    finally:
        server.shutdown()
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}

    status_topic = load_settings().topics["station_status"].name
    admin = secured.connection().client_config()
    published = {m["key"] for m in read_topic(secured.bootstrap, status_topic,
                                              **{k: v for k, v in admin.items() if k != "bootstrap.servers"})
                 if m["key"].startswith("citibike:")}  # not the other tests' probes
    assert len(published) > 2000

    def cli(*args: str, login: KafkaConnection) -> subprocess.CompletedProcess:
        cli_env = {**os.environ, **login.environment(), "CITIBIKES_STATE_DIR": str(tmp_path / "state"),
                   "LOG_LEVEL": "DEBUG"}
        return subprocess.run([*CLI, *args], env=cli_env, capture_output=True, text=True, timeout=120)

    consumed = cli("consume", "--test-mode", "--log-file", "", login=secured.connection(CONSUMER_USER))
    assert consumed.returncode == 0, consumed.stderr[-2000:]
    summary = json.loads(consumed.stdout[consumed.stdout.index("{"):])
    assert summary["stations"] == len(published), summary
    assert secured.connection(CONSUMER_USER).password not in consumed.stdout + consumed.stderr

    tailed = cli("tail", status_topic, "-n", "1", login=secured.connection())
    assert tailed.returncode == 0, tailed.stderr[-2000:]
    assert json.loads(tailed.stdout.splitlines()[0])["key"] in published

    wrong = KafkaConnection(pipeline.bootstrap, "SASL_SSL", pipeline.username, "wrong", pipeline.ca_file)
    refused = cli("run", "--mode", "single", login=wrong)
    assert refused.returncode != 0
    assert f"refused the login of '{PIPELINE_USER}'" in refused.stderr and "CITIBIKES_KAFKA_PASSWORD" in refused.stderr
    assert "Traceback" not in refused.stderr and "wrong" not in refused.stderr.replace("wrong password", "")


def _produce(config: dict, topic: str) -> KafkaError | None:
    """The delivery error of one message (None: the broker took it)."""
    producer = Producer({**config, "message.timeout.ms": 2500, "log_level": 0, "error_cb": lambda error: None})
    outcome: list = []
    producer.produce(topic, b"{}", key=f"test:{uuid.uuid4().hex[:6]}".encode(), partition=0,
                     on_delivery=lambda error, message: outcome.append(error))
    producer.flush(8)
    return outcome[0]


def _read_one(config: dict, topic: str, *, group: str) -> int | None:
    """Join ``group``, read a message of ``topic`` and commit it: None when that worked, else the error code."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False, "log_level": 0,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                return message.error().code()
            try:
                consumer.commit(message=message, asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - KafkaException carries the broker's code
                return exc.args[0].code()
            return None
        raise AssertionError(f"nothing read from {topic} in 10 s")
    finally:
        consumer.close()
