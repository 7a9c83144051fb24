"""Apply the status and information streams to every station: the latest state, the episodes, the alerts.

The :class:`Tracker` holds, in memory, what it needs to decide (each station's last observation,
episode machine and which thresholds were alerted), and gathers what a batch changed as
:class:`~citibikes.live.store.Changes` for the store's single transaction. Everything it decides is
a function of each partition's messages in order, so a restart that resumes at the stored offsets
reaches the same state and the same alerts as a run that never stopped, whatever the batches were:

- a station's status is applied only when newer than the one known (redelivered and late
  observations change nothing); descriptions likewise, and a tombstone removes one;
- time, for outage thresholds and silent stations, is each status partition's *clock*: the newest
  ``last_updated`` seen on it (a station's key always maps to the same partition). An episode alerts
  ``threshold`` when the clock passes its start + the system's threshold (or when it closes after
  that); a station unseen for more than 40 minutes of clock has its episodes closed at its last
  observation (:meth:`StationEpisodes.expire`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from citibikes.live import alerts
from citibikes.live.episodes import MAX_GAP_S, Change, Kind, Observation, StationEpisodes
from citibikes.live.store import Changes, LiveStore

Outcome = Literal["applied", "duplicate", "old", "invalid", "tombstone"]
"""``duplicate``: the observation is the one known (a producer retry's copy); ``old``: an older one."""


class StatusValue(msgspec.Struct, kw_only=True):
    """The fields of a status message the tracker reads (the message has more; all of it is stored)."""

    system_id: str
    station_id: str
    last_updated: int
    num_bikes_available: int
    num_ebikes_available: int | None = None
    num_docks_available: int | None = None
    is_installed: bool
    is_renting: bool
    is_returning: bool


class InformationValue(msgspec.Struct, kw_only=True):
    system_id: str
    station_id: str
    last_updated: int
    name: str | None = None
    lat: float | None = None
    lon: float | None = None
    capacity: int | None = None


_decode_status = msgspec.json.Decoder(StatusValue).decode
_decode_information = msgspec.json.Decoder(InformationValue).decode


@dataclass(slots=True)
class Station:
    system_id: str
    station_id: str
    partition: int
    machine: StationEpisodes = field(default_factory=StationEpisodes)
    alerted: set[str] = field(default_factory=set)
    """Kinds whose open episode already alerted ``threshold``."""


class Tracker:
    """The live state's decisions; see the module doc."""

    def __init__(self, *, status_topic: str, information_topic: str, alerts_topic: str,
                 dead_letter_topic: str | None = None, thresholds: Mapping[str, int] | None = None,
                 default_threshold_s: int = alerts.DEFAULT_THRESHOLD_S) -> None:
        self.status_topic, self.information_topic = status_topic, information_topic
        self.alerts_topic, self.dead_letter_topic = alerts_topic, dead_letter_topic
        self._thresholds = dict(thresholds or {})
        self._default_threshold_s = default_threshold_s
        self.stations: dict[str, Station] = {}
        self._information_updated: dict[str, int] = {}
        self.clocks: dict[int, int] = {}
        """Status partition -> the newest ``last_updated`` seen on it."""
        self._deadlines: dict[int, list[tuple[int, str, str, int]]] = {}
        """Status partition -> heap of (when, key, "threshold" | "expire", start)."""
        self._changes = Changes()

    # -- rebuilding from the store -------------------------------------------------------------

    def restore(self, store: LiveStore) -> dict[tuple[str, int], int]:
        """Take up the state the store committed; returns the offset to resume each partition at."""
        offsets = store.offsets()
        for (topic, partition), (_, clock) in offsets.items():
            if topic == self.status_topic:
                self.clocks[partition] = clock
        for key, system_id, station_id, partition, last_updated in store.machines():
            self.stations[key] = Station(system_id, station_id, partition, StationEpisodes(previous=last_updated))
        self._information_updated = dict(store.information_times())
        for key, kind, started, alerted in store.episode_rows():
            station = self.stations[key]
            setattr(station.machine, kind, started)
            if alerted:
                station.alerted.add(kind)
        for key, station in self.stations.items():
            self._schedule(key, station)
        return {tp: offset for tp, (offset, _) in offsets.items()}

    # -- applying messages ------------------------------------------------------------------------

    def apply(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Outcome:
        """Apply one message and record ``offset`` as consumed; a message that cannot be read goes to
        the dead-letter topic (when configured) and changes nothing else."""
        try:
            if value is None:
                outcome = self._tombstone(topic, key)
            elif topic == self.status_topic:
                outcome = self._status(partition, value)
            else:
                outcome = self._information(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._dead_letter(topic, partition, offset, key, value, str(exc))
            outcome = "invalid"
        self.skip(topic, partition, offset)
        return outcome

    def skip(self, topic: str, partition: int, offset: int) -> None:
        """Record ``offset`` as consumed (:meth:`apply` does; a dropped duplicate needs only this)."""
        clock = self.clocks.get(partition, 0) if topic == self.status_topic else 0
        self._changes.offsets[(topic, partition)] = (offset + 1, clock)

    def take(self) -> Changes:
        """What was applied since the last call (for one store transaction)."""
        changes, self._changes = self._changes, Changes()
        return changes

    def _status(self, partition: int, raw: bytes) -> Outcome:
        value = _decode_status(raw)
        key = f"{value.system_id}:{value.station_id}"
        station = self.stations.get(key)
        if station is None:
            station = self.stations[key] = Station(value.system_id, value.station_id, partition)
        elif station.machine.previous is not None and value.last_updated <= station.machine.previous:
            return "duplicate" if value.last_updated == station.machine.previous else "old"
        installed = value.is_installed
        changes = station.machine.step(Observation(value.last_updated, value.num_bikes_available,
                                                   value.num_docks_available, installed and value.is_renting,
                                                   installed and value.is_returning))
        self._changes.status[key] = (
            key, value.system_id, value.station_id, value.last_updated, value.num_bikes_available,
            value.num_ebikes_available, value.num_docks_available, installed, value.is_renting,
            value.is_returning, partition, raw.decode())
        if changes:
            self._episode_changes(key, station, changes)
        self._advance(partition, value.last_updated)
        return "applied"

    def _information(self, raw: bytes) -> Outcome:
        value = _decode_information(raw)
        key = f"{value.system_id}:{value.station_id}"
        known = self._information_updated.get(key)
        if known is not None and known >= value.last_updated:
            return "duplicate" if known == value.last_updated else "old"
        self._information_updated[key] = value.last_updated
        self._changes.information[key] = (key, value.system_id, value.station_id, value.last_updated,
                                          value.name, value.lat, value.lon, value.capacity, raw.decode())
        return "applied"

    def _tombstone(self, topic: str, key: bytes | None) -> Outcome:
        """A null value: on the compacted information topic the station was removed; on status, nothing."""
        if topic == self.information_topic and key:
            text = key.decode(errors="replace")
            self._information_updated.pop(text, None)
            self._changes.information[text] = None
        return "tombstone"

    def _dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, error: str) -> None:
        if self.dead_letter_topic:
            letter = {"topic": topic, "partition": partition, "offset": offset, "error": error,
                      "key": key.decode(errors="replace") if key else None, "value": value.decode(errors="replace")}
            self._changes.outbox.append((f"dead|{topic}|{partition}|{offset}", self.dead_letter_topic,
                                         letter["key"], msgspec.json.encode(letter).decode()))

    # -- episodes, thresholds and silent stations -------------------------------------------------

    def threshold_s(self, system_id: str) -> int:
        return self._thresholds.get(system_id, self._default_threshold_s)

    def _episode_changes(self, key: str, station: Station, changes: list[Change]) -> None:
        threshold = self.threshold_s(station.system_id)
        for change in changes:
            if change.end is None:
                self._alert("opened", change.kind, station, change.start, change.start)
                continue
            if change.kind not in station.alerted and change.end - change.start >= threshold:
                self._alert("threshold", change.kind, station, change.start, change.start + threshold)
            station.alerted.discard(change.kind)
            self._alert("closed", change.kind, station, change.start, change.end)
        self._changes.episodes[key] = self._episode_rows(key, station)
        self._schedule(key, station)

    def _schedule(self, key: str, station: Station) -> None:
        """Deadlines of a station's open episodes: its thresholds, and its silence."""
        open_ = station.machine.open_episodes()
        if not open_:
            return
        heap = self._deadlines.setdefault(station.partition, [])
        threshold = self.threshold_s(station.system_id)
        for kind, start in open_:
            if kind not in station.alerted:
                heapq.heappush(heap, (start + threshold, key, kind, start))
        heapq.heappush(heap, (station.machine.previous + MAX_GAP_S + 1, key, "expire", 0))

    def _advance(self, partition: int, at: int) -> None:
        """Move the partition's clock to ``at`` and act on the deadlines it passed, in time order and each
        at its own time (a deadline made stale by a later observation is skipped, or moved), so that
        the outcome does not depend on which stale deadlines a restart left out."""
        if at <= self.clocks.get(partition, 0):
            return
        self.clocks[partition] = now = at
        heap = self._deadlines.get(partition)
        while heap and heap[0][0] <= now:  # in time order, each judged at its own time
            when, key, what, start = heapq.heappop(heap)
            station = self.stations[key]
            if what == "expire":
                if changes := station.machine.expire(when):
                    self._episode_changes(key, station, changes)
                elif station.machine.open_episodes():  # seen since: wait for its new silence
                    heapq.heappush(heap, (station.machine.previous + MAX_GAP_S + 1, key, "expire", 0))
            elif getattr(station.machine, what) == start and what not in station.alerted:
                station.alerted.add(what)
                self._alert("threshold", what, station, start, start + self.threshold_s(station.system_id))
                self._changes.episodes[key] = self._episode_rows(key, station)

    def _episode_rows(self, key: str, station: Station) -> list[tuple]:
        return [(key, kind, station.system_id, station.station_id, start, kind in station.alerted)
                for kind, start in station.machine.open_episodes()]

    def _alert(self, event: alerts.Event, kind: Kind, station: Station, started: int, at: int) -> None:
        alert = alerts.alert(event, kind, station.system_id, station.station_id, started, at,
                             self.threshold_s(station.system_id))
        self._changes.outbox.append((alert.alert_id, self.alerts_topic, f"{station.system_id}:{station.station_id}",
                                     alerts.encode(alert).decode()))
