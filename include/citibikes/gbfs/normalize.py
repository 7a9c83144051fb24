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
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Callable, Generic, NamedTuple, TypeVar

import msgspec

from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import (
    STATION_INFORMATION,
    STATION_STATUS,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
    VehicleTypeCount,
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

    def fail(reason: str, message: str) -> FeedError:
        return FeedError(message, reason=reason, system_id=system_id, feed=feed)

    document, quirks = _decode(body, fail)
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise fail("wrong_content", f"{_describe_document(document)}, not a GBFS {feed} document; "
                   "check that the URL is the feed listed in gbfs.json")
    version = _version(document, fail)
    last_updated = _last_updated(document, quirks, fail)
    ttl = _ttl(document, quirks)
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


def _version(document: dict[str, Any], fail: Callable[[str, str], FeedError]) -> str:
    version = document.get("version", "1.0")  # 1.0 had no version field (added in 1.1)
    if isinstance(version, str) and (version in SUPPORTED_VERSIONS or _LATER_3X.fullmatch(version)):
        return version
    supported = ", ".join(sorted(SUPPORTED_VERSIONS))
    if not isinstance(version, str):
        raise fail("unknown_version", f"the header's version is {_a_json(version)} ({_short_repr(version)}), "
                   "not a string like '2.3'; report it to the vendor")
    raise fail("unknown_version", f"GBFS version {_short_repr(version)} is not supported (supported: {supported}, "
               "3.x); point the system at a supported version in gbfs_versions.json")


def _last_updated(document: dict[str, Any], quirks: list[str], fail: Callable[[str, str], FeedError]) -> int:
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


def _ttl(document: dict[str, Any], quirks: list[str]) -> int | None:
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
        name = next((candidate for candidate in names if candidate in self.record), names[0])
        value = self.record.get(name)
        if name in self.record:
            self.used.add(name)
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


# --------------------------------------------------------------------------- fast status path

_STATUS_REQUIRED = ("station_id", "num_bikes_available", "is_installed", "is_renting", "is_returning")
_STATUS_OPTIONAL = ("num_ebikes_available", "num_bikes_disabled", "num_docks_available", "num_docks_disabled",
                    "last_reported", "vehicle_types_available")
_STATUS_FAST_KEYS = frozenset(_STATUS_REQUIRED + _STATUS_OPTIONAL)
_STATUS_GENERIC_ONLY = frozenset({"num_vehicles_available", "num_vehicles_disabled"})
_read_required_status = itemgetter(*_STATUS_REQUIRED)
_BITS = (0, 1)

_Reader = Callable[[dict[str, Any]], tuple[Any, ...]]


def _tuple_getter(keys: tuple[str, ...]) -> _Reader:
    """Like ``itemgetter(*keys)`` (KeyError if a key is missing), but always a tuple."""
    if len(keys) >= 2:
        return itemgetter(*keys)
    return lambda raw: tuple(raw[key] for key in keys)


def _optional_reader(present: tuple[str, ...]) -> _Reader:
    """Reads the optional fields in ``_STATUS_OPTIONAL`` order, None for the ones this shape lacks.

    The usual shapes get a C-level itemgetter: every optional field, or every one but
    ``vehicle_types_available`` (GBFS 1.x/2.0, Citi Bike's 1.1 feed).
    """
    read_present = _tuple_getter(present)
    if present == _STATUS_OPTIONAL:
        return read_present
    if present == _STATUS_OPTIONAL[:-1]:
        return lambda raw: read_present(raw) + (None,)

    def read_some(raw: dict[str, Any]) -> tuple[Any, ...]:
        values = dict(zip(present, read_present(raw)))
        return tuple(map(values.get, _STATUS_OPTIONAL))

    return read_some


class _FastPlan(NamedTuple):
    """How the fast path reads the records of one shape (one set of keys)."""

    extra_keys: tuple[str, ...]
    """The vendor keys that go into ``extras``."""
    read_optional: _Reader


def _status_fast_plan(keys: tuple[str, ...]) -> _FastPlan | None:
    """The fast path's plan for a record with these keys, or None if only the generic path can take it."""
    present = set(keys)
    if not present.issuperset(_STATUS_REQUIRED) or present & _STATUS_GENERIC_ONLY:
        return None
    extra_keys = tuple(key for key in keys if key not in _STATUS_FAST_KEYS)
    return _FastPlan(extra_keys, _optional_reader(tuple(key for key in _STATUS_OPTIONAL if key in present)))


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


def _status_records(stations: list[Any], ctx: _Context) -> Normalized[StationStatus]:
    """All records of a station_status feed: the fast path where it applies, the generic one elsewhere.

    The fast path takes records of the 1.x/2.x shape whose values already have the canonical types
    (0/1 flags included) and builds the struct directly; everything else, including every record
    with a problem, goes through :func:`_status_generic`, which also names the problem. Plans are
    looked up by the record's number of keys (cheaper than hashing its keys): a record with as many
    keys as the plan's shape and every one of the plan's keys (read with ``[]``, KeyError otherwise)
    has exactly that shape; a record of the same length with other keys goes the generic way.
    """
    system_id, last_updated, fetched_at = ctx.system_id, ctx.last_updated, ctx.fetched_at
    records: list[StationStatus] = []
    sources: list[Any] = []
    quarantined: list[QuarantinedRecord] = []
    quirks: Counter[str] = Counter()
    plans: dict[int, _FastPlan] = {}
    int_flag_records = 0
    append_record, append_source = records.append, sources.append
    read_required, new_status, bits = _read_required_status, StationStatus, _BITS
    plan_length, plan = -1, None  # the plan of the previous record, usually this one's too
    for raw in stations:
        if type(raw) is dict:
            if len(raw) != plan_length or plan is None:
                plan_length = len(raw)
                plan = plans.get(plan_length)
                if plan is None:
                    plan = _status_fast_plan(tuple(raw))
                    if plan is not None:
                        plans[plan_length] = plan
                if plan is not None:
                    extra_keys, read_optional = plan
            if plan is not None:
                try:
                    station_id, bikes, installed, renting, returning = read_required(raw)
                    ebikes, bikes_disabled, docks, docks_disabled, reported, vehicle_types = read_optional(raw)
                    extras = {}
                    for key in extra_keys:
                        extras[key] = raw[key]
                except KeyError:  # another shape with as many keys
                    station_id = None
                if (
                    type(station_id) is str and station_id and not station_id.isspace()
                    and type(bikes) is int
                    and (type(ebikes) is int or ebikes is None)
                    and (type(bikes_disabled) is int or bikes_disabled is None)
                    and (type(docks) is int or docks is None)
                    and (type(docks_disabled) is int or docks_disabled is None)
                    and ((type(reported) is int and 0 <= reported <= MILLISECONDS_ABOVE) or reported is None)
                    and (vehicle_types is None or (vehicle_types := _vehicle_types_fast(vehicle_types)) is not None)
                ):
                    flag_type = type(installed)
                    if flag_type is int is type(renting) is type(returning):
                        if installed in bits and renting in bits and returning in bits:
                            int_flag_records += 1
                            installed, renting, returning = installed == 1, renting == 1, returning == 1
                            flag_type = bool
                    elif type(renting) is not flag_type or type(returning) is not flag_type:
                        flag_type = None
                    if flag_type is bool:
                        append_record(new_status(
                            system_id=system_id, station_id=station_id, num_bikes_available=bikes,
                            num_ebikes_available=ebikes, num_bikes_disabled=bikes_disabled,
                            num_docks_available=docks, num_docks_disabled=docks_disabled,
                            is_installed=installed, is_renting=renting, is_returning=returning,
                            last_reported=reported, vehicle_types_available=vehicle_types,
                            last_updated=last_updated, fetched_at=fetched_at, extras=extras,
                        ))
                        append_source(raw)
                        continue
        _add_generic(raw, _status_generic(raw, ctx), STATION_STATUS, ctx, records, sources, quarantined, quirks)
    if int_flag_records:
        quirks["int_as_bool"] += int_flag_records
    return Normalized(STATION_STATUS, system_id, ctx.version, last_updated, fetched_at,
                      records, quarantined, quirks, sources)


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
    _require_feed(parsed, STATION_STATUS)
    ctx = _Context(system_id, parsed.version, parsed.last_updated, fetched_at)
    normalized = _status_records(parsed.stations, ctx)
    normalized.quirks.update(_feed_quirks(parsed))
    return normalized


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
    quirks: Counter[str] = Counter(_feed_quirks(parsed))
    for raw in parsed.stations:
        _add_generic(raw, normalize_one(raw, ctx), parsed.feed, ctx, records, sources, quarantined, quirks)
    return Normalized(parsed.feed, ctx.system_id, ctx.version, ctx.last_updated, ctx.fetched_at,
                      records, quarantined, quirks, sources)


def _feed_quirks(parsed: ParsedFeed) -> list[str]:
    """Header quirks, counted once per feed under ``feed:<quirk>`` (record quirks count records)."""
    return [f"feed:{quirk}" for quirk in parsed.quirks]


def _require_feed(parsed: ParsedFeed, feed: str) -> None:
    if parsed.feed != feed:
        raise ValueError(f"expected a parsed {feed} feed, got {parsed.feed!r}")


def quarantine(raw: Any, reasons: list[str], *, feed: str, system_id: str, last_updated: int,
               fetched_at: float) -> QuarantinedRecord:
    """A :class:`QuarantinedRecord` keeping the raw record whole (re-encoded as JSON) with its reasons."""
    return QuarantinedRecord(
        system_id=system_id,
        feed=feed,
        station_id=raw_station_id(raw),
        reasons=reasons,
        raw=msgspec.json.encode(raw).decode(),
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
