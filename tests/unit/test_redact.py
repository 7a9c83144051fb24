"""The command-line tool's logs and error lines never carry a secret the environment gave it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from citibikes.cli import setup_logging
from citibikes.redact import secrets_in

PASSWORD = "kafka-pass-3f9a"


def test_each_secret_of_the_environment_is_logged_as_stars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CITIBIKES_KAFKA_PASSWORD", PASSWORD)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws/secret+key")
    monkeypatch.setenv("CITIBIKES_LIVE_STORE", "postgresql://live:store-pass@db:5432/live")
    log_file = tmp_path / "cli.log"
    setup_logging("INFO", str(log_file))
    log = logging.getLogger("citibikes.test")
    log.info("config %s", {"sasl.password": PASSWORD, "key": "aws/secret+key"})
    log.warning("connecting to postgresql://live:store-pass@db:5432/live")
    try:
        raise RuntimeError(f"login {PASSWORD} refused")
    except RuntimeError:
        log.exception("failed")
    logging.shutdown()
    for text in (capsys.readouterr().err, log_file.read_text()):
        assert "config {'sasl.password': '***', 'key': '***'}" in text
        assert "postgresql://live:***@db:5432/live" in text and "RuntimeError: login *** refused" in text
        assert PASSWORD not in text and "store-pass" not in text and "secret+key" not in text


def test_short_or_missing_values_hide_nothing() -> None:
    assert secrets_in({"CITIBIKES_KAFKA_PASSWORD": "abc", "CITIBIKES_LIVE_STORE": "/tmp/live.db"}) == frozenset()
    assert secrets_in({"AWS_SESSION_TOKEN": "token-value"}) == {"token-value"}



def test_airflow_masks_the_kafka_password_of_every_connection_the_stack_gives_it(tmp_path: Path) -> None:
    """Inside tasks, Airflow's secrets masker hides connection extras by key name: the stack's Kafka
    connections must carry the password under a key it hides."""
    import json
    from dataclasses import replace

    from airflow.sdk._shared.secrets_masker import redact

    from citibikes.config import KafkaConnection, load_settings
    from citibikes.stack.airflow import airflow_env

    login = KafkaConnection("127.0.0.1:9092", "SASL_SSL", "citibikes-pipeline", PASSWORD, None)
    settings = replace(load_settings({"CITIBIKES_STATE_DIR": str(tmp_path)}), kafka=login)
    env = airflow_env(settings, port=8080, base={})
    for name in ("AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER"):
        extra = json.loads(env[name])["extra"]
        assert extra["sasl.password"] == PASSWORD and PASSWORD not in str(redact(extra)), name
    assert env["CITIBIKES_KAFKA_PASSWORD"] == PASSWORD  # the tasks' settings: the environment, never a file
