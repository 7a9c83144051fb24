"""The rebalancing to-do list, sent to people: the task log plus a file, or a webhook.

Configuration picks the target (:func:`rebalancing_notifier`): with ``CITIBIKES_ALERTS_WEBHOOK_CONN``
set to an Airflow HTTP connection id, the list is POSTed as JSON to that connection's URL through
the HTTP provider's :class:`~airflow.providers.http.notifications.HttpNotifier` (its hook: the
connection's auth, headers from its extra, a failing status raises); without it, the list is
appended as one JSON line to ``<state_dir>/alerts/rebalancing-<date>.jsonl`` (the date of the run).
Either way it is written to the task log, one line per outage.

The JSON is the alerts DAG's ``plan`` result, the lists that changed (:func:`citibikes.rebalancing.plan`:
``run_id``, ``run_after``, ``systems``, ``outages``, ``files``) plus ``triggered_by``, the alerts
that woke the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier
from airflow.providers.http.notifications import HttpNotifier

from citibikes.config import Settings
from citibikes.rebalancing import describe

WEBHOOK_TIMEOUT_S = 30


class RebalancingNotifier(BaseNotifier):
    """Sends one to-do list to the log and to ``webhook_conn_id`` (an HTTP connection) or ``folder``."""

    def __init__(self, todo: Mapping[str, Any], *, webhook_conn_id: str | None = None,
                 folder: str | Path | None = None) -> None:
        super().__init__()
        if (webhook_conn_id is None) == (folder is None):
            raise ValueError("RebalancingNotifier needs either webhook_conn_id or folder (not both); "
                             "use rebalancing_notifier() to pick one from the settings")
        self.todo, self.webhook_conn_id = dict(todo), webhook_conn_id
        self.folder = None if folder is None else Path(folder)

    def notify(self, context: Any) -> None:
        for line in describe(self.todo):
            self.log.info("%s", line)
        if self.webhook_conn_id is not None:
            HttpNotifier(http_conn_id=self.webhook_conn_id, json=self.todo,
                         extra_options={"timeout": WEBHOOK_TIMEOUT_S}).notify(context)
            self.log.info("to-do list of run %s posted to connection %s", self.todo["run_id"], self.webhook_conn_id)
            return
        path = self.folder / f"rebalancing-{datetime.fromtimestamp(self.todo['run_after'], tz=UTC):%Y-%m-%d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(self.todo, sort_keys=True) + "\n")
        self.log.info("to-do list of run %s appended to %s", self.todo["run_id"], path)


def rebalancing_notifier(todo: Mapping[str, Any], settings: Settings) -> RebalancingNotifier:
    """The notifier the settings ask for: the webhook connection ``CITIBIKES_ALERTS_WEBHOOK_CONN``
    when set, else the file under ``<state_dir>/alerts/``."""
    if settings.alerts_webhook_conn:
        return RebalancingNotifier(todo, webhook_conn_id=settings.alerts_webhook_conn)
    return RebalancingNotifier(todo, folder=settings.state_dir / "alerts")
