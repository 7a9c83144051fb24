"""parse_feed and the normalizers on the real Citi Bike recordings and on hand-built GBFS 2.3 / 3.0 feeds.

Expectations are computed from the raw JSON in the test (what the feed says), not copied from the
code's output: e.g. a 0/1 flag must come out as ``raw == 1``, a 3.x name as the entry in the wanted
language, an RFC 3339 time as what ``datetime.strptime`` makes of it.
"""

from __future__ import annotations

import copy
import gzip
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest

from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS, StationInformation, StationStatus
from citibikes.gbfs.normalize import (
    FEED_ERROR_REASONS,
    SUPPORTED_VERSIONS,
    _Context,
    _normalize_generic,
    _status_generic,
    normalize_information,
    normalize_status,
    parse_feed,
)
from citibikes.replay.recordings import recorded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
SYSTEM = "testsystem"
STATUS_FIELDS = set(StationStatus.__struct_fields__)
INFORMATION_FIELDS = set(StationInformation.__struct_fields__)
V3_RENAMES = {"num_vehicles_available": "num_bikes_available", "num_vehicles_disabled": "num_bikes_disabled"}


def real_body(feed: str, index: int = 0) -> bytes:
    return recorded(feed)[index].read_bytes()


def real_doc(feed: str, index: int = 0) -> dict[str, Any]:
    return json.loads(real_body(feed, index))


def fixture_doc(version: str, feed: str) -> dict[str, Any]:
    return json.loads((FIXTURES / version / f"{feed}.json").read_text())


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def normalize(doc: dict[str, Any], feed: str, language: str | None = "en"):
    parsed = parse_feed(encode(doc), feed)
    if feed == STATION_STATUS:
        return normalize_status(parsed, SYSTEM, 1_710_335_276.5)
    return normalize_information(parsed, SYSTEM, 1_710_335_276.5, language=language)


def rfc3339_to_posix(text: str) -> int:
    """Independent of the code under test: strptime with explicit formats."""
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return int(datetime.strptime(text.replace("Z", "+00:00"), pattern).timestamp())
        except ValueError:
            continue
    raise AssertionError(f"fixture time {text!r} is not RFC 3339")


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
    assert parsed.version == version
    assert parsed.stations == doc["data"]["stations"]


def test_version_1_0_had_no_version_field() -> None:
    doc = {k: v for k, v in real_doc(STATION_STATUS).items() if k != "version"}
    assert parse_feed(encode(doc), STATION_STATUS).version == "1.0"


def test_empty_station_list_is_a_feed_with_no_records() -> None:
    doc = {**fixture_doc("v2.3", STATION_STATUS), "data": {"stations": []}}
    normalized = normalize(doc, STATION_STATUS)
    assert normalized.records == [] and normalized.quarantined == [] and normalized.seen == 0


@pytest.mark.parametrize(("last_updated", "quirk"), [
    ("2024-03-13T13:07:51Z", "rfc3339_time"),
    ("2024-03-13T09:07:51.999-04:00", "rfc3339_time"),
    (1710335271000, "ms_timestamp"),
    (1710335271.75, "float_time"),
])
def test_header_time_spellings_give_posix_seconds(last_updated: Any, quirk: str) -> None:
    doc = {**real_doc(STATION_STATUS), "last_updated": last_updated}
    parsed = parse_feed(encode(doc), STATION_STATUS)
    assert parsed.last_updated == 1710335271
    assert quirk in parsed.quirks
    assert normalize_status(parsed, SYSTEM, 0.0).quirks[f"feed:{quirk}"] == 1


def test_utf8_bom_is_tolerated_and_counted() -> None:
    parsed = parse_feed(b"\xef\xbb\xbf" + encode(fixture_doc("v2.3", STATION_STATUS)), STATION_STATUS)
    assert "utf8_bom" in parsed.quirks and len(parsed.stations) == 5


def test_invalid_ttl_is_dropped_not_fatal() -> None:
    parsed = parse_feed(encode({**real_doc(STATION_STATUS), "ttl": "sixty"}), STATION_STATUS)
    assert parsed.ttl is None and "invalid_ttl" in parsed.quirks
    assert parse_feed(real_body(STATION_STATUS), STATION_STATUS).ttl == real_doc(STATION_STATUS)["ttl"]


# --------------------------------------------------------------------------- the real Citi Bike feed


@pytest.mark.parametrize("index", range(len(recorded(STATION_STATUS))))
def test_real_status_snapshot_normalizes_every_record(index: int) -> None:
    raw_stations = real_doc(STATION_STATUS, index)["data"]["stations"]
    recording = recorded(STATION_STATUS)[index]
    normalized = normalize_status(parse_feed(recording.read_bytes(), STATION_STATUS), "citibike", 1e9)
    assert normalized.quarantined == []
    assert len(normalized.records) == len(raw_stations) == normalized.seen
    int_flags = 0
    for raw, record in zip(raw_stations, normalized.records, strict=True):
        assert record.station_id == raw["station_id"]
        assert record.system_id == "citibike" and record.fetched_at == 1e9
        assert record.last_updated == recording.last_updated
        for flag in ("is_installed", "is_renting", "is_returning"):
            assert getattr(record, flag) is (raw[flag] == 1)
        int_flags += any(type(raw[flag]) is int for flag in ("is_installed", "is_renting", "is_returning"))
        for count in ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                      "num_docks_disabled", "last_reported"):
            assert getattr(record, count) == raw[count]
        _assert_nothing_dropped(raw, record, STATUS_FIELDS)
    assert normalized.quirks["int_as_bool"] == int_flags > 0


def _assert_nothing_dropped(raw: dict[str, Any], record: Any, canonical: set[str]) -> None:
    """Every raw key is either a canonical field or kept verbatim in extras."""
    for key, value in raw.items():
        if key in record.extras:
            assert record.extras[key] == value
        else:
            assert key in canonical or V3_RENAMES.get(key) in canonical, key
    assert set(record.extras) <= set(raw)
    assert not set(record.extras) & canonical


def test_real_status_keeps_vendor_extras_and_the_sentinel_value() -> None:
    raw_stations = real_doc(STATION_STATUS)["data"]["stations"]
    normalized = normalize(real_doc(STATION_STATUS), STATION_STATUS)
    by_id = {record.station_id: record for record in normalized.records}
    with_scooters = [raw for raw in raw_stations if "num_scooters_available" in raw]
    without_scooters = [raw for raw in raw_stations if "num_scooters_available" not in raw]
    assert with_scooters and without_scooters  # the feed has both shapes
    for raw in with_scooters:
        assert by_id[raw["station_id"]].extras["num_scooters_available"] == raw["num_scooters_available"]
    for raw in without_scooters:
        assert "num_scooters_available" not in by_id[raw["station_id"]].extras
    sentinel_stations = [raw["station_id"] for raw in raw_stations if raw["last_reported"] == 86400]
    assert sentinel_stations  # Citi Bike's "never reported"; quality.py quarantines them, normalize keeps the value
    assert all(by_id[station_id].last_reported == 86400 for station_id in sentinel_stations)


def test_real_information_normalizes_every_record() -> None:
    raw_stations = real_doc(STATION_INFORMATION)["data"]["stations"]
    normalized = normalize(real_doc(STATION_INFORMATION), STATION_INFORMATION)
    assert normalized.quarantined == [] and len(normalized.records) == len(raw_stations)
    for raw, record in zip(raw_stations, normalized.records, strict=True):
        assert (record.station_id, record.name, record.short_name) == (raw["station_id"], raw["name"],
                                                                        raw["short_name"])
        assert (record.lat, record.lon, record.capacity) == (raw["lat"], raw["lon"], raw["capacity"])
        assert record.region_id == raw.get("region_id")  # absent on some stations: None, not a problem
        assert record.rental_methods == raw["rental_methods"]
        _assert_nothing_dropped(raw, record, INFORMATION_FIELDS)
    assert any("region_id" not in raw for raw in raw_stations)


def test_fast_path_matches_generic_path_on_real_status() -> None:
    """The fast path is an optimization only: the generic path is the reference."""
    for recording in recorded(STATION_STATUS):
        parsed = parse_feed(recording.read_bytes(), STATION_STATUS)
        fast = normalize_status(parsed, "citibike", 5.0)
        generic = _normalize_generic(parsed, _Context("citibike", parsed.version, parsed.last_updated, 5.0),
                                     _status_generic)
        assert fast.records == generic.records
        assert fast.quirks == generic.quirks
        assert fast.sources == generic.sources


def test_records_with_as_many_keys_but_other_ones_are_not_mistaken_for_the_common_shape() -> None:
    """The fast path finds its plan by the number of keys; a different shape of that size must not slip by."""
    doc = real_doc(STATION_STATUS)
    stations = doc["data"]["stations"][:6]
    stations[1]["num_vehicles_available"] = stations[1].pop("num_docks_disabled")  # 3.x spelling, same size
    stations[3]["vendor_note"] = stations[3].pop("num_ebikes_available")  # unknown key instead of an optional
    stations[4]["num_vehicles_available"] = stations[4].pop("num_bikes_available")  # required key renamed
    doc["data"]["stations"] = stations
    parsed = parse_feed(encode(doc), STATION_STATUS)
    fast = normalize_status(parsed, SYSTEM, 5.0)
    generic = _normalize_generic(parsed, _Context(SYSTEM, parsed.version, parsed.last_updated, 5.0), _status_generic)
    assert fast.records == generic.records and fast.quirks == generic.quirks
    assert [q.reasons for q in fast.quarantined] == [q.reasons for q in generic.quarantined]
    by_id = {record.station_id: record for record in fast.records}
    assert by_id[stations[1]["station_id"]].extras["num_vehicles_available"] == stations[1]["num_vehicles_available"]
    assert by_id[stations[1]["station_id"]].num_docks_disabled is None
    assert by_id[stations[3]["station_id"]].extras["vendor_note"] == stations[3]["vendor_note"]
    assert by_id[stations[3]["station_id"]].num_ebikes_available is None
    assert by_id[stations[4]["station_id"]].num_bikes_available == stations[4]["num_vehicles_available"]
    for raw in stations:
        _assert_nothing_dropped(raw, by_id[raw["station_id"]], STATUS_FIELDS)


# --------------------------------------------------------------------------- GBFS 2.3 and 3.0 fixtures


def test_v23_fixture_normalizes_with_vehicle_types_and_extras() -> None:
    raw_status = fixture_doc("v2.3", STATION_STATUS)["data"]["stations"]
    status = normalize(fixture_doc("v2.3", STATION_STATUS), STATION_STATUS)
    assert status.quarantined == [] and len(status.records) == len(raw_status)
    for raw, record in zip(raw_status, status.records, strict=True):
        assert record.num_bikes_available == raw["num_bikes_available"]
        assert record.num_docks_available == raw.get("num_docks_available")
        assert record.is_renting is raw["is_renting"]
        assert [(v.vehicle_type_id, v.count) for v in record.vehicle_types_available] == [
            (v["vehicle_type_id"], v["count"]) for v in raw["vehicle_types_available"]]
        _assert_nothing_dropped(raw, record, STATUS_FIELDS)
    assert not status.quirks  # a clean 2.3 feed needs no normalization
    raw_info = fixture_doc("v2.3", STATION_INFORMATION)["data"]["stations"]
    information = normalize(fixture_doc("v2.3", STATION_INFORMATION), STATION_INFORMATION)
    assert information.quarantined == []
    for raw, record in zip(raw_info, information.records, strict=True):
        assert record.is_virtual_station == raw.get("is_virtual_station")
        assert record.capacity == raw.get("capacity")
        _assert_nothing_dropped(raw, record, INFORMATION_FIELDS)


def test_v30_fixture_status_renames_vehicles_and_parses_rfc3339() -> None:
    doc = fixture_doc("v3.0", STATION_STATUS)
    raw_status = doc["data"]["stations"]
    status = normalize(doc, STATION_STATUS)
    assert status.quarantined == [] and len(status.records) == len(raw_status)
    assert status.last_updated == rfc3339_to_posix(doc["last_updated"])
    for raw, record in zip(raw_status, status.records, strict=True):
        assert record.num_bikes_available == raw["num_vehicles_available"]
        assert record.num_bikes_disabled == raw.get("num_vehicles_disabled")
        assert record.last_reported == rfc3339_to_posix(raw["last_reported"])
        assert record.is_returning is raw["is_returning"]
        assert sum(v.count for v in record.vehicle_types_available) == raw["num_vehicles_available"]
        _assert_nothing_dropped(raw, record, STATUS_FIELDS)
    assert status.quirks["vehicles_as_bikes"] == len(raw_status)
    assert status.quirks["rfc3339_time"] == len(raw_status)
    assert status.quirks["feed:rfc3339_time"] == 1


def _expected_name(entries: list[dict[str, str]], language: str) -> str:
    """The spec's rule, written out plainly: exact tag, then same primary language, then the first."""
    for entry in entries:
        if entry["language"].lower() == language.lower():
            return entry["text"]
    for entry in entries:
        if entry["language"].split("-")[0].lower() == language.split("-")[0].lower():
            return entry["text"]
    return entries[0]["text"]


@pytest.mark.parametrize("language", ["en", "fr", "fr-CA", "de"])
def test_v30_fixture_localized_names_pick_the_system_language(language: str) -> None:
    raw_info = fixture_doc("v3.0", STATION_INFORMATION)["data"]["stations"]
    information = normalize(fixture_doc("v3.0", STATION_INFORMATION), STATION_INFORMATION, language=language)
    assert information.quarantined == []
    fallbacks = 0
    for raw, record in zip(raw_info, information.records, strict=True):
        assert record.name == _expected_name(raw["name"], language)
        if "short_name" in raw:
            assert record.short_name == _expected_name(raw["short_name"], language)
        wanted = language.split("-")[0].lower()
        fallbacks += any(not any(e["language"].split("-")[0].lower() == wanted for e in raw[field])
                         for field in ("name", "short_name") if field in raw)
        _assert_nothing_dropped(raw, record, INFORMATION_FIELDS)
    assert information.quirks["localized_name"] == len(raw_info)
    assert information.quirks["language_fallback"] == fallbacks
    virtual = [record for record in information.records if record.is_virtual_station]
    assert virtual and all(record.capacity is None for record in virtual)  # dockless zones have no capacity


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
    ("bike count as string", STATION_STATUS,
     lambda raw: raw.update({k: str(v) for k, v in raw.items() if k in ("num_bikes_available",
                                                                        "num_vehicles_available")}),
     "invalid_type:{bikes}"),
    ("fractional dock count", STATION_STATUS, _set("num_docks_available", 2.5), "invalid_value:num_docks_available"),
    ("flag 2", STATION_STATUS, _set("is_returning", 2), "invalid_value:is_returning"),
    ("flag as string", STATION_STATUS, _set("is_returning", "true"), "invalid_type:is_returning"),
    ("blank station_id", STATION_STATUS, _set("station_id", "  "), "invalid_value:station_id"),
    ("station_id as object", STATION_STATUS, _set("station_id", {"id": 1}), "invalid_type:station_id"),
    ("last_reported as words", STATION_STATUS, _set("last_reported", "a minute ago"),
     "invalid_value:last_reported"),
    ("last_reported negative", STATION_STATUS, _set("last_reported", -1), "invalid_value:last_reported"),
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
    bikes = "num_vehicles_available" if doc.get("version", "1.0").startswith("3.") else "num_bikes_available"
    assert len(normalized.quarantined) == 1
    quarantined = normalized.quarantined[0]
    assert reason.format(bikes=bikes) in quarantined.reasons
    assert json.loads(quarantined.raw) == stations[target]  # kept whole, as the feed sent it
    assert (quarantined.system_id, quarantined.feed) == (SYSTEM, feed)
    assert quarantined.last_updated == normalized.last_updated
    assert len(normalized.records) == len(stations) - 1


def test_a_record_collects_every_problem() -> None:
    doc = real_doc(STATION_STATUS)
    raw = doc["data"]["stations"][0]
    del raw["num_bikes_available"]
    raw["is_installed"] = "yes"
    raw["num_docks_available"] = None  # optional: null is just absent
    quarantined = normalize(doc, STATION_STATUS).quarantined
    assert [q.reasons for q in quarantined] == [["missing_field:num_bikes_available", "invalid_type:is_installed"]]
    assert quarantined[0].station_id == raw["station_id"]


@pytest.mark.parametrize("junk", ["station", 42, None, ["a", "list"], True])
def test_non_object_station_entries_are_quarantined(junk: Any) -> None:
    doc = fixture_doc("v2.3", STATION_STATUS)
    doc["data"]["stations"].insert(2, junk)
    normalized = normalize(doc, STATION_STATUS)
    assert [(q.reasons, q.station_id, json.loads(q.raw)) for q in normalized.quarantined] == [
        (["invalid_type:station"], None, junk)]
    assert len(normalized.records) == 5


# --------------------------------------------------------------------------- vendor quirks accepted

VENDOR_QUIRKS: list[tuple[str, str, Callable[[dict[str, Any]], None], str, Callable[[Any, dict[str, Any]], bool]]] = [
    ("integral float count", STATION_STATUS, _set("num_docks_available", 7.0), "float_as_int",
     lambda record, raw: record.num_docks_available == 7 and type(record.num_docks_available) is int),
    ("numeric station_id", STATION_STATUS, _set("station_id", 4711), "numeric_id",
     lambda record, raw: record.station_id == "4711"),
    ("last_reported in milliseconds", STATION_STATUS, _set("last_reported", 1710335000123), "ms_timestamp",
     lambda record, raw: record.last_reported == 1710335000),
    ("last_reported as float", STATION_STATUS, _set("last_reported", 1710335000.9), "float_time",
     lambda record, raw: record.last_reported == 1710335000),
    ("last_reported as RFC 3339 in a 1.x/2.x feed", STATION_STATUS, _set("last_reported", "2024-03-13T13:03:20Z"),
     "rfc3339_time", lambda record, raw: record.last_reported == rfc3339_to_posix("2024-03-13T13:03:20Z")),
    ("0/1 flags", STATION_STATUS, lambda raw: raw.update(is_installed=1, is_renting=0, is_returning=1),
     "int_as_bool", lambda record, raw: (record.is_installed, record.is_renting, record.is_returning)
     == (True, False, True)),
    ("3.x vehicles in an older feed", STATION_STATUS,
     lambda raw: raw.update(num_vehicles_available=raw.pop("num_bikes_available", None)
                            or raw.pop("num_vehicles_available", 0)),
     "vehicles_as_bikes", lambda record, raw: record.num_bikes_available == raw["num_vehicles_available"]),
    ("localized name in an older feed", STATION_INFORMATION,
     _set("name", [{"text": "Quai", "language": "fr"}, {"text": "Pier", "language": "en"}]), "localized_name",
     lambda record, raw: record.name == "Pier"),
    ("numeric region_id", STATION_INFORMATION, _set("region_id", 71), "numeric_id",
     lambda record, raw: record.region_id == "71"),
    ("0/1 is_virtual_station", STATION_INFORMATION, _set("is_virtual_station", 1), "int_as_bool",
     lambda record, raw: record.is_virtual_station is True),
    ("integer coordinates", STATION_INFORMATION, lambda raw: raw.update(lat=40, lon=-74), None,
     lambda record, raw: (record.lat, record.lon) == (40.0, -74.0) and type(record.lat) is float),
]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(("feed", "mutate", "quirk", "check"), [case[1:] for case in VENDOR_QUIRKS],
                         ids=[case[0] for case in VENDOR_QUIRKS])
def test_vendor_quirk_is_normalized_and_counted(dataset: str, feed: str, mutate: Callable[[dict[str, Any]], None],
                                                quirk: str | None,
                                                check: Callable[[Any, dict[str, Any]], bool]) -> None:
    doc = DATASETS[dataset](feed)
    baseline = normalize(copy.deepcopy(doc), feed).quirks
    stations = doc["data"]["stations"]
    target = _first(stations)
    mutate(stations[target])
    normalized = normalize(doc, feed)
    assert normalized.quarantined == []
    assert check(normalized.records[target], stations[target])
    if quirk is not None:
        assert normalized.quirks[quirk] >= 1
        assert normalized.quirks[quirk] - baseline[quirk] in (0, 1)  # at most this one record more
    assert msgspec.json.decode(msgspec.json.encode(normalized.records[target]))  # still encodes for Kafka


def test_both_spellings_present_keeps_the_other_in_extras() -> None:
    doc = fixture_doc("v2.3", STATION_STATUS)
    raw = doc["data"]["stations"][0]
    raw["num_vehicles_available"] = raw["num_bikes_available"] + 1
    record = normalize(doc, STATION_STATUS).records[0]
    assert record.num_bikes_available == raw["num_bikes_available"]  # the 2.x spelling in a 2.x feed
    assert record.extras["num_vehicles_available"] == raw["num_vehicles_available"]


def test_normalizers_refuse_the_other_feed() -> None:
    with pytest.raises(ValueError):
        normalize_information(parse_feed(real_body(STATION_STATUS), STATION_STATUS), SYSTEM, 0.0)
    with pytest.raises(ValueError):
        parse_feed(b"{}", "free_bike_status")
