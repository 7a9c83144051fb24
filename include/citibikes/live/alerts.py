"""Alert events on ``bikes-station-alerts``: an episode opened, passed its outage threshold, or closed.

An alert's id is derived from the station, the episode's kind and start and the event, so a replay
or a restart that meets the same episode again produces the same id (consumers dedupe on it),
never a second alert under a new id.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

from citibikes.live.episodes import Kind

Event = Literal["opened", "threshold", "closed"]
DEFAULT_THRESHOLD_S = 30 * 60
"""An open episode this long is an outage worth acting on (``outage_threshold_min`` per system)."""

_NAMESPACE = uuid.UUID("6c1b2d0e-5f0a-4c59-9a43-2b1f8a7e5d10")


class Alert(msgspec.Struct, frozen=True):
    alert_id: str
    event: Event
    kind: Kind
    system_id: str
    station_id: str
    started: int
    """When the episode opened (POSIX seconds, the feed's ``last_updated``)."""
    at: int
    """When this event happened: the start, ``started + threshold_s``, or the end."""
    duration_s: int
    threshold_s: int


def alert(event: Event, kind: Kind, system_id: str, station_id: str, started: int, at: int, threshold_s: int) -> Alert:
    return Alert(alert_id(event, kind, system_id, station_id, started), event, kind, system_id, station_id,
                 started, at, at - started, threshold_s)


def alert_id(event: Event, kind: Kind, system_id: str, station_id: str, started: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{system_id}|{station_id}|{kind}|{started}|{event}"))


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Alert).decode
