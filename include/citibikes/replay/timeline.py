"""The recorded Citi Bike snapshots prepared for playback: each station's path, in unit events, through
every interval of the ping-pong loop (:mod:`citibikes.replay.evolve` plays it).

Between two snapshots each station moves in unit steps ("events"): a rental or return moves one
bike against one dock, other changes are paired so that the station total moves monotonically;
every counter stays between its two recorded values and e-bikes never exceed bikes. The events'
order is drawn once, from a fixed seed, so every process builds the same timeline.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec

from citibikes.replay.recordings import Recording, recorded

LAST_REPORTED_SENTINEL = 86400
"""What Citi Bike sends as ``last_reported`` of stations that never reported."""
STATION_INFORMATION = "station_information"
STATION_STATUS = "station_status"

STATE_FIELDS = (
    "num_bikes_available",
    "num_ebikes_available",
    "num_bikes_disabled",
    "num_docks_available",
    "num_docks_disabled",
    "is_renting",
    "is_returning",
)
"""The GBFS 2.3 status fields of a :data:`State`, in its order."""
BIKES, EBIKES, BIKES_DISABLED, DOCKS, DOCKS_DISABLED, RENTING, RETURNING = range(7)
TOTAL_FIELDS = (BIKES, BIKES_DISABLED, DOCKS, DOCKS_DISABLED)
"""The counters whose sum is the station total (bikes + docks, available or disabled)."""
State = tuple[int, int, int, int, int, int, int]
"""bikes, e-bikes, bikes disabled, docks, docks disabled, is_renting, is_returning."""


@dataclass(frozen=True)
class Segment:
    """One played interval: from snapshot ``start`` to snapshot ``end``."""

    start: int
    end: int
    duration_s: float
    """Recorded seconds between the two snapshots."""
    offset_s: float
    """Where the segment begins within the loop, in recorded seconds."""


@dataclass(frozen=True)
class StationTrack:
    """One station's recorded data and its precomputed paths through every segment."""

    station_id: str
    info: Mapping[str, Any]
    template: Mapping[str, Any]
    """The first snapshot's status record: ``is_installed`` and the vendor extras come from it."""
    installed: bool
    sentinel: bool
    recorded_age_s: int
    """First snapshot's ``last_updated`` minus the station's ``last_reported``."""
    paths: tuple[tuple[State, ...], ...]
    """Per segment: the state after 0, 1, ..., n events (first = snapshot A, last = snapshot B)."""

    @property
    def static(self) -> bool:
        return all(len(path) == 1 for path in self.paths)


@dataclass(frozen=True)
class Timeline:
    """The recorded data prepared for playback; shared by every system."""

    stations: tuple[StationTrack, ...]
    segments: tuple[Segment, ...]

    @property
    def cycle_s(self) -> float:
        return sum(segment.duration_s for segment in self.segments)


def record_state(record: Mapping[str, Any]) -> State:
    return tuple(int(record.get(name) or 0) for name in STATE_FIELDS)  # type: ignore[return-value]


def ping_pong_segments(timestamps: Sequence[int]) -> tuple[Segment, ...]:
    """Forward through the snapshots, then back, as one loop; one 10-minute still for one snapshot."""
    if len(timestamps) == 1:
        return (Segment(0, 0, 600.0, 0.0),)
    forward = [(i, i + 1) for i in range(len(timestamps) - 1)]
    order = forward + [(b, a) for a, b in reversed(forward)]
    segments, offset = [], 0.0
    for start, end in order:
        duration = float(max(1, abs(timestamps[end] - timestamps[start])))
        segments.append(Segment(start, end, duration, offset))
        offset += duration
    return tuple(segments)


def unit_moves(delta: Sequence[int], fields: Sequence[int]) -> tuple[list[int], list[int]]:
    """The counters to raise and to lower by one, as many times as ``delta`` says."""
    ups = [f for f in fields for _ in range(max(delta[f], 0))]
    downs = [f for f in fields for _ in range(max(-delta[f], 0))]
    return ups, downs


def segment_events(a: State, b: State, rng: random.Random) -> list[list[int]]:
    """Unit events (delta vectors) that lead from A to B, in a random order.

    Bikes pair with docks first (a rental or a return), then any raise pairs with any lowering,
    so the total only moves in one direction. E-bike changes ride on bike moves of the same sign;
    what is left swaps a classic bike for an e-bike. A flag change is one more event.
    """
    delta = [b[i] - a[i] for i in range(len(a))]
    events: list[list[int]] = []
    if delta[BIKES] * delta[DOCKS] < 0:
        step = 1 if delta[BIKES] > 0 else -1
        for _ in range(min(abs(delta[BIKES]), abs(delta[DOCKS]))):
            events.append(_event({BIKES: step, DOCKS: -step}))
            delta[BIKES] -= step
            delta[DOCKS] += step
    ups, downs = unit_moves(delta, TOTAL_FIELDS)
    for up, down in zip(ups, downs):
        events.append(_event({up: 1, down: -1}))
    for single in ups[len(downs):]:
        events.append(_event({single: 1}))
    for single in downs[len(ups):]:
        events.append(_event({single: -1}))
    _attach_ebike_moves(events, delta[EBIKES])
    if a[RENTING:] != b[RENTING:]:
        events.append(_event({RENTING: delta[RENTING], RETURNING: delta[RETURNING]}))
    rng.shuffle(events)
    return events


def _event(changes: Mapping[int, int]) -> list[int]:
    event = [0] * 7
    for index, change in changes.items():
        event[index] = change
    return event


def _attach_ebike_moves(events: list[list[int]], ebike_delta: int) -> None:
    step = 1 if ebike_delta > 0 else -1
    remaining = abs(ebike_delta)
    for event in events:
        if remaining and event[BIKES] == step:
            event[EBIKES] = step
            remaining -= 1
    events.extend(_event({EBIKES: step}) for _ in range(remaining))


def event_path(a: State, events: Sequence[Sequence[int]]) -> tuple[State, ...]:
    """The states after each event; e-bikes are capped at bikes on the way."""
    path, current = [a], list(a)
    for event in events:
        current = [value + change for value, change in zip(current, event)]
        shown = list(current)
        shown[EBIKES] = min(shown[EBIKES], shown[BIKES])
        path.append(tuple(shown))  # type: ignore[arg-type]
    return tuple(path)


def build_timeline(information: Recording, statuses: Sequence[Recording]) -> Timeline:
    """Decode the recordings and precompute every station's path through every segment."""
    info_doc = msgspec.json.decode(information.read_bytes())
    status_docs = [msgspec.json.decode(r.read_bytes()) for r in statuses]
    by_id = [{rec["station_id"]: rec for rec in doc["data"]["stations"]} for doc in status_docs]
    segments = ping_pong_segments([r.last_updated for r in statuses])
    rng = random.Random("citibikes-replay-event-order")
    tracks = []
    for info in info_doc["data"]["stations"]:
        station_id = info["station_id"]
        records = [snapshot.get(station_id) for snapshot in by_id]
        if any(record is None for record in records):
            continue
        tracks.append(_station_track(info, records, segments, statuses[0].last_updated, rng))
    return Timeline(tuple(tracks), segments)


def _station_track(info: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                   segments: Sequence[Segment], first_updated: int, rng: random.Random) -> StationTrack:
    first = records[0]
    installed = bool(first.get("is_installed"))
    sentinel = first.get("last_reported") == LAST_REPORTED_SENTINEL
    states = [record_state(record) for record in records]
    if not installed:
        states = [(0, 0, 0, 0, 0, 0, 0)] * len(states)
    elif sentinel:
        states = [states[0]] * len(states)
    paths = tuple(event_path(states[s.start], segment_events(states[s.start], states[s.end], rng))
                  for s in segments)
    last_reported = first.get("last_reported")
    age = max(0, first_updated - int(last_reported)) if isinstance(last_reported, (int, float)) else 0
    return StationTrack(str(info["station_id"]), info, first, installed, sentinel, age, paths)


@cache
def default_timeline() -> Timeline:
    """The timeline of the recorded Citi Bike data (built once per process, about 0.2 s)."""
    return build_timeline(recorded(STATION_INFORMATION)[0], recorded(STATION_STATUS))
