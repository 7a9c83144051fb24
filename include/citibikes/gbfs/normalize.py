"""GBFS station records (1.x, 2.x, 3.x) normalized into one Arrow table per feed snapshot.

One normalizer per feed, both working a column at a time: each canonical field is pulled out
of every record in the version's spelling (the other version's spelling where that is absent,
counted as a quirk), converted by :func:`~citibikes.gbfs.fields.read_column`, and the records
with a problem are quarantined with every reason that applies (``missing_field:lat``,
``invalid_type:num_bikes_available``...). The vendor fields a record carries beyond the model
go into ``extras``, as JSON text with sorted keys. Nothing raises for a bad record; a feed that
is unusable as a whole was refused earlier by :func:`~citibikes.gbfs.parse.parse_feed`.

Quirks are what was smoothed over instead of rejected, counted per record (once per quirk) over
the records kept, and per feed for the header (``feed:<quirk>``). What is normal in one version
is a quirk in another: a POSIX ``last_reported``, ``num_bikes_available`` or a plain-string name
are the 1.x/2.x forms and quirks in a 3.x feed (``posix_time_in_v3``, ``bikes_in_v3``,
``plain_name_in_v3``); RFC 3339 times, ``num_vehicles_*`` and localized names the other way round.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate, compress, repeat
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from citibikes.gbfs import fields as f
from citibikes.gbfs.model import (
    SCHEMA_VERSION,
    SCHEMAS,
    STATION_INFORMATION,
    QUARANTINED_COUNTS,
    STATION_STATUS,
    QuarantinedRecord,
)
from citibikes.gbfs.parse import ParsedFeed

QUIRKS: dict[str, str] = {
    "int_as_bool": "0/1 integers for is_installed/is_renting/is_returning/is_virtual_station",
    "float_as_int": "a count sent as an integral float (3.0)",
    "numeric_id": "a numeric station_id/region_id/vehicle_type_id, kept as its decimal text",
    "float_time": "a POSIX time sent as a float, floored to whole seconds",
    "ms_timestamp": "a POSIX time sent in milliseconds",
    "rfc3339_time": "an RFC 3339 time (the 3.x form) in a 1.x/2.x feed, turned into POSIX seconds",
    "posix_time_in_v3": "a POSIX time (the 1.x/2.x form) in a 3.x feed",
    "localized_name": "a localized name/short_name (the 3.x form) in a 1.x/2.x feed, resolved to one language",
    "plain_name_in_v3": "a plain-string name/short_name (the 1.x/2.x form) in a 3.x feed",
    "language_fallback": "the wanted language was missing from a localized name; another one was used",
    "vehicles_in_v2": "num_vehicles_* (the 3.x names) in a 1.x/2.x feed, read as num_bikes_*",
    "bikes_in_v3": "num_bikes_* (the 1.x/2.x names) in a 3.x feed, read as num_vehicles_*",
    "unknown_rental_method": "rental_methods lists a value the version does not define (kept as sent)",
    "unknown_vehicle_type_id": "vehicle_types_available names a type that vehicle_types.json does not define",
    "feed:utf8_bom": "the body starts with a UTF-8 byte order mark",
    "feed:missing_ttl": "the header has no ttl (required in every version)",
    "feed:invalid_ttl": "the header's ttl is not a non-negative integer (ttl becomes None)",
    "feed:rfc3339_time": "the header's last_updated is RFC 3339 in a 1.x/2.x feed (likewise feed:float_time, "
                         "feed:ms_timestamp, feed:posix_time_in_v3)",
    "feed:mixed_versions": "the system's feeds declare different GBFS versions",
    "feed:unusable_vehicle_types": "vehicle_types.json could not be fetched or read (the known vehicle types stay)",
    "feed:unusable_station_information": "station_information could not be read: the statuses were checked "
                                         "against the last description that could",
}
"""Quirk counters: what was normalized (or only noted) instead of rejected."""

RENTAL_METHODS = pa.array(["accountnumber", "androidpay", "applepay", "creditcard", "key", "paypass", "phone",
                           "transitcard"])
"""The rental methods GBFS defines (upper case before 2.1, lower case since; compared case-insensitively)."""


class Spec(NamedTuple):
    """One canonical field: its column, how it is read, and its key in 1.x/2.x and in 3.x."""

    name: str
    kind: f.Kind
    required: bool
    v2_key: str
    v3_key: str


def _spec(name: str, kind: f.Kind, required: bool = False, v3_key: str | None = None) -> Spec:
    return Spec(name, kind, required, name, v3_key or name)


STATUS_SPECS = (
    _spec("station_id", f.ID, True),
    _spec("num_bikes_available", f.COUNT, True, "num_vehicles_available"),
    _spec("num_ebikes_available", f.COUNT),
    _spec("num_bikes_disabled", f.COUNT, v3_key="num_vehicles_disabled"),
    _spec("num_docks_available", f.COUNT),  # required but for virtual stations: validation knows which
    _spec("num_docks_disabled", f.COUNT),
    _spec("is_installed", f.FLAG, True),
    _spec("is_renting", f.FLAG, True),
    _spec("is_returning", f.FLAG, True),
    _spec("last_reported", f.TIME, True),
    _spec("vehicle_types_available", f.VEHICLE_TYPES),
)


def _information_specs(language: str | None) -> tuple[Spec, ...]:
    name = f.Kind(f.localized_text(language), frozenset({str}))
    return (
        _spec("station_id", f.ID, True),
        _spec("name", name, True),
        _spec("lat", f.COORDINATE, True),
        _spec("lon", f.COORDINATE, True),
        _spec("short_name", name),
        _spec("capacity", f.COUNT),
        _spec("region_id", f.ID),
        _spec("address", f.TEXT),
        _spec("is_virtual_station", f.FLAG),
        _spec("rental_methods", f.STR_LIST),
    )


@dataclass
class Normalized:
    """The canonical records of one feed snapshot, the records that could not be normalized, and the quirks."""

    feed: str
    system_id: str
    version: str
    last_updated: int
    fetched_at: float
    table: pa.Table
    """The records as rows of the feed's schema (:data:`~citibikes.gbfs.model.SCHEMAS`), in feed order."""
    sources: list[Any]
    """The raw record behind each row, so validation can quarantine it whole."""
    quarantined: list[QuarantinedRecord]
    quirks: Counter[str]
    later_copies: list[int] = field(default_factory=list)
    """Rows whose ``station_id`` a record the feed listed earlier carried, one that could not be normalized:
    validation quarantines them as later copies, as it does copies of a row."""

    @property
    def seen(self) -> int:
        """Records the feed contained."""
        return self.table.num_rows + len(self.quarantined)


def normalize_status(parsed: ParsedFeed, system_id: str, fetched_at: float) -> Normalized:
    """The station_status records of a parsed feed as one table; bad records quarantined."""
    _require_feed(parsed, STATION_STATUS)
    return _normalize(parsed, system_id, fetched_at, STATUS_SPECS)


def normalize_information(parsed: ParsedFeed, system_id: str, fetched_at: float, *,
                          language: str | None = "en") -> Normalized:
    """The station_information records of a parsed feed as one table; bad records quarantined.

    ``language`` picks the translation of 3.x localized names (then its primary language, then the first).
    """
    _require_feed(parsed, STATION_INFORMATION)
    normalized = _normalize(parsed, system_id, fetched_at, _information_specs(language))
    methods = normalized.table["rental_methods"]
    if methods.null_count < len(methods):
        unknown = pc.invert(pc.is_in(pc.utf8_lower(pc.list_flatten(methods)), value_set=RENTAL_METHODS))
        rows = set(pc.list_parent_indices(methods).filter(unknown).to_pylist())
        if rows:
            normalized.quirks["unknown_rental_method"] += len(rows)
    return normalized


def _require_feed(parsed: ParsedFeed, feed: str) -> None:
    if parsed.feed != feed:
        raise ValueError(f"expected a parsed {feed} feed, got {parsed.feed!r}")


def _normalize(parsed: ParsedFeed, system_id: str, fetched_at: float, specs: tuple[Spec, ...]) -> Normalized:
    records = parsed.records
    all_objects = set(map(type, records)) <= {dict}
    rows: list[dict[str, Any]] = records if all_objects else [record for record in records if type(record) is dict]
    columns, problems, quirks, fallbacks = _read_columns(rows, specs, parsed.v3)

    def rejected(record: Any, reasons: list[str], index: int | None = None) -> QuarantinedRecord:
        read = None if index is None else {name: columns[name][index] for name in QUARANTINED_COUNTS if name in columns}
        return quarantine(record, reasons, feed=parsed.feed, system_id=system_id, last_updated=parsed.last_updated,
                          fetched_at=fetched_at, read=read)

    quarantined = [] if all_objects else [rejected(record, ["invalid_type:station"])
                                          for record in records if type(record) is not dict]
    quarantined += [rejected(rows[index], reasons, index) for index, reasons in sorted(problems.items())]
    keep = [index not in problems for index in range(len(rows))] if problems else [True] * len(rows)
    later_copies = []
    if problems:
        later_copies = _copies_of_rejected(rows, keep, problems, columns["station_id"])
        rows = list(compress(rows, keep))
        columns = {name: list(compress(values, keep)) for name, values in columns.items()}
    canonical = {spec.v3_key if parsed.v3 else spec.v2_key for spec in specs}
    extras = [{key: value for key, value in row.items() if key not in canonical} for row in rows]
    positions = list(accumulate(keep)) if fallbacks else []  # kept rows up to each record, itself included
    for index, keys in fallbacks.items():  # the other version's key a record was read from is not an extra
        if keep[index]:
            position = positions[index] - 1
            extras[position] = {key: value for key, value in extras[position].items() if key not in keys}
    columns["extras"] = list(map(_SORTED_JSON.encode, extras))
    counted = Counter({quirk: len(indices) - len(problems.keys() & indices) if isinstance(indices, range)
                       else len(indices - problems.keys()) for quirk, indices in quirks.items()})
    counted.update(f"feed:{quirk}" for quirk in parsed.quirks)
    table = _table(parsed, system_id, fetched_at, columns)
    return Normalized(parsed.feed, system_id, parsed.version, parsed.last_updated, fetched_at, table, rows,
                      quarantined, +counted, later_copies)


def _copies_of_rejected(rows: list[dict[str, Any]], keep: list[bool], problems: dict[int, list[str]],
                        station_ids: list[Any]) -> list[int]:
    """The table rows (numbered among the rows kept) whose station_id a rejected record before them carried."""
    first: dict[str, int] = {}
    for index in sorted(problems):
        station_id = raw_station_id(rows[index])
        if station_id is not None:
            first.setdefault(station_id, index)
    kept = [index for index, kept in enumerate(keep) if kept]
    return [row for row, index in enumerate(kept) if first.get(station_ids[index], index) < index]


def _read_columns(rows: list[dict[str, Any]], specs: tuple[Spec, ...], v3: bool
                  ) -> tuple[dict[str, list[Any]], dict[int, list[str]], dict[str, set[int] | range], dict[int, list[str]]]:
    """Every canonical field of every row: the columns, each row's problems, the rows of each quirk,
    and the rows read from the other version's key (and which)."""
    columns: dict[str, list[Any]] = {}
    problems: dict[int, list[str]] = {}
    quirks: dict[str, set[int] | range] = {}
    fallbacks: dict[int, list[str]] = {}
    for spec in specs:
        key, fallback = (spec.v3_key, spec.v2_key) if v3 else (spec.v2_key, spec.v3_key)
        values = list(map(dict.get, rows, repeat(key)))
        if fallback != key and None in values:
            used = [i for i, value in enumerate(values) if value is None and rows[i].get(fallback) is not None]
            for index in used:
                values[index] = rows[index][fallback]
                fallbacks.setdefault(index, []).append(fallback)
            if used:
                _add(quirks, "bikes_in_v3" if v3 else "vehicles_in_v2", set(used))
        column = f.read_column(values, spec.kind, key, required=spec.required)
        columns[spec.name] = column.values
        for index, reason in column.problems.items():
            problems.setdefault(index, []).append(reason)
        for quirk, indices in _for_version(column.quirks, values, spec, v3).items():
            _add(quirks, quirk, indices)
    return columns, problems, quirks, fallbacks


def _add(quirks: dict[str, set[int] | range], quirk: str, rows: set[int] | range) -> None:
    """Add rows to a quirk's rows (a range stands for every row: nothing more can be added to it)."""
    known = quirks.get(quirk)
    if known is None or isinstance(rows, range):
        quirks[quirk] = rows
    elif not isinstance(known, range):
        known.update(rows)


def _for_version(quirks: dict[str, set[int] | range], values: list[Any], spec: Spec,
                 v3: bool) -> dict[str, set[int] | range]:
    """A column's quirks as its version sees them: the other version's form of a time or a name is
    the quirk, its own form is not (see the module doc)."""
    if not v3:
        return quirks
    if spec.kind is f.TIME:
        quirks = {quirk: rows for quirk, rows in quirks.items() if quirk != "rfc3339_time"}
        posix = {i for i, value in enumerate(values) if type(value) in (int, float)}
        return {**quirks, "posix_time_in_v3": posix} if posix else quirks
    if spec.name in ("name", "short_name"):
        quirks = {quirk: rows for quirk, rows in quirks.items() if quirk != "localized_name"}
        plain = {i for i, value in enumerate(values) if type(value) is str}
        return {**quirks, "plain_name_in_v3": plain} if plain else quirks
    return quirks


_SORTED_JSON = msgspec.json.Encoder(order="sorted")
"""Extras and a quarantined record's text: keys sorted, so a record has one text whatever order the feed
wrote its keys in."""


def _table(parsed: ParsedFeed, system_id: str, fetched_at: float, columns: dict[str, list[Any]]) -> pa.Table:
    """The columns as a table of the feed's schema, the per-snapshot values repeated."""
    schema = SCHEMAS[parsed.feed]
    rows = len(columns["station_id"])
    snapshot = {"system_id": system_id, "last_updated": parsed.last_updated * 1000,
                "fetched_at": round(fetched_at * 1000), "schema_version": SCHEMA_VERSION}
    arrays = []
    for column in schema:
        if column.name in snapshot:
            arrays.append(pa.repeat(pa.scalar(snapshot[column.name], column.type), rows))
        elif pa.types.is_timestamp(column.type):  # whole POSIX seconds
            seconds = pa.array(columns[column.name], pa.int64())
            arrays.append(pc.multiply(seconds, 1000).cast(column.type))
        else:
            arrays.append(pa.array(columns[column.name], column.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def quarantine(raw: Any, reasons: list[str], *, feed: str, system_id: str, last_updated: int,
               fetched_at: float, read: dict[str, Any] | None = None) -> QuarantinedRecord:
    """A :class:`QuarantinedRecord` keeping the raw record whole (JSON text, keys sorted) with its reasons, and
    for station_status the counts and flags of ``read`` (the record's fields as normalized; None where unusable)."""
    counts = {} if read is None or feed != STATION_STATUS else {name: _fits(read.get(name)) for name in QUARANTINED_COUNTS}
    return QuarantinedRecord(system_id=system_id, feed=feed, station_id=raw_station_id(raw), reasons=reasons,
                             raw=_SORTED_JSON.encode(raw).decode(), last_updated=last_updated, fetched_at=fetched_at,
                             **counts)


def _fits(value: Any) -> Any:
    """A flag, or a count that fits the lake's int32 column; None otherwise (a count of 10**12 is no count)."""
    return value if type(value) is bool or (type(value) is int and -2**31 <= value < 2**31) else None


def raw_station_id(raw: Any) -> str | None:
    """The station_id of a raw record if it has a usable one (text or a number)."""
    station_id = raw.get("station_id") if type(raw) is dict else None
    if type(station_id) is str:
        return station_id
    if type(station_id) is int:
        return str(station_id)
    return None
