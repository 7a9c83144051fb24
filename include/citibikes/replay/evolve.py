"""A live-looking GBFS feed computed from the recorded Citi Bike snapshots, without HTTP.

The live API is unreachable offline, so the replay server serves these documents instead. The
four recorded ``station_status`` snapshots play in a ping-pong loop (1->2->3->4->3->2->1->...), so
there is never a jump, at ``speed`` recorded seconds per wall-clock second (default 4: one loop in
about 20 minutes). The loop is anchored at the Unix epoch, so the state is a pure function of the
wall-clock time: two processes with the same seed serve the same bytes.

Between two snapshots each station moves in unit steps ("events", :mod:`citibikes.replay.timeline`).
Each event happens at a random instant drawn from (seed, loop, interval): reproducible, yet
different per loop and per system.

Documents are computed for the start of the current tick and cached (``last_updated`` is the tick
start, ``ttl`` the tick). A station's ``last_reported`` is the instant of its latest event; stations
that never change (but for the 86400 "never reported" sentinel) report once per loop, keeping their
recorded age; stations not installed stay at zero. ``station_information`` keeps its content.

Systems (:func:`resolve_system`): ``citibike`` (GBFS 2.3 with the recorded quirks: 0/1 integers,
the 86400 sentinel, vendor extras), ``citibike-v3`` (the same data as GBFS 3.0) and ``synth-NN``.
"""
from __future__ import annotations

import bisect
import gzip
import hashlib
import math
import random
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import msgspec

from citibikes.replay.timeline import (
    LAST_REPORTED_SENTINEL,
    STATE_FIELDS,
    STATION_INFORMATION,
    STATION_STATUS,
    State,
    StationTrack,
    Timeline,
    default_timeline,
)

DEFAULT_TICK_S = 15.0
DEFAULT_SPEED = 4.0
"""Recorded seconds that pass per wall-clock second."""
TIMEZONE = "America/New_York"
LANGUAGE = "en"
GBFS_V2 = "2.3"
GBFS_V3 = "3.0"
SYSTEM_INFORMATION = "system_information"
VEHICLE_TYPES = "vehicle_types"
CLASSIC_BIKE_TYPE = "1"
EBIKE_TYPE = "2"

STATUS_STANDARD_KEYS = frozenset((*STATE_FIELDS, "station_id", "is_installed", "last_reported"))
INFO_LOCALIZED_KEYS = ("name", "short_name")

_json_encoder = msgspec.json.Encoder()


# --------------------------------------------------------------------------- systems


@dataclass(frozen=True)
class SystemSpec:
    """What one served system looks like: its id, GBFS version and how it derives from the data."""

    system_id: str
    name: str
    gbfs_version: str = GBFS_V2
    seed: int = 0
    station_id_prefix: str = ""
    lat_shift: float = 0.0
    lon_shift: float = 0.0
    station_fraction: float = 1.0
    """Share of the recorded stations this system keeps (chosen per station from the seed)."""

    def keeps(self, station_id: str) -> bool:
        return self.station_fraction >= 1.0 or unit_hash(self.seed, station_id) < self.station_fraction


def check_timing(tick_s: float, speed: float) -> None:
    """ValueError unless the tick is at least 1 second and the speed positive."""
    if not tick_s >= 1.0:
        raise ValueError(f"tick_s={tick_s!r}: the tick must be at least 1 second")
    if not speed > 0.0:
        raise ValueError(f"speed={speed!r}: the replay speed must be positive")


def derive_seed(base_seed: int, key: str) -> int:
    """A stable 63-bit seed from a base seed and a name (``hash()`` differs per process)."""
    digest = hashlib.blake2b(f"{base_seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def unit_hash(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) from a seed and a key."""
    return derive_seed(seed, key) / 2**63


def citibike_spec(base_seed: int = 0, *, system_id: str = "citibike", gbfs_version: str = GBFS_V2) -> SystemSpec:
    """The recorded Citi Bike system. All variants share one seed, so they evolve identically."""
    return SystemSpec(system_id=system_id, name="Citi Bike", gbfs_version=gbfs_version,
                      seed=derive_seed(base_seed, "citibike"))


def resolve_system(system_id: str, base_seed: int = 0) -> SystemSpec | None:
    """The spec of ``citibike``, ``citibike-v3`` or ``synth-00`` .. ``synth-99``; None otherwise.

    ``synth-NN`` has its own ids, coordinates moved to a grid cell of its own and 1/4 to all stations.
    """
    if system_id == "citibike":
        return citibike_spec(base_seed)
    if system_id == "citibike-v3":
        return citibike_spec(base_seed, system_id=system_id, gbfs_version=GBFS_V3)
    prefix, _, digits = system_id.partition("synth-")
    if prefix or len(digits) != 2 or not digits.isdigit():
        return None
    number = int(digits)
    return SystemSpec(
        system_id=system_id,
        name=f"Synthetic {digits} (derived from Citi Bike)",
        seed=derive_seed(base_seed, system_id),
        station_id_prefix=f"{system_id}-",
        lat_shift=0.5 * (number % 10 + 1),
        lon_shift=-0.5 * (number // 10 + 1),
        station_fraction=(1.0, 0.25, 0.5, 0.75)[number % 4],
    )


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    """One rendered feed document; ETag and gzip are computed on first use and kept."""

    body: bytes
    last_updated: int
    """POSIX seconds, also for GBFS 3.0 documents (which render it as RFC 3339)."""
    ttl: int

    @cached_property
    def etag(self) -> str:
        return 'W/"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'

    @cached_property
    def gzipped(self) -> bytes:
        return gzip.compress(self.body, compresslevel=5, mtime=0)


@lru_cache(maxsize=65536)
def rfc3339(posix_s: int) -> str:
    """GBFS 3.0 time: RFC 3339 with the system's local offset, e.g. ``2024-03-13T09:07:51-04:00``."""
    return datetime.fromtimestamp(posix_s, ZoneInfo(TIMEZONE)).isoformat()


def localized(text: Any) -> list[dict[str, str]]:
    return [{"text": str(text), "language": LANGUAGE}]


class ReplayFeed:
    """One system's feeds as a function of wall-clock time; thread-safe, cached per tick."""

    def __init__(self, spec: SystemSpec, *, tick_s: float = DEFAULT_TICK_S, speed: float = DEFAULT_SPEED,
                 timeline: Timeline | None = None) -> None:
        check_timing(tick_s, speed)
        self.spec = spec
        self.tick_s = float(tick_s)
        self.ttl = max(1, round(tick_s))
        self.speed = float(speed)
        self.timeline = timeline or default_timeline()
        self.tracks = tuple(t for t in self.timeline.stations if spec.keeps(t.station_id))
        self.phase_s = unit_hash(spec.seed, "phase") * self.timeline.cycle_s
        self._segment_ends = [s.offset_s for s in self.timeline.segments]
        self._lock = threading.Lock()
        self._event_times_cache: dict[tuple[int, int], list[list[float]]] = {}
        self._documents: dict[str, Document] = {}
        self._information_data = msgspec.Raw(_json_encoder.encode(
            {"stations": [self._render_information(track) for track in self.tracks]}))
        self._status_templates = [self._status_template(track) for track in self.tracks]

    @property
    def system_id(self) -> str:
        return self.spec.system_id

    @property
    def is_v3(self) -> bool:
        return self.spec.gbfs_version == GBFS_V3

    # ----- time

    def tick_start(self, now: float) -> float:
        return math.floor(now / self.tick_s) * self.tick_s

    def position(self, at: float) -> tuple[int, int, float]:
        """Loop number, segment index and fraction of the segment at wall-clock time ``at``."""
        cycle, within = divmod(at * self.speed + self.phase_s, self.timeline.cycle_s)
        index = max(0, bisect.bisect_right(self._segment_ends, within) - 1)
        segment = self.timeline.segments[index]
        fraction = min(1.0, max(0.0, (within - segment.offset_s) / segment.duration_s))
        return int(cycle), index, fraction

    def time_of(self, cycle: int, segment: int, fraction: float) -> float:
        """The wall-clock time of a point of the loop (inverse of :meth:`position`)."""
        seg = self.timeline.segments[segment]
        replay = cycle * self.timeline.cycle_s + seg.offset_s + fraction * seg.duration_s
        return (replay - self.phase_s) / self.speed

    # ----- evolution

    def states(self, at: float) -> list[tuple[State, int]]:
        """(state, last_reported) of each of :attr:`tracks` at exactly ``at`` (documents use the tick
        start): the events done by ``at`` and the latest one's time."""
        cycle, index, fraction = self.position(at)
        times = self._event_times(cycle, index)
        limit = math.floor(at)
        results = []
        for position, track in enumerate(self.tracks):
            path = track.paths[index]
            done = bisect.bisect_right(times[position], fraction) if len(path) > 1 else 0
            if done:
                reported = math.floor(self.time_of(cycle, index, times[position][done - 1]))
            else:
                reported = self._previous_report(position, track, cycle, index)
            results.append((path[done], min(reported, limit)))
        return results

    def _event_times(self, cycle: int, index: int) -> list[list[float]]:
        """Per kept station, the sorted fractions of the segment at which its events happen."""
        key = (cycle, index)
        cached = self._event_times_cache.get(key)
        if cached is not None:
            return cached
        rng = random.Random(f"{self.spec.seed}:{cycle}:{index}")
        times = []
        for track in self.tracks:
            count = len(track.paths[index]) - 1
            times.append(sorted(1.0 - rng.random() for _ in range(count)) if count else [])
        if len(self._event_times_cache) > 32:
            self._event_times_cache.clear()
        self._event_times_cache[key] = times
        return times

    def _previous_report(self, position: int, track: StationTrack, cycle: int, index: int) -> int:
        """The latest event before the current segment, or the once-a-loop report of a static station."""
        if track.sentinel:
            return LAST_REPORTED_SENTINEL
        if not track.static:
            segments = len(self.timeline.segments)
            for back in range(1, segments + 1):
                c, i = divmod(cycle * segments + index - back, segments)
                times = self._event_times(c, i)[position]
                if times:
                    return math.floor(self.time_of(c, i, times[-1]))
        return math.floor(self.time_of(cycle, 0, 0.0)) - track.recorded_age_s

    # ----- documents

    def feed_paths(self) -> dict[str, str]:
        """Data feed name -> path below ``/{system_id}/`` (2.3 has a language folder, 3.0 none)."""
        names = (SYSTEM_INFORMATION, STATION_INFORMATION, STATION_STATUS) + ((VEHICLE_TYPES,) if self.is_v3 else ())
        folder = GBFS_V3 if self.is_v3 else f"{GBFS_V2}/{LANGUAGE}"
        return {name: f"{folder}/{name}.json" for name in names}

    def feed_urls(self, base_url: str) -> dict[str, str]:
        return {name: f"{base_url.rstrip('/')}/{self.system_id}/{path}" for name, path in self.feed_paths().items()}

    def document(self, feed: str, now: float) -> Document:
        """The document of one data feed (not ``gbfs``, which needs the URLs) at the tick of ``now``."""
        if feed not in self.feed_paths():
            raise KeyError(f"system {self.system_id!r} has no feed {feed!r}")
        tick = self.tick_start(now)
        with self._lock:
            document = self._documents.get(feed)
            if document is None or document.last_updated != math.floor(tick):
                document = self._wrap(self._data(feed, tick), tick)
                self._documents[feed] = document
            return document

    def station_status(self, now: float) -> Document:
        return self.document(STATION_STATUS, now)

    def station_information(self, now: float) -> Document:
        return self.document(STATION_INFORMATION, now)

    def discovery(self, now: float, feed_urls: Mapping[str, str]) -> Document:
        """``gbfs.json`` listing ``feed_urls`` (absolute URLs the caller built from the request)."""
        feeds = [{"name": name, "url": url} for name, url in feed_urls.items()]
        data = {"feeds": feeds} if self.is_v3 else {LANGUAGE: {"feeds": feeds}}
        return self._wrap(data, self.tick_start(now))

    def _wrap(self, data: Any, tick: float) -> Document:
        last_updated = math.floor(tick)
        doc = {"last_updated": rfc3339(last_updated) if self.is_v3 else last_updated, "ttl": self.ttl,
               "version": self.spec.gbfs_version, "data": data}
        return Document(_json_encoder.encode(doc), last_updated, self.ttl)

    def _data(self, feed: str, tick: float) -> Any:
        if feed == STATION_STATUS:
            return {"stations": [self._status_record(template, state, reported)
                                 for template, (state, reported) in zip(self._status_templates, self.states(tick))]}
        if feed == STATION_INFORMATION:
            return self._information_data
        if feed == SYSTEM_INFORMATION:
            return self._system_data()
        return {"vehicle_types": _vehicle_types()}

    def _render_information(self, track: StationTrack) -> dict[str, Any]:
        record = dict(track.info)
        record["station_id"] = self.spec.station_id_prefix + track.station_id
        if "external_id" in record and self.spec.station_id_prefix:
            record["external_id"] = self.spec.station_id_prefix + str(record["external_id"])
        record["lat"] = round(float(record["lat"]) + self.spec.lat_shift, 8)
        record["lon"] = round(float(record["lon"]) + self.spec.lon_shift, 8)
        if self.is_v3:
            for key in INFO_LOCALIZED_KEYS:
                if key in record:
                    record[key] = localized(record[key])
            if isinstance(record.get("rental_methods"), list):
                record["rental_methods"] = [str(m).lower() for m in record["rental_methods"]]
        return record

    def _status_template(self, track: StationTrack) -> dict[str, Any]:
        """The parts of a status record that never change: id, is_installed and vendor extras."""
        extras = {k: v for k, v in track.template.items() if k not in STATUS_STANDARD_KEYS}
        installed: bool | int = track.installed if self.is_v3 else int(track.installed)
        return {"station_id": self.spec.station_id_prefix + track.station_id, "is_installed": installed, **extras}

    def _status_record(self, template: Mapping[str, Any], state: State, reported: int) -> dict[str, Any]:
        if not self.is_v3:
            return {**template, **dict(zip(STATE_FIELDS, state)), "last_reported": reported}
        bikes, ebikes, bikes_disabled, docks, docks_disabled, renting, returning = state
        return {**template, "num_vehicles_available": bikes,
                "vehicle_types_available": [{"vehicle_type_id": CLASSIC_BIKE_TYPE, "count": bikes - ebikes},
                                            {"vehicle_type_id": EBIKE_TYPE, "count": ebikes}],
                "num_vehicles_disabled": bikes_disabled, "num_docks_available": docks,
                "num_docks_disabled": docks_disabled, "is_renting": bool(renting),
                "is_returning": bool(returning), "last_reported": rfc3339(reported)}

    def _system_data(self) -> dict[str, Any]:
        common = {"system_id": self.system_id, "timezone": TIMEZONE, "url": "https://citibikenyc.com",
                  "feed_contact_email": "gbfs@example.invalid",
                  "license_url": "https://ride.citibikenyc.com/data-sharing-policy"}
        if self.is_v3:
            return {**common, "languages": [LANGUAGE], "name": localized(self.spec.name),
                    "operator": localized("Lyft"), "opening_hours": "24/7"}
        return {**common, "language": LANGUAGE, "name": self.spec.name, "operator": "Lyft"}


def _vehicle_types() -> list[dict[str, Any]]:
    return [
        {"vehicle_type_id": CLASSIC_BIKE_TYPE, "form_factor": "bicycle", "propulsion_type": "human",
         "name": localized("Classic bike"), "wheel_count": 2},
        {"vehicle_type_id": EBIKE_TYPE, "form_factor": "bicycle", "propulsion_type": "electric_assist",
         "name": localized("E-bike"), "wheel_count": 2, "max_range_meters": 60000},
    ]
