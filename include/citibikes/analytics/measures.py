"""The measures a city auditor computes from a system's feed, for a period, from the lake through the catalog.

:func:`measure` runs :mod:`citibikes.analytics.sql` on a catalog engine (:mod:`citibikes.analytics.engines`) and the episode machine of
:mod:`citibikes.live.episodes` (the live consumer's) over the ordered rows it returns:

- *share of time unusable*, per station: its records with 0 bikes or 0 docks in the windows
  07:00:00-10:59:00 and 16:00:00-21:59:00 (local), over the system's snapshots in those windows;
- *broken-bike share*, per station: ``num_bikes_disabled / capacity`` per record, leaving out capacity 0
  and bikes + disabled above capacity; median and mean;
- *empty/full durations*, per station: the episodes over its records within 06:00:00-23:59:00; the
  longest, mean and median in hours (0 when none);
- *rebalancing-standard violations*: each network station with its nearest neighbour
  (:mod:`citibikes.analytics.network`), their combined records per window, the episodes at least the
  window's grace long (peak 1 h, off-peak 2 h), and $50 per whole hour beyond the grace.

Every station record of a feed counts, valid or quarantined (the quarantine keeps the counts it could
read); a record whose counts or flags cannot be read is skipped and counted (``skipped``).

Where the definitions leave a choice, made here and followed by the tests' independent computation:

- a snapshot joins the descriptions the pipeline kept: a description it quarantined (no usable position or
  capacity) describes nothing, and a station the feed stopped describing counts no more;
- the network is made of the stations with records in the period;
- a station listed twice in one feed counts once: its first copy (the pipeline quarantines later copies as
  ``duplicate_station_id``, which are skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from statistics import median
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from citibikes.analytics import network, series, sql
from citibikes.analytics.engines import Engine
from citibikes.live.episodes import Episode

GRACE_S = {"peak": 3600, "off_peak": 7200}
"""How long an empty or full instance of a window lasts before it violates the standard."""
FINE_PER_HOUR = 50
"""Dollars per whole hour beyond the grace, per instance."""


@dataclass(frozen=True)
class Period:
    """A system's local days, ``first`` to ``last`` included, in its time zone."""

    system_id: str
    timezone: str
    first: date
    last: date

    def bounds(self) -> tuple[datetime, datetime]:
        """The period as UTC times: the start of ``first`` and of the day after ``last``, local."""
        zone = ZoneInfo(self.timezone)
        start = datetime.combine(self.first, time(), zone).astimezone(UTC)
        end = datetime.combine(self.last + timedelta(days=1), time(), zone).astimezone(UTC)
        return start, end

    def parameters(self) -> dict[str, Any]:
        start, end = self.bounds()
        return {"system": self.system_id, "start": start, "end": end,
                "first_date": start.date(), "last_date": (end - timedelta(microseconds=1)).date()}


class StationFigures(msgspec.Struct, kw_only=True):
    """One station's measures (the report's per-station table)."""

    system_id: str
    station_id: str
    name: str | None
    lat: float | None
    lon: float | None
    snapshots: int
    """Its usable records in the period."""
    quarantined_counted: int
    skipped: int
    unusable: int
    unusable_share: float | None
    broken_snapshots: int
    broken_median: float | None
    broken_mean: float | None
    episodes: int
    longest_h: float
    mean_h: float
    median_h: float
    in_network: bool
    neighbour_id: str | None
    neighbour_ft: float | None
    peak_instances: int
    peak_fines: int
    off_peak_instances: int
    off_peak_fines: int
    fines: int


class SystemFigures(msgspec.Struct, kw_only=True):
    """The system-wide figures of a period."""

    system_id: str
    timezone: str
    first: date
    last: date
    snapshots: int
    window_snapshots: int
    stations: int
    records: int
    quarantined_counted: int
    skipped: int
    unusable_share_mean: float | None
    unusable_share_median: float | None
    broken_median: float | None
    """The median of the stations' median broken-bike shares."""
    broken_mean: float | None
    """The mean of the stations' mean broken-bike shares."""
    episodes: int
    longest_h: float
    projection: str
    network_stations: int
    peak_instances: int
    peak_fines: int
    off_peak_instances: int
    off_peak_fines: int
    fines: int


class HourFigures(msgspec.Struct):
    """Records with 0 bikes (empty) and with 0 docks (full) in one local hour of day."""

    hour: int
    records: int
    empty: int
    full: int


class Analytics(msgspec.Struct):
    system: SystemFigures
    stations: list[StationFigures]
    by_hour: list[HourFigures]


def measure(engine: Engine, period: Period) -> Analytics:
    """Every measure of ``period`` from the catalog ``engine`` reads (its tables by name)."""
    engine.load(sql.tables(engine.columns("quarantine")), {**period.parameters(), "tz": period.timezone})
    described = engine.rows(sql.DESCRIBED)
    snapshots, window_snapshots = engine.rows(sql.SYSTEM)[0]
    rows = engine.rows(sql.STATIONS)
    broken_medians = dict(engine.rows(sql.BROKEN_MEDIANS))
    positions = [network.Position(described[sid][0], *described[sid][2:]) for sid, usable, *_ in rows if usable]
    crs, pairs = network.neighbours(positions)
    sids = {station_id: sid for sid, (station_id, *_) in enumerate(described)}
    neighbour = {sids[p.station_id]: p for p in pairs}
    walked = _episodes(engine, [(sids[p.station_id], sids[p.neighbour_id]) for p in pairs])
    stations = []
    for sid, usable, quarantined, skipped, unusable, broken_n, broken_mean in rows:
        station_id, name, lat, lon = described[sid]
        day = [e.end - e.start for e in walked["day"].get(sid, [])]
        fines = {window: _violations(walked[window].get(sid, []), GRACE_S[window])
                 for window in ("peak", "off_peak")}
        pair = neighbour.get(sid)
        stations.append(StationFigures(
            system_id=period.system_id, station_id=station_id, name=name, lat=lat, lon=lon, snapshots=usable,
            quarantined_counted=quarantined, skipped=skipped, unusable=unusable,
            unusable_share=unusable / window_snapshots if window_snapshots else None,
            broken_snapshots=broken_n, broken_median=broken_medians.get(sid), broken_mean=broken_mean,
            episodes=len(day), longest_h=max(day, default=0) / 3600, mean_h=sum(day) / len(day) / 3600 if day else 0.0,
            median_h=median(day) / 3600 if day else 0.0, in_network=pair is not None,
            neighbour_id=pair.neighbour_id if pair else None, neighbour_ft=pair.distance_ft if pair else None,
            peak_instances=fines["peak"][0], peak_fines=fines["peak"][1], off_peak_instances=fines["off_peak"][0],
            off_peak_fines=fines["off_peak"][1], fines=fines["peak"][1] + fines["off_peak"][1]))
    by_hour = [HourFigures(*row) for row in engine.rows(sql.BY_HOUR)]
    return Analytics(_system(period, snapshots, window_snapshots, stations, crs), stations, by_hour)


def _episodes(engine: Engine, pairs: list[tuple[int, int]]) -> dict[str, dict[int, list[Episode]]]:
    """Series ("day", "peak", "off_peak") -> station (sid) -> its closed episodes; ``pairs``: each network
    station's sid and its neighbour's (see :mod:`citibikes.analytics.series`)."""
    times = [ts for (ts,) in engine.rows(sql.FEED_TIMES)]
    segments = engine.rows(sql.SEGMENTS)
    in_day = {segment for segment, day, _ in segments if day}
    window = {segment: standard for segment, _, standard in segments}
    by_station = series.runs(engine.rows(sql.RUNS))
    walked: dict[str, dict[int, list[Episode]]] = {"day": {}, "peak": {}, "off_peak": {}}
    for sid, found in by_station.items():
        walked["day"][sid] = series.walk((run for run in found if run[3] in in_day), times)
    for name, code in (("peak", sql.PEAK), ("off_peak", sql.OFF_PEAK)):
        inside = {sid: [run for run in found if window[run[3]] == code] for sid, found in by_station.items()}
        for sid, neighbour in pairs:
            walked[name][sid] = series.walk(series.overlay(inside.get(sid, []), inside.get(neighbour, [])), times)
    return walked


def _violations(episodes: list[Episode], grace_s: int) -> tuple[int, int]:
    """Instances at least ``grace_s`` long and their fines in dollars."""
    durations = [e.end - e.start for e in episodes if e.end - e.start >= grace_s]
    return len(durations), sum(FINE_PER_HOUR * ((d - grace_s) // 3600) for d in durations)


def _system(period: Period, snapshots: int, window_snapshots: int, stations: list[StationFigures],
            crs: str) -> SystemFigures:
    measured = [s for s in stations if s.snapshots]
    shares = [s.unusable_share for s in measured if s.unusable_share is not None]
    broken_medians = [s.broken_median for s in measured if s.broken_median is not None]
    broken_means = [s.broken_mean for s in measured if s.broken_mean is not None]

    def total(field: str) -> int:
        return sum(getattr(s, field) for s in stations)

    return SystemFigures(
        system_id=period.system_id, timezone=period.timezone, first=period.first, last=period.last,
        snapshots=snapshots, window_snapshots=window_snapshots, stations=len(measured), records=total("snapshots"),
        quarantined_counted=total("quarantined_counted"), skipped=total("skipped"),
        unusable_share_mean=sum(shares) / len(shares) if shares else None,
        unusable_share_median=median(shares) if shares else None,
        broken_median=median(broken_medians) if broken_medians else None,
        broken_mean=sum(broken_means) / len(broken_means) if broken_means else None,
        episodes=total("episodes"), longest_h=max((s.longest_h for s in stations), default=0.0), projection=crs,
        network_stations=sum(s.in_network for s in stations), peak_instances=total("peak_instances"),
        peak_fines=total("peak_fines"), off_peak_instances=total("off_peak_instances"),
        off_peak_fines=total("off_peak_fines"), fines=total("fines"))
