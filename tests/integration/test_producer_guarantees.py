"""The producers the pipeline builds keep its guarantees - idempotent, acks=all, zstd - as librdkafka
runs them and as the broker stores their batches; a Kafka connection's extra cannot weaken them."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from citibikes.config import TopicConfig, load_settings
from citibikes.replay.server import make_server
from citibikes.stream.publish import make_producer
from citibikes.stream.topics import ensure_topics
from support.kafka_read import stored_batches

pytestmark = pytest.mark.kafka
CONF_LINE = re.compile(r"^CONF \[[^]]+\] \[[^]]+\]: +([\w.]+) = (.*)$")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def kafka_log():
    """librdkafka's log lines (``make_producer`` sends them to ``citibikes.kafka``); a handler of its own,
    since importing Airflow replaces the root logger's handlers, pytest's among them."""
    logger, handler = logging.getLogger("citibikes.kafka"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _effective_config(lines: list[str]) -> dict[str, str]:
    """The configuration librdkafka dumped at start (``debug: conf``): every setting it runs with that
    differs from its own defaults, under librdkafka's names (``acks`` is ``request.required.acks``)."""
    config = dict(match.groups() for line in lines if (match := CONF_LINE.match(line)))
    assert config, f"librdkafka logged no configuration: {lines[:5]}"
    return config


def _assert_guarantees(config: dict[str, str]) -> None:
    assert config["enable.idempotence"] == "true"
    assert config["request.required.acks"] == "-1"  # all
    assert config["compression.codec"] == "zstd"


def _produce_and_check_stored_batches(producer: Producer, broker, count: int = 50) -> None:
    topic = f"guarantees-{uuid.uuid4().hex[:8]}"
    ensure_topics(AdminClient({"bootstrap.servers": broker.bootstrap}), [TopicConfig(topic, partitions=1)])
    for i in range(count):
        producer.produce(topic, key=b"k", value=json.dumps({"i": i}).encode())
    assert producer.flush(30) == 0
    _assert_idempotent_zstd(stored_batches(broker, topic))


def _assert_idempotent_zstd(batches: list[dict[str, str]]) -> None:
    assert batches
    assert all(b["compresscodec"] == "zstd" for b in batches), batches
    assert all(int(b["producerId"]) >= 0 and int(b["baseSequence"]) >= 0 for b in batches), batches  # -1: not idempotent


@pytest.mark.airflow
def test_the_airflow_hook_producer_is_idempotent_acks_all_zstd(kafka_broker, monkeypatch: pytest.MonkeyPatch,
                                                               kafka_log: list[str], airflow_db) -> None:
    from citibikes_airflow.hooks.kafka import PipelineProducerHook

    extra = {"bootstrap.servers": kafka_broker.bootstrap, "debug": "conf", "linger.ms": 5, "acks": "all"}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": extra}))
    producer = PipelineProducerHook(kafka_config_id="kafka_default").get_producer()
    producer.poll(0.5)  # serves librdkafka's log lines
    config = _effective_config(kafka_log)
    _assert_guarantees(config)
    assert config["queue.buffering.max.ms"] == "5"  # linger.ms: the extra still tunes the rest
    _produce_and_check_stored_batches(producer, kafka_broker)


def test_the_cli_producer_is_idempotent_acks_all_zstd(kafka_broker, tmp_path: Path, kafka_log: list[str]) -> None:
    """``citibikes run`` builds ``make_producer(bootstrap)``: its configuration as librdkafka runs it,
    and the batches a real ``citibikes run --mode single`` left on the broker."""
    producer = make_producer(kafka_broker.bootstrap, debug="conf")
    producer.poll(0.5)
    _assert_guarantees(_effective_config(kafka_log))
    # librdkafka refuses idempotence with any acks but all: idempotent batches on the broker imply acks=all.
    with pytest.raises(KafkaException, match="acks"):
        Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True, "acks": 1})

    server = make_server(tick_s=1.0).start_in_thread()
    try:
        prefix = f"guarantees-cli-{uuid.uuid4().hex[:8]}"
        (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
            f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
        (tmp_path / "systems.yaml").write_text(
            f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITIBIKES_")}
        env.update({
            "CITIBIKES_STATE_DIR": str(tmp_path / "state"),
            "CITIBIKES_SYSTEMS_FILE": str(tmp_path / "systems.yaml"),
            "CITIBIKES_PIPELINE_FILE": str(tmp_path / "pipeline.yaml"),
            "CITIBIKES_LAKE_URI": str(tmp_path / "lake"),
            "CITIBIKES_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        })
        settings = load_settings(env)
        ensure_topics(AdminClient({"bootstrap.servers": kafka_broker.bootstrap}), settings.topics.values())
        result = subprocess.run([sys.executable, "-m", "citibikes.cli", "run", "--mode", "single"], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    finally:
        server.shutdown()
    for key in ("station_information", "station_status", "quarantine"):  # what `citibikes run` produces to
        _assert_idempotent_zstd(stored_batches(kafka_broker, settings.topics[key].name))


@pytest.mark.airflow
@pytest.mark.parametrize("setting, value", [
    ("acks", "1"), ("enable.idempotence", False), ("request.required.acks", 0), ("compression.type", "none"),
])
def test_a_connection_extra_cannot_weaken_the_guarantees(setting: str, value, monkeypatch: pytest.MonkeyPatch,
                                                         airflow_db) -> None:
    """Rejected before any producer exists, without retries (AirflowFailException): one line naming the
    setting, the connection and the fix."""
    from airflow.sdk.exceptions import AirflowFailException

    from citibikes_airflow.hooks.kafka import PipelineProducerHook

    extra = {"bootstrap.servers": "127.0.0.1:9", setting: value}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": extra}))
    with pytest.raises(AirflowFailException) as error:
        PipelineProducerHook(kafka_config_id="kafka_default").get_producer()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"connection kafka_default: Kafka producer setting {setting}={value} is not allowed")
    assert f"remove {setting} from" in message
