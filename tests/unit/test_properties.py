"""Property-based tests: whatever bytes a vendor sends, parse/normalize/validate raise nothing but FeedError.

Hypothesis generates arbitrary JSON-shaped documents and, to get deep into the record paths, valid
feeds (real Citi Bike records, the 2.3 and 3.0 fixtures) with random fields replaced, removed,
added or duplicated. Besides "no other exception", every run checks the invariants the rest of the
pipeline relies on: every record is either a row of the table or quarantined with documented
reasons and its raw JSON, quirks are documented and fit the feed's version, and the valid rows
really satisfy the rules (checked on the rows read back, not with the code under test).
"""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from gbfs_testing import ValidationResult, fixture_doc, real_doc, rows, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citibikes.config import QualityConfig
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import SCHEMAS, STATION_INFORMATION, STATION_STATUS
from citibikes.gbfs.normalize import QUIRKS, Normalized, normalize_information, normalize_status
from citibikes.gbfs.parse import FEED_ERROR_REASONS, ParsedFeed, parse_feed
from citibikes.quality import MAX_PLAUSIBLE_COUNT, REASONS, Described
from citibikes.replay.recordings import recorded

BASE_TIME = 1_710_335_271
CONFIG = QualityConfig()
REASON_PATTERNS = [re.compile(re.escape(code).replace(re.escape("<field>"), "[a-z_]+")) for code in REASONS]
DOCUMENTED_QUIRKS = set(QUIRKS) | {"feed:float_time", "feed:ms_timestamp", "feed:posix_time_in_v3"}
"""QUIRKS names feed:rfc3339_time and says "likewise" for the other header time quirks."""
NOT_IN_V3 = {"rfc3339_time", "localized_name", "vehicles_in_v2", "feed:rfc3339_time"}
ONLY_IN_V3 = {"posix_time_in_v3", "bikes_in_v3", "plain_name_in_v3", "feed:posix_time_in_v3"}
STATUS_COUNTS = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                 "num_docks_disabled")
MANY = settings(max_examples=4_000, deadline=None,  # about 25 s: CI has 25 minutes for everything
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _citibike_pair(size: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    # a few ordinary stations plus the "never reported" ones, so sentinels are in play
    chosen = status["data"]["stations"][:size] + [s for s in status["data"]["stations"]
                                                  if s["last_reported"] == 86400][:2]
    ids = {s["station_id"] for s in chosen}
    information["data"]["stations"] = [s for s in information["data"]["stations"] if s["station_id"] in ids]
    status["data"]["stations"] = chosen
    return information, status


def _fixture_pair(version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return fixture_doc(version, STATION_INFORMATION), fixture_doc(version, STATION_STATUS)


BASES = [_citibike_pair(), _fixture_pair("v2.3"), _fixture_pair("v3.0")]
KNOWN_KEYS = sorted({key for pair in BASES for doc in pair for station in doc["data"]["stations"] for key in station}
                    | {"num_vehicles_available", "num_vehicles_disabled", "num_bikes_available", "is_virtual_station"})
VEHICLE_TYPE_IDS = sorted({entry["vehicle_type_id"] for _, status in BASES for station in status["data"]["stations"]
                           for entry in station.get("vehicle_types_available", [])})

# --------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=4,
)


def _rfc3339(seconds: int, offset_minutes: int) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    return datetime.fromtimestamp(seconds, zone).isoformat()


times = st.integers(min_value=BASE_TIME - 90 * 86400, max_value=BASE_TIME + 3600)
# Any value a vendor might put in a field (st.one_of picks a branch uniformly, so few, broad branches).
field_values = st.one_of(
    st.integers(min_value=-3, max_value=60),
    st.sampled_from([0, 1, 2, -1, 86400, MAX_PLAUSIBLE_COUNT + 1, 2**31, 2**63, 10**400, None, True, False, 1.0, 2.5,
                     -0.0, "", "  ", "0", "1", "true", "12", [], {}, [1], {"en": "x"},
                     ["KEY", "creditcard"], ["bitcoin"], ["ApplePay", "cash"],
                     "2024-03-13T13:07:51", "2024-02-30T10:00:00Z", "13/03/2024", "2024-03-13T13:07:51.5+01:00",
                     "2024-03-13 13:07:51z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]),
    st.builds(_rfc3339, times, st.integers(min_value=-12 * 60, max_value=14 * 60)),
    st.floats(min_value=-200, max_value=200, allow_nan=False),
    st.lists(st.fixed_dictionaries({"text": st.text(max_size=5) | json_scalars,
                                    "language": st.sampled_from(["en", "fr", "en-US", "", 3])}), max_size=3),
    st.lists(st.fixed_dictionaries({"vehicle_type_id": st.sampled_from(VEHICLE_TYPE_IDS) | json_scalars,
                                    "count": st.integers(-2, 20) | json_scalars}), max_size=3),
    json_values,
)


def _perturb(value: Any, how: int) -> Any:
    """A near miss of a valid value: the usual ways a vendor gets one field wrong."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300
    perturbations = [
        lambda: -abs(value) - 1 if number else -1,  # negative count, time before 1970
        lambda: str(value),  # number or flag as text
        lambda: value + 0.5 if number else 0.5,  # fractional count, float time
        lambda: float(value) if number else 1.0,  # integral float
        lambda: None,  # null
        lambda: value * 1000 if number else value,  # milliseconds
        lambda: 2 if value in (0, 1) else value,  # flag out of range
        lambda: (not value) if isinstance(value, bool) else int(value == 1),  # bool <-> 0/1
        lambda: [value],  # wrapped in a list
        lambda: {"value": value},  # wrapped in an object
        lambda: 10**400,  # beyond any float
        lambda: 86400,  # Citi Bike's "never"
        lambda: "2024-03-13T13:07:51Z" if number else value,  # RFC 3339 instead of POSIX
        lambda: BASE_TIME - 60 if isinstance(value, str) else value,  # POSIX instead of RFC 3339
        lambda: [{"text": value, "language": "fr"}, {"text": "x", "language": "en"}],  # localized (3.x)
        lambda: [{"text": value, "language": 5}, {"text": value}, {"language": "en"}, value],  # broken localized
        lambda: " " if isinstance(value, str) else value,  # blank text
        lambda: [item.upper() if isinstance(item, str) else item for item in value]
        if isinstance(value, list) else value,  # rental methods in the other case
    ]
    return perturbations[how % len(perturbations)]()


header_values = st.one_of(
    st.sampled_from(["1.0", "1.1", "2.0", "2.3", "3.0", "3.1-RC2", "4.0", "2.4", 60, -5, "60"]),
    times, times.map(lambda t: t * 1000), times.map(lambda t: _rfc3339(t, 0)), json_values,
)
HEADER_KEYS = ["version", "last_updated", "ttl", "data"]
RECORD_ACTIONS = ["perturb"] * 6 + ["set_existing"] * 2 + ["set_new", "delete", "replace", "duplicate",
                                                           "swap_coordinates", "rename_v2_v3"]
EDIT_CHOICES = [("record", action) for action in RECORD_ACTIONS for _ in range(2)] + [
    ("header", None), ("header", None), ("header_delete", None), ("whole", None)]
# One edit, drawn in one go (few draws keep 10,000 examples fast): what to do; which record, key
# and perturbation (one small number each: Hypothesis favours small numbers, so no bit packing);
# a key name and a value in case they are needed.
edits = st.tuples(st.sampled_from(EDIT_CHOICES),
                  st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
                  st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), field_values)
edit_lists = st.lists(edits, max_size=4)
damages = st.sampled_from([("none", 0)] * 12 + [("truncate", 1), ("truncate", 7), ("truncate", 101), ("prefix_html", 0),
                                                ("prefix_gzip", 0), ("prefix_nul", 0), ("bom", 0)])
RENAMES = [("num_bikes_available", "num_vehicles_available"), ("num_bikes_disabled", "num_vehicles_disabled")]


def _edit_record(stations: list[Any], action: str, numbers: tuple[int, int, int], new_key: str, value: Any) -> None:
    if not stations:
        stations.append(value)
        return
    index, rest, how = numbers
    index %= len(stations)
    record = stations[index]
    if action == "replace" or not isinstance(record, dict):
        stations[index] = value
    elif action == "set_new" or not record:
        record[new_key] = value
    elif action == "duplicate":
        stations.insert(rest % (len(stations) + 1), copy.deepcopy(record))
    elif action == "swap_coordinates":
        record["lat"], record["lon"] = record.get("lon"), record.get("lat")
    elif action == "rename_v2_v3":  # the other version's name for a count
        v2, v3 = RENAMES[rest % len(RENAMES)]
        old, new = (v2, v3) if v2 in record else (v3, v2)
        if old in record:
            record[new] = record.pop(old)
    else:
        key = sorted(record)[rest % len(record)]
        if action == "delete":
            del record[key]
        elif action == "set_existing":
            record[key] = value
        else:
            record[key] = _perturb(record[key], how)


def _apply_edits(doc: dict[str, Any], plan: list[tuple[Any, ...]], header_value: Any) -> Any:
    """Random edits of a valid feed: mostly records, sometimes the header, rarely the whole document."""
    for (where, action), numbers, new_key, drawn in plan:
        value = copy.deepcopy(drawn)  # drawn values may be shared (sampled constants): never edit them in place
        data = doc.get("data")
        stations = data.get("stations") if isinstance(data, dict) else None
        if where == "record" and isinstance(stations, list):
            _edit_record(stations, action, numbers, new_key, value)
        elif where == "header":
            doc[HEADER_KEYS[numbers[0] % len(HEADER_KEYS)]] = copy.deepcopy(header_value)
        elif where == "header_delete":
            doc.pop(HEADER_KEYS[numbers[0] % len(HEADER_KEYS)], None)
        elif where == "whole":
            return value
    return doc


def _encode(doc: Any, damage: tuple[str, int]) -> bytes:
    body = json.dumps(doc).encode()
    kind, amount = damage
    prefixes = {"prefix_html": b"<html>", "prefix_gzip": b"\x1f\x8b", "prefix_nul": b"\x00", "bom": b"\xef\xbb\xbf"}
    if kind == "truncate":
        return body[: len(body) * amount // 113]
    return prefixes.get(kind, b"") + body


# --------------------------------------------------------------------------- invariants


def _parse(body: bytes, feed: str) -> ParsedFeed | None:
    try:
        return parse_feed(body, feed, system_id="prop")
    except FeedError as error:
        assert error.reason in FEED_ERROR_REASONS
        assert "\n" not in str(error)
        return None


def _documented(reasons: list[str]) -> bool:
    return bool(reasons) and all(any(p.fullmatch(reason) for p in REASON_PATTERNS) for reason in reasons)


def _text(record: Any) -> str:
    return json.dumps(record, sort_keys=True)


def _check_normalized(normalized: Normalized, parsed: ParsedFeed) -> None:
    records = parsed.records
    table = normalized.table
    assert normalized.seen == len(records) and table.schema == SCHEMAS[parsed.feed]
    # every record is a row of the table or quarantined whole, never both, never lost
    assert len(normalized.sources) == table.num_rows
    kept_and_quarantined = [_text(source) for source in normalized.sources]
    kept_and_quarantined += [_text(json.loads(q.raw)) for q in normalized.quarantined]
    assert sorted(kept_and_quarantined) == sorted(map(_text, records))
    for quarantined in normalized.quarantined:
        assert _documented(quarantined.reasons), quarantined.reasons
        assert (quarantined.system_id, quarantined.feed, quarantined.last_updated) == ("prop", parsed.feed,
                                                                                       parsed.last_updated)
    for source, row in zip(normalized.sources, rows(table), strict=True):
        assert type(source) is dict and str(source.get("station_id")) == row["station_id"]
        assert row["station_id"].strip() and row["last_updated"] == parsed.last_updated
    # quirks: documented, fitting the version, each record counted once
    quirks = normalized.quirks
    assert set(quirks) <= DOCUMENTED_QUIRKS, set(quirks) - DOCUMENTED_QUIRKS
    assert not set(quirks) & (NOT_IN_V3 if parsed.v3 else ONLY_IN_V3), (parsed.version, quirks)
    assert all(0 < count <= table.num_rows for quirk, count in quirks.items() if not quirk.startswith("feed:"))
    assert {quirk for quirk in quirks if quirk.startswith("feed:")} == {f"feed:{quirk}" for quirk in parsed.quirks}


def _check_result(result: ValidationResult, *, reference_time: float | None = None,
                  known: dict[str, Any] | None = None) -> None:
    """The valid rows satisfy the rules; ``known`` is what was passed as ``Described.from_builtins`` (when given)."""
    summary = result.summary
    for feed, validated in ((STATION_INFORMATION, result.information), (STATION_STATUS, result.status)):
        if validated is not None:
            assert summary.seen[feed] == summary.valid[feed] + summary.quarantined[feed] == validated.seen
            assert summary.valid[feed] == validated.table.num_rows
            assert validated.table.schema == SCHEMAS[feed]
    for quarantined in result.quarantined:
        assert _documented(quarantined.reasons), quarantined.reasons
        json.loads(quarantined.raw)
    capacity: dict[str, int | None] | None = None
    virtual: set[str] = set()
    if result.information is not None:
        information = rows(result.information.table)
        for row in information:
            assert -90 <= row["lat"] <= 90 and -180 <= row["lon"] <= 180
            assert (row["lat"], row["lon"]) != (0, 0)
            assert row["capacity"] is None or 0 <= row["capacity"] <= MAX_PLAUSIBLE_COUNT
        _assert_unique([row["station_id"] for row in information])
        capacity = {row["station_id"]: row["capacity"] for row in information}
        capacity.update({q.station_id: None for q in result.information.quarantined
                         if q.station_id is not None and q.station_id not in capacity})
        virtual = {row["station_id"] for row in information if row["is_virtual_station"]}
    elif known is not None:
        capacity, virtual = known["capacity"], set(known.get("virtual", ()))
    if result.status is not None:
        status = result.status
        status_rows = rows(status.table)
        if status.stale:
            assert not status_rows
        reference = status.fetched_at if reference_time is None else reference_time
        for row in status_rows:
            for count in STATUS_COUNTS:
                assert row[count] is None or 0 <= row[count] <= MAX_PLAUSIBLE_COUNT
            assert row["num_ebikes_available"] is None or row["num_ebikes_available"] <= row["num_bikes_available"]
            # docks are required but for virtual stations, once a description says which those are
            assert row["num_docks_available"] is not None or not capacity or row["station_id"] in virtual
            assert all(0 <= entry["count"] <= MAX_PLAUSIBLE_COUNT for entry in row["vehicle_types_available"] or [])
            assert row["last_reported"] not in CONFIG.last_reported_sentinels
            assert status.last_updated - CONFIG.max_report_age_s <= row["last_reported"]
            assert row["last_reported"] <= reference + CONFIG.max_future_skew_s
            if capacity is not None:
                assert row["station_id"] in capacity
                limit = capacity[row["station_id"]]
                occupied = sum(row[count] or 0 for count in STATUS_COUNTS if count != "num_ebikes_available")
                assert limit is None or occupied <= limit + CONFIG.capacity_tolerance
        _assert_unique([row["station_id"] for row in status_rows])
        if capacity is None:
            assert summary.orphans == {"status_without_information": None, "information_without_status": None}
    json.dumps(summary.to_dict())


def _assert_unique(ids: list[str]) -> None:
    assert len(ids) == len(set(ids))  # duplicates never pass


# --------------------------------------------------------------------------- the properties


BASE_BODIES = [tuple(msgspec.json.encode(doc) for doc in pair) for pair in BASES]


@MANY
@given(
    base=st.integers(0, len(BASES) - 1),
    plans=st.tuples(edit_lists, edit_lists),
    headers=st.tuples(header_values, header_values),
    damage=st.tuples(damages, damages),
    wrong_urls=st.sampled_from([False] * 5 + [True]),
    language=st.sampled_from(["en", "fr", None]),
    fetch_offset=st.integers(-3600, 3600),
    reference_offset=st.none() | st.integers(-600, 600),
    previous_offset=st.none() | st.integers(-100, 100),
    known_count=st.integers(0, 8),
    vehicle_types=st.none() | st.sets(st.sampled_from(VEHICLE_TYPE_IDS)),
)
def test_any_feed_pair_raises_only_feed_error(base: int, plans: Any, headers: Any, damage: Any, wrong_urls: bool,
                                              language: str | None, fetch_offset: int, reference_offset: int | None,
                                              previous_offset: int | None, known_count: int,
                                              vehicle_types: set[str] | None) -> None:
    documents = [_apply_edits(msgspec.json.decode(body), plan, header)
                 for body, plan, header in zip(BASE_BODIES[base], plans, headers)]
    fetched_at = BASE_TIME + fetch_offset + 0.25
    reference_time = None if reference_offset is None else fetched_at + reference_offset
    previous = None if previous_offset is None else BASE_TIME + previous_offset
    feeds = (STATION_STATUS, STATION_INFORMATION) if wrong_urls else (STATION_INFORMATION, STATION_STATUS)
    parsed_info, parsed_status = (_parse(_encode(doc, dmg), feed) for doc, dmg, feed in zip(documents, damage, feeds))
    info = status_ = None
    if parsed_info is not None and parsed_info.feed == STATION_INFORMATION:
        info = normalize_information(parsed_info, "prop", fetched_at, language=language)
        _check_normalized(info, parsed_info)
    if parsed_status is not None and parsed_status.feed == STATION_STATUS:
        status_ = normalize_status(parsed_status, "prop", fetched_at)
        _check_normalized(status_, parsed_status)
    if info is not None or status_ is not None:
        _check_result(validate(info, status_, config=CONFIG, reference_time=reference_time,
                               vehicle_types=vehicle_types, previous_last_updated=previous),
                      reference_time=reference_time)
    if status_ is not None:
        ids = status_.table["station_id"].to_pylist()
        # some stations known (the rest orphans), some of them virtual, capacities plausible or not
        capacities = {sid: (known_count * 7 + i * 13) % 40 - 3 for i, sid in enumerate(ids[:known_count])}
        known = {"capacity": {**capacities, "gone": 10}, "virtual": ids[: known_count // 2]}
        _check_result(validate(None, status_, config=CONFIG, known=Described.from_builtins(known)), known=known)
        _check_result(validate(None, status_, config=CONFIG))


@SOME
@given(json_values, st.sampled_from([STATION_INFORMATION, STATION_STATUS]))
def test_arbitrary_json_raises_only_feed_error(document: Any, feed: str) -> None:
    parsed = _parse(json.dumps(document).encode(), feed)
    if parsed is not None:
        normalized = (normalize_status if feed == STATION_STATUS else normalize_information)(parsed, "prop", 0.0)
        _check_normalized(normalized, parsed)
        _check_result(validate(normalized if feed == STATION_INFORMATION else None,
                               normalized if feed == STATION_STATUS else None, config=CONFIG))


@SOME
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_feed_error(body: bytes) -> None:
    _parse(body, STATION_STATUS)


REAL_STATUS = recorded(STATION_STATUS)[0].read_bytes()


@SOME
@given(st.integers(min_value=0, max_value=len(REAL_STATUS) - 1))
def test_real_body_cut_anywhere_is_a_feed_error(cut: int) -> None:
    try:
        parse_feed(REAL_STATUS[:cut], STATION_STATUS)
    except FeedError as error:
        assert error.reason in {"empty_body", "truncated_json", "not_json"}
    else:
        raise AssertionError("a cut body parsed")


@SOME
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_any_coordinates_are_judged_not_crashed_on(lat: float, lon: float) -> None:
    information, _ = _fixture_pair("v2.3")
    station = information["data"]["stations"][0]
    station.update(lat=lat, lon=lon)
    parsed = _parse(json.dumps(information).encode(), STATION_INFORMATION)  # json writes NaN/Infinity: not JSON
    if not (math.isfinite(lat) and math.isfinite(lon)):
        assert parsed is None
        return
    result = validate(normalize_information(parsed, "prop", float(BASE_TIME)), None, config=CONFIG)
    _check_result(result)
    plausible = -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0, 0)
    if not plausible:
        assert station["station_id"] not in result.information.table["station_id"].to_pylist()


counts = st.integers(-2, 40) | st.sampled_from([MAX_PLAUSIBLE_COUNT, MAX_PLAUSIBLE_COUNT + 1])
optional_counts = st.none() | counts


@settings(max_examples=2_000, deadline=None)
@given(bikes=counts, ebikes=optional_counts, bikes_disabled=optional_counts, docks=optional_counts,
       docks_disabled=optional_counts, capacity=st.none() | counts, virtual=st.booleans(),
       reported_offset=st.sampled_from([None, 0, -1, 1]) | st.integers(-8 * 86400, 60))
def test_status_rules_match_an_independent_judgement(bikes: int, ebikes: int | None, bikes_disabled: int | None,
                                                     docks: int | None, docks_disabled: int | None,
                                                     capacity: int | None, virtual: bool,
                                                     reported_offset: int | None) -> None:
    """One 2.3 station with any counts, capacity and last_reported: its reasons are exactly the rules'."""
    information, status = _fixture_pair("v2.3")
    description, raw = information["data"]["stations"][0], status["data"]["stations"][0]
    description.pop("capacity")
    description.update({"is_virtual_station": virtual} | ({} if capacity is None else {"capacity": capacity}))
    values = {"num_bikes_available": bikes, "num_ebikes_available": ebikes, "num_bikes_disabled": bikes_disabled,
              "num_docks_available": docks, "num_docks_disabled": docks_disabled}
    for key, value in values.items():
        raw.pop(key, None)
        if value is not None:
            raw[key] = value
    fetched_at = BASE_TIME + 5
    sentinel = reported_offset is None
    raw["last_reported"] = 86400 if sentinel else {
        0: BASE_TIME - CONFIG.max_report_age_s, -1: BASE_TIME - CONFIG.max_report_age_s - 1,
        1: fetched_at + CONFIG.max_future_skew_s + 1}.get(reported_offset, BASE_TIME + reported_offset)
    result = validate(normalize_information(parse_feed(json.dumps(information).encode(), STATION_INFORMATION),
                                            "prop", fetched_at),
                      normalize_status(parse_feed(json.dumps(status).encode(), STATION_STATUS), "prop", fetched_at),
                      config=CONFIG)

    expected = set()
    described = capacity is None or 0 <= capacity <= MAX_PLAUSIBLE_COUNT  # else the description is rejected
    if docks is None and not (virtual and described):  # a rejected description is not trusted to be virtual
        expected.add("missing_field:num_docks_available")
    for key, value in values.items():
        if value is not None and value < 0:
            expected.add(f"negative_count:{key}")
        if value is not None and value > MAX_PLAUSIBLE_COUNT:
            expected.add(f"count_too_large:{key}")
    if ebikes is not None and ebikes > bikes:
        expected.add("ebikes_exceed_bikes")
    occupied = bikes + sum(value or 0 for value in (docks, bikes_disabled, docks_disabled))
    if described and capacity is not None and occupied > capacity + CONFIG.capacity_tolerance:
        expected.add("capacity_exceeded")
    if sentinel:
        expected.add("last_reported_sentinel")
    elif raw["last_reported"] < BASE_TIME - CONFIG.max_report_age_s:
        expected.add("last_reported_too_old")
    elif raw["last_reported"] > fetched_at + CONFIG.max_future_skew_s:
        expected.add("last_reported_in_future")
    got = [q.reasons for q in result.quarantined if q.feed == STATION_STATUS]
    assert [set(reasons) for reasons in got] == ([expected] if expected else [])
    assert all(len(reasons) == len(set(reasons)) for reasons in got)
    assert (raw["station_id"] in result.status.table["station_id"].to_pylist()) is not expected
