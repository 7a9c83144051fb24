"""The rebalancing to-do list: each long outage and the nearest stations that could help. Pure, no I/O.

From the live state (every station's latest status and description, the open episodes) and each
system's outage threshold, :func:`todo` lists every open episode at least its threshold long, with
the :data:`NEAREST` stations that could fix it, nearest first:

- an *empty* station needs bikes: a helper is installed, renting and has at least
  :data:`MIN_SPARE` bikes available;
- a *full* station needs free docks: a helper is installed, returning and has at least
  :data:`MIN_SPARE` docks available.

A station in an open episode of the same kind never helps (it needs help itself); a full station
does help an empty one (moving its bikes fixes both). Distances are great-circle (haversine) metres.

Time is the feed's, not the wall clock: an outage's duration runs to its system's newest
``last_updated`` (the live state of a replayed or delayed feed gives the same list). An episode
whose station's status no longer shows it (bikes or docks back) closed between the two reads of the
store and is left out. Systems are planned one at a time, and the distances from one outage to all
of its system's candidates are one vectorised Arrow computation: 50 systems of 1,400 stations with
7,000 long outages take about half a second (``tests/unit/test_rebalance.py`` measures it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from citibikes.live.alerts import DEFAULT_THRESHOLD_S
from citibikes.live.episodes import Kind

NEAREST = 3
"""Helpers listed per outage."""
MIN_SPARE = 3
"""Bikes (for an empty station) or free docks (for a full one) a station needs to help."""
EARTH_RADIUS_M = 6_371_008.8
"""The mean Earth radius (IUGG), for haversine distances."""


class Helper(msgspec.Struct, frozen=True):
    """A station that could give bikes to an empty station or take bikes from a full one."""

    station_id: str
    name: str | None
    distance_m: int
    available: int
    """Bikes available (helping an empty station) or docks available (helping a full one)."""


class Outage(msgspec.Struct, frozen=True):
    """One line of the to-do list: an open episode at least its system's threshold long."""

    system_id: str
    station_id: str
    name: str | None
    kind: Kind
    started: int
    """When the episode opened (POSIX seconds, the feed's ``last_updated``)."""
    as_of: int
    """The system's newest ``last_updated``: the list's "now"."""
    duration_s: int
    threshold_s: int
    lat: float | None
    lon: float | None
    helpers: tuple[Helper, ...]
    """Nearest first; empty when the station has no coordinates or nobody can help."""


def clocks(stations: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each system's newest ``last_updated``."""
    newest: dict[str, int] = {}
    for station in stations:
        system, at = station["system_id"], int(station["last_updated"])
        newest[system] = max(at, newest.get(system, at))
    return newest


def todo(stations: Iterable[Mapping[str, Any]], episodes: Iterable[Mapping[str, Any]],
         thresholds: Mapping[str, int], *, default_threshold_s: int = DEFAULT_THRESHOLD_S,
         nearest: int = NEAREST, min_spare: int = MIN_SPARE) -> list[Outage]:
    """The to-do list (see the module doc), by system, longest outage first.

    ``stations`` are rows of :meth:`LiveStore.stations`, ``episodes`` of :meth:`LiveStore.open_episodes`;
    ``thresholds`` maps a system to its outage threshold in seconds (others get ``default_threshold_s``).
    """
    by_system: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for station in stations:
        by_system[station["system_id"]][station["station_id"]] = station
    open_by_system: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for episode in episodes:
        open_by_system[episode["system_id"]].append(episode)
    rows: list[Outage] = []
    for system_id in sorted(open_by_system):
        rows.extend(_system_todo(system_id, by_system.get(system_id, {}), open_by_system[system_id],
                                 thresholds.get(system_id, default_threshold_s), nearest, min_spare))
    return rows


def _system_todo(system_id: str, stations: Mapping[str, Mapping[str, Any]], episodes: list[Mapping[str, Any]],
                 threshold_s: int, nearest: int, min_spare: int) -> list[Outage]:
    if not stations:
        return []
    now = max(int(s["last_updated"]) for s in stations.values())
    long_ = [e for e in episodes if now - int(e["started"]) >= threshold_s and _still_open(e, stations)]
    in_episode = {(e["station_id"], e["kind"]) for e in episodes}
    candidates = {kind: _Candidates(stations, kind, in_episode, min_spare) for kind in {e["kind"] for e in long_}}
    rows = []
    for episode in long_:
        station = stations[episode["station_id"]]
        started = int(episode["started"])
        rows.append(Outage(system_id, episode["station_id"], station.get("name"), episode["kind"], started, now,
                           now - started, threshold_s, station.get("lat"), station.get("lon"),
                           candidates[episode["kind"]].nearest(station, nearest)))
    rows.sort(key=lambda row: (-row.duration_s, row.station_id, row.kind))
    return rows


def _still_open(episode: Mapping[str, Any], stations: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the station's status still shows the episode (no bike for empty, no dock for full)."""
    station = stations.get(episode["station_id"])
    if station is None:
        return False
    column = "num_bikes_available" if episode["kind"] == "empty" else "num_docks_available"
    return not station.get(column)


class _Candidates:
    """The stations of one system that could help an outage of one kind, as Arrow arrays."""

    def __init__(self, stations: Mapping[str, Mapping[str, Any]], kind: Kind, in_episode: set[tuple[str, str]],
                 min_spare: int) -> None:
        flag, column = ("is_renting", "num_bikes_available") if kind == "empty" else ("is_returning", "num_docks_available")
        chosen = sorted(
            (s for s in stations.values()
             if s.get("is_installed") and s.get(flag) and (s.get(column) or 0) >= min_spare
             and (s["station_id"], kind) not in in_episode and s.get("lat") is not None and s.get("lon") is not None),
            key=lambda s: s["station_id"])
        self.ids = [s["station_id"] for s in chosen]
        self.names = [s.get("name") for s in chosen]
        self.available = [int(s[column]) for s in chosen]
        points = [_unit_vector(s["lat"], s["lon"]) for s in chosen]
        self.xyz = [pa.array([p[axis] for p in points], pa.float64()) for axis in range(3)]
        self.order = pa.array(range(len(chosen)), pa.int32())
        """Ties in distance go to the smaller station id (the candidates are sorted by it)."""

    def nearest(self, station: Mapping[str, Any], k: int) -> tuple[Helper, ...]:
        """The ``k`` nearest candidates: ranked by the squared chord to each (one Arrow pass, no
        trigonometry), which orders as the great-circle distance does; that distance, for the
        chosen ones, is ``2 R asin(chord / 2)`` (the haversine formula with ``a = chord^2 / 4``)."""
        lat, lon = station.get("lat"), station.get("lon")
        if lat is None or lon is None or not self.ids:
            return ()
        squares = [pc.multiply(d, d) for d in (pc.subtract(axis, p) for axis, p in zip(self.xyz, _unit_vector(lat, lon)))]
        chord2 = pc.add(pc.add(squares[0], squares[1]), squares[2])
        batch = pa.record_batch({"c": chord2, "i": self.order})
        best = pc.select_k_unstable(batch, k=k, sort_keys=[("c", "ascending"), ("i", "ascending")])
        return tuple(Helper(self.ids[i], self.names[i], round(_metres(c)), self.available[i])
                     for i, c in zip(best.to_pylist(), pc.take(chord2, best).to_pylist()))


def _unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(float(lat)), math.radians(float(lon))
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


def _metres(chord2: float) -> float:
    """The great-circle distance of a squared chord between unit vectors."""
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(chord2) / 2))
