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

