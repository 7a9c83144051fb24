"""Data-quality rules for normalized station feeds: what may go downstream, what is quarantined, and why.

:func:`information_rules` and :func:`status_rules` take the output of :mod:`citibikes.gbfs.normalize`
(one feed snapshot) and split its table into valid rows and :class:`QuarantinedRecord` s. A quarantined
record keeps every reason that applies, each a machine-readable code (see :data:`REASONS`), so the
quarantine topic can be counted and searched by cause. :class:`QualitySummary` is the per-fetch
report (counts, quirks, orphans, feed age), JSON-ready for logs, XCom and run records.

Design choices:

* Known vendor quirks are normalized and counted upstream, never rejected wholesale; a rule rejects
  one record, never a feed. Only a stale station_status quarantines all its records (``stale_feed``).
* Staleness applies to station_status alone: GBFS requires it current, while many systems publish
  station_information with a ``last_updated`` hours or days old, because descriptions rarely change.
* Status is judged against the stations station_information describes (:class:`Described`: their
  capacities, which are virtual): the description given in the same step, or the one remembered
  from an earlier step. A description is never rejected because the status feed does not list its
  station at that moment (a new station, a station out of service): that is counted as an orphan.
* Duplicates: the first copy of a ``station_id`` in a feed is kept, later copies are quarantined.
* ``last_reported`` sentinels (Citi Bike sends 86400) are not times: such a record gets
  ``last_reported_sentinel`` and the age rules do not look at it.
* ``num_docks_available`` is required but for virtual stations (GBFS 2.0+: "except for stations
  that have unlimited docking capacity"), and "full" depends on it. Like the capacity and orphan
  rules, this one needs the description: without one it is not applied.
* ``coordinates_transposed`` is a heuristic: the latitude is out of range but swapping the pair makes
  both valid, or (for in-range pairs) the station lies more than ``TRANSPOSE_RADIUS_DEG`` from the
  system's median position while the swapped pair lies within it.
* The status rules run on Arrow columns (a compute kernel or two per rule); records are looked at
  one by one only for the descriptions' coordinates and to write the quarantine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from statistics import median
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from citibikes.config import QualityConfig
from citibikes.gbfs.model import QUARANTINED_COUNTS, STATION_STATUS, QuarantinedRecord
from citibikes.gbfs.normalize import Normalized, quarantine

MAX_PLAUSIBLE_COUNT = 100_000
"""Counts and capacities above this are garbage: the largest docking stations hold a few hundred."""
TRANSPOSE_RADIUS_DEG = 1.0
"""Stations of one system lie within this many degrees (about 100 km) of its median position."""
MIN_STATIONS_FOR_CENTER = 3
"""The median-position heuristic needs at least this many stations with plausible coordinates."""

STATUS_COUNT_FIELDS = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled",
                       "num_docks_available", "num_docks_disabled")

REASONS: dict[str, str] = {
    "missing_field:<field>": "a required field is absent or null (from normalize; num_docks_available from "
                             "validation, which knows which stations are virtual)",
    "invalid_type:<field>": "a field has the wrong JSON type, e.g. a string count or a boolean lat (from normalize)",
    "invalid_value:<field>": "a field has the right type but an impossible value, e.g. flag 2, a blank id, "
                             "a malformed RFC 3339 time, a fractional count (from normalize)",
    "invalid_type:station": "the stations array holds something that is not an object (from normalize)",
    "lat_out_of_range": "latitude outside [-90, 90]",
    "lon_out_of_range": "longitude outside [-180, 180]",
    "null_island": "the station sits at exactly (0, 0), a placeholder for 'no position'",
    "coordinates_transposed": "latitude and longitude look swapped (see the module doc for the heuristic)",
    "negative_count:<field>": "a count or the capacity is negative",
    "count_too_large:<field>": f"a count or the capacity exceeds {MAX_PLAUSIBLE_COUNT}",
    "capacity_exceeded": "bikes + docks + disabled bikes + disabled docks exceed the station's capacity "
                         "by more than QualityConfig.capacity_tolerance",
    "ebikes_exceed_bikes": "more e-bikes available than bikes available (e-bikes are a subset)",
    "last_reported_sentinel": "last_reported is a 'never reported' sentinel (QualityConfig.last_reported_sentinels)",
    "last_reported_too_old": "last_reported is more than QualityConfig.max_report_age_s before the feed's "
                             "last_updated",
    "last_reported_in_future": "last_reported is more than QualityConfig.max_future_skew_s after the reference time",
    "duplicate_station_id": "a later copy of a station_id already seen in the same feed",
    "unknown_station": "status for a station that station_information does not describe",
    "stale_feed": "the whole station_status feed is older than QualityConfig.max_feed_age_s at the reference time "
                  "(station_information may be older: descriptions rarely change)",
}
"""Every reason code a quarantined record can carry, with its meaning."""


class Described:
    """The stations the latest station_information describes: what validating station_status needs.

    Arrow arrays, so that handing it to another process (a backfill's pool) costs a buffer copy;
    as plain data (the system's state is JSON) through :meth:`to_builtins`."""

    def __init__(self, ids: pa.Array | None = None, capacities: pa.Array | None = None,
                 virtual: pa.Array | None = None) -> None:
        self.ids = ids if ids is not None else pa.array([], pa.string())
        """Every described station, valid or not."""
        self.capacities = capacities if capacities is not None else pa.array([], pa.int64())
        """Each one's capacity, aligned with :attr:`ids` (null when unknown or implausible)."""
        self.virtual = virtual if virtual is not None else pa.array([], pa.string())
        """Stations with ``is_virtual_station`` (they need not report docks)."""

    @classmethod
    def of(cls, information: Validated) -> Described:
        """From a validated station_information: valid records first, then the rejected ones (no capacity)."""
        table = information.table
        valid = set(table["station_id"].to_pylist())
        rejected = list(dict.fromkeys(q.station_id for q in information.quarantined
                                      if q.station_id is not None and q.station_id not in valid))
        return cls(pa.concat_arrays([table["station_id"].combine_chunks(), pa.array(rejected, pa.string())]),
                   pa.concat_arrays([table["capacity"].combine_chunks().cast(pa.int64()),
                                     pa.nulls(len(rejected), pa.int64())]),
                   table["station_id"].filter(pc.fill_null(table["is_virtual_station"], False)).combine_chunks())

    def to_builtins(self) -> dict[str, Any]:
        """As plain data (the system's state is JSON)."""
        return {"capacity": dict(zip(self.ids.to_pylist(), self.capacities.to_pylist())),
                "virtual": self.virtual.to_pylist()}

    @classmethod
    def from_builtins(cls, data: dict[str, Any]) -> Described:
        capacity = data.get("capacity") or {}
        return cls(pa.array(list(capacity), pa.string()), pa.array(list(capacity.values()), pa.int64()),
                   pa.array(data.get("virtual") or [], pa.string()))


@dataclass
class Validated:
    """One feed snapshot's valid rows, its quarantine and the figures the summary needs of it."""

    feed: str
    system_id: str
    version: str
    last_updated: int
    fetched_at: float
    table: pa.Table
    """The valid rows (the normalized table without the rejected ones)."""
    quarantined: list[QuarantinedRecord]
    """Normalize's quarantined records, then the rule rejections in feed order."""
    seen: int
    quirks: dict[str, int]
    age_s: float
    stale: bool
    unknown: int | None = None
    """Status records for stations the description does not list (None: not checked)."""
    unreported: int | None = None
    """Described stations the status feed does not report (None: not checked)."""


class QualitySummary(msgspec.Struct, kw_only=True):
    """The quality report of one validation (one system, one step)."""

    system_id: str
    version: str | None
    """The status feed's GBFS version, else the information feed's."""
    seen: dict[str, int]
    """Records each given feed contained."""
    valid: dict[str, int]
    quarantined: dict[str, int]
    quarantined_by_reason: dict[str, int]
    """Quarantined records per reason; a record with two reasons counts under both."""
    quirks: dict[str, int]
    """Records per vendor quirk smoothed over (both feeds added up)."""
    orphans: dict[str, int | None]
    """``status_without_information`` and ``information_without_status``; None when not checked."""
    feed_age_s: float | None
    """Age of station_status at the reference time (of station_information when only that is given)."""
    feed_ages_s: dict[str, float]
    feed_stale: bool
    """station_status is older than ``max_feed_age_s`` (its records are quarantined)."""
    stale_feeds: tuple[str, ...] = ()
    not_advancing: bool = False
    """``last_updated`` did not move past ``previous_last_updated`` (the status feed's, if given)."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


def summarize(information: Validated | None, status: Validated | None, *,
              previous_last_updated: int | None = None, extra_quirks: Iterable[str] = ()) -> QualitySummary:
    """The report of one step from its validated feeds (either or both)."""
    given = [feed for feed in (information, status) if feed is not None]
    newest = given[-1]  # the status feed when given: it is the one that must advance
    quirks = sum((Counter(feed.quirks) for feed in given), Counter(extra_quirks))
    return QualitySummary(
        system_id=newest.system_id,
        version=newest.version,
        seen={feed.feed: feed.seen for feed in given},
        valid={feed.feed: feed.table.num_rows for feed in given},
        quarantined={feed.feed: len(feed.quarantined) for feed in given},
        quarantined_by_reason=dict(Counter(reason for feed in given for q in feed.quarantined for reason in q.reasons)),
        quirks=dict(quirks),
        orphans={"status_without_information": status.unknown if status else None,
                 "information_without_status": status.unreported if status else None},
        feed_age_s=newest.age_s,
        feed_ages_s={feed.feed: feed.age_s for feed in given},
        feed_stale=status is not None and status.stale,
        stale_feeds=(STATION_STATUS,) if status is not None and status.stale else (),
        not_advancing=previous_last_updated is not None and newest.last_updated <= previous_last_updated,
    )


class _Rejections:
    """Reasons per row index of one feed, in the order the rules ran."""

    def __init__(self) -> None:
        self.by_index: dict[int, list[str]] = {}

    def add(self, indices: Iterable[int], reason: str) -> None:
        for index in indices:
            self.by_index.setdefault(index, []).append(reason)

    def where(self, mask: pa.Array | pa.ChunkedArray, reason: str) -> int:
        """Every row where ``mask`` is true (null is false); returns how many."""
        rows = pc.indices_nonzero(mask)
        if len(rows):
            self.add(rows.to_pylist(), reason)
        return len(rows)


# --------------------------------------------------------------------------- station_information


def information_rules(normalized: Normalized, reference_time: float | None = None) -> Validated:
    """The station_information rules: coordinates, capacity, duplicates (it is never stale)."""
    table = normalized.table
    rejections = _Rejections()
    lat, lon = table["lat"].to_pylist(), table["lon"].to_pylist()
    center = _system_center(lat, lon)
    for index, (la, lo) in enumerate(zip(lat, lon)):
        reasons = _coordinate_problems(la, lo, center)
        if reasons:
            rejections.by_index[index] = reasons
    _count_rules(table["capacity"], "capacity", rejections)
    rejections.add(_later_copies(table["station_id"], normalized.later_copies), "duplicate_station_id")
    return _split(normalized, rejections, _age(normalized, reference_time), stale=False)


def _coordinate_problems(lat: float, lon: float, center: tuple[float, float] | None) -> list[str]:
    reasons = []
    lat_ok, lon_ok = -90.0 <= lat <= 90.0, -180.0 <= lon <= 180.0
    if not lat_ok:
        reasons.append("lat_out_of_range")
    if not lon_ok:
        reasons.append("lon_out_of_range")
    if lat == 0.0 and lon == 0.0:
        reasons.append("null_island")
    if _looks_transposed(lat, lon, lat_ok, lon_ok, center):
        reasons.append("coordinates_transposed")
    return reasons


def _looks_transposed(lat: float, lon: float, lat_ok: bool, lon_ok: bool,
                      center: tuple[float, float] | None) -> bool:
    if not lat_ok:
        return -90.0 <= lon <= 90.0 and -180.0 <= lat <= 180.0
    if not lon_ok or center is None:
        return False
    return not _near(center, lat, lon) and _near(center, lon, lat)


def _near(center: tuple[float, float], lat: float, lon: float) -> bool:
    return abs(lat - center[0]) <= TRANSPOSE_RADIUS_DEG and abs(lon - center[1]) <= TRANSPOSE_RADIUS_DEG


def _system_center(lat: list[float], lon: list[float]) -> tuple[float, float] | None:
    """Median position of the stations with plausible coordinates (robust to a few bad ones)."""
    plausible = [(la, lo) for la, lo in zip(lat, lon)
                 if -90.0 <= la <= 90.0 and -180.0 <= lo <= 180.0 and (la, lo) != (0.0, 0.0)]
    if len(plausible) < MIN_STATIONS_FOR_CENTER:
        return None
    return median(la for la, _ in plausible), median(lo for _, lo in plausible)


# --------------------------------------------------------------------------- station_status


def status_rules(normalized: Normalized, config: QualityConfig, reference_time: float | None = None, *,
                 known: Described | None = None, vehicle_types: Collection[str] | None = None) -> Validated:
    """The station_status rules, against the described stations ``known`` (without them, the capacity,
    docks and orphan rules are skipped)."""
    table = normalized.table
    rejections = _Rejections()
    if known is not None and not len(known.ids):
        known = None  # nothing described yet: the rules that need descriptions wait for one
    if known is not None:
        missing_docks = pc.is_null(table["num_docks_available"])
        if len(known.virtual):
            missing_docks = pc.and_(missing_docks, pc.invert(pc.is_in(table["station_id"], known.virtual)))
        rejections.where(missing_docks, "missing_field:num_docks_available")
    for name in STATUS_COUNT_FIELDS:
        _count_rules(table[name], name, rejections)
    vehicle_types_available = table["vehicle_types_available"]
    unknown_types = 0
    if vehicle_types_available.null_count < len(vehicle_types_available):
        unknown_types = _vehicle_type_rules(vehicle_types_available, rejections, vehicle_types)
    rejections.where(pc.greater(table["num_ebikes_available"], table["num_bikes_available"]), "ebikes_exceed_bikes")
    described = pc.index_in(table["station_id"], known.ids) if known is not None else None
    if described is not None:
        capacity = known.capacities.take(described)
        occupied = table["num_bikes_available"].cast(pa.int64())
        for name in ("num_docks_available", "num_bikes_disabled", "num_docks_disabled"):
            occupied = pc.add(occupied, pc.fill_null(table[name], 0).cast(pa.int64()))
        rejections.where(pc.greater(pc.subtract(occupied, capacity), config.capacity_tolerance), "capacity_exceeded")
    reference = normalized.fetched_at if reference_time is None else reference_time
    _last_reported_rules(table["last_reported"], rejections, config, oldest=normalized.last_updated
                         - config.max_report_age_s, newest=reference + config.max_future_skew_s)
    rejections.add(_later_copies(table["station_id"], normalized.later_copies), "duplicate_station_id")
    unknown = unreported = None
    if known is not None:
        unknown = rejections.where(pc.is_null(described), "unknown_station")
        reported = pa.concat_arrays([table["station_id"].combine_chunks(), pa.array(
            [q.station_id for q in normalized.quarantined if q.station_id is not None], pa.string())])
        unreported = pc.sum(pc.invert(pc.is_in(known.ids, reported))).as_py() or 0
    age = _age(normalized, reference_time)
    validated = _split(normalized, rejections, age, stale=age > config.max_feed_age_s)
    validated.unknown, validated.unreported = unknown, unreported
    if unknown_types:
        validated.quirks["unknown_vehicle_type_id"] = unknown_types
    return validated


def _count_rules(column: pa.ChunkedArray, name: str, rejections: _Rejections) -> None:
    bounds = pc.min_max(column)
    if bounds["min"].is_valid and bounds["min"].as_py() < 0:
        rejections.where(pc.less(column, 0), f"negative_count:{name}")
    if bounds["max"].is_valid and bounds["max"].as_py() > MAX_PLAUSIBLE_COUNT:
        rejections.where(pc.greater(column, MAX_PLAUSIBLE_COUNT), f"count_too_large:{name}")


def _vehicle_type_rules(column: pa.ChunkedArray, rejections: _Rejections,
                        vehicle_types: Collection[str] | None) -> int:
    """Counts per vehicle type in range. Returns how many rows name a type vehicle_types.json does not
    define (a quirk, ``unknown_vehicle_type_id``: the station's own counts stay usable)."""
    entries = pc.list_flatten(column)
    rows = pc.list_parent_indices(column)
    counts = pc.struct_field(entries, "count")
    rejections.add(set(rows.filter(pc.less(counts, 0)).to_pylist()), "negative_count:vehicle_types_available")
    rejections.add(set(rows.filter(pc.greater(counts, MAX_PLAUSIBLE_COUNT)).to_pylist()),
                   "count_too_large:vehicle_types_available")
    if vehicle_types is None:
        return 0
    defined = pa.array(sorted(vehicle_types), pa.string())
    unknown = pc.invert(pc.is_in(pc.struct_field(entries, "vehicle_type_id"), defined))
    return len(set(rows.filter(unknown).to_pylist()))


def _last_reported_rules(column: pa.ChunkedArray, rejections: _Rejections, config: QualityConfig, *,
                         oldest: float, newest: float) -> None:
    """Sentinels, then times too old or in the future (a sentinel is not a time: no age rule for it)."""
    seconds = pc.divide(column.cast(pa.int64()), 1000)
    sentinel = pc.is_in(seconds, pa.array(config.last_reported_sentinels, pa.int64()))
    rejections.where(sentinel, "last_reported_sentinel")
    rejections.where(pc.and_(pc.invert(sentinel), pc.less(seconds, oldest)), "last_reported_too_old")
    rejections.where(pc.and_(pc.invert(sentinel), pc.greater(seconds, newest)), "last_reported_in_future")


# --------------------------------------------------------------------------- both feeds


def _age(normalized: Normalized, reference_time: float | None) -> float:
    return (normalized.fetched_at if reference_time is None else reference_time) - normalized.last_updated


def _later_copies(column: pa.ChunkedArray, of_rejected: list[int]) -> list[int]:
    """Indices of every copy of a station_id after its first, and ``of_rejected``: rows whose first copy is a record
    normalization rejected (:attr:`~citibikes.gbfs.normalize.Normalized.later_copies`)."""
    if pc.count_distinct(column).as_py() == len(column):
        return of_rejected
    station_ids = column.to_pylist()
    seen: set[str] = set()
    later = set(of_rejected)
    for index, station_id in enumerate(station_ids):
        if station_id in seen:
            later.add(index)
        seen.add(station_id)
    return sorted(later)


def _split(normalized: Normalized, rejections: _Rejections, age: float, *, stale: bool) -> Validated:
    """The valid rows and the quarantine (normalize's first, then the rule rejections in feed order)."""
    by_index = rejections.by_index
    quarantined = list(normalized.quarantined)
    if stale:
        for index in range(normalized.table.num_rows):
            by_index.setdefault(index, []).append("stale_feed")
        quarantined = [msgspec.structs.replace(q, reasons=[*q.reasons, "stale_feed"]) for q in quarantined]
    table = normalized.table
    if by_index:
        keep = [True] * table.num_rows
        for index in by_index:
            keep[index] = False
        rows = sorted(by_index)
        read = (table.select(QUARANTINED_COUNTS).take(rows).to_pylist() if normalized.feed == STATION_STATUS
                else [None] * len(rows))
        table = table.filter(pa.array(keep, pa.bool_()))
        for index, values in zip(rows, read):
            quarantined.append(quarantine(normalized.sources[index], by_index[index], feed=normalized.feed,
                                          system_id=normalized.system_id, last_updated=normalized.last_updated,
                                          fetched_at=normalized.fetched_at, read=values))
    return Validated(normalized.feed, normalized.system_id, normalized.version, normalized.last_updated,
                     normalized.fetched_at, table, quarantined, normalized.seen, dict(normalized.quirks), age, stale)
