"""Every station of a system now, from the live state store, as the page draws it: parallel columns (compact
for 70,000 stations), the counts of the cards and the longest current outages.

A station is *empty* when it is installed, renting and has no bike, *full* when it is installed, returning and
has no free dock (the live store's own counts, :meth:`~citibikes.live.store.LiveStore.summary`); an outage is
an episode the live consumer keeps open (empty or full since ``started``).
"""

from __future__ import annotations

from typing import Any

from citibikes.live.store import LiveStore

ALL = "*"
"""The system selector's value for every system at once."""
IN_BETWEEN, EMPTY, FULL, CLOSED, UNKNOWN = range(5)
"""A station's ``state`` on the map: bikes and docks both free, empty, full, not renting (or not installed),
no count of bikes."""
LONGEST = 10
"""Current outages listed, longest first."""


def systems(store: LiveStore) -> list[dict[str, Any]]:
    """The systems the live store holds, with their number of stations."""
    counts: dict[str, int] = {}
    for station in store.stations():
        counts[station["system_id"]] = counts.get(station["system_id"], 0) + 1
    return [{"id": system_id, "stations": n} for system_id, n in sorted(counts.items())]


def station_state(store: LiveStore, system_id: str, now: float) -> dict[str, Any]:
    """The page's data for ``system_id`` (or :data:`ALL`) at ``now`` (POSIX seconds)."""
    chosen = None if system_id == ALL else system_id
    stations = store.stations(chosen)
    episodes = store.open_episodes(chosen)  # oldest first
    outages: dict[tuple[str, str], dict[str, Any]] = {}
    for e in episodes:  # a station both empty and full (no bike, no dock) shows its older outage
        outages.setdefault((e["system_id"], e["station_id"]), e)
    columns: dict[str, list[Any]] = {name: [] for name in (
        "system_id", "station_id", "name", "lat", "lon", "capacity", "bikes", "ebikes", "docks", "state",
        "outage_kind", "outage_since")}
    counts = {"stations": 0, "empty": 0, "full": 0, "not_renting": 0, "bikes": 0, "ebikes": 0, "docks": 0}
    for s in stations:
        state = _state(s)
        outage = outages.get((s["system_id"], s["station_id"]))
        for name, value in (("system_id", s["system_id"]), ("station_id", s["station_id"]), ("name", s["name"]),
                            ("lat", s["lat"]), ("lon", s["lon"]), ("capacity", s["capacity"]),
                            ("bikes", s["num_bikes_available"]), ("ebikes", s["num_ebikes_available"]),
                            ("docks", s["num_docks_available"]), ("state", state),
                            ("outage_kind", outage["kind"] if outage else None),
                            ("outage_since", outage["started"] if outage else None)):
            columns[name].append(value)
        counts["stations"] += 1
        counts["empty"] += _empty(s)
        counts["full"] += _full(s)
        counts["not_renting"] += state == CLOSED
        for card, field in (("bikes", "num_bikes_available"), ("ebikes", "num_ebikes_available"),
                            ("docks", "num_docks_available")):
            counts[card] += s[field] or 0
    names = dict(zip(zip(columns["system_id"], columns["station_id"]), columns["name"]))
    longest = episodes[:LONGEST]
    return {
        "system": system_id,
        "as_of": max((s["last_updated"] for s in stations), default=None),
        "columns": columns,
        "summary": counts,
        "outages": [{"system_id": e["system_id"], "station_id": e["station_id"],
                     "name": names.get((e["system_id"], e["station_id"])), "kind": e["kind"], "since": e["started"],
                     "minutes": round(max(now - e["started"], 0) / 60, 1)} for e in longest],
    }


def _state(s: dict[str, Any]) -> int:
    if s["num_bikes_available"] is None:
        return UNKNOWN
    if not s["is_installed"] or not s["is_renting"]:
        return CLOSED
    return EMPTY if _empty(s) else FULL if _full(s) else IN_BETWEEN


def _empty(s: dict[str, Any]) -> bool:
    return bool(s["is_installed"] and s["is_renting"] and s["num_bikes_available"] == 0)


def _full(s: dict[str, Any]) -> bool:
    return bool(s["is_installed"] and s["is_returning"] and s["num_docks_available"] == 0)
