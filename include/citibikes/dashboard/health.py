"""The pipeline's health as the page shows it: per system the age of the last fetch, records per minute and the
quarantine rate over the last hour (from the lake's ``pipeline_runs``: one file per ingest run), and the live
consumer's lag and rate (from its Prometheus metrics, :mod:`citibikes.live.metrics`).

:class:`RunHistory` keeps the last hour's runs in memory and reads only the files that are new since it last
looked, so a refresh every few seconds lists one or two day folders and reads a handful of small files.
"""

from __future__ import annotations

import io
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from citibikes.lake import Lake
from citibikes.live.metrics import PREFIX

WINDOW_S = 3600
"""The runs the rates are computed over: the last hour's."""
RETRIED_S = 600
"""A run's file is read again while the run is this recent: Airflow retries a failed run within minutes."""
RUN_COLUMNS = ["system_id", "started_at", "outcome", "stations_status", "stations_quarantined"]


class RunHistory:
    """The lake's ingest runs of the last :data:`WINDOW_S` seconds."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.rows: dict[str, list[dict[str, Any]]] = {}
        """Key of a run file -> its rows."""

    def refresh(self, now: float) -> list[dict[str, Any]]:
        """The runs started in the window before ``now``, reading the files new since the last refresh, and again
        those of runs started in the last :data:`RETRIED_S` (a retried run rewrites its file)."""
        days = {datetime.fromtimestamp(t, UTC).date().isoformat() for t in (now - WINDOW_S, now)}
        keys = [k for day in sorted(days) for k in self.lake.storage.list(f"pipeline_runs/date={day}/")
                if k.endswith(".parquet")]
        self.rows = {key: self.rows[key] if key in self.rows and not _recent(self.rows[key], now) else self._read(key)
                     for key in keys}
        return [row for rows in self.rows.values() for row in rows if row["started_at"] >= now - WINDOW_S]

    def _read(self, key: str) -> list[dict[str, Any]]:
        data = self.lake.storage.get(key)
        if data is None:  # deleted between the listing and the read
            return []
        rows = pq.read_table(io.BytesIO(data), columns=RUN_COLUMNS).to_pylist()
        return [{**row, "started_at": row["started_at"].timestamp()} for row in rows]


def _recent(rows: list[dict[str, Any]], now: float) -> bool:
    return any(row["started_at"] >= now - RETRIED_S for row in rows)


def pipeline_health(runs: list[dict[str, Any]], system_ids: list[str], now: float) -> list[dict[str, Any]]:
    """Per system: seconds since its last run started, status records per minute (since the window's first run, at
    least a minute) and the quarantined share of them, and the last run's outcome (None where the system had no run
    in the window)."""
    health = []
    for system_id in system_ids:
        own = sorted((r for r in runs if r["system_id"] == system_id), key=lambda r: r["started_at"])
        records = sum(r["stations_status"] or 0 for r in own)
        quarantined = sum(r["stations_quarantined"] or 0 for r in own)
        health.append({
            "system_id": system_id,
            "last_fetch_age_s": round(now - own[-1]["started_at"], 1) if own else None,
            "records_per_minute": round(records / max((now - own[0]["started_at"]) / 60, 1.0), 1) if own else None,
            "quarantine_rate": quarantined / records if records else None,
            "last_outcome": own[-1]["outcome"] if own else None,
        })
    return health


def consumer_health(url: str | None, timeout_s: float = 1.0) -> dict[str, Any]:
    """The live consumer's metrics at ``url`` (None: not served): whether it answers, its total lag in messages and
    its messages per second."""
    if not url:
        return {"up": None, "lag": None, "messages_per_second": None}
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            text = answer.read().decode()
    except OSError:
        return {"up": False, "lag": None, "messages_per_second": None}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.value)
    lag = samples.get(PREFIX + "lag_messages")
    rate = samples.get(PREFIX + "messages_per_second")
    return {"up": True, "lag": int(sum(lag)) if lag else None, "messages_per_second": rate[0] if rate else None}
