"""Secrets stay out of the command-line tool's logs and error lines: every secret the environment gives
is written as ``***`` (what Airflow's secrets masker does for connections inside tasks).

The secrets are the values of :data:`SECRET_VARIABLES` and the password of a ``CITIBIKES_LIVE_STORE``
URL, read from the environment when logging is set up, so no code path has to remember to hide them.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping
from urllib.parse import urlsplit

SECRET_VARIABLES = ("CITIBIKES_KAFKA_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "CITIBIKES_AIRFLOW_PASSWORD")
MIN_LENGTH = 4
"""Shorter values are not hidden: replacing every ``a`` of a log would hide the log, not the secret."""


def secrets_in(env: Mapping[str, str]) -> frozenset[str]:
    values = [env.get(name) or "" for name in SECRET_VARIABLES]
    store = env.get("CITIBIKES_LIVE_STORE") or ""
    if "://" in store:
        values.append(urlsplit(store).password or "")
    return frozenset(v for v in values if len(v) >= MIN_LENGTH)


class Redactor(logging.Filter):
    """A handler filter writing each secret of a record's text as ``***``."""

    def __init__(self, secrets: frozenset[str]) -> None:
        super().__init__()
        self.secrets = sorted(secrets, key=len, reverse=True)  # a secret containing another goes first

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def from_environment() -> Redactor:
    return Redactor(secrets_in(os.environ))
