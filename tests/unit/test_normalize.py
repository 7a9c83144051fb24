"""parse_feed and the normalizers on the real Citi Bike recordings and on hand-built GBFS 2.3 / 3.0 feeds.

Expectations are computed from the raw JSON in the test (what the feed says), not copied from the
code's output: e.g. a 0/1 flag must come out as ``raw == 1``, a 3.x name as the entry in the wanted
language, an RFC 3339 time as what ``datetime.strptime`` makes of it. Tables are read back with
:func:`gbfs_testing.rows` (times as POSIX seconds, extras decoded).
"""

from __future__ import annotations

import copy
import gzip
import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from gbfs_testing import (
    FIXTURES,
    V3_KEYS,
    by_station,
    encode,
    fixture_doc,
    is_v3,
    posix,
    real_body,
    real_doc,
    rfc3339_to_posix,
    rows,
)

from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import (
    SCHEMA_VERSION,
    SCHEMAS,
    STATION_INFORMATION,
    STATION_INFORMATION_SCHEMA,
    STATION_STATUS,
    STATION_STATUS_SCHEMA,
)
from citibikes.gbfs.normalize import QUIRKS, Normalized, normalize_information, normalize_status
from citibikes.gbfs.parse import FEED_ERROR_REASONS, SUPPORTED_VERSIONS, parse_feed
from citibikes.replay.recordings import recorded

SYSTEM = "testsystem"
FETCHED_AT = 1_710_335_276.5
V2_FORMS = {"posix_time_in_v3", "bikes_in_v3", "plain_name_in_v3", "feed:posix_time_in_v3"}
"""Quirks of a 3.x feed written (in part) the 1.x/2.x way."""
V3_FORMS = {"rfc3339_time", "vehicles_in_v2", "localized_name", "feed:rfc3339_time"}
"""Quirks of a 1.x/2.x feed written (in part) the 3.x way."""


def normalize(doc: dict[str, Any], feed: str, language: str | None = "en") -> Normalized:
    parsed = parse_feed(encode(doc), feed)
    if feed == STATION_STATUS:
        return normalize_status(parsed, SYSTEM, FETCHED_AT)
    return normalize_information(parsed, SYSTEM, FETCHED_AT, language=language)


def version_keys(feed: str, v3: bool) -> set[str]:
    """The keys a record of this feed and version is read from (the rest are vendor extras)."""
    names = set(SCHEMAS[feed].names)
    return {V3_KEYS.get(name, name) for name in names} if v3 else names


def assert_nothing_dropped(raw: dict[str, Any], row: dict[str, Any], feed: str, v3: bool) -> None:
    """Every raw key is either read into a column or kept verbatim in extras (sorted JSON text)."""
    extras = row["extras"]
    assert list(extras) == sorted(extras)
    for key, value in raw.items():
        if key in extras:
            assert extras[key] == value
        else:
            assert key in version_keys(feed, v3) | version_keys(feed, not v3), key
    assert set(extras) <= set(raw)
    assert not set(extras) & version_keys(feed, v3)


# --------------------------------------------------------------------------- feed-level failures


def _deeply_nested() -> bytes:
    return b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


FEED_FAILURES: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("empty body", lambda: b"", STATION_STATUS, "empty_body"),
    ("whitespace body", lambda: b" \r\n\t ", STATION_STATUS, "empty_body"),
    ("HTML error page", lambda: (FIXTURES / "error_page.html").read_bytes(), STATION_STATUS, "not_json"),
    ("XML error", lambda: b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', STATION_INFORMATION,
     "not_json"),
    ("plain text", lambda: b"Service Unavailable", STATION_STATUS, "not_json"),
    ("gzip bytes not decompressed", lambda: gzip.compress(real_body(STATION_STATUS)), STATION_STATUS, "not_json"),
    ("invalid UTF-8", lambda: b'{"data": {"stations": ["\xff\xfe"]}}', STATION_STATUS, "not_json"),
    ("nested too deeply", _deeply_nested, STATION_STATUS, "not_json"),
    ("trailing garbage", lambda: real_body(STATION_STATUS) + b"}", STATION_STATUS, "not_json"),
    ("truncated at 10%", lambda: real_body(STATION_STATUS)[: len(real_body(STATION_STATUS)) // 10], STATION_STATUS,
     "truncated_json"),
    ("truncated one byte short", lambda: real_body(STATION_INFORMATION)[:-1], STATION_INFORMATION, "truncated_json"),
    ("truncated inside the header", lambda: real_body(STATION_STATUS)[:5], STATION_STATUS, "truncated_json"),
    ("information served as status", lambda: real_body(STATION_INFORMATION), STATION_STATUS, "wrong_content"),
    ("status served as information", lambda: real_body(STATION_STATUS), STATION_INFORMATION, "wrong_content"),
    ("3.0 information served as status",
     lambda: encode(fixture_doc("v3.0", STATION_INFORMATION)), STATION_STATUS, "wrong_content"),
    ("JSON array", lambda: encode(real_doc(STATION_STATUS)["data"]["stations"]), STATION_STATUS, "wrong_content"),
    ("JSON string", lambda: b'"ok"', STATION_STATUS, "wrong_content"),
    ("object without data", lambda: encode({"error": "rate limited", "status": 429}), STATION_STATUS,
     "wrong_content"),
    ("data is an array", lambda: encode({"last_updated": 1710335271, "data": []}), STATION_STATUS,
     "wrong_content"),
    ("discovery file (2.x)", lambda: encode({"last_updated": 1710335271, "ttl": 0, "version": "2.3", "data": {
        "en": {"feeds": [{"name": "station_status", "url": "https://example.com/station_status.json"}]}}}),
     STATION_STATUS, "wrong_content"),
    ("free_bike_status", lambda: encode({"last_updated": 1710335271, "ttl": 0, "version": "2.3",
                                         "data": {"bikes": []}}), STATION_STATUS, "wrong_content"),
    ("no stations key", lambda: encode({"last_updated": 1710335271, "ttl": 60, "version": "1.1", "data": {}}),
     STATION_STATUS, "no_stations"),
    ("stations is an object", lambda: encode({"last_updated": 1710335271, "ttl": 60, "version": "1.1",
                                              "data": {"stations": {"a": 1}}}), STATION_STATUS, "no_stations"),
    ("stations is null", lambda: encode({"last_updated": 1710335271, "ttl": 60, "version": "1.1",
                                         "data": {"stations": None}}), STATION_INFORMATION, "no_stations"),
    ("future major version", lambda: encode({**real_doc(STATION_STATUS), "version": "4.0"}), STATION_STATUS,
     "unknown_version"),
    ("unreleased 2.x", lambda: encode({**real_doc(STATION_STATUS), "version": "2.4"}), STATION_STATUS,
     "unknown_version"),
    ("version as a number", lambda: encode({**real_doc(STATION_STATUS), "version": 1.1}), STATION_STATUS,
     "unknown_version"),
    ("missing last_updated", lambda: encode({k: v for k, v in real_doc(STATION_STATUS).items()
                                             if k != "last_updated"}), STATION_STATUS, "bad_header"),
    ("last_updated as words", lambda: encode({**real_doc(STATION_STATUS), "last_updated": "yesterday"}),
     STATION_STATUS, "bad_header"),
    ("last_updated negative", lambda: encode({**real_doc(STATION_STATUS), "last_updated": -5}), STATION_STATUS,
     "bad_header"),
    ("last_updated zero", lambda: encode({**real_doc(STATION_STATUS), "last_updated": 0}), STATION_STATUS,
     "bad_header"),
    ("last_updated boolean", lambda: encode({**real_doc(STATION_STATUS), "last_updated": True}), STATION_STATUS,
     "bad_header"),
    ("last_updated naive ISO time", lambda: encode({**fixture_doc("v3.0", STATION_STATUS),
                                                    "last_updated": "2024-03-13T09:07:51"}), STATION_STATUS,
     "bad_header"),
]


@pytest.mark.parametrize(("body", "feed", "reason"), [case[1:] for case in FEED_FAILURES],
                         ids=[case[0] for case in FEED_FAILURES])
def test_feed_level_failure_raises_feed_error_with_reason(body: Callable[[], bytes], feed: str, reason: str) -> None:
    with pytest.raises(FeedError) as caught:
        parse_feed(body(), feed, system_id="citibike")
    error = caught.value
    assert error.reason == reason and reason in FEED_ERROR_REASONS
    assert error.feed == feed and error.system_id == "citibike"
    message = str(error)
    assert "\n" not in message and message.startswith("citibike station_")
    assert len(message) < 300, message


def test_feed_error_names_the_cause_and_a_fix() -> None:
    with pytest.raises(FeedError) as caught:
        parse_feed((FIXTURES / "error_page.html").read_bytes(), STATION_STATUS)
    assert "HTML" in str(caught.value) and "check" in str(caught.value)
    with pytest.raises(FeedError) as caught:
        parse_feed(real_body(STATION_INFORMATION), STATION_STATUS)
    assert "station_information" in str(caught.value) and "URL" in str(caught.value)


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS) + ["3.1-RC2", "3.1"])
def test_supported_versions_parse(version: str) -> None:
    doc = {**fixture_doc("v2.3", STATION_STATUS), "version": version}
    parsed = parse_feed(encode(doc), STATION_STATUS)
    assert parsed.version == version and parsed.v3 is version.startswith("3.")
    assert parsed.records == doc["data"]["stations"]


def test_version_1_0_had_no_version_field() -> None:
    doc = {k: v for k, v in real_doc(STATION_STATUS).items() if k != "version"}
    assert parse_feed(encode(doc), STATION_STATUS).version == "1.0"


@pytest.mark.parametrize("feed", [STATION_STATUS, STATION_INFORMATION])
def test_empty_station_list_is_a_feed_with_no_records(feed: str) -> None:
    doc = {**fixture_doc("v2.3", feed), "data": {"stations": []}}
    normalized = normalize(doc, feed)
    assert normalized.table.num_rows == 0 and normalized.table.schema == SCHEMAS[feed]
    assert normalized.quarantined == [] and normalized.sources == [] and normalized.seen == 0


@pytest.mark.parametrize(("dataset", "last_updated", "quirks"), [
    ("citibike-1.1", 1710335271, set()),
    ("citibike-1.1", "2024-03-13T13:07:51Z", {"rfc3339_time"}),
    ("citibike-1.1", "2024-03-13T09:07:51.999-04:00", {"rfc3339_time"}),
    ("citibike-1.1", 1710335271000, {"ms_timestamp"}),
    ("citibike-1.1", 1710335271.75, {"float_time"}),
    ("fixture-3.0", "2024-03-13T13:07:51Z", set()),
    ("fixture-3.0", "2024-03-13T09:07:51.999-04:00", set()),
    ("fixture-3.0", 1710335271, {"posix_time_in_v3"}),
    ("fixture-3.0", 1710335271000, {"ms_timestamp", "posix_time_in_v3"}),
    ("fixture-3.0", 1710335271.75, {"float_time", "posix_time_in_v3"}),
])
def test_header_time_spellings_give_posix_seconds(dataset: str, last_updated: Any, quirks: set[str]) -> None:
    """RFC 3339 is the 3.x form and a quirk before; a POSIX number the other way round."""
    doc = {**DATASETS[dataset](STATION_STATUS), "last_updated": last_updated}
    parsed = parse_feed(encode(doc), STATION_STATUS)
    assert parsed.last_updated == 1710335271
    assert set(parsed.quirks) == quirks
    normalized = normalize_status(parsed, SYSTEM, 0.0)
    assert {quirk for quirk in normalized.quirks if quirk.startswith("feed:")} == {f"feed:{q}" for q in quirks}
    assert rows(normalized.table)[0]["last_updated"] == 1710335271


def test_utf8_bom_is_tolerated_and_counted() -> None:
    parsed = parse_feed(b"\xef\xbb\xbf" + encode(fixture_doc("v2.3", STATION_STATUS)), STATION_STATUS)
    assert "utf8_bom" in parsed.quirks and len(parsed.records) == 5
    assert normalize_status(parsed, SYSTEM, 0.0).quirks["feed:utf8_bom"] == 1


def test_invalid_ttl_is_dropped_not_fatal() -> None:
    parsed = parse_feed(encode({**real_doc(STATION_STATUS), "ttl": "sixty"}), STATION_STATUS)
    assert parsed.ttl is None and "invalid_ttl" in parsed.quirks
    assert normalize_status(parsed, SYSTEM, 0.0).quirks["feed:invalid_ttl"] == 1
    assert parse_feed(real_body(STATION_STATUS), STATION_STATUS).ttl == real_doc(STATION_STATUS)["ttl"]


# --------------------------------------------------------------------------- the real Citi Bike feed


@pytest.mark.parametrize("index", range(len(recorded(STATION_STATUS))))
def test_real_status_snapshot_normalizes_every_record(index: int) -> None:
    raw_stations = real_doc(STATION_STATUS, index)["data"]["stations"]
    recording = recorded(STATION_STATUS)[index]
    normalized = normalize_status(parse_feed(recording.read_bytes(), STATION_STATUS), "citibike", 1e9)
    assert normalized.quarantined == [] and normalized.table.schema == STATION_STATUS_SCHEMA
    assert normalized.table.num_rows == len(raw_stations) == normalized.seen == 2208
    assert normalized.sources == raw_stations
    int_flags = 0
    for raw, row in zip(raw_stations, rows(normalized.table), strict=True):
        assert row["station_id"] == raw["station_id"]
        assert (row["system_id"], row["fetched_at"], row["schema_version"]) == ("citibike", 1e9, SCHEMA_VERSION)
        assert row["last_updated"] == recording.last_updated
        for flag in ("is_installed", "is_renting", "is_returning"):
            assert row[flag] is (raw[flag] == 1)
        int_flags += any(type(raw[flag]) is int for flag in ("is_installed", "is_renting", "is_returning"))
        for count in ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                      "num_docks_disabled", "last_reported"):
            assert row[count] == raw[count]
        assert row["vehicle_types_available"] is None  # not in 1.1
        assert_nothing_dropped(raw, row, STATION_STATUS, v3=False)
    assert dict(normalized.quirks) == {"int_as_bool": int_flags} and int_flags > 0


def test_real_status_keeps_vendor_extras_and_the_sentinel_value() -> None:
    raw_stations = real_doc(STATION_STATUS)["data"]["stations"]
    table = by_station(normalize(real_doc(STATION_STATUS), STATION_STATUS).table)
    with_scooters = [raw for raw in raw_stations if "num_scooters_available" in raw]
    without_scooters = [raw for raw in raw_stations if "num_scooters_available" not in raw]
    assert with_scooters and without_scooters  # the feed has both shapes
    for raw in with_scooters:
        assert table[raw["station_id"]]["extras"]["num_scooters_available"] == raw["num_scooters_available"]
    for raw in without_scooters:
        assert "num_scooters_available" not in table[raw["station_id"]]["extras"]
    sentinel_stations = [raw["station_id"] for raw in raw_stations if raw["last_reported"] == 86400]
    assert sentinel_stations  # Citi Bike's "never reported"; quality.py quarantines them, normalize keeps the value
    assert all(table[station_id]["last_reported"] == 86400 for station_id in sentinel_stations)


def test_real_information_normalizes_every_record() -> None:
    raw_stations = real_doc(STATION_INFORMATION)["data"]["stations"]
    normalized = normalize(real_doc(STATION_INFORMATION), STATION_INFORMATION)
    assert normalized.quarantined == [] and normalized.table.num_rows == len(raw_stations) == 2208
    assert normalized.table.schema == STATION_INFORMATION_SCHEMA
    for raw, row in zip(raw_stations, rows(normalized.table), strict=True):
        assert (row["station_id"], row["name"], row["short_name"]) == (raw["station_id"], raw["name"],
                                                                        raw["short_name"])
        assert (row["lat"], row["lon"], row["capacity"]) == (raw["lat"], raw["lon"], raw["capacity"])
        assert row["region_id"] == raw.get("region_id")  # absent on some stations: None, not a problem
        assert row["rental_methods"] == raw["rental_methods"]
        assert row["is_virtual_station"] is None and row["address"] is None
        assert_nothing_dropped(raw, row, STATION_INFORMATION, v3=False)
    assert any("region_id" not in raw for raw in raw_stations)
    assert not normalized.quirks  # upper-case rental methods are 1.x's own spelling


def test_records_of_different_shapes_in_one_feed_are_each_read_by_their_own_keys() -> None:
    """The feed is read a column at a time: a record that differs from its neighbours must not be
    read by their shape."""
    doc = real_doc(STATION_STATUS)
    stations = doc["data"]["stations"][:6]
    stations[1]["num_vehicles_available"] = stations[1].pop("num_docks_disabled")  # 3.x name, same key count
    stations[3]["vendor_note"] = stations[3].pop("num_ebikes_available")  # unknown key instead of an optional
    stations[4]["num_vehicles_available"] = stations[4].pop("num_bikes_available")  # required key renamed
    doc["data"]["stations"] = stations
    normalized = normalize(doc, STATION_STATUS)
    assert normalized.quarantined == []
    table = by_station(normalized.table)
    one, three, four = (table[stations[i]["station_id"]] for i in (1, 3, 4))
    assert one["num_bikes_available"] == stations[1]["num_bikes_available"]  # the 1.x name wins in a 1.x feed
    assert one["extras"]["num_vehicles_available"] == stations[1]["num_vehicles_available"]
    assert one["num_docks_disabled"] is None
    assert three["extras"]["vendor_note"] == stations[3]["vendor_note"] and three["num_ebikes_available"] is None
    assert four["num_bikes_available"] == stations[4]["num_vehicles_available"]
    assert "num_vehicles_available" not in four["extras"]
    assert normalized.quirks["vehicles_in_v2"] == 1
    for raw in stations:
        assert_nothing_dropped(raw, table[raw["station_id"]], STATION_STATUS, v3=False)


# --------------------------------------------------------------------------- GBFS 2.3 and 3.0 fixtures


def test_v23_fixture_normalizes_with_vehicle_types_and_extras() -> None:
    raw_status = fixture_doc("v2.3", STATION_STATUS)["data"]["stations"]
    status = normalize(fixture_doc("v2.3", STATION_STATUS), STATION_STATUS)
    assert status.quarantined == [] and status.table.num_rows == len(raw_status)
    for raw, row in zip(raw_status, rows(status.table), strict=True):
        assert row["num_bikes_available"] == raw["num_bikes_available"]
        assert row["num_docks_available"] == raw.get("num_docks_available")  # the virtual station has none
        assert row["is_renting"] is raw["is_renting"]
        assert row["last_reported"] == raw["last_reported"]
        assert row["vehicle_types_available"] == raw["vehicle_types_available"]
        assert_nothing_dropped(raw, row, STATION_STATUS, v3=False)
    assert not status.quirks  # a clean 2.3 feed needs no normalization
    raw_info = fixture_doc("v2.3", STATION_INFORMATION)["data"]["stations"]
    information = normalize(fixture_doc("v2.3", STATION_INFORMATION), STATION_INFORMATION)
    assert information.quarantined == [] and not information.quirks
    for raw, row in zip(raw_info, rows(information.table), strict=True):
        assert row["is_virtual_station"] == raw.get("is_virtual_station")
        assert row["capacity"] == raw.get("capacity")
        assert row["rental_methods"] == raw.get("rental_methods")
        assert_nothing_dropped(raw, row, STATION_INFORMATION, v3=False)


def test_v30_fixture_status_reads_vehicles_and_rfc3339_without_quirks() -> None:
    doc = fixture_doc("v3.0", STATION_STATUS)
    raw_status = doc["data"]["stations"]
    status = normalize(doc, STATION_STATUS)
    assert status.quarantined == [] and status.table.num_rows == len(raw_status)
    assert status.last_updated == rfc3339_to_posix(doc["last_updated"])
    for raw, row in zip(raw_status, rows(status.table), strict=True):
        assert row["num_bikes_available"] == raw["num_vehicles_available"]
        assert row["num_bikes_disabled"] == raw.get("num_vehicles_disabled")
        assert row["last_reported"] == rfc3339_to_posix(raw["last_reported"])
        assert row["last_updated"] == rfc3339_to_posix(doc["last_updated"])
        assert row["is_returning"] is raw["is_returning"]
        assert sum(v["count"] for v in row["vehicle_types_available"]) == raw["num_vehicles_available"]
        assert_nothing_dropped(raw, row, STATION_STATUS, v3=True)
    assert not status.quirks  # num_vehicles_*, RFC 3339 times: 3.0's own forms


def _expected_name(entries: list[dict[str, str]], language: str) -> str:
    """The spec's rule, written out plainly: exact tag, then same primary language, then the first."""
    for entry in entries:
        if entry["language"].lower() == language.lower():
            return entry["text"]
    for entry in entries:
        if entry["language"].split("-")[0].lower() == language.split("-")[0].lower():
            return entry["text"]
    return entries[0]["text"]


def _fallbacks(stations: list[dict[str, Any]], language: str) -> int:
    """Records with a localized name or short_name that has no entry in the wanted primary language."""
    wanted = language.split("-")[0].lower()
    return sum(any(isinstance(raw[key], list) and not any(e["language"].split("-")[0].lower() == wanted
                                                          for e in raw[key])
                   for key in ("name", "short_name") if key in raw) for raw in stations)


@pytest.mark.parametrize("language", ["en", "fr", "fr-CA", "de"])
def test_v30_fixture_localized_names_pick_the_system_language(language: str) -> None:
    raw_info = fixture_doc("v3.0", STATION_INFORMATION)["data"]["stations"]
    information = normalize(fixture_doc("v3.0", STATION_INFORMATION), STATION_INFORMATION, language=language)
    assert information.quarantined == []
    for raw, row in zip(raw_info, rows(information.table), strict=True):
        assert row["name"] == _expected_name(raw["name"], language)
        if "short_name" in raw:
            assert row["short_name"] == _expected_name(raw["short_name"], language)
        assert_nothing_dropped(raw, row, STATION_INFORMATION, v3=True)
    fallbacks = _fallbacks(raw_info, language)
    assert dict(information.quirks) == ({"language_fallback": fallbacks} if fallbacks else {})
    virtual = [row for row in rows(information.table) if row["is_virtual_station"]]
    assert virtual and all(row["capacity"] is None for row in virtual)  # dockless zones have no capacity


# --------------------------------------------------------------------------- record-level problems


def _first(stations: list[Any], predicate: Callable[[dict[str, Any]], bool] = lambda raw: True) -> int:
    return next(i for i, raw in enumerate(stations) if isinstance(raw, dict) and predicate(raw))


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw.__setitem__(key, value)


DATASETS: dict[str, Callable[[str], dict[str, Any]]] = {
    "citibike-1.1": lambda feed: real_doc(feed),
    "fixture-2.3": lambda feed: fixture_doc("v2.3", feed),
    "fixture-3.0": lambda feed: fixture_doc("v3.0", feed),
}

# (case id, feed, mutation of one record, reason expected for it; {bikes} = this version's spelling)
RECORD_PROBLEMS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("status without station_id", STATION_STATUS, _delete("station_id"), "missing_field:station_id"),
    ("status without bikes", STATION_STATUS, lambda raw: [raw.pop(k, None) for k in
                                                          ("num_bikes_available", "num_vehicles_available")],
     "missing_field:{bikes}"),
    ("status without is_installed", STATION_STATUS, _delete("is_installed"), "missing_field:is_installed"),
    ("status with null is_renting", STATION_STATUS, _set("is_renting", None), "missing_field:is_renting"),
    ("status without last_reported", STATION_STATUS, _delete("last_reported"), "missing_field:last_reported"),
    ("status with null last_reported", STATION_STATUS, _set("last_reported", None), "missing_field:last_reported"),
    ("bike count as string", STATION_STATUS,
     lambda raw: raw.update({k: str(v) for k, v in raw.items() if k in ("num_bikes_available",
                                                                        "num_vehicles_available")}),
     "invalid_type:{bikes}"),
    ("fractional dock count", STATION_STATUS, _set("num_docks_available", 2.5), "invalid_value:num_docks_available"),
    ("count beyond 32 bits", STATION_STATUS, _set("num_docks_disabled", 2**31), "invalid_value:num_docks_disabled"),
    ("flag 2", STATION_STATUS, _set("is_returning", 2), "invalid_value:is_returning"),
    ("flag as string", STATION_STATUS, _set("is_returning", "true"), "invalid_type:is_returning"),
    ("blank station_id", STATION_STATUS, _set("station_id", "  "), "invalid_value:station_id"),
    ("station_id as object", STATION_STATUS, _set("station_id", {"id": 1}), "invalid_type:station_id"),
    ("last_reported as words", STATION_STATUS, _set("last_reported", "a minute ago"),
     "invalid_value:last_reported"),
    ("last_reported negative", STATION_STATUS, _set("last_reported", -1), "invalid_value:last_reported"),
    ("last_reported as boolean", STATION_STATUS, _set("last_reported", True), "invalid_type:last_reported"),
    ("vehicle_types_available not a list", STATION_STATUS, _set("vehicle_types_available", {"classic": 3}),
     "invalid_type:vehicle_types_available"),
    ("information without lat", STATION_INFORMATION, _delete("lat"), "missing_field:lat"),
    ("information without lon", STATION_INFORMATION, _delete("lon"), "missing_field:lon"),
    ("information without name", STATION_INFORMATION, _delete("name"), "missing_field:name"),
    ("lat as boolean", STATION_INFORMATION, _set("lat", True), "invalid_type:lat"),
    ("lon as string", STATION_INFORMATION, _set("lon", "-73.99"), "invalid_type:lon"),
    ("capacity as string", STATION_INFORMATION, _set("capacity", "12"), "invalid_type:capacity"),
    ("name as number", STATION_INFORMATION, _set("name", 12), "invalid_type:name"),
    ("empty localized name", STATION_INFORMATION, _set("name", []), "invalid_value:name"),
    ("rental_methods not strings", STATION_INFORMATION, _set("rental_methods", [1, 2]),
     "invalid_type:rental_methods"),
]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(("feed", "mutate", "reason"), [case[1:] for case in RECORD_PROBLEMS],
                         ids=[case[0] for case in RECORD_PROBLEMS])
def test_record_problem_is_quarantined_not_raised(dataset: str, feed: str, mutate: Callable[[dict[str, Any]], None],
                                                   reason: str) -> None:
    doc = DATASETS[dataset](feed)
    stations = doc["data"]["stations"]
    target = _first(stations)
    mutate(stations[target])
    normalized = normalize(doc, feed)
    bikes = "num_vehicles_available" if is_v3(doc) else "num_bikes_available"
    assert len(normalized.quarantined) == 1
    quarantined = normalized.quarantined[0]
    assert quarantined.reasons == [reason.format(bikes=bikes)]
    assert json.loads(quarantined.raw) == stations[target]  # kept whole, as the feed sent it
    assert list(json.loads(quarantined.raw)) == sorted(stations[target])  # one text: keys sorted
    assert (quarantined.system_id, quarantined.feed) == (SYSTEM, feed)
    assert (quarantined.last_updated, quarantined.fetched_at) == (posix(doc["last_updated"]), FETCHED_AT)
    station_id = stations[target].get("station_id")
    assert quarantined.station_id == (station_id if isinstance(station_id, str) else None)
    assert normalized.table.num_rows == len(stations) - 1 == normalized.seen - 1
    assert normalized.sources == stations[:target] + stations[target + 1:]


def test_a_record_collects_every_problem() -> None:
    doc = real_doc(STATION_STATUS)
    raw = doc["data"]["stations"][0]
    del raw["num_bikes_available"]
    raw["is_installed"] = "yes"
    raw["last_reported"] = None
    raw["num_docks_available"] = None  # quality decides (virtual stations need not report docks)
    quarantined = normalize(doc, STATION_STATUS).quarantined
    assert [q.reasons for q in quarantined] == [["missing_field:num_bikes_available", "invalid_type:is_installed",
                                                 "missing_field:last_reported"]]
    assert quarantined[0].station_id == raw["station_id"]


def test_missing_docks_are_left_to_validation() -> None:
    """Only validation knows which stations are virtual; normalize keeps the row with null docks."""
    doc = real_doc(STATION_STATUS)
    raw = doc["data"]["stations"][0]
    del raw["num_docks_available"]
    normalized = normalize(doc, STATION_STATUS)
    assert normalized.quarantined == []
    assert by_station(normalized.table)[raw["station_id"]]["num_docks_available"] is None


@pytest.mark.parametrize("junk", ["station", 42, None, ["a", "list"], True])
def test_non_object_station_entries_are_quarantined(junk: Any) -> None:
    doc = fixture_doc("v2.3", STATION_STATUS)
    doc["data"]["stations"].insert(2, junk)
    normalized = normalize(doc, STATION_STATUS)
    assert [(q.reasons, q.station_id, json.loads(q.raw)) for q in normalized.quarantined] == [
        (["invalid_type:station"], None, junk)]
    assert normalized.table.num_rows == 5 and normalized.seen == 6
    assert normalized.sources == [raw for raw in doc["data"]["stations"] if isinstance(raw, dict)]


# --------------------------------------------------------------------------- vendor quirks accepted

Check = Callable[[dict[str, Any], dict[str, Any]], bool]
"""(normalized row, raw record) -> does the row say what the raw record meant?"""


def _rename_to(name: str) -> Callable[[dict[str, Any]], None]:
    """Move the bike count to ``name`` (whichever spelling the record used)."""
    def mutate(raw: dict[str, Any]) -> None:
        count = raw.pop("num_bikes_available", None)
        count = raw.pop("num_vehicles_available", count)
        raw[name] = count
    return mutate


# (case id, feed, mutation of one record, new quirks (in 1.x/2.x, in 3.x), check of the normalized row)
VENDOR_QUIRKS: list[tuple[str, str, Callable[[dict[str, Any]], None], tuple[set[str], set[str]], Check]] = [
    ("integral float count", STATION_STATUS, _set("num_docks_available", 7.0), ({"float_as_int"}, {"float_as_int"}),
     lambda row, raw: row["num_docks_available"] == 7),
    ("numeric station_id", STATION_STATUS, _set("station_id", 4711), ({"numeric_id"}, {"numeric_id"}),
     lambda row, raw: row["station_id"] == "4711"),
    ("last_reported in milliseconds", STATION_STATUS, _set("last_reported", 1710335000123),
     ({"ms_timestamp"}, {"ms_timestamp", "posix_time_in_v3"}), lambda row, raw: row["last_reported"] == 1710335000),
    ("last_reported as float", STATION_STATUS, _set("last_reported", 1710335000.9),
     ({"float_time"}, {"float_time", "posix_time_in_v3"}), lambda row, raw: row["last_reported"] == 1710335000),
    ("last_reported as POSIX seconds", STATION_STATUS, _set("last_reported", 1710335000),
     (set(), {"posix_time_in_v3"}), lambda row, raw: row["last_reported"] == 1710335000),
    ("last_reported as RFC 3339", STATION_STATUS, _set("last_reported", "2024-03-13T13:03:20Z"),
     ({"rfc3339_time"}, set()), lambda row, raw: row["last_reported"] == rfc3339_to_posix("2024-03-13T13:03:20Z")),
    ("0/1 flags", STATION_STATUS, lambda raw: raw.update(is_installed=1, is_renting=0, is_returning=1),
     ({"int_as_bool"}, {"int_as_bool"}),
     lambda row, raw: (row["is_installed"], row["is_renting"], row["is_returning"]) == (True, False, True)),
    ("num_vehicles_available", STATION_STATUS, _rename_to("num_vehicles_available"), ({"vehicles_in_v2"}, set()),
     lambda row, raw: row["num_bikes_available"] == raw["num_vehicles_available"]),
    ("num_bikes_available", STATION_STATUS, _rename_to("num_bikes_available"), (set(), {"bikes_in_v3"}),
     lambda row, raw: row["num_bikes_available"] == raw["num_bikes_available"]),
    ("localized name", STATION_INFORMATION,
     _set("name", [{"text": "Quai", "language": "fr"}, {"text": "Pier", "language": "en"}]),
     ({"localized_name"}, set()), lambda row, raw: row["name"] == "Pier"),
    ("plain-string name", STATION_INFORMATION, _set("name", "Pier 7"), (set(), {"plain_name_in_v3"}),
     lambda row, raw: row["name"] == "Pier 7"),
    ("numeric region_id", STATION_INFORMATION, _set("region_id", 71), ({"numeric_id"}, {"numeric_id"}),
     lambda row, raw: row["region_id"] == "71"),
    ("0/1 is_virtual_station", STATION_INFORMATION, _set("is_virtual_station", 1), ({"int_as_bool"}, {"int_as_bool"}),
     lambda row, raw: row["is_virtual_station"] is True),
    ("integer coordinates", STATION_INFORMATION, lambda raw: raw.update(lat=40, lon=-74), (set(), set()),
     lambda row, raw: (row["lat"], row["lon"]) == (40.0, -74.0) and type(row["lat"]) is float),
    ("rental method GBFS does not define", STATION_INFORMATION, _set("rental_methods", ["KEY", "bitcoin"]),
     ({"unknown_rental_method"}, {"unknown_rental_method"}),
     lambda row, raw: row["rental_methods"] == ["KEY", "bitcoin"]),  # kept as sent
    ("rental methods in any case", STATION_INFORMATION, _set("rental_methods", ["KEY", "creditcard", "ApplePay"]),
     (set(), set()), lambda row, raw: row["rental_methods"] == ["KEY", "creditcard", "ApplePay"]),
]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(("feed", "mutate", "quirks", "check"), [case[1:] for case in VENDOR_QUIRKS],
                         ids=[case[0] for case in VENDOR_QUIRKS])
def test_vendor_quirk_is_normalized_and_counted(dataset: str, feed: str, mutate: Callable[[dict[str, Any]], None],
                                                quirks: tuple[set[str], set[str]], check: Check) -> None:
    doc = DATASETS[dataset](feed)
    baseline = normalize(copy.deepcopy(doc), feed).quirks
    stations = doc["data"]["stations"]
    target = _first(stations)
    mutate(stations[target])
    normalized = normalize(doc, feed)
    assert normalized.quarantined == []
    assert check(rows(normalized.table)[target], stations[target])
    expected = quirks[is_v3(doc)]
    assert all(normalized.quirks[quirk] >= 1 for quirk in expected)
    changed = {quirk: normalized.quirks[quirk] - baseline[quirk] for quirk in normalized.quirks | baseline}
    assert all(change in (0, 1) for change in changed.values())  # at most this one record more (or less)
    assert {quirk for quirk, change in changed.items() if change} <= expected
    assert normalized.table.schema == SCHEMAS[feed]


def test_both_spellings_present_keeps_the_other_in_extras() -> None:
    for version, used, other in (("v2.3", "num_bikes_available", "num_vehicles_available"),
                                 ("v3.0", "num_vehicles_available", "num_bikes_available")):
        doc = fixture_doc(version, STATION_STATUS)
        raw = doc["data"]["stations"][0]
        raw[other] = raw[used] + 1
        normalized = normalize(doc, STATION_STATUS)
        row = rows(normalized.table)[0]
        assert row["num_bikes_available"] == raw[used]  # the version's own spelling wins
        assert row["extras"][other] == raw[other]
        assert not normalized.quirks


def test_normalizers_refuse_the_other_feed() -> None:
    with pytest.raises(ValueError):
        normalize_information(parse_feed(real_body(STATION_STATUS), STATION_STATUS), SYSTEM, 0.0)
    with pytest.raises(ValueError):
        normalize_status(parse_feed(real_body(STATION_INFORMATION), STATION_INFORMATION), SYSTEM, 0.0)
    with pytest.raises(ValueError):
        parse_feed(b"{}", "free_bike_status")


def test_the_quirks_of_issue_13_are_documented() -> None:
    assert {"vehicles_in_v2", "bikes_in_v3", "posix_time_in_v3", "plain_name_in_v3", "rfc3339_time", "localized_name",
            "unknown_rental_method", "unknown_vehicle_type_id", "feed:missing_ttl",
            "feed:mixed_versions"} <= set(QUIRKS)


# --------------------------------------------------------------------------- issue #13: validation gaps


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("feed", [STATION_STATUS, STATION_INFORMATION])
@pytest.mark.parametrize("ttl", ["absent", None])
def test_header_without_ttl_is_a_feed_quirk(dataset: str, feed: str, ttl: Any) -> None:
    """ttl is required in every GBFS version; a feed without it is still used."""
    doc = DATASETS[dataset](feed)
    assert "feed:missing_ttl" not in normalize(doc, feed).quirks
    if ttl == "absent":
        del doc["ttl"]
    else:
        doc["ttl"] = ttl
    parsed = parse_feed(encode(doc), feed)
    assert parsed.ttl is None and "missing_ttl" in parsed.quirks
    normalized = normalize(doc, feed)
    assert normalized.quirks["feed:missing_ttl"] == 1
    assert normalized.quarantined == [] and normalized.table.num_rows == len(doc["data"]["stations"])


def _v3_status_in_v2_form(doc: dict[str, Any], stations: range | list[int], header: bool = True) -> None:
    """Rewrite a 3.0 status feed the 1.x/2.x way: num_bikes_* names, POSIX times."""
    if header:
        doc["last_updated"] = rfc3339_to_posix(doc["last_updated"])
    for index in stations:
        raw = doc["data"]["stations"][index]
        for v2, v3 in V3_KEYS.items():
            if v3 in raw:
                raw[v2] = raw.pop(v3)
        raw["last_reported"] = rfc3339_to_posix(raw["last_reported"])


def test_v30_status_in_v2x_form_counts_each_v2x_form() -> None:
    proper = fixture_doc("v3.0", STATION_STATUS)
    doc = copy.deepcopy(proper)
    count = len(doc["data"]["stations"])
    _v3_status_in_v2_form(doc, range(count))
    normalized = normalize(doc, STATION_STATUS)
    assert dict(normalized.quirks) == {"bikes_in_v3": count, "posix_time_in_v3": count, "feed:posix_time_in_v3": 1}
    assert normalized.quarantined == []
    assert rows(normalized.table) == rows(normalize(proper, STATION_STATUS).table)  # same facts, same rows


def test_v30_status_partly_in_v2x_form_counts_the_records_so_written() -> None:
    doc = fixture_doc("v3.0", STATION_STATUS)
    stations = doc["data"]["stations"]
    first = stations[0]  # both num_vehicles_available and num_vehicles_disabled: one record, counted once
    assert {"num_vehicles_available", "num_vehicles_disabled"} <= set(first)
    first["num_bikes_available"] = first.pop("num_vehicles_available")
    first["num_bikes_disabled"] = first.pop("num_vehicles_disabled")
    stations[2]["num_bikes_available"] = stations[2].pop("num_vehicles_available")
    stations[1]["last_reported"] = rfc3339_to_posix(stations[1]["last_reported"])
    normalized = normalize(doc, STATION_STATUS)
    assert dict(normalized.quirks) == {"bikes_in_v3": 2, "posix_time_in_v3": 1}
    table = rows(normalized.table)
    assert (table[0]["num_bikes_available"], table[0]["num_bikes_disabled"]) == (first["num_bikes_available"],
                                                                                  first["num_bikes_disabled"])
    assert "num_bikes_available" not in table[0]["extras"] and "num_bikes_disabled" not in table[0]["extras"]


def test_v30_information_with_plain_string_names_counts_plain_name_in_v3() -> None:
    proper = fixture_doc("v3.0", STATION_INFORMATION)
    doc = copy.deepcopy(proper)
    stations = doc["data"]["stations"]
    for raw in stations:  # every name plain (in English where there is one), short names left localized
        raw["name"] = _expected_name(raw["name"], "en")
    stations[1]["short_name"] = "GC"
    normalized = normalize(doc, STATION_INFORMATION)
    plain = sum(any(isinstance(raw.get(key), str) for key in ("name", "short_name")) for raw in stations)
    assert plain == len(stations)
    fallbacks = _fallbacks(stations, "en")
    assert dict(normalized.quirks) == {"plain_name_in_v3": plain, **({"language_fallback": fallbacks}
                                                                     if fallbacks else {})}
    assert [row["name"] for row in rows(normalized.table)] == [raw["name"] for raw in stations]
    assert rows(normalized.table)[1]["short_name"] == "GC"


@pytest.mark.parametrize("feed", [STATION_STATUS, STATION_INFORMATION])
def test_v30_in_proper_form_counts_no_version_quirk(feed: str) -> None:
    quirks = set(normalize(fixture_doc("v3.0", feed), feed).quirks)
    assert not quirks & (V2_FORMS | V3_FORMS), quirks


@pytest.mark.parametrize("dataset", ["citibike-1.1", "fixture-2.3"])
def test_v1x_v2x_in_v3x_form_counts_each_v3x_form(dataset: str) -> None:
    proper = DATASETS[dataset](STATION_STATUS)
    status = copy.deepcopy(proper)
    count = len(status["data"]["stations"])
    status["last_updated"] = _rfc3339_utc(status["last_updated"])
    for raw in status["data"]["stations"]:
        for v2, v3 in V3_KEYS.items():
            if v2 in raw:
                raw[v3] = raw.pop(v2)
        raw["last_reported"] = _rfc3339_utc(raw["last_reported"])
    normalized = normalize(status, STATION_STATUS)
    baseline = normalize(proper, STATION_STATUS)
    assert normalized.quirks == baseline.quirks + Counter({"vehicles_in_v2": count, "rfc3339_time": count,
                                                           "feed:rfc3339_time": 1})
    assert rows(normalized.table) == rows(baseline.table)  # same facts, same rows
    proper = DATASETS[dataset](STATION_INFORMATION)
    information = copy.deepcopy(proper)
    for raw in information["data"]["stations"]:
        raw["name"] = [{"text": "-", "language": "fr"}, {"text": raw["name"], "language": "en-US"}]
    normalized = normalize(information, STATION_INFORMATION)
    assert dict(normalized.quirks) == {"localized_name": len(information["data"]["stations"])}
    assert rows(normalized.table) == rows(normalize(proper, STATION_INFORMATION).table)


def _rfc3339_utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("dataset", ["citibike-1.1", "fixture-2.3"])
@pytest.mark.parametrize("feed", [STATION_STATUS, STATION_INFORMATION])
def test_v1x_v2x_in_proper_form_counts_no_version_quirk(dataset: str, feed: str) -> None:
    quirks = set(normalize(DATASETS[dataset](feed), feed).quirks)
    assert not quirks & (V2_FORMS | V3_FORMS), quirks


@pytest.mark.parametrize("dataset", DATASETS)
def test_unknown_rental_methods_are_counted_per_record_case_insensitively(dataset: str) -> None:
    """GBFS defines KEY, CREDITCARD, PAYPASS, APPLEPAY, ANDROIDPAY, TRANSITCARD, ACCOUNTNUMBER, PHONE
    (upper case before 2.1, lower case since); anything else is kept as sent and counted."""
    doc = DATASETS[dataset](STATION_INFORMATION)
    assert "unknown_rental_method" not in normalize(doc, STATION_INFORMATION).quirks
    stations = doc["data"]["stations"]
    stations[0]["rental_methods"] = ["KEY", "BITCOIN", "wallet"]  # two unknown: one record
    stations[1]["rental_methods"] = ["PayPass", "androidpay", "TRANSITCARD", "accountnumber", "Phone", "applepay"]
    stations[2]["rental_methods"] = ["cash"]
    stations[3].pop("rental_methods", None)
    normalized = normalize(doc, STATION_INFORMATION)
    defined = {"key", "creditcard", "paypass", "applepay", "androidpay", "transitcard", "accountnumber", "phone"}
    unknown = sum(any(method.lower() not in defined for method in raw.get("rental_methods", []))
                  for raw in stations)
    assert unknown == 2
    assert normalized.quirks["unknown_rental_method"] == unknown
    assert normalized.quarantined == []
    assert [row["rental_methods"] for row in rows(normalized.table)] == [raw.get("rental_methods")
                                                                          for raw in stations]


def test_quirk_counts_leave_out_quarantined_records() -> None:
    doc = fixture_doc("v3.0", STATION_STATUS)
    count = len(doc["data"]["stations"])
    _v3_status_in_v2_form(doc, range(count), header=False)
    del doc["data"]["stations"][0]["station_id"]
    normalized = normalize(doc, STATION_STATUS)
    assert len(normalized.quarantined) == 1
    assert Counter(normalized.quirks) == Counter({"bikes_in_v3": count - 1, "posix_time_in_v3": count - 1})
    # the keys read the other version's way are not extras, on each row after the quarantined one too
    for raw, row in zip(doc["data"]["stations"][1:], rows(normalized.table), strict=True):
        assert row["num_bikes_available"] == raw["num_bikes_available"]
        assert not set(row["extras"]) & set(V3_KEYS)
        assert_nothing_dropped(raw, row, STATION_STATUS, v3=True)
