"""What the GBFS tests share: the recorded and hand-built feeds, and rows of a normalized table as plain values.

Kept free of the code under test (apart from the recordings' file list), so that expectations
computed with these helpers come from the raw JSON, not from the normalizer.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from citibikes.config import QualityConfig
from citibikes.gbfs.model import QuarantinedRecord
from citibikes.gbfs.normalize import Normalized
from citibikes.quality import Described, QualitySummary, Validated, information_rules, status_rules, summarize
from citibikes.replay.recordings import recorded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
STATION_INFORMATION = "station_information"
STATION_STATUS = "station_status"
V3_KEYS = {"num_bikes_available": "num_vehicles_available", "num_bikes_disabled": "num_vehicles_disabled"}
"""Canonical (1.x/2.x) status key -> its GBFS 3.x name."""


def real_body(feed: str, index: int = 0) -> bytes:
    return recorded(feed)[index].read_bytes()


def real_doc(feed: str, index: int = 0) -> dict[str, Any]:
    return json.loads(real_body(feed, index))


def fixture_doc(version: str, feed: str) -> dict[str, Any]:
    """A hand-built feed of ``tests/fixtures/gbfs/<version>/`` (``v2.3``, ``v3.0``)."""
    return json.loads((FIXTURES / version / f"{feed}.json").read_text())


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def is_v3(doc: dict[str, Any]) -> bool:
    return str(doc.get("version", "1.0")).startswith("3.")


def rfc3339_to_posix(text: str) -> int:
    """POSIX seconds of an RFC 3339 time, by ``strptime`` with explicit formats (not the code under test)."""
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return int(datetime.strptime(text.replace("Z", "+00:00"), pattern).timestamp())
        except ValueError:
            continue
    raise AssertionError(f"fixture time {text!r} is not RFC 3339")


def posix(value: int | str) -> int:
    """A feed time as POSIX seconds, whichever way the feed wrote it (seconds or RFC 3339)."""
    return value if isinstance(value, int) else rfc3339_to_posix(value)


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a table as dicts of plain values: times as POSIX seconds (int when whole),
    ``extras`` decoded from its JSON text."""
    result = []
    for row in table.to_pylist():
        for name, value in row.items():
            if isinstance(value, datetime):
                seconds = value.timestamp()
                row[name] = int(seconds) if seconds.is_integer() else seconds
        if "extras" in row:
            row["extras"] = json.loads(row["extras"])
        result.append(row)
    return result


def by_station(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["station_id"]: row for row in rows(table)}


@dataclass
class ValidationResult:
    """What may go downstream, what goes to the quarantine topic, and the report."""

    information: Validated | None
    status: Validated | None
    summary: QualitySummary

    @property
    def quarantined(self) -> list[QuarantinedRecord]:
        """Both feeds' quarantined records, information first."""
        return [record for feed in (self.information, self.status) if feed is not None for record in feed.quarantined]


def validate(information: Normalized | None, status: Normalized | None, *, config: QualityConfig,
             reference_time: float | None = None, known: Described | None = None,
             vehicle_types: Collection[str] | None = None,
             previous_last_updated: int | None = None) -> ValidationResult:
    """(The tests' way to check feeds, as ``citibikes.ingest`` does.) Apply every rule to one system's normalized feeds (:func:`information_rules` and
    :func:`status_rules`) and summarize. Status is judged against ``information`` when given, else
    ``known`` (without either, the capacity and orphan rules are skipped)."""
    if information is None and status is None:
        raise ValueError("validate needs station_information, station_status or both")
    checked_information = information_rules(information, reference_time) if information else None
    if checked_information is not None:
        known = Described.of(checked_information)
    checked_status = None
    if status is not None:
        checked_status = status_rules(status, config, reference_time, known=known, vehicle_types=vehicle_types)
    summary = summarize(checked_information, checked_status, previous_last_updated=previous_last_updated)
    return ValidationResult(checked_information, checked_status, summary)
