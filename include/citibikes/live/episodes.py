"""The empty/full episode state machine, with no I/O: the live consumer and the service analytics run it.

A station is *empty* while it rents with no bike, *full* while it returns with no free dock. The
machine walks one station's observations in time order, from the second one on (the auditors'
definition, which the analytics must reproduce exactly):

- if no full episode is open and docks = 0 while returning, a full episode opens at this time;
  likewise an empty episode when bikes = 0 while renting; if either opened, that is all for this
  observation;
- otherwise, if more than :data:`MAX_GAP_S` passed since the previous observation, every open
  episode closes at the previous observation's time (the station was not seen in between);
- otherwise the full episode closes when docks != 0 and the empty one when bikes != 0, at this time.

A live stream has no "next observation" to reveal that a station went silent, so the consumer
also calls :func:`expire` as time passes: the episodes of a station unseen for more than
:data:`MAX_GAP_S` close at its last observation, as the machine would have closed them at its next
one. The analytics, walking complete history, never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, NamedTuple

MAX_GAP_S = 40 * 60
"""Observations further apart than this close the open episodes at the earlier one."""

Kind = Literal["empty", "full"]
KINDS: tuple[Kind, ...] = ("empty", "full")


class Observation(NamedTuple):
    """What the machine needs of one status observation. ``renting``/``returning`` are the station's
    flags as the caller defines them (the live consumer also requires ``is_installed``)."""

    at: int
    """Seconds since the epoch: the feed's ``last_updated``."""
    bikes: int
    docks: int
    renting: bool
    returning: bool
    previous: int | None = None
    """When the caller left out observations that cannot change anything (the analytics does, see
    :mod:`citibikes.analytics.series`): the time of the station's observation just before this one, which
    the gap rule compares against. None: the one stepped before."""


class Change(NamedTuple):
    """An episode opened (``end`` is None) or closed."""

    kind: Kind
    start: int
    end: int | None


class Episode(NamedTuple):
    kind: Kind
    start: int
    end: int


@dataclass(slots=True)
class StationEpisodes:
    """One station's machine: when it was last observed and the start of each open episode."""

    previous: int | None = None
    empty: int | None = None
    full: int | None = None

    def open_episodes(self) -> list[tuple[Kind, int]]:
        return [(kind, start) for kind, start in (("empty", self.empty), ("full", self.full)) if start is not None]

    def step(self, observation: Observation) -> list[Change]:
        """Apply the next observation (strictly newer than the previous one); returns what changed."""
        at = observation.at
        previous = self.previous if observation.previous is None else observation.previous
        self.previous = at
        if previous is None:  # the first observation only starts the walk
            return []
        changes = []
        if self.full is None and observation.docks == 0 and observation.returning:
            self.full = at
            changes.append(Change("full", at, None))
        if self.empty is None and observation.bikes == 0 and observation.renting:
            self.empty = at
            changes.append(Change("empty", at, None))
        if changes:
            return changes
        if at - previous > MAX_GAP_S:
            return self._close_all(previous)
        if self.full is not None and observation.docks != 0:
            changes.append(Change("full", self.full, at))
            self.full = None
        if self.empty is not None and observation.bikes != 0:
            changes.append(Change("empty", self.empty, at))
            self.empty = None
        return changes

    def expire(self, now: int) -> list[Change]:
        """Close the open episodes at the last observation when it is more than :data:`MAX_GAP_S` before ``now``."""
        if self.previous is None or now - self.previous <= MAX_GAP_S:
            return []
        return self._close_all(self.previous)

    def _close_all(self, at: int) -> list[Change]:
        closed = [Change(kind, start, at) for kind, start in self.open_episodes()]
        self.empty = self.full = None
        return closed


def episodes(observations: Iterable[Observation]) -> list[Episode]:
    """The closed episodes of one station's time-ordered observations (those still open at the end are dropped)."""
    machine = StationEpisodes()
    closed = []
    for observation in observations:
        closed.extend(Episode(c.kind, c.start, c.end) for c in machine.step(observation) if c.end is not None)
    return closed
