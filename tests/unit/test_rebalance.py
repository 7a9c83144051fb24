"""The rebalancing to-do list on hand-placed stations whose distances are worked out by hand.

Stations sit on the meridian 0 (or the equator), where a haversine distance is the arc
R * delta, R = 6,371,008.8 m: 0.001 degrees is 111.19 m, 0.002 is 222.39 m, 0.003 is 333.58 m,
0.004 is 444.78 m, 0.007 is 778.36 m, 0.01 is 1,111.95 m.
"""

from __future__ import annotations

import random

from citibikes.live.rebalance import Helper, Outage, clocks, todo

M = 60
T = 1_800_000_000
"""The system's newest ``last_updated``: the list's "now"."""


def station(station_id: str, lat: float | None = 0.0, lon: float | None = 0.0, bikes: int = 5, docks: int = 5, *,
            system: str = "s", at: int = T, installed: bool = True, renting: bool = True,
            returning: bool = True) -> dict:
    """A row as LiveStore.stations() returns it (SQLite gives the flags as 0/1)."""
    return {"system_id": system, "station_id": station_id, "last_updated": at, "num_bikes_available": bikes,
            "num_ebikes_available": 0, "num_docks_available": docks, "is_installed": int(installed),
            "is_renting": int(renting), "is_returning": int(returning), "name": f"{station_id} St",
            "lat": lat, "lon": lon, "capacity": bikes + docks}


def episode(station_id: str, kind: str, started: int, system: str = "s") -> dict:
    """A row as LiveStore.open_episodes() returns it."""
    return {"system_id": system, "station_id": station_id, "kind": kind, "started": started,
            "threshold_alerted": 0, "seen": T}


def test_empty_and_full_outages_with_their_nearest_helpers() -> None:
    stations = [
        station("E", 0.0, bikes=0, docks=12),                 # empty for 40 min
        station("A", 0.001, bikes=5, docks=3),                # 111 m: helps both
        station("B", 0.002, bikes=2, docks=1),                # 222 m: too few bikes and docks to help
        station("C", -0.003, bikes=10, docks=0),              # 334 m: full since 31 min, gives bikes
        station("D", 0.0025, bikes=9, docks=9, renting=False, returning=False),  # closed for rentals and returns
        station("G", 0.01, bikes=9, docks=9),                 # 1,112 m: fourth nearest, not listed for E
        station("H", 0.0005, bikes=9, docks=9, installed=False),
        station("N", None, None, bikes=9, docks=9),           # not described yet: no position
        station("Q", 0.004, bikes=0, docks=7, at=T - 5 * M),  # empty for 10 min only: below the threshold
    ]
    episodes = [episode("E", "empty", T - 40 * M), episode("C", "full", T - 31 * M), episode("Q", "empty", T - 10 * M)]

    rows = todo(stations, episodes, {"s": 30 * M})

    assert rows == [
        Outage("s", "E", "E St", "empty", T - 40 * M, T, 40 * M, 30 * M, 0.0, 0.0,
               (Helper("A", "A St", 111, 5), Helper("C", "C St", 334, 10), Helper("G", "G St", 1112, 9))),
        # C (at -0.003) needs docks: E (empty, 12 free docks) takes bikes; Q is empty too but helps all the same
        Outage("s", "C", "C St", "full", T - 31 * M, T, 31 * M, 30 * M, -0.003, 0.0,
               (Helper("E", "E St", 334, 12), Helper("A", "A St", 445, 3), Helper("Q", "Q St", 778, 7))),
    ]


def test_the_threshold_is_per_system_and_now_is_each_systems_own_clock() -> None:
    stations = [station("X", bikes=0, system="slow", at=T), station("Y", bikes=0, system="fast", at=T + 3600),
                station("Z", bikes=0, system="other", at=T)]
    episodes = [episode("X", "empty", T - 45 * M, "slow"), episode("Y", "empty", T - 45 * M, "fast"),
                episode("Z", "empty", T - 20 * M, "other")]
    rows = todo(stations, episodes, {"slow": 60 * M, "fast": 60 * M}, default_threshold_s=15 * M)
    # slow: 45 min < 60; fast: its clock is an hour later, 105 min; other: the default 15 min applies
    assert [(r.system_id, r.duration_s, r.threshold_s, r.helpers) for r in rows] == [
        ("fast", 105 * M, 60 * M, ()), ("other", 20 * M, 15 * M, ())]
    assert clocks(stations) == {"slow": T, "fast": T + 3600, "other": T}


def test_an_episode_whose_station_shows_bikes_again_closed_between_the_reads() -> None:
    stations = [station("E", bikes=1), station("F", 0.001, docks=0)]
    rows = todo(stations, [episode("E", "empty", T - 40 * M), episode("F", "full", T - 40 * M)], {"s": 30 * M})
    assert [(r.station_id, r.kind) for r in rows] == [("F", "full")]


def test_equal_distances_go_to_the_smaller_station_id_and_east_west_distances_too() -> None:
    # On the equator 0.001 degrees of longitude is 111 m as well.
    stations = [station("E", bikes=0), station("b", 0.0, 0.001), station("a", 0.0, -0.001), station("c", 0.001, 0.0),
                station("d", 0.0, 0.003)]
    (row,) = todo(stations, [episode("E", "empty", T - 40 * M)], {"s": 30 * M})
    assert [(h.station_id, h.distance_m) for h in row.helpers] == [("a", 111), ("b", 111), ("c", 111)]


def test_an_outage_without_a_position_is_listed_without_helpers_and_nobody_may_help() -> None:
    stations = [station("E", None, None, bikes=0), station("F", docks=0), station("A", 0.001, bikes=1, docks=1)]
    rows = todo(stations, [episode("E", "empty", T - 31 * M), episode("F", "full", T - 31 * M)], {"s": 30 * M})
    assert [(r.station_id, r.name, r.lat, r.helpers) for r in rows] == [("E", "E St", None, ()), ("F", "F St", 0.0, ())]
    assert todo(stations, [], {"s": 30 * M}) == []


def test_fifty_systems_of_1400_stations_each_get_their_own_helpers() -> None:
    """70,000 stations, one in ten an outage past its threshold, each system in its own city: every
    outage gets three helpers, all of its own system (a plan takes about 0.55 CPU s here)."""
    rng = random.Random(7)
    stations, episodes = [], []
    for s in range(50):
        system, lat0, lon0 = f"sys{s}", rng.uniform(-50, 60), rng.uniform(-120, 140)
        for n in range(1400):
            out = n % 10 == 0
            stations.append(station(f"{n}", lat0 + rng.uniform(0, 0.1), lon0 + rng.uniform(0, 0.1),
                                    bikes=0 if out else rng.randint(0, 20), system=system))
            if out:
                episodes.append(episode(f"{n}", "empty", T - 45 * M, system))
    rows = todo(stations, episodes, {})
    assert len(rows) == 7000 and all(len(r.helpers) == 3 for r in rows)
    # The systems' boxes are 0.1 degrees wide and thousands of km apart: a helper within 20 km is of the same system.
    assert all(h.distance_m < 20_000 for r in rows for h in r.helpers)
