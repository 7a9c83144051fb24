"""Parse GBFS station feeds (1.x, 2.x, 3.x) and normalize them into the canonical model.

Two steps, two kinds of failure. :func:`parse_feed` turns the raw body into a :class:`ParsedFeed`
or raises :class:`~citibikes.gbfs.errors.FeedError` (HTML page, truncated JSON, wrong feed, no
stations, unknown version, bad header): then nothing of that feed is used. :func:`normalize_status`
and :func:`normalize_information` never raise for a bad record: it is quarantined with
machine-readable reasons (``missing_field:lat``, ``invalid_type:num_bikes_available``...), and every
vendor quirk they smooth over (0/1 flags, RFC 3339 times, localized names, 3.x "vehicles") is counted.

Speed: station_status is fetched every minute for thousands of stations, so records of the common
1.x/2.x shape (Citi Bike's 1.1 and 2.3 feeds) take a fast path: a plan per shape found by the
record's key count, C-level ``itemgetter`` reads, plain type checks, no exceptions. Anything else
(3.x spellings, RFC 3339 times, every record with a problem) goes through the generic path, which
is the reference: both give the same result (a property test holds them to it).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from itertools import repeat
from operator import call, is_not, itemgetter
from typing import Annotated, Any, Callable, Generic, NamedTuple, TypeVar

import msgspec

from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import (
    STATION_INFORMATION,
    STATION_STATUS,
    STATUS_COLUMNS,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
    StationStatusColumns,
    VehicleTypeCount,
    extras_text,
)

SUPPORTED_VERSIONS = frozenset({"1.0", "1.1", "2.0", "2.1", "2.2", "2.3", "3.0"})
"""Versions whose station feeds this module understands; any later 3.x minor is accepted too."""
_LATER_3X = re.compile(r"3\.[0-9]+(-RC[0-9]*)?")

STATION_FEEDS = (STATION_INFORMATION, STATION_STATUS)

MAX_POSIX_S = 253_402_300_799
"""9999-12-31T23:59:59Z: later "seconds" are not a time (and would not fit the lake's timestamps)."""
MILLISECONDS_ABOVE = 100_000_000_000
"""A POSIX time above this (year 5138 in seconds, 1973 in milliseconds) was sent in milliseconds."""

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_UTF8_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_JSON_DECODER = msgspec.json.Decoder()

# Keys that tell the two station feeds apart (used to catch a body fetched from the wrong URL).
_STATUS_MARKERS = frozenset(
    {"num_bikes_available", "num_vehicles_available", "num_docks_available", "is_renting", "is_returning"}
)
_INFORMATION_MARKERS = frozenset({"lat", "lon", "name", "capacity", "address"})
_MARKERS = {STATION_STATUS: _STATUS_MARKERS, STATION_INFORMATION: _INFORMATION_MARKERS}
_CONTENT_SAMPLE = 50
# What a `data` object without `stations` probably is, to name it in the error.
_OTHER_FEEDS = {
    "feeds": "gbfs.json (the discovery file)",
    "bikes": "free_bike_status",
    "vehicles": "vehicle_status",
    "vehicle_types": "vehicle_types",
    "regions": "system_regions",
    "plans": "system_pricing_plans",
    "alerts": "system_alerts",
    "versions": "gbfs_versions",
    "system_id": "system_information",
}

FEED_ERROR_REASONS: dict[str, str] = {
    "empty_body": "the response body is empty or whitespace",
    "not_json": "not JSON: an HTML/XML error page, gzip bytes, binary or malformed text",
    "truncated_json": "JSON that ends before the document is complete (a cut-off download)",
    "wrong_content": "JSON, but not this feed: an array, an object without 'data', another GBFS file "
                     "(gbfs.json, free_bike_status...) or the other station feed",
    "no_stations": "'data' has no 'stations' array",
    "unknown_version": "a 'version' this module does not support (1.0-2.3, 3.x are supported)",
    "bad_header": "'last_updated' missing, not a time, or not after 1970",
}
"""``FeedError.reason`` values raised by :func:`parse_feed`."""

QUIRKS: dict[str, str] = {
    "int_as_bool": "0/1 integers for is_installed/is_renting/is_returning/is_virtual_station",
    "rfc3339_time": "an RFC 3339 time (GBFS 3.x) turned into POSIX seconds",
    "float_time": "a POSIX time sent as a float, floored to whole seconds",
    "ms_timestamp": "a POSIX time sent in milliseconds",
    "float_as_int": "a count sent as an integral float (3.0)",
    "numeric_id": "a numeric station_id/region_id/vehicle_type_id, kept as its decimal text",
    "localized_name": "a GBFS 3.x localized name/short_name resolved to one language",
    "language_fallback": "the wanted language was missing from a localized name; another one was used",
    "vehicles_as_bikes": "GBFS 3.x num_vehicles_* read as the canonical num_bikes_*",
    "feed:utf8_bom": "the body starts with a UTF-8 byte order mark",
    "feed:invalid_ttl": "the header's ttl is not a non-negative integer (ttl becomes None)",
    "feed:rfc3339_time": "the header's last_updated is RFC 3339 (likewise feed:float_time, feed:ms_timestamp)",
}
"""Quirk counters in :attr:`Normalized.quirks`: what was normalized instead of rejected."""

T = TypeVar("T", StationInformation, StationStatus)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A station feed that passed the feed-level checks; its records are still raw."""

    feed: str
    version: str
    last_updated: int
    """POSIX seconds, whatever the feed sent (int, float, milliseconds or RFC 3339)."""
    ttl: int | None
    stations: list[Any]
    """The ``data.stations`` array exactly as decoded: normally dicts, but anything may be in it."""
    quirks: tuple[str, ...] = ()
    """Feed-level quirks smoothed over (``utf8_bom``, ``rfc3339_time``, ``invalid_ttl``...)."""


@dataclass(slots=True)
class Normalized(Generic[T]):
    """The canonical records of one feed, the records that could not be normalized, and the quirks."""

    feed: str
    system_id: str
    version: str
    last_updated: int
    fetched_at: float
    records: list[T]
    quarantined: list[QuarantinedRecord]
    quirks: Counter[str]
    """How many records needed each quirk normalized (a record counts once per quirk); header
    quirks count once as ``feed:<quirk>``."""
    sources: list[Any] = field(default_factory=list)
    """The raw record behind each of ``records`` (same order), so validation can quarantine it whole."""

    @property
    def seen(self) -> int:
        """Records the feed contained."""
        return len(self.records) + len(self.quarantined)


# --------------------------------------------------------------------------- feed level


def parse_feed(body: bytes, feed: str, *, system_id: str | None = None) -> ParsedFeed:
    """Decode and check one station feed body; raise :class:`FeedError` if it is unusable as a whole."""
    if feed not in STATION_FEEDS:
        raise ValueError(f"parse_feed handles {STATION_FEEDS}, not {feed!r}")

    fail = _failure(feed, system_id)
    document, quirks = _decode(body, fail)
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise fail("wrong_content", f"{_describe_document(document)}, not a GBFS {feed} document; "
                   "check that the URL is the feed listed in gbfs.json")
    version, last_updated, ttl = _header(document, quirks, fail)
    stations = _stations(document["data"], feed, fail)
    _check_content_matches(stations, feed, fail)
    return ParsedFeed(feed, version, last_updated, ttl, stations, tuple(quirks))


def _decode(body: bytes, fail: Callable[[str, str], FeedError]) -> tuple[Any, list[str]]:
    quirks: list[str] = []
    if not body or body.isspace():
        raise fail("empty_body", "the response body is empty; the server sent no data, retry or check the URL")
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
        quirks.append("utf8_bom")
    try:
        return _JSON_DECODER.decode(body), quirks
    except msgspec.DecodeError as exc:
        raise fail(*_why_not_json(body, str(exc))) from None
    except UnicodeDecodeError:
        raise fail("not_json", "the body is not UTF-8 text; the server sent binary data, check the URL") from None
    except RecursionError:
        raise fail("not_json", "the JSON is nested too deeply to be a GBFS feed; check the URL") from None


def _why_not_json(body: bytes, decoder_message: str) -> tuple[str, str]:
    start = body.lstrip()[:40]
    if start.startswith(b"<"):
        return "not_json", (f"got an HTML/XML page instead of JSON (starts with {_snippet(start)}); "
                            "the URL probably serves an error or login page, check it in a browser")
    if body.startswith(_GZIP_MAGIC):
        return "not_json", "got gzip-compressed bytes instead of JSON; decompress the body before parsing"
    if "truncated" in decoder_message and start[:1] in (b"{", b"["):
        return "truncated_json", (f"the JSON ends before the document is complete ({len(body)} bytes); "
                                  "the download was cut off, retry the fetch")
    return "not_json", f"the body is not valid JSON ({decoder_message}, starts with {_snippet(start)}); check the URL"


def _snippet(raw: bytes) -> str:
    return repr(raw[:30].decode("utf-8", "replace"))


def _describe_document(document: Any) -> str:
    if not isinstance(document, dict):
        return f"got JSON {_a_json(document)} instead of an object with 'data'"
    if "data" in document:
        return f"got a JSON object whose 'data' is {_a_json(document['data'])}, not an object"
    keys = ", ".join(_short_repr(key) for key in sorted(document)[:6]) or "none"
    return f"got a JSON object without 'data' (keys: {keys})"


def _a_json(value: Any) -> str:
    """The JSON type of a decoded value, with its article: "an array", "a string", "null"..."""
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
             bool: "a boolean"}
    return names.get(type(value), "null")


def _failure(feed: str, system_id: str | None) -> Callable[[str, str], FeedError]:
    """``fail(reason, message)``: the FeedError of this feed."""
    def fail(reason: str, message: str) -> FeedError:
        return FeedError(message, reason=reason, system_id=system_id, feed=feed)
    return fail


def _header(document: Mapping[str, Any], quirks: list[str], fail: Callable[[str, str], FeedError]
            ) -> tuple[str, int, int | None]:
    """The header's version, ``last_updated`` and ``ttl``; quirks smoothed over are added to ``quirks``."""
    return _version(document, fail), _last_updated(document, quirks, fail), _ttl(document, quirks)


def _version(document: Mapping[str, Any], fail: Callable[[str, str], FeedError]) -> str:
    version = document.get("version", "1.0")  # 1.0 had no version field (added in 1.1)
    if isinstance(version, str) and (version in SUPPORTED_VERSIONS or _LATER_3X.fullmatch(version)):
        return version
    supported = ", ".join(sorted(SUPPORTED_VERSIONS))
    if not isinstance(version, str):
        raise fail("unknown_version", f"the header's version is {_a_json(version)} ({_short_repr(version)}), "
                   "not a string like '2.3'; report it to the vendor")
    raise fail("unknown_version", f"GBFS version {_short_repr(version)} is not supported (supported: {supported}, "
               "3.x); point the system at a supported version in gbfs_versions.json")


def _last_updated(document: Mapping[str, Any], quirks: list[str], fail: Callable[[str, str], FeedError]) -> int:
    raw = document.get("last_updated")
    if raw is None:
        raise fail("bad_header", "the header has no last_updated; the feed cannot be dated, ask the vendor to add it")
    found: set[str] = set()
    try:
        seconds = _as_posix(raw, found)
    except _Invalid:
        raise fail("bad_header", f"the header's last_updated {_short_repr(raw)} is not a POSIX or RFC 3339 time; "
                   "the feed cannot be dated, report it to the vendor") from None
    if seconds <= 0:
        raise fail("bad_header", f"the header's last_updated {_short_repr(raw)} is not after 1970; "
                   "the feed cannot be dated, report it to the vendor")
    quirks.extend(sorted(found))
    return seconds


def _ttl(document: Mapping[str, Any], quirks: list[str]) -> int | None:
    ttl = document.get("ttl")
    if ttl is None:
        return None
    if type(ttl) is int and 0 <= ttl <= MAX_POSIX_S:
        return ttl
    quirks.append("invalid_ttl")
    return None


def _stations(data: dict[str, Any], feed: str, fail: Callable[[str, str], FeedError]) -> list[Any]:
    stations = data.get("stations")
    if isinstance(stations, list):
        return stations
    looks_like = next((name for key, name in _OTHER_FEEDS.items() if key in data), None)
    if looks_like is None and data and all(isinstance(v, dict) and "feeds" in v for v in data.values()):
        looks_like = _OTHER_FEEDS["feeds"]  # 1.x/2.x discovery: data is keyed by language
    if looks_like is not None:
        raise fail("wrong_content", f"got {looks_like} instead of {feed}; check the URL of {feed} in gbfs.json")
    got = "data.stations is missing" if stations is None else f"data.stations is {_a_json(stations)}"
    raise fail("no_stations", f"{got}, not an array of stations; the vendor's feed is broken, report it")


def _check_content_matches(stations: list[Any], feed: str, fail: Callable[[str, str], FeedError]) -> None:
    """Catch the other station feed served at this URL (status as information or the other way round)."""
    other = STATION_INFORMATION if feed == STATION_STATUS else STATION_STATUS
    sample = [record.keys() for record in stations[:_CONTENT_SAMPLE] if isinstance(record, dict)]
    if not sample or any(keys & _MARKERS[feed] for keys in sample):
        return
    if any(keys & _MARKERS[other] for keys in sample):
        raise fail("wrong_content", f"the stations carry {other} fields, not {feed} ones; "
                   f"the URL serves {other}, fix the {feed} URL")


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- field conversion


class _Invalid(Exception):
    """A field value that cannot be normalized; ``kind`` starts its reason code."""

    kind = "invalid"


class _WrongType(_Invalid):
    kind = "invalid_type"


class _WrongValue(_Invalid):
    kind = "invalid_value"


def _as_posix(value: Any, quirks: set[str]) -> int:
    """POSIX seconds from int/float seconds, milliseconds or an RFC 3339 string."""
    kind = type(value)
    if kind is int:
        seconds = value
    elif kind is float:
        if not math.isfinite(value):
            raise _WrongValue
        quirks.add("float_time")
        seconds = math.floor(value)
    elif kind is str:
        quirks.add("rfc3339_time")
        return _rfc3339_seconds(value)
    else:
        raise _WrongType
    if seconds > MILLISECONDS_ABOVE:
        quirks.add("ms_timestamp")
        seconds //= 1000
    if not 0 <= seconds <= MAX_POSIX_S:
        raise _WrongValue
    return seconds


def _rfc3339_seconds(text: str) -> int:
    if not _RFC3339.fullmatch(text):
        raise _WrongValue
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        seconds = math.floor(moment.timestamp())
    except (ValueError, OverflowError):
        raise _WrongValue from None
    if not 0 <= seconds <= MAX_POSIX_S:
        raise _WrongValue
    return seconds


def _as_count(value: Any, quirks: set[str]) -> int:
    """A whole number; an integral float (``3.0``) is accepted as a quirk. Range is validation's job."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float and value.is_integer():
        quirks.add("float_as_int")
        return int(value)
    raise _WrongValue if kind is float else _WrongType


def _as_flag(value: Any, quirks: set[str]) -> bool:
    """A boolean; 0/1 integers (Citi Bike's is_installed and friends) are accepted as a quirk."""
    kind = type(value)
    if kind is bool:
        return value
    if kind is int:
        if value in (0, 1):
            quirks.add("int_as_bool")
            return value == 1
        raise _WrongValue
    raise _WrongType


def _as_coordinate(value: Any, quirks: set[str]) -> float:
    """Decimal degrees as float (range is validation's job)."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _WrongValue
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise _WrongValue from None
    raise _WrongType


def _as_id(value: Any, quirks: set[str]) -> str:
    """An identifier string; numeric ids (a common vendor habit) become their decimal text."""
    kind = type(value)
    if kind is str:
        if not value.strip():
            raise _WrongValue
        return value
    if kind is int:
        quirks.add("numeric_id")
        return str(value)
    raise _WrongType


def _as_text(value: Any, quirks: set[str]) -> str:
    if type(value) is str:
        return value
    raise _WrongType


def _as_str_list(value: Any, quirks: set[str]) -> list[str]:
    if type(value) is list and all(type(item) is str for item in value):
        return value
    raise _WrongType


@cache
def _localized_text(language: str | None) -> Callable[[Any, set[str]], str]:
    """Plain text, or the best entry of a 3.x localized list ``[{"text": .., "language": ..}]``."""

    def convert(value: Any, quirks: set[str]) -> str:
        if type(value) is str:
            return value
        if type(value) is not list:
            raise _WrongType
        quirks.add("localized_name")
        return _pick_translation(value, language, quirks)

    return convert


def _pick_translation(entries: list[Any], language: str | None, quirks: set[str]) -> str:
    """The system language, else the same primary language (``en`` for ``en-US``), else the first."""
    translations = [
        (entry["language"].lower(), entry["text"])
        for entry in entries
        if type(entry) is dict and type(entry.get("text")) is str and type(entry.get("language")) is str
    ]
    if not translations:
        raise _WrongValue if not entries else _WrongType
    wanted = (language or "").lower()
    primary = re.split(r"[-_]", wanted)[0]
    for tag, text in translations:
        if tag == wanted:
            return text
    for tag, text in translations:
        if re.split(r"[-_]", tag)[0] == primary:
            return text
    quirks.add("language_fallback")
    return translations[0][1]


def _as_vehicle_types(value: Any, quirks: set[str]) -> list[VehicleTypeCount]:
    """GBFS 2.1+ ``vehicle_types_available``: ``[{"vehicle_type_id": .., "count": ..}]``."""
    if type(value) is not list:
        raise _WrongType
    counts = []
    for entry in value:
        if type(entry) is not dict or "vehicle_type_id" not in entry or "count" not in entry:
            raise _WrongType
        counts.append(VehicleTypeCount(_as_id(entry["vehicle_type_id"], quirks), _as_count(entry["count"], quirks)))
    return counts


# --------------------------------------------------------------------------- generic record path


class _RecordReader:
    """Reads canonical fields out of one raw record, collecting reasons, quirks and the keys it used."""

    __slots__ = ("record", "reasons", "quirks", "used")

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.reasons: list[str] = []
        self.quirks: set[str] = set()
        self.used: set[str] = set()

    def read(self, names: tuple[str, ...], convert: Callable[[Any, set[str]], Any], *,
             required: bool = False) -> Any:
        """The first of ``names`` present (the others are other versions' spellings), converted.

        Absent or null gives None (and ``missing_field:<first name>`` if required); a value that
        cannot be converted gives None and ``invalid_type:<key>`` or ``invalid_value:<key>``.
        """
        record = self.record
        for name in names:
            if name in record:
                self.used.add(name)
                value = record[name]
                break
        else:
            name, value = names[0], None
        if value is None:
            if required:
                self.reasons.append(f"missing_field:{name}")
            return None
        if name in _VEHICLE_NAMES:
            self.quirks.add("vehicles_as_bikes")
        try:
            return convert(value, self.quirks)
        except _Invalid as invalid:
            self.reasons.append(f"{invalid.kind}:{name}")
            return None

    def extras(self) -> dict[str, Any]:
        return {key: value for key, value in self.record.items() if key not in self.used}


_VEHICLE_NAMES = frozenset({"num_vehicles_available", "num_vehicles_disabled"})
"""GBFS 3.x renamed bikes to vehicles; the canonical model keeps the 1.x/2.x names."""


@dataclass(frozen=True, slots=True)
class _Context:
    """What every record of one feed shares."""

    system_id: str
    version: str
    last_updated: int
    fetched_at: float
    language: str | None = None

    def spelled(self, bikes_name: str) -> tuple[str, ...]:
        """A count's possible keys, this version's spelling first (it names a missing field)."""
        vehicles_name = bikes_name.replace("bikes", "vehicles")
        if self.version.startswith("3."):
            return (vehicles_name, bikes_name)
        return (bikes_name, vehicles_name)


def _status_generic(raw: Any, ctx: _Context) -> tuple[StationStatus | None, list[str], set[str]]:
    """One station_status record of any version: (record or None, reasons, quirks)."""
    if type(raw) is not dict:
        return None, ["invalid_type:station"], set()
    reader = _RecordReader(raw)
    read = reader.read
    values = dict(
        station_id=read(("station_id",), _as_id, required=True),
        num_bikes_available=read(ctx.spelled("num_bikes_available"), _as_count, required=True),
        num_ebikes_available=read(("num_ebikes_available",), _as_count),
        num_bikes_disabled=read(ctx.spelled("num_bikes_disabled"), _as_count),
        num_docks_available=read(("num_docks_available",), _as_count),
        num_docks_disabled=read(("num_docks_disabled",), _as_count),
        is_installed=read(("is_installed",), _as_flag, required=True),
        is_renting=read(("is_renting",), _as_flag, required=True),
        is_returning=read(("is_returning",), _as_flag, required=True),
        last_reported=read(("last_reported",), _as_posix),
        vehicle_types_available=read(("vehicle_types_available",), _as_vehicle_types),
    )
    if reader.reasons:
        return None, reader.reasons, reader.quirks
    record = StationStatus(**values, system_id=ctx.system_id, last_updated=ctx.last_updated,
                           fetched_at=ctx.fetched_at, extras=reader.extras())
    return record, [], reader.quirks


def _information_generic(raw: Any, ctx: _Context) -> tuple[StationInformation | None, list[str], set[str]]:
    """One station_information record of any version: (record or None, reasons, quirks)."""
    if type(raw) is not dict:
        return None, ["invalid_type:station"], set()
    reader = _RecordReader(raw)
    read = reader.read
    localized = _localized_text(ctx.language)
    values = dict(
        station_id=read(("station_id",), _as_id, required=True),
        name=read(("name",), localized, required=True),
        lat=read(("lat",), _as_coordinate, required=True),
        lon=read(("lon",), _as_coordinate, required=True),
        short_name=read(("short_name",), localized),
        capacity=read(("capacity",), _as_count),
        region_id=read(("region_id",), _as_id),
        address=read(("address",), _as_text),
        is_virtual_station=read(("is_virtual_station",), _as_flag),
        rental_methods=read(("rental_methods",), _as_str_list),
    )
    if reader.reasons:
        return None, reader.reasons, reader.quirks
    record = StationInformation(**values, system_id=ctx.system_id, last_updated=ctx.last_updated,
                                fetched_at=ctx.fetched_at, extras=reader.extras())
    return record, [], reader.quirks


# --------------------------------------------------------------------------- fast status path (columns)

_FLAGS = ("is_installed", "is_renting", "is_returning")
_NONE_TYPE = type(None)
_INTS = frozenset({int})
_INTS_OR_NONE = frozenset({int, _NONE_TYPE})


class _StatusKeys(NamedTuple):
    """The keys that hold the canonical status fields in one GBFS version's spelling."""

    canonical: tuple[str, ...]
    """Per column of :data:`STATUS_COLUMNS` but ``extras``, the key that holds it (``num_vehicles_*``
    for the counts 3.x renamed, ``num_bikes_*`` before)."""
    required: frozenset[str]
    other_spellings: frozenset[str]
    """The other versions' names of the renamed counts: records with one of them go the generic way."""


@cache
def _status_keys(version: str) -> _StatusKeys:
    ctx = _Context("", version, 0, 0.0)  # the generic path's own rule for which spelling comes first
    bikes, other_bikes = ctx.spelled("num_bikes_available")
    bikes_disabled, other_bikes_disabled = ctx.spelled("num_bikes_disabled")
    canonical = ("station_id", bikes, "num_ebikes_available", bikes_disabled, "num_docks_available",
                 "num_docks_disabled", *_FLAGS, "last_reported", "vehicle_types_available")
    return _StatusKeys(canonical, frozenset({"station_id", bikes, *_FLAGS}),
                       frozenset({other_bikes, other_bikes_disabled}))


class _ColumnPlan(NamedTuple):
    """How the fast path reads the records of one shape (one set of keys)."""

    read: Callable[[dict[str, Any]], tuple[Any, ...]]
    """The canonical keys the shape has (in canonical order), then its vendor keys: a tuple of values,
    KeyError if a record lacks one of these keys."""
    canonical: tuple[str, ...]
    extras: Callable[[dict[str, Any]], dict[str, Any]]
    """The record's ``extras``: its vendor keys, in the order of the record the plan was made from."""
    keys: tuple[str, ...]
    """The keys of the record the plan was made from, in its order."""


def _column_plan(keys: tuple[str, ...], spelling: _StatusKeys) -> _ColumnPlan | None:
    """The fast path's plan for records with these keys, or None if only the generic path can take them."""
    present = set(keys)
    if not present.issuperset(spelling.required) or present & spelling.other_spellings:
        return None
    canonical = tuple(key for key in spelling.canonical if key in present)
    extra_keys = tuple(key for key in keys if key not in spelling.canonical)
    return _ColumnPlan(itemgetter(*canonical, *extra_keys), canonical, _dict_reader(extra_keys), keys)


def _dict_reader(keys: Sequence[str], position: Mapping[str, int] | None = None) -> Callable[[Any], dict[str, Any]]:
    """``lambda raw: {key: raw[key] for key in keys}`` (``raw[position[key]]`` for a row of values
    with ``position``), compiled for these keys (as namedtuple compiles its class): a dict display
    runs twice as fast as a comprehension or ``dict(zip(...))`` and this runs once per record. The
    keys appear as their ``repr``, so any text is safe."""
    items = "".join(f"{key!r}: raw[{position[key] if position is not None else repr(key)}], " for key in keys)
    return eval("lambda raw: {" + items + "}")  # noqa: S307


def _vehicle_types_fast(value: Any) -> list[VehicleTypeCount] | None:
    """``vehicle_types_available`` in its plain 2.x shape, or None to leave it to the generic path."""
    if type(value) is not list:
        return None
    counts = []
    for entry in value:
        if type(entry) is not dict or len(entry) != 2:
            return None
        type_id, count = entry.get("vehicle_type_id"), entry.get("count")
        if type(type_id) is not str or not type_id or type_id.isspace() or type(count) is not int:
            return None
        counts.append(VehicleTypeCount(type_id, count))
    return counts


def _status_columns(stations: list[Any], ctx: _Context
                    ) -> tuple[Normalized[StationStatus], list[_ColumnPlan] | None]:
    """All records of a station_status feed as columns: the fast path where it applies, the generic one elsewhere.

    The fast path reads every record of a common shape (1.x/2.x ``num_bikes_*`` or 3.x
    ``num_vehicles_*`` naming) at once: a plan per shape, found by the record's number of keys and
    checked by reading all of the plan's keys (a record of that size with other keys raises
    KeyError and is looked at alone); values go straight into columns, and each column's types are
    checked with a set of its value types. Records of another shape, or with a value the fast path
    does not take as it is (a problem, a float count, a numeric id, mixed flags...), go through
    :func:`_status_generic`, the reference, and its result is put in their place. Both give the
    same records, quarantine and quirk counts (a property test holds them to it). The plans come
    back too when every record was read by one and needed no generic path (a :class:`_Shape` is
    learned from them).
    """
    n = len(stations)
    spelling = _status_keys(ctx.version)
    generic: set[int] = set()  # records for the generic path

    # 1. Read every record by the plan of its shape: a tuple of its canonical values, then its vendor values.
    all_dicts = set(map(type, stations)) <= {dict}
    lengths = list(map(len, stations)) if all_dicts else [len(r) if type(r) is dict else -1 for r in stations]
    plans: dict[int, _ColumnPlan | None] = {
        length: _column_plan(tuple(stations[lengths.index(length)]), spelling)
        for length in set(lengths) if length >= 0
    }
    plans[-1] = None
    layouts = {plan.canonical for plan in plans.values() if plan is not None}
    width = min(map(len, layouts), default=0)
    filler = (None,) * width

    def no_plan(raw: Any) -> tuple[Any, ...]:
        return filler

    readers = list(map({length: plan.read if plan else no_plan for length, plan in plans.items()}.__getitem__,
                       lengths))
    extras = list(map({length: plan.extras if plan else _no_extras for length, plan in plans.items()}.__getitem__,
                      lengths))
    all_planned = no_plan not in readers
    try:
        rows = list(map(call, readers, stations))
    except KeyError:  # a record with as many keys as a plan's shape, but other ones
        all_planned = False
        rows = []
        for index, (read, raw) in enumerate(zip(readers, stations)):
            try:
                rows.append(read(raw))
            except KeyError:
                rows.append(filler)
                readers[index], extras[index] = no_plan, _no_extras
    if no_plan in readers:
        generic.update(i for i, read in enumerate(readers) if read is no_plan)

    # 2. Columns: straight from the rows when every shape has the same canonical keys, else key by key.
    if len(layouts) == 1:
        (layout,) = layouts
        read_columns = dict(zip(layout, map(list, zip(*rows))))
    else:
        dicts = stations if all_dicts else [r if type(r) is dict else {} for r in stations]
        read_columns = {key: list(map(dict.get, dicts, repeat(key))) for key in spelling.canonical}
    columns: dict[str, list[Any]] = {
        name: read_columns[key] if key in read_columns else [None] * n
        for name, key in zip(STATUS_COLUMNS, spelling.canonical)
    }
    columns["extras"] = list(map(call, extras, stations))

    # 3. Types, column by column, and the fast path's quirks.
    quirks = _check_columns(columns, spelling, generic)

    # 4. The generic records in place.
    quarantined: list[QuarantinedRecord] = []
    dropped: list[int] = []
    for index in sorted(generic):
        raw = stations[index]
        record, reasons, record_quirks = _status_generic(raw, ctx)
        if record is None:
            quarantined.append(quarantine(raw, reasons, feed=STATION_STATUS, system_id=ctx.system_id,
                                          last_updated=ctx.last_updated, fetched_at=ctx.fetched_at))
            dropped.append(index)
            continue
        quirks.update(record_quirks)
        for name, column in columns.items():
            column[index] = getattr(record, name)
    columns["extras"] = list(map(extras_text, columns["extras"]))
    records = StationStatusColumns(system_id=ctx.system_id, last_updated=ctx.last_updated,
                                   fetched_at=ctx.fetched_at, **columns)
    sources = list(stations)
    if dropped:
        records = records.without(dropped)
        gone = set(dropped)
        sources = [raw for index, raw in enumerate(stations) if index not in gone]
    normalized = Normalized(STATION_STATUS, ctx.system_id, ctx.version, ctx.last_updated, ctx.fetched_at,
                            records, quarantined, +quirks, sources)  # type: ignore[arg-type]
    learnable = all_dicts and all_planned and len(layouts) == 1 and not generic
    return normalized, [plan for plan in plans.values() if plan is not None] if learnable else None


def _check_columns(columns: dict[str, list[Any]], spelling: _StatusKeys, generic: set[int]) -> Counter[str]:
    """Check each column's types (converting 0/1 flags and RFC 3339 times in place); add the records
    only the generic path can take to ``generic``; return the quirk counts of the others."""
    n = len(columns["station_id"])
    station_ids = columns["station_id"]
    if not set(map(type, station_ids)) <= {str} or not all(station_ids) or any(map(str.isspace, station_ids)):
        generic.update(i for i, v in enumerate(station_ids) if type(v) is not str or not v or v.isspace())
    _not_of_types(columns["num_bikes_available"], _INTS, generic)
    for name in ("num_ebikes_available", "num_bikes_disabled", "num_docks_available", "num_docks_disabled"):
        _not_of_types(columns[name], _INTS_OR_NONE, generic)
    int_flags = _read_flags(columns, generic)
    rfc3339 = _read_last_reported(columns["last_reported"], generic)
    _read_vehicle_types(columns["vehicle_types_available"], generic)
    quirks: Counter[str] = Counter()
    fast = n - len(generic)
    if int_flags:
        quirks["int_as_bool"] = fast if int_flags is True else len(int_flags - generic)
    if rfc3339:
        quirks["rfc3339_time"] = len(rfc3339 - generic)
    if fast and spelling.canonical[1] in _VEHICLE_NAMES:
        quirks["vehicles_as_bikes"] = fast
    return quirks


_SHAPES: dict[str, _Shape] = {}
"""The learned shape of each system's station_status records (per process)."""
_MAX_SHAPES = 4096


class _Shape:
    """Decodes a station_status body straight into structs of the records' usual shape.

    Learned from a snapshot whose records all took the fast path with one set of canonical keys
    (:func:`_status_columns` returns its plans): a struct with every key any of them had, the
    canonical ones and those every record had required, unknown keys refused. The canonical
    values are typed as the fast path takes them as they are (a text id, whole counts,
    flags all booleans or all 0/1 as in the snapshot learned from, whole POSIX seconds), so msgspec
    checks them while decoding; a shape learned from flags of both kinds or RFC 3339 times leaves
    them to :func:`_check_columns`. The vendor keys are typed too when each had values of one type
    (text, boolean or whole number, or that or null): then a record's ``extras`` text is kept per
    tuple of its vendor values (:meth:`_extras_texts`). Each record's set of keys must be one of the
    learned ones. If anything differs, ``normalize`` returns None and the body goes the usual way.
    A raw record (what a quarantined record keeps) is rebuilt in the key order of the record the
    shape was learned from, not necessarily its own: its ``raw`` text has its keys sorted, so it is
    the same either way (:func:`quarantine`).
    """

    def __init__(self, plans: list[_ColumnPlan], version: str, learned_from: Normalized[StationStatus]) -> None:
        self.version, self.plans = version, [plan.keys for plan in plans]
        self.spelling = _status_keys(version)
        self.canonical = plans[0].canonical
        n, quirks = len(learned_from.records), learned_from.quirks
        self.int_flags = quirks["int_as_bool"] == n > 0
        self.typed = (self.int_flags or not quirks["int_as_bool"]) and not quirks["rfc3339_time"]
        types = _learned_types(self.spelling, self.int_flags) if self.typed else {}
        every = set.intersection(*map(set, self.plans))
        extras = [key for keys in self.plans for key in keys if key not in self.canonical]
        self.required = tuple(dict.fromkeys(key for key in extras if key in every))
        self.optional = tuple(dict.fromkeys(key for key in extras if key not in every))
        extra_types = {key: _learned_extra_type(learned_from.sources, key) for key in (*self.required, *self.optional)}
        # extras text by the extras' values, when each extra key's values have one type (see `normalize`)
        self.texts: dict[tuple[Any, ...], bytes] | None = None
        if all(extra_types.values()):
            types.update(extra_types)
            self.texts = {}
        self.max_texts = max(_MIN_TEXTS, 4 * n)
        fields = [*self.canonical, *self.required, *self.optional]
        self.first_extra = len(self.canonical)
        position = {key: index for index, key in enumerate(fields)}
        first_optional = len(fields) - len(self.optional)
        station = msgspec.defstruct(  # fields f0, f1... named by `rename`: any key is a field name
            "LearnedStation",
            [(f"f{i}", types.get(key, Any)) if i < first_optional
             else (f"f{i}", types[key] | msgspec.UnsetType if key in types else Any, msgspec.UNSET)
             for i, key in enumerate(fields)],
            rename={f"f{i}": key for i, key in enumerate(fields)}, forbid_unknown_fields=True, gc=False)
        data = msgspec.defstruct("LearnedData", [("stations", list[station])], gc=False)  # type: ignore[valid-type]
        document = msgspec.defstruct("LearnedDocument", [("data", data), ("last_updated", Any, None),
                                                         ("ttl", Any, None), ("version", Any, "1.0")], gc=False)
        self.decoder = msgspec.json.Decoder(document)
        # Per set of optional keys present: the record's extras and its raw dict, from its row of values.
        self.builders: dict[tuple[bool, ...], tuple[Callable[[tuple[Any, ...]], dict[str, Any]], ...]] = {}
        for keys in self.plans:
            present = tuple(key in keys for key in self.optional)
            extra_keys = [key for key in keys if key not in self.canonical]
            self.builders[present] = (_dict_reader(extra_keys, position), _dict_reader(keys, position))

    def normalize(self, body: bytes, system_id: str, fetched_at: float) -> Normalized[StationStatus] | None:
        try:
            document = self.decoder.decode(body)
            header = {"version": document.version, "last_updated": document.last_updated, "ttl": document.ttl}
            feed_quirks: list[str] = []
            version, last_updated, _ = _header(header, feed_quirks, _failure(STATION_STATUS, system_id))
        except (msgspec.DecodeError, msgspec.ValidationError, FeedError, RecursionError, UnicodeDecodeError):
            return None
        if version != self.version:
            return None
        stations = document.data.stations
        n = len(stations)
        rows = list(map(msgspec.structs.astuple, stations))
        values = list(map(list, zip(*rows))) if n else [[] for _ in range(len(self.canonical) + len(self.required)
                                                                           + len(self.optional))]
        if self.optional:
            unset = msgspec.UNSET
            presence = zip(*(map(is_not, column, repeat(unset)) for column in values[-len(self.optional):]))
            try:
                builders = list(map(self.builders.__getitem__, presence))
            except KeyError:  # a set of keys not seen when learning
                return None
        else:
            builders = [self.builders[()]] * n
        read = dict(zip(self.canonical, values))
        columns: dict[str, list[Any]] = {name: read[key] if key in read else [None] * n
                                         for name, key in zip(STATUS_COLUMNS, self.spelling.canonical)}
        columns["extras"] = self._extras_texts(rows, builders)
        generic: set[int] = set()
        quirks = self._typed_quirks(columns, generic) if self.typed else _check_columns(columns, self.spelling, generic)
        if generic:
            return None
        quirks.update(_feed_quirks(feed_quirks))
        records = StationStatusColumns(system_id=system_id, last_updated=last_updated, fetched_at=fetched_at,
                                       **columns)
        return Normalized(STATION_STATUS, system_id, version, last_updated, fetched_at, records,  # type: ignore[arg-type]
                          [], +quirks, _RawRecords(rows, builders))

    def _extras_texts(self, rows: list[tuple[Any, ...]],
                      builders: list[tuple[Callable[..., dict[str, Any]], ...]]) -> list[bytes]:
        """Each record's ``extras`` as JSON text. Vendor fields mostly repeat (an id, a flag), so the
        text is kept per tuple of extras values: a lookup instead of a dict and its encoding per
        record. The values' types are fixed by the learned struct (True and 1 would be one key)."""
        texts = self.texts
        if texts is None:
            return [extras_text(extras(row)) for (extras, _), row in zip(builders, rows)]
        keys = list(map(itemgetter(slice(self.first_extra, None)), rows))  # the extras values, UNSET if absent
        found = list(map(texts.get, keys))
        if None in found:
            if len(texts) + len(rows) > self.max_texts:  # values that do not repeat (a counter): start over
                texts.clear()
            for index in [index for index, text in enumerate(found) if text is None]:
                found[index] = texts[keys[index]] = extras_text(builders[index][0](rows[index]))
        return found

    def _typed_quirks(self, columns: dict[str, list[Any]], generic: set[int]) -> Counter[str]:
        """What :func:`_check_columns` does for columns msgspec already checked: 0/1 flags to
        booleans, vehicle type counts, and the quirk counts (every record has the same)."""
        station_ids = columns["station_id"]
        n = len(station_ids)
        if not all(station_ids) or any(map(str.isspace, station_ids)):  # (a regex in msgspec costs more)
            generic.update(i for i, v in enumerate(station_ids) if not v or v.isspace())
        quirks: Counter[str] = Counter()
        if self.int_flags:
            for name in _FLAGS:
                columns[name] = list(map(_ONE_EQ, columns[name]))
            quirks["int_as_bool"] = n
        _read_vehicle_types(columns["vehicle_types_available"], generic)
        if n and self.spelling.canonical[1] in _VEHICLE_NAMES:
            quirks["vehicles_as_bikes"] = n
        return quirks


_MIN_TEXTS = 4096
"""A learned shape keeps the extras text of at least this many value tuples (4 per station of the
snapshot it was learned from if more)."""


def _learned_extra_type(records: Sequence[dict[str, Any]], key: str) -> Any:
    """The type a vendor key's values had in every record (``str``, ``bool`` or ``int``, or that or None),
    or None if another or several (a float is equal to an int: they could not share the text cache)."""
    kinds = set(type(record[key]) for record in records if key in record)
    nullable = type(None) in kinds
    kinds.discard(type(None))
    if len(kinds) != 1:
        return None
    (kind,) = kinds
    if kind not in (str, bool, int):
        return None
    return kind | None if nullable else kind


def _learned_types(spelling: _StatusKeys, int_flags: bool) -> dict[str, Any]:
    """The types msgspec checks the canonical keys with: what the fast path takes as it is (but blank
    station ids: :meth:`_Shape._typed_quirks`)."""
    count, flag = int | None, Annotated[int, msgspec.Meta(ge=0, le=1)] if int_flags else bool
    station_id, bikes, ebikes, bikes_disabled, docks, docks_disabled, *flags, reported, _ = spelling.canonical
    return {station_id: str, bikes: int, ebikes: count, bikes_disabled: count, docks: count, docks_disabled: count,
            **dict.fromkeys(flags, flag), reported: Annotated[int, msgspec.Meta(ge=0, le=MILLISECONDS_ABOVE)] | None}


class _RawRecords(Sequence[dict[str, Any]]):
    """The raw records of a body decoded by a :class:`_Shape`, made only when asked for (validation
    asks for those it quarantines)."""

    def __init__(self, rows: list[tuple[Any, ...]], builders: list[tuple[Callable[..., dict[str, Any]], ...]]) -> None:
        self._rows, self._builders = rows, builders

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._builders[index][1](self._rows[index])


def _no_extras(raw: Any) -> dict[str, Any]:
    return {}


def _not_of_types(column: list[Any], types: frozenset[type], out: set[int]) -> None:
    """Add to ``out`` the indices of values whose type is not one of ``types``."""
    if not set(map(type, column)) <= types:
        out.update(i for i, value in enumerate(column) if type(value) not in types)


def _read_flags(columns: dict[str, list[Any]], generic: set[int]) -> bool | set[int]:
    """Turn 0/1 flags into booleans in place; return which records had 0/1 flags (True: all of them).

    A record's three flags must be all booleans or all 0/1 integers; anything else is left to the
    generic path.
    """
    flags = [columns[name] for name in _FLAGS]
    kinds = set().union(*(map(type, column) for column in flags))
    if kinds == {bool}:
        return set()
    if kinds == {int} and set().union(*flags) <= {0, 1}:
        int_flags: bool | set[int] = True
    else:
        int_flags = set()
        for index, (installed, renting, returning) in enumerate(zip(*flags)):
            kind = type(installed)
            if kind is bool and type(renting) is bool and type(returning) is bool:
                continue
            if (kind is int and type(renting) is int and type(returning) is int
                    and installed in (0, 1) and renting in (0, 1) and returning in (0, 1)):
                int_flags.add(index)
            else:
                generic.add(index)
    for name, column in zip(_FLAGS, flags):
        columns[name] = list(map(_ONE_EQ, column))  # 1 or True -> True, 0 or False -> False
    return int_flags


_ONE_EQ = (1).__eq__


def _read_last_reported(column: list[Any], generic: set[int]) -> set[int]:
    """Check POSIX seconds and convert RFC 3339 times in place; return the records that had RFC 3339.

    Whole seconds up to :data:`MILLISECONDS_ABOVE` are taken as they are; any other number (a float,
    milliseconds) is left to the generic path.
    """
    if set(map(type, column)) <= _INTS_OR_NONE:  # (types first: a set of values would take True or 1.0 for 1)
        values = set(column)
        values.discard(None)
        if not values or (min(values) >= 0 and max(values) <= MILLISECONDS_ABOVE):
            return set()
    rfc3339: set[int] = set()
    converted: dict[str, int | None] = {}
    for index, value in enumerate(column):
        kind = type(value)
        if value is None or (kind is int and 0 <= value <= MILLISECONDS_ABOVE):
            continue
        if kind is str:
            if value not in converted:
                try:
                    converted[value] = _as_posix(value, set())
                except _Invalid:
                    converted[value] = None
            seconds = converted[value]
            if seconds is not None:
                column[index] = seconds
                rfc3339.add(index)
                continue
        generic.add(index)
    return rfc3339


def _read_vehicle_types(column: list[Any], generic: set[int]) -> None:
    """Turn plain ``vehicle_types_available`` lists into VehicleTypeCount lists in place."""
    if set(map(type, column)) <= {_NONE_TYPE}:
        return
    for index, value in enumerate(column):
        if value is not None:
            counts = _vehicle_types_fast(value)
            if counts is None:
                generic.add(index)
            else:
                column[index] = counts


def _add_generic(raw: Any, result: tuple[Any, list[str], set[str]], feed: str, ctx: _Context,
                 records: list[Any], sources: list[Any], quarantined: list[QuarantinedRecord],
                 quirks: Counter[str]) -> None:
    record, reasons, record_quirks = result
    if record is not None:
        quirks.update(record_quirks)
        records.append(record)
        sources.append(raw)
    else:
        quarantined.append(quarantine(raw, reasons, feed=feed, system_id=ctx.system_id,
                                      last_updated=ctx.last_updated, fetched_at=ctx.fetched_at))


# --------------------------------------------------------------------------- public normalizers


def normalize_status(parsed: ParsedFeed, system_id: str, fetched_at: float) -> Normalized[StationStatus]:
    """Canonical :class:`StationStatus` records of a parsed station_status feed; bad records quarantined."""
    normalized = normalize_status_columns(parsed, system_id, fetched_at)
    normalized.records = normalized.records.records()  # type: ignore[attr-defined]
    return normalized


def normalize_status_columns(parsed: ParsedFeed, system_id: str, fetched_at: float) -> Normalized[StationStatus]:
    """Like :func:`normalize_status`, with the records as one :class:`StationStatusColumns` (what the pipeline uses)."""
    return _normalize_status_columns(parsed, system_id, fetched_at)[0]


def normalize_status_body(body: bytes, system_id: str, fetched_at: float) -> Normalized[StationStatus]:
    """:func:`parse_feed` then :func:`normalize_status_columns`, faster for a system seen before.

    Once a snapshot of a system had records of one regular shape (see :class:`_Shape`), the
    next ones are decoded straight into structs of that shape; a body that is not of it (another
    field, a value the fast path does not take, a broken feed...) goes the usual way, with the
    same result and errors.
    """
    shape = _SHAPES.get(system_id)
    if shape is not None:
        normalized = shape.normalize(body, system_id, fetched_at)
        if normalized is not None:
            return normalized
    parsed = parse_feed(body, STATION_STATUS, system_id=system_id)
    normalized, plans = _normalize_status_columns(parsed, system_id, fetched_at)
    if plans is not None:  # no shape yet, or it did not fit this body: learn this one's
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        try:
            _SHAPES[system_id] = _Shape(plans, parsed.version, normalized)
        except ValueError:  # a key msgspec cannot name a field by (a quote, a backslash, a control character)
            _SHAPES.pop(system_id, None)
    return normalized


def _normalize_status_columns(parsed: ParsedFeed, system_id: str, fetched_at: float
                              ) -> tuple[Normalized[StationStatus], list[_ColumnPlan] | None]:
    _require_feed(parsed, STATION_STATUS)
    ctx = _Context(system_id, parsed.version, parsed.last_updated, fetched_at)
    normalized, plans = _status_columns(parsed.stations, ctx)
    normalized.quirks.update(_feed_quirks(parsed.quirks))
    return normalized, plans


def normalize_information(parsed: ParsedFeed, system_id: str, fetched_at: float, *,
                          language: str | None = "en") -> Normalized[StationInformation]:
    """Canonical :class:`StationInformation` records of a parsed station_information feed.

    ``language`` picks the translation of 3.x localized names (then its primary language, then the first).
    """
    _require_feed(parsed, STATION_INFORMATION)
    ctx = _Context(system_id, parsed.version, parsed.last_updated, fetched_at, language)
    return _normalize_generic(parsed, ctx, _information_generic)


def _normalize_generic(parsed: ParsedFeed, ctx: _Context,
                       normalize_one: Callable[[Any, _Context], tuple[Any, list[str], set[str]]]) -> Normalized[Any]:
    """Every record through the generic path (information always; status as the fast path's reference)."""
    records: list[Any] = []
    sources: list[Any] = []
    quarantined: list[QuarantinedRecord] = []
    quirks: Counter[str] = Counter(_feed_quirks(parsed.quirks))
    for raw in parsed.stations:
        _add_generic(raw, normalize_one(raw, ctx), parsed.feed, ctx, records, sources, quarantined, quirks)
    return Normalized(parsed.feed, ctx.system_id, ctx.version, ctx.last_updated, ctx.fetched_at,
                      records, quarantined, quirks, sources)


def _feed_quirks(quirks: Iterable[str]) -> list[str]:
    """Header quirks, counted once per feed under ``feed:<quirk>`` (record quirks count records)."""
    return [f"feed:{quirk}" for quirk in quirks]


def _require_feed(parsed: ParsedFeed, feed: str) -> None:
    if parsed.feed != feed:
        raise ValueError(f"expected a parsed {feed} feed, got {parsed.feed!r}")


_RAW_TEXT = msgspec.json.Encoder(order="sorted")
"""A quarantined record's text: keys sorted, so that a record has one text whatever order the feed
wrote its keys in (and whichever way it was decoded: a learned shape's struct does not keep the order)."""


def quarantine(raw: Any, reasons: list[str], *, feed: str, system_id: str, last_updated: int,
               fetched_at: float) -> QuarantinedRecord:
    """A :class:`QuarantinedRecord` keeping the raw record whole (re-encoded as JSON, keys sorted) with its reasons."""
    return QuarantinedRecord(
        system_id=system_id,
        feed=feed,
        station_id=raw_station_id(raw),
        reasons=reasons,
        raw=_RAW_TEXT.encode(raw).decode(),
        last_updated=last_updated,
        fetched_at=fetched_at,
    )


def raw_station_id(raw: Any) -> str | None:
    """The station_id of a raw record if it has a usable one (text or a number)."""
    station_id = raw.get("station_id") if type(raw) is dict else None
    if type(station_id) is str:
        return station_id
    if type(station_id) is int:
        return str(station_id)
    return None
