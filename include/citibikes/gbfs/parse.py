"""A GBFS feed body checked as a whole: decoded, its header read, its records found.

:func:`parse_feed` turns the raw body into a :class:`ParsedFeed` or raises
:class:`~citibikes.gbfs.errors.FeedError` (HTML page, truncated JSON, wrong feed, no records,
unknown version, no usable ``last_updated``): then nothing of that feed is used. Records are
judged one by one later (:mod:`citibikes.gbfs.normalize`). What the header gets wrong without
making the feed unusable is counted as a quirk (``ttl`` missing, 3.x times written as POSIX
numbers...), never passed over in silence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from citibikes.gbfs.discovery import GZIP_MAGIC
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.fields import MAX_POSIX_S, Invalid, as_posix
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS, VEHICLE_TYPES

SUPPORTED_VERSIONS = frozenset({"1.0", "1.1", "2.0", "2.1", "2.2", "2.3", "3.0"})
"""Versions whose feeds this package understands; any later 3.x minor is accepted too."""
_LATER_3X = re.compile(r"3\.[0-9]+(-RC[0-9]*)?")

RECORDS_KEY = {STATION_INFORMATION: "stations", STATION_STATUS: "stations", VEHICLE_TYPES: "vehicle_types"}
"""The array under ``data`` that holds each parsed feed's records."""

_UTF8_BOM = b"\xef\xbb\xbf"
_DECODER = msgspec.json.Decoder()

# Keys that tell the two station feeds apart (used to catch a body fetched from the wrong URL).
_MARKERS = {
    STATION_STATUS: frozenset({"num_bikes_available", "num_vehicles_available", "num_docks_available",
                               "is_renting", "is_returning"}),
    STATION_INFORMATION: frozenset({"lat", "lon", "name", "capacity", "address"}),
}
_CONTENT_SAMPLE = 50
# What a `data` object without the records array probably is, to name it in the error.
_OTHER_FEEDS = {
    "feeds": "gbfs.json (the discovery file)",
    "stations": "a station feed",
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
    "no_stations": "'data' has no array of records ('stations', or 'vehicle_types')",
    "unknown_version": "a 'version' this package does not support (1.0-2.3, 3.x are supported)",
    "bad_header": "'last_updated' missing, not a time, or not after 1970",
}
"""``FeedError.reason`` values raised by :func:`parse_feed`."""


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed that passed the feed-level checks; its records are still raw."""

    feed: str
    version: str
    last_updated: int
    """POSIX seconds, whatever the feed sent (int, float, milliseconds or RFC 3339)."""
    ttl: int | None
    records: list[Any]
    """The records array exactly as decoded: normally dicts, but anything may be in it."""
    quirks: tuple[str, ...] = ()
    """Header quirks (``utf8_bom``, ``missing_ttl``, ``posix_time_in_v3``...), counted as ``feed:<quirk>``."""

    @property
    def v3(self) -> bool:
        return self.version.startswith("3.")


def parse_feed(body: bytes, feed: str, *, system_id: str | None = None) -> ParsedFeed:
    """Decode and check one feed body; raise :class:`FeedError` if it is unusable as a whole."""
    if feed not in RECORDS_KEY:
        raise ValueError(f"parse_feed handles {tuple(RECORDS_KEY)}, not {feed!r}")

    def fail(reason: str, message: str) -> FeedError:
        return FeedError(message, reason=reason, system_id=system_id, feed=feed)

    document, quirks = _decode(body, fail)
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise fail("wrong_content", f"{_describe_document(document)}, not a GBFS {feed} document; "
                   "check that the URL is the feed listed in gbfs.json")
    version = _version(document, fail)
    last_updated = _last_updated(document, version, quirks, fail)
    ttl = _ttl(document, quirks)
    records = _records(document["data"], feed, fail)
    _check_content_matches(records, feed, fail)
    return ParsedFeed(feed, version, last_updated, ttl, records, tuple(quirks))


def _decode(body: bytes, fail: Callable[[str, str], FeedError]) -> tuple[Any, list[str]]:
    quirks: list[str] = []
    if not body or body.isspace():
        raise fail("empty_body", "the response body is empty; the server sent no data, retry or check the URL")
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
        quirks.append("utf8_bom")
    try:
        return _DECODER.decode(body), quirks
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
    if body.startswith(GZIP_MAGIC):
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


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _version(document: Mapping[str, Any], fail: Callable[[str, str], FeedError]) -> str:
    version = document.get("version", "1.0")  # 1.0 had no version field (added in 1.1)
    if isinstance(version, str) and (version in SUPPORTED_VERSIONS or _LATER_3X.fullmatch(version)):
        return version
    if not isinstance(version, str):
        raise fail("unknown_version", f"the header's version is {_a_json(version)} ({_short_repr(version)}), "
                   "not a string like '2.3'; report it to the vendor")
    supported = ", ".join(sorted(SUPPORTED_VERSIONS))
    raise fail("unknown_version", f"GBFS version {_short_repr(version)} is not supported (supported: {supported}, "
               "3.x); point the system at a supported version in gbfs_versions.json")


def _last_updated(document: Mapping[str, Any], version: str, quirks: list[str],
                  fail: Callable[[str, str], FeedError]) -> int:
    raw = document.get("last_updated")
    if raw is None:
        raise fail("bad_header", "the header has no last_updated; the feed cannot be dated, ask the vendor to add it")
    found: set[str] = set()
    try:
        seconds = as_posix(raw, found)
    except Invalid:
        raise fail("bad_header", f"the header's last_updated {_short_repr(raw)} is not a POSIX or RFC 3339 time; "
                   "the feed cannot be dated, report it to the vendor") from None
    if seconds <= 0:
        raise fail("bad_header", f"the header's last_updated {_short_repr(raw)} is not after 1970; "
                   "the feed cannot be dated, report it to the vendor")
    quirks.extend(sorted(version_time_quirks(found, version)))
    return seconds


def version_time_quirks(found: set[str], version: str) -> set[str]:
    """The quirks of a time as :func:`~citibikes.gbfs.fields.as_posix` read it, for this version:
    RFC 3339 is the 3.x form (a quirk before), a POSIX number the 1.x/2.x form (a quirk in 3.x)."""
    if not version.startswith("3."):
        return found
    if "rfc3339_time" in found:
        return found - {"rfc3339_time"}
    return found | {"posix_time_in_v3"}


def _ttl(document: Mapping[str, Any], quirks: list[str]) -> int | None:
    ttl = document.get("ttl")
    if ttl is None:
        quirks.append("missing_ttl")
        return None
    if type(ttl) is int and 0 <= ttl <= MAX_POSIX_S:
        return ttl
    quirks.append("invalid_ttl")
    return None


def _records(data: dict[str, Any], feed: str, fail: Callable[[str, str], FeedError]) -> list[Any]:
    key = RECORDS_KEY[feed]
    records = data.get(key)
    if isinstance(records, list):
        return records
    looks_like = next((name for other, name in _OTHER_FEEDS.items() if other in data and other != key), None)
    if looks_like is None and data and all(isinstance(v, dict) and "feeds" in v for v in data.values()):
        looks_like = _OTHER_FEEDS["feeds"]  # 1.x/2.x discovery: data is keyed by language
    if looks_like is not None:
        raise fail("wrong_content", f"got {looks_like} instead of {feed}; check the URL of {feed} in gbfs.json")
    got = f"data.{key} is missing" if records is None else f"data.{key} is {_a_json(records)}"
    raise fail("no_stations", f"{got}, not an array; the vendor's feed is broken, report it")


def _check_content_matches(records: list[Any], feed: str, fail: Callable[[str, str], FeedError]) -> None:
    """Catch the other station feed served at this URL (status as information or the other way round)."""
    if feed not in _MARKERS:
        return
    other = STATION_INFORMATION if feed == STATION_STATUS else STATION_STATUS
    sample = [record.keys() for record in records[:_CONTENT_SAMPLE] if isinstance(record, dict)]
    if not sample or any(keys & _MARKERS[feed] for keys in sample):
        return
    if any(keys & _MARKERS[other] for keys in sample):
        raise fail("wrong_content", f"the stations carry {other} fields, not {feed} ones; "
                   f"the URL serves {other}, fix the {feed} URL")
