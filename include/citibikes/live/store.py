"""The live state of every station, rebuilt from the Kafka topics.

Applying the status and information streams in order gives, per ``<system>:<station>`` key, the
latest known status and description. A station is *empty* when it is installed and renting but
has no bike, *full* when it is installed and returning but has no free dock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping


def is_empty(status: Mapping[str, Any]) -> bool:
    return bool(status.get("is_installed")) and bool(status.get("is_renting")) and status.get("num_bikes_available") == 0


def is_full(status: Mapping[str, Any]) -> bool:
    return (bool(status.get("is_installed")) and bool(status.get("is_returning"))
            and status.get("num_docks_available") == 0)


@dataclass
class LiveState:
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    information: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply_status(self, key: str, value: Mapping[str, Any]) -> bool:
        """Keep ``value`` unless an observation at least as new is already known. True if applied."""
        return _newest(self.status, key, value)

    def apply_information(self, key: str, value: Mapping[str, Any]) -> bool:
        """Keep a description unless a newer one is known (a backfill with ``--publish`` sends old
        ones after the live pipeline's). True if applied."""
        return _newest(self.information, key, value)

    def remove_information(self, key: str) -> None:
        """Forget a station's description (its tombstone on the compacted information topic)."""
        self.information.pop(key, None)

    def summary(self) -> dict[str, Any]:
        systems = Counter(value.get("system_id") for value in self.status.values())
        return {
            "stations": len(self.status),
            "described": len(self.information),
            "empty": sum(is_empty(v) for v in self.status.values()),
            "full": sum(is_full(v) for v in self.status.values()),
            "bikes_available": sum(v.get("num_bikes_available") or 0 for v in self.status.values()),
            "systems": dict(systems),
        }


def _newest(known: dict[str, dict[str, Any]], key: str, value: Mapping[str, Any]) -> bool:
    current = known.get(key)
    if current is not None and current.get("last_updated", 0) > value.get("last_updated", 0):
        return False
    known[key] = dict(value)
    return True
