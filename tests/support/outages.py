"""A live state store with two long outages, built by the real Tracker and LiveStore.

Stations stand on the meridian 73.99 W, north of E (40.75 N); a degree of latitude is 111,195 m
(R = 6,371,008.8 m), so their distances are worked out by hand:

=======  ========  =====  =====  ==========================================
station  lat       bikes  docks
=======  ========  =====  =====  ==========================================
E        40.750    0      20     empty since T0 + 1 min (44 min at the end)
A        40.751    10     10     111 m from E, 1,001 m from F
B        40.752    2      9      222 m from E (too few bikes), 890 m from F
C        40.753    8      1      334 m from E, too few docks for F
D        40.754    6      6      445 m from E, 667 m from F
F        40.760    15     0      full since T0 + 1 min, 1,112 m from E
S        40.740    0      9      empty since T0 + 40 min: 5 min, below the threshold
=======  ========  =====  =====  ==========================================

Every station is seen at T0 (``t0`` of :func:`build_store`), +15, +30 and +45 min (an episode of
a station unseen for 40 min closes), S until +40 min; E and F also at +1 min. The clock ends at
T0 + 45 min. Expected to-do list (threshold 30 min): E empty 44 min, helped by A (111 m, 10 bikes),
C (334 m, 8), D (445 m, 6); F full 44 min, helped by D (667 m, 6 docks), B (890 m, 9), A (1,001 m, 10).
"""

from __future__ import annotations

import json
from pathlib import Path

from citibikes.live.store import LiveStore
from citibikes.live.tracker import Tracker

T0 = 1_800_000_000
M = 60
END = T0 + 45 * M
LON = -73.99
STATIONS = {"E": (40.750, 0, 20), "A": (40.751, 10, 10), "B": (40.752, 2, 9), "C": (40.753, 8, 1),
            "D": (40.754, 6, 6), "F": (40.760, 15, 0), "S": (40.740, 0, 9)}
EXPECTED = {
    ("E", "empty"): [("A", 111, 10), ("C", 334, 8), ("D", 445, 6)],
    ("F", "full"): [("D", 667, 6), ("B", 890, 9), ("A", 1001, 10)],
}
"""(station, kind) -> [(helper, metres, bikes or docks available)], nearest first."""
DURATION_S = END - (T0 + M)


def _status(system: str, station: str, at: int, bikes: int, docks: int) -> bytes:
    return json.dumps({"system_id": system, "station_id": station, "last_updated": at, "num_bikes_available": bikes,
                       "num_docks_available": docks, "is_installed": True, "is_renting": True,
                       "is_returning": True}).encode()


def _information(system: str, station: str, lat: float, at: int) -> bytes:
    return json.dumps({"system_id": system, "station_id": station, "last_updated": at, "name": f"{station} St",
                       "lat": lat, "lon": LON, "capacity": 20}).encode()


def build_store(path: Path | str, system: str = "citibike", threshold_s: int = 30 * M, t0: int = T0) -> LiveStore:
    """The store of the module doc at ``path`` (SQLite), its clock starting at ``t0``, as a consumer
    would have left it: committed, its alerts sent."""
    tracker = Tracker(status_topic="status", information_topic="information", alerts_topic="alerts",
                      thresholds={system: threshold_s})
    normal = {"E": (5, 15), "F": (10, 5), "S": (3, 6)}
    table = {s: (b, d) for s, (_, b, d) in STATIONS.items()}
    timeline = [(t0, {**table, **normal}), (t0 + M, {s: table[s] for s in "EF"}),
                (t0 + 15 * M, {**table, "S": normal["S"]}), (t0 + 30 * M, {**table, "S": normal["S"]}),
                (t0 + 40 * M, {"S": table["S"]}), (t0 + 45 * M, {s: v for s, v in table.items() if s != "S"})]
    messages = [("information", _information(system, s, lat, t0)) for s, (lat, _, _) in STATIONS.items()]
    messages += [("status", _status(system, s, at, b, d)) for at, seen in timeline for s, (b, d) in seen.items()]
    for offset, (topic, value) in enumerate(messages):
        tracker.apply(topic, 0, offset, None, value)
    store = LiveStore.open(str(path))
    store.commit(tracker.take())
    store.sent([id_ for id_, *_ in store.outbox()])
    return store


def recover(store: LiveStore, station: str, at: int, system: str = "citibike") -> None:
    """``station`` gets bikes and docks back at ``at`` (its episodes close), committed like the consumer does."""
    tracker = Tracker(status_topic="status", information_topic="information", alerts_topic="alerts")
    tracker.restore(store)
    tracker.apply("status", 0, 10_000 + at, None, _status(system, station, at, 5, 5))
    store.commit(tracker.take())
