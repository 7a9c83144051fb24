"""Data-quality rules for normalized station feeds: what may go downstream, what is quarantined, and why.

:func:`validate` takes the output of :mod:`citibikes.gbfs.normalize` for one system (either feed or
both) and splits it into valid records and :class:`QuarantinedRecord` s. A quarantined record keeps
every reason that applies, each a machine-readable code (see ``REASONS``), so the quarantine topic
can be counted and searched by cause. :class:`QualitySummary` is the per-fetch report (counts, quirks,
orphans, feed age), JSON-ready for logs and metrics.

Design choices:

* Known vendor quirks are normalized and counted upstream, never rejected wholesale; a rule rejects
  one record, never a feed. Only a stale station_status quarantines all its records (``stale_feed``).
* Staleness applies to station_status alone: GBFS requires it current, while many systems publish
  station_information with a ``last_updated`` hours or days old, because descriptions rarely change.
  Its age is still reported (``QualitySummary.feed_ages_s``).
* Duplicates: the first copy of a ``station_id`` in a feed is kept, later copies are quarantined
  (``duplicate_station_id``); feeds with duplicates usually repeat a record, and keeping the first
  keeps the station visible. Duplicates and orphans are judged among well-formed records.
* ``last_reported`` sentinels (``QualityConfig.last_reported_sentinels``, Citi Bike sends 86400) are
  not times: such a record gets ``last_reported_sentinel`` and the age rules do not look at it.
* ``coordinates_transposed`` is a heuristic: the latitude is out of range but swapping the pair makes
  both valid, or (for in-range pairs) the station lies more than ``TRANSPOSE_RADIUS_DEG`` from the
  system's median position while the swapped pair lies within it.
* Status is checked column by column: one list comprehension pulls a field out of all records, a
  set of its values (counts take few distinct values) answers "is anything out of range?" with
  C-level ``min``/``max``, and a record-by-record scan only runs for a rule that has an offender.
  That keeps a 2,200-station snapshot well under a millisecond.
"""

from __future__ import annotations

from collections import Counter
from itertools import compress, repeat
from dataclasses import dataclass
from operator import add, attrgetter, gt, lt, sub
from statistics import median
from typing import Any, Collection, Iterable, Mapping, Sequence

import msgspec

from citibikes.config import QualityConfig
from citibikes.gbfs.model import (
    STATION_INFORMATION,
    STATION_STATUS,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
    StationStatusColumns,
    VehicleTypeCount,
)
from citibikes.gbfs.normalize import Normalized, quarantine

MAX_PLAUSIBLE_COUNT = 100_000
"""Counts and capacities above this are garbage: the largest docking stations hold a few hundred."""
TRANSPOSE_RADIUS_DEG = 1.0
"""Stations of one system lie within this many degrees (about 100 km) of its median position."""
MIN_STATIONS_FOR_CENTER = 3
"""The median-position heuristic needs at least this many stations with plausible coordinates."""

STATUS_COUNT_FIELDS = (
    "num_bikes_available",
    "num_ebikes_available",
    "num_bikes_disabled",
    "num_docks_available",
    "num_docks_disabled",
)

REASONS: dict[str, str] = {
    "missing_field:<field>": "a required field is absent or null (from normalize)",
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
    "unknown_station": "status for a station that station_information (or known_station_ids) does not list",
    "no_status": "station_information lists a station that the status feed does not report",
    "stale_feed": "the whole station_status feed is older than QualityConfig.max_feed_age_s at the reference time "
                  "(station_information may be older: descriptions rarely change)",
}
"""Every reason code a quarantined record can carry, with its meaning."""


@dataclass(frozen=True)
class QualitySummary:
    """The quality report of one validation run (one system, one fetch)."""

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
    """Records per vendor quirk that normalize smoothed over (both feeds added up)."""
    orphans: dict[str, int | None]
    """``status_without_information`` and ``information_without_status``; None when not checked."""
    feed_age_s: float | None
    """Age of station_status at the reference time (of station_information when only that is given)."""
    feed_ages_s: dict[str, float]
    """Age of each given feed at the reference time."""
    feed_stale: bool
    """station_status is older than ``max_feed_age_s`` (its records are quarantined)."""
    stale_feeds: tuple[str, ...]
    """``("station_status",)`` when stale, else empty (station_information is never stale)."""
    not_advancing: bool
    """``last_updated`` did not move past ``previous_last_updated`` (the status feed's, if given)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (dicts, lists, numbers, strings)."""
        return msgspec.to_builtins(self)


@dataclass(frozen=True)
class ValidationResult:
    """What may go downstream, what goes to the quarantine topic, and the report."""

    information: list[StationInformation]
    """Valid station_information records."""
    status: list[StationStatus] | StationStatusColumns
    """Valid station_status records (as columns when the status feed was normalized to columns)."""
    quarantined: list[QuarantinedRecord]
    """Normalize's quarantined records plus the rule rejections, information first."""
    summary: QualitySummary


class _Rejections:
    """Reasons per record index of one feed, in the order the rules ran."""

    def __init__(self) -> None:
        self.by_index: dict[int, list[str]] = {}

    def add(self, indices: Iterable[int], reason: str) -> None:
        by_index = self.by_index
        for index in indices:
            if index in by_index:
                by_index[index].append(reason)
            else:
                by_index[index] = [reason]

    def reasons(self, index: int) -> list[str]:
        return self.by_index.get(index, [])


def validate(
    information: Normalized[StationInformation] | None,
    status: Normalized[StationStatus] | None,
    *,
    config: QualityConfig,
    reference_time: float | None = None,
    known_station_ids: Collection[str] | None = None,
    previous_last_updated: int | None = None,
) -> ValidationResult:
    """Apply every rule to one system's normalized feeds.

    ``reference_time`` (POSIX seconds) is "now" for feed age and future timestamps; None means each
    feed's ``fetched_at``. Only station_status can be stale (see the module doc). ``known_station_ids`` replaces station_information for the orphan check
    when only the status feed is given; if it is a mapping, its values are the capacities (int or None).
    """
    if information is None and status is None:
        raise ValueError("validate needs station_information, station_status or both")
    info_rejections, status_rejections = _Rejections(), _Rejections()
    capacities: Mapping[str, int] = {}
    if information is not None:
        _check_information(information.records, info_rejections)
        capacities = _capacities(information.records, info_rejections)
    elif isinstance(known_station_ids, Mapping):
        capacities = known_station_ids  # (the usual case: every capacity known, no copy)
        if not set(map(type, known_station_ids.values())) <= {int}:
            capacities = {sid: cap for sid, cap in known_station_ids.items() if type(cap) is int}
    status_ids: list[str] = []
    if status is not None:
        reference = status.fetched_at if reference_time is None else reference_time
        status_ids = _check_status(status, status_rejections, config, reference, capacities)
    orphans = _check_orphans(information, status, status_ids, known_station_ids, info_rejections, status_rejections)
    ages = {
        feed.feed: (feed.fetched_at if reference_time is None else reference_time) - feed.last_updated
        for feed in (information, status) if feed is not None
    }
    stale_feeds = (STATION_STATUS,) if ages.get(STATION_STATUS, 0.0) > config.max_feed_age_s else ()
    valid_info, quarantined_info = _split(information, info_rejections, False)
    valid_status, quarantined_status = _split(status, status_rejections, STATION_STATUS in stale_feeds)
    quarantined = quarantined_info + quarantined_status
    summary = _summarize(
        information, status, valid={STATION_INFORMATION: valid_info, STATION_STATUS: valid_status},
        quarantined={STATION_INFORMATION: quarantined_info, STATION_STATUS: quarantined_status},
        orphans=orphans, ages=ages, stale_feeds=stale_feeds, previous_last_updated=previous_last_updated,
    )
    return ValidationResult(valid_info, valid_status, quarantined, summary)


def _summarize(information: Normalized[StationInformation] | None, status: Normalized[StationStatus] | None, *,
               valid: Mapping[str, list[Any]], quarantined: Mapping[str, list[QuarantinedRecord]],
               orphans: dict[str, int | None], ages: dict[str, float], stale_feeds: tuple[str, ...],
               previous_last_updated: int | None) -> QualitySummary:
    given = [feed for feed in (information, status) if feed is not None]
    newest = given[-1]  # the status feed when given: it is the one that must advance
    return QualitySummary(
        system_id=newest.system_id,
        version=newest.version,
        seen={feed.feed: feed.seen for feed in given},
        valid={feed.feed: len(valid[feed.feed]) for feed in given},
        quarantined={feed.feed: len(quarantined[feed.feed]) for feed in given},
        quarantined_by_reason=dict(Counter(
            reason for records in quarantined.values() for record in records for reason in record.reasons)),
        quirks=dict(sum((feed.quirks for feed in given), Counter())),
        orphans=orphans,
        feed_age_s=ages[newest.feed],
        feed_ages_s=ages,
        feed_stale=bool(stale_feeds),
        stale_feeds=stale_feeds,
        not_advancing=previous_last_updated is not None and newest.last_updated <= previous_last_updated,
    )


# --------------------------------------------------------------------------- station_information


def _check_information(records: Sequence[StationInformation], rejections: _Rejections) -> None:
    center = _system_center(records)
    for index, record in enumerate(records):
        reasons = _coordinate_problems(record.lat, record.lon, center)
        if record.capacity is not None:
            reasons += _count_problems(record.capacity, "capacity")
        if reasons:
            rejections.by_index[index] = reasons
    rejections.add(_later_copies([record.station_id for record in records]), "duplicate_station_id")


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


def _system_center(records: Sequence[StationInformation]) -> tuple[float, float] | None:
    """Median position of the stations with plausible coordinates (robust to a few bad ones)."""
    plausible = [(r.lat, r.lon) for r in records
                 if -90.0 <= r.lat <= 90.0 and -180.0 <= r.lon <= 180.0 and (r.lat, r.lon) != (0.0, 0.0)]
    if len(plausible) < MIN_STATIONS_FOR_CENTER:
        return None
    return median(lat for lat, _ in plausible), median(lon for _, lon in plausible)


def _count_problems(value: int, name: str) -> list[str]:
    if value < 0:
        return [f"negative_count:{name}"]
    if value > MAX_PLAUSIBLE_COUNT:
        return [f"count_too_large:{name}"]
    return []


def _capacities(records: Sequence[StationInformation], rejections: _Rejections) -> dict[str, int]:
    """Capacity per station (first copy wins), leaving out capacities that are themselves implausible."""
    capacities: dict[str, int] = {}
    for index, record in enumerate(records):
        capacity = record.capacity
        if capacity is None or record.station_id in capacities:
            continue
        if not any(reason.endswith(":capacity") for reason in rejections.reasons(index)):
            capacities[record.station_id] = capacity
    return capacities


# --------------------------------------------------------------------------- station_status


def _check_status(status: Normalized[StationStatus], rejections: _Rejections, config: QualityConfig,
                  reference_time: float, capacities: Mapping[str, int]) -> list[str]:
    """Apply the status rules column by column; return the station_id column (for the orphan check).

    The records are either :class:`StationStatusColumns` (what the pipeline validates) or a list of
    structs, whose columns are pulled out first: the rules below see columns either way.
    """
    records = status.records
    if not len(records):
        return []
    columns = _status_columns(records)
    counts = {name: columns[name] for name in STATUS_COUNT_FIELDS}
    for name, column in counts.items():
        negative, too_large = _outside(column, 0, MAX_PLAUSIBLE_COUNT)
        rejections.add(negative, f"negative_count:{name}")
        rejections.add(too_large, f"count_too_large:{name}")
    _check_vehicle_type_counts(columns["vehicle_types_available"], rejections)
    rejections.add(_ebikes_exceed_bikes(counts["num_ebikes_available"], counts["num_bikes_available"]),
                   "ebikes_exceed_bikes")
    station_ids = columns["station_id"]
    if capacities:
        rejections.add(_over_capacity(counts, station_ids, capacities, config.capacity_tolerance),
                       "capacity_exceeded")
    _check_last_reported(columns["last_reported"], rejections, config,
                         oldest=status.last_updated - config.max_report_age_s,
                         newest=reference_time + config.max_future_skew_s)
    rejections.add(_later_copies(station_ids), "duplicate_station_id")
    return station_ids


_RULE_COLUMNS = ("station_id", *STATUS_COUNT_FIELDS, "vehicle_types_available", "last_reported")


def _status_columns(records: StationStatusColumns | Sequence[StationStatus]) -> Mapping[str, list[Any]]:
    """The columns the status rules read."""
    if isinstance(records, StationStatusColumns):
        return records.columns()
    # list comprehensions are the fastest way to pull a column out of structs (specialized attribute loads)
    return {
        "station_id": [r.station_id for r in records],
        "num_bikes_available": [r.num_bikes_available for r in records],
        "num_ebikes_available": [r.num_ebikes_available for r in records],
        "num_bikes_disabled": [r.num_bikes_disabled for r in records],
        "num_docks_available": [r.num_docks_available for r in records],
        "num_docks_disabled": [r.num_docks_disabled for r in records],
        "vehicle_types_available": [r.vehicle_types_available for r in records],
        "last_reported": [r.last_reported for r in records],
    }


def _outside(column: list[int | None], low: int, high: int) -> tuple[list[int], list[int]]:
    """Indices of values below ``low`` and above ``high`` (None is skipped).

    Counts take few distinct values, so min/max of the set is cheaper than of the column.
    """
    values = set(column)
    values.discard(None)
    if not values or (min(values) >= low and max(values) <= high):
        return [], []
    below = [i for i, value in enumerate(column) if value is not None and value < low]
    above = [i for i, value in enumerate(column) if value is not None and value > high]
    return below, above


def _check_vehicle_type_counts(column: list[list[VehicleTypeCount] | None], rejections: _Rejections) -> None:
    if not any(column):
        return
    for index, vehicle_types in enumerate(column):
        if vehicle_types:
            counts = [entry.count for entry in vehicle_types]
            if min(counts) < 0:
                rejections.add((index,), "negative_count:vehicle_types_available")
            if max(counts) > MAX_PLAUSIBLE_COUNT:
                rejections.add((index,), "count_too_large:vehicle_types_available")


def _ebikes_exceed_bikes(ebikes: list[int | None], bikes: list[int]) -> list[int]:
    try:
        if not any(map(gt, ebikes, bikes)):
            return []
    except TypeError:  # some station does not report e-bikes
        pass
    return [i for i, (e, b) in enumerate(zip(ebikes, bikes)) if e is not None and e > b]


def _over_capacity(counts: Mapping[str, list[int | None]], station_ids: list[str],
                   capacities: Mapping[str, int], tolerance: int) -> list[int]:
    """Stations whose bikes + docks (+ disabled ones) exceed capacity by more than ``tolerance``."""
    occupied = _add_columns(counts["num_bikes_available"], counts["num_docks_available"],
                            counts["num_bikes_disabled"], counts["num_docks_disabled"])
    capacity = list(map(capacities.get, station_ids, occupied))  # unknown capacity: as occupied, never exceeded
    excess = list(map(sub, occupied, capacity))
    if max(excess) <= tolerance:
        return []
    return list(compress(range(len(excess)), map(lt, repeat(tolerance), excess)))


def _add_columns(*columns: list[int | None]) -> list[int]:
    """Element-wise sum, an absent (None) count adding nothing."""
    try:
        total = columns[0]
        for column in columns[1:]:
            total = list(map(add, total, column))
        return total  # type: ignore[return-value]
    except TypeError:
        return [sum(value for value in values if value is not None) for values in zip(*columns)]


def _check_last_reported(reported: list[int | None], rejections: _Rejections, config: QualityConfig, *,
                         oldest: float, newest: float) -> None:
    """Sentinels, then times too old or in the future (a sentinel is not a time: no age rule for it)."""
    sentinels = frozenset(config.last_reported_sentinels)
    times = set(reported)
    times.discard(None)
    found = times & sentinels
    times -= found
    # the offending values as a set, then their records in one C-level pass (compress + set lookups)
    if found:
        rejections.add(compress(range(len(reported)), map(found.__contains__, reported)), "last_reported_sentinel")
    if times and min(times) < oldest:
        old = {value for value in times if value < oldest}
        rejections.add(compress(range(len(reported)), map(old.__contains__, reported)), "last_reported_too_old")
    if times and max(times) > newest:
        future = {value for value in times if value > newest}
        rejections.add(compress(range(len(reported)), map(future.__contains__, reported)), "last_reported_in_future")


# --------------------------------------------------------------------------- both feeds


def _later_copies(station_ids: list[str]) -> list[int]:
    """Indices of every copy of a station_id after its first."""
    if len(set(station_ids)) == len(station_ids):
        return []
    seen: set[str] = set()
    later = []
    for index, station_id in enumerate(station_ids):
        if station_id in seen:
            later.append(index)
        seen.add(station_id)
    return later


def _all_station_ids(normalized: Normalized[Any]) -> set[str]:
    """Station ids a feed mentions, its quarantined records included."""
    records = normalized.records
    ids = set(records.station_id if isinstance(records, StationStatusColumns) else map(attrgetter("station_id"), records))
    ids.update(record.station_id for record in normalized.quarantined if record.station_id is not None)
    return ids


def _check_orphans(information: Normalized[StationInformation] | None, status: Normalized[StationStatus] | None,
                   status_ids: list[str], known_station_ids: Collection[str] | None,
                   info_rejections: _Rejections, status_rejections: _Rejections) -> dict[str, int | None]:
    orphans: dict[str, int | None] = {"status_without_information": None, "information_without_status": None}
    known: Collection[str] | None = known_station_ids
    if information is not None:
        known = _all_station_ids(information)
    if status is not None and known is not None:
        unknown = _not_in(status_ids, known)
        status_rejections.add(unknown, "unknown_station")
        orphans["status_without_information"] = len(unknown)
    if information is not None and status is not None:
        missing = _not_in([record.station_id for record in information.records], _all_station_ids(status))
        info_rejections.add(missing, "no_status")
        orphans["information_without_status"] = len(missing)
    return orphans


def _not_in(station_ids: list[str], known: Collection[str]) -> list[int]:
    known_set = known if isinstance(known, (set, frozenset)) else set(known)
    if known_set.issuperset(station_ids):
        return []
    return [index for index, station_id in enumerate(station_ids) if station_id not in known_set]


def _split(normalized: Normalized[Any] | None, rejections: _Rejections,
           stale: bool) -> tuple[list[Any], list[QuarantinedRecord]]:
    """Valid records, and the quarantined ones (normalize's first, then the rule rejections in feed order)."""
    if normalized is None:
        return [], []
    by_index = rejections.by_index
    if stale:
        for index in range(len(normalized.records)):
            by_index.setdefault(index, []).append("stale_feed")
        quarantined = [msgspec.structs.replace(q, reasons=[*q.reasons, "stale_feed"]) for q in normalized.quarantined]
    else:
        quarantined = list(normalized.quarantined)
    records, sources = normalized.records, normalized.sources
    columnar = isinstance(records, StationStatusColumns)
    if not by_index:
        return records if columnar else list(records), quarantined
    aligned = len(sources) == len(records)
    rejected = sorted(by_index)
    valid: Any = []
    if columnar:
        valid = records.without(rejected)
    else:
        start = 0
        for index in rejected:  # slices between the rejected records: no per-record Python work
            valid += records[start:index]
            start = index + 1
        valid += records[start:]
    for index in rejected:
        raw = sources[index] if aligned else _as_raw(records.record(index) if columnar else records[index])
        quarantined.append(quarantine(raw, by_index[index], feed=normalized.feed, system_id=normalized.system_id,
                                      last_updated=normalized.last_updated, fetched_at=normalized.fetched_at))
    return valid, quarantined


def _as_raw(record: StationInformation | StationStatus) -> dict[str, Any]:
    """A canonical record as plain data, for quarantining records that came without their source."""
    return msgspec.to_builtins(record)
