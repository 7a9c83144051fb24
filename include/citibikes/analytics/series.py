"""The episode machine over *runs*: a station's records at consecutive feeds of one segment in one state.

Walking every record of a month (95 million for Citi Bike, more again for the station-and-neighbour pairs)
through the machine one by one would take minutes. It need not: within a run, the third record on changes
nothing. A record can change the machine only when it, or the record before it, is its series' first,
follows a gap of more than 40 minutes, or differs from the record before in state (by then every episode
that can open is open, every one that can close is closed); inside a run neither holds from the third
record on (consecutive feeds of a segment are at most 40 minutes apart). So each run steps the machine with
its first record (whose ``previous`` is the last record of the run before, for the gap rule) and its second,
and the independent computation of the tests, which walks every record, gets the same episodes.

A pair's series (a station and its nearest neighbour, in the rebalancing standard's windows) is made of the
two stations' runs laid over each other (:func:`overlay`): one run per stretch where neither changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter

from citibikes.live.episodes import MAX_GAP_S, Episode, Observation, StationEpisodes

NO_BIKE, NO_DOCK, SOME_DOCK, RENTING, RETURNING = 1, 2, 4, 8, 16
"""The bits of a run's state (:data:`citibikes.analytics.sql.RUNS`)."""
ABSENT = 32
"""No record of the station in a stretch (a pair's series may still have its neighbour's)."""


Run = tuple[int, int, int, int, int]
"""``(station, first, last, segment, state)``: a station's (``sid``) records at feeds ``first`` to ``last``
(their numbers ``k``, consecutive) of one segment, in one state; a row of :data:`citibikes.analytics.sql.RUNS`
as DuckDB returns it (plain tuples: a month of Citi Bike has 1.5 million runs)."""


def runs(rows: list[Run]) -> dict[int, list[Run]]:
    """Each station's runs (``rows`` ordered by station and feed)."""
    return {sid: list(station) for sid, station in groupby(rows, key=itemgetter(0))}


_FIELDS = [(0 if state & NO_BIKE else 1, 0 if state & NO_DOCK else 1, bool(state & RENTING), bool(state & RETURNING))
           for state in range(ABSENT)]
"""Bikes, docks (0, or 1 for some), renting and returning of each state: what the machine compares."""


def walk(series: Iterable[Run], times: list[int]) -> list[Episode]:
    """The closed episodes of a series of runs in time order (``times``: each feed's POSIX time by its number). A
    run that goes on the one before (same state, the next feed, no gap) extends it."""
    machine = StationEpisodes()
    closed: list[Episode] = []

    def step(k: int, state: int, before: int | None) -> None:
        bikes, docks, renting, returning = _FIELDS[state]
        previous = None if before is None else times[before]
        for change in machine.step(Observation(times[k], bikes, docks, renting, returning, previous)):
            if change.end is not None:
                closed.append(Episode(change.kind, change.start, change.end))

    start = end = current = -1
    for _, first, last, _, state in series:
        if state == current and first == end + 1 and times[first] - times[end] <= MAX_GAP_S:
            if end == start:  # the run's second record, not stepped yet
                step(first, state, end)
            end = last
            continue
        step(first, state, None if end < 0 else end)
        if last > first:
            step(first + 1, state, first)
        start, end, current = first, last, state
    return closed


def _combine(mine: int, theirs: int) -> int:
    """A pair's state from the station's and the neighbour's (:data:`ABSENT` where one has no record); -1: neither."""
    present = [s for s in (mine, theirs) if s != ABSENT]
    if not present:
        return -1
    no_bike = all(s & NO_BIKE for s in present)
    no_dock = any(s & NO_DOCK for s in present) and not any(s & SOME_DOCK for s in present)
    return no_bike * NO_BIKE | no_dock * NO_DOCK | present[0] & (RENTING | RETURNING)


_COMBINED = [[_combine(mine, theirs) for theirs in range(ABSENT + 1)] for mine in range(ABSENT + 1)]


def overlay(own: list[Run], other: list[Run]) -> list[Run]:
    """A station's and its neighbour's runs as the pair's series (the station's id, no segment): bikes the sum of
    both (no bike only when neither has one), docks likewise, the station's flags (the neighbour's where the station
    has no record)."""
    points = sorted({r[1] for r in own} | {r[2] + 1 for r in own} | {r[1] for r in other} | {r[2] + 1 for r in other})
    sid = own[0][0] if own else -1
    combined = []
    i = j = 0
    for start, after in zip(points, points[1:]):
        while i < len(own) and own[i][2] < start:
            i += 1
        while j < len(other) and other[j][2] < start:
            j += 1
        mine = own[i][4] if i < len(own) and own[i][1] <= start else ABSENT
        theirs = other[j][4] if j < len(other) and other[j][1] <= start else ABSENT
        state = _COMBINED[mine][theirs]
        if state >= 0:
            combined.append((sid, start, after - 1, 0, state))
    return combined
