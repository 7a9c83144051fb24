"""Property-based tests: whatever bytes a vendor sends, parse/normalize/validate raise nothing but FeedError.

Hypothesis generates arbitrary JSON-shaped documents and, to get deep into the record paths, valid
feeds (real Citi Bike records, the 2.3 and 3.0 fixtures) with random fields replaced, removed,
added or duplicated. Besides "no other exception", every run checks the invariants the rest of the
pipeline relies on: every record is either valid or quarantined with documented reasons and its raw
JSON, valid records really satisfy the rules, and the fast path agrees with the generic path.
"""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citibikes.config import QualityConfig
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.gbfs.normalize import (
    FEED_ERROR_REASONS,
    QUIRKS,
    Normalized,
    ParsedFeed,
    _Context,
    _normalize_generic,
    _status_generic,
    normalize_information,
    normalize_status,
    parse_feed,
)
from citibikes.quality import MAX_PLAUSIBLE_COUNT, REASONS, ValidationResult, validate
from citibikes.replay.recordings import recorded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
BASE_TIME = 1_710_335_271
CONFIG = QualityConfig()
REASON_PATTERNS = [re.compile(re.escape(code).replace(re.escape("<field>"), "[a-z_]+")) for code in REASONS]
MANY = settings(max_examples=10_000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _citibike_pair(size: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:
    information = json.loads(recorded(STATION_INFORMATION)[0].read_bytes())
    status = json.loads(recorded(STATION_STATUS)[0].read_bytes())
    # a few ordinary stations plus the "never reported" ones, so sentinels are in play
    chosen = status["data"]["stations"][:size] + [s for s in status["data"]["stations"]
                                                  if s["last_reported"] == 86400][:2]
    ids = {s["station_id"] for s in chosen}
    information["data"]["stations"] = [s for s in information["data"]["stations"] if s["station_id"] in ids]
    status["data"]["stations"] = chosen
    return information, status


def _fixture_pair(version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return tuple(json.loads((FIXTURES / version / f"{feed}.json").read_text())  # type: ignore[return-value]
                 for feed in (STATION_INFORMATION, STATION_STATUS))


BASES = [_citibike_pair(), _fixture_pair("v2.3"), _fixture_pair("v3.0")]
KNOWN_KEYS = sorted({key for pair in BASES for doc in pair for station in doc["data"]["stations"] for key in station}
                    | {"num_vehicles_available", "num_vehicles_disabled", "num_bikes_available", "is_virtual_station"})

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
    st.sampled_from([0, 1, 2, -1, 86400, MAX_PLAUSIBLE_COUNT + 1, 2**63, 10**400, None, True, False, 1.0, 2.5, -0.0,
                     "", "  ", "0", "1", "true", "12", [], {}, [1], {"en": "x"},
                     "2024-03-13T13:07:51", "2024-02-30T10:00:00Z", "13/03/2024", "2024-03-13T13:07:51.5+01:00",
                     "2024-03-13 13:07:51z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]),
    st.builds(_rfc3339, times, st.integers(min_value=-12 * 60, max_value=14 * 60)),
    st.floats(min_value=-200, max_value=200, allow_nan=False),
    st.lists(st.fixed_dictionaries({"text": st.text(max_size=5) | json_scalars,
                                    "language": st.sampled_from(["en", "fr", "en-US", "", 3])}), max_size=3),
    st.lists(st.fixed_dictionaries({"vehicle_type_id": json_scalars, "count": st.integers(-2, 20) | json_scalars}),
             max_size=3),
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
        lambda: [{"text": value, "language": "fr"}, {"text": "x", "language": "en"}],  # localized (3.x)
        lambda: [{"text": value, "language": 5}, {"text": value}, {"language": "en"}, value],  # broken localized
        lambda: " " if isinstance(value, str) else value,  # blank text
    ]
    return perturbations[how % len(perturbations)]()


header_values = st.one_of(
    st.sampled_from(["1.0", "1.1", "2.0", "2.3", "3.0", "3.1-RC2", "4.0", "2.4", 60, -5, "60"]),
    times, times.map(lambda t: t * 1000), times.map(lambda t: _rfc3339(t, 0)), json_values,
)
HEADER_KEYS = ["version", "last_updated", "ttl", "data"]
RECORD_ACTIONS = ["perturb"] * 6 + ["set_existing"] * 2 + ["set_new", "delete", "replace", "duplicate",
                                                           "swap_coordinates"]
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


def _check_normalized(normalized: Normalized[Any], stations: list[Any]) -> None:
    assert normalized.seen == len(stations)
    documented = set(QUIRKS) | {"feed:float_time", "feed:ms_timestamp"}
    assert set(normalized.quirks) <= documented, set(normalized.quirks) - documented
    assert len(normalized.sources) == len(normalized.records)
    for record in normalized.records:
        assert type(record.station_id) is str and record.station_id.strip()
        msgspec.json.encode(record)  # publishable
    for quarantined in normalized.quarantined:
        assert quarantined.reasons
        assert all(any(p.fullmatch(reason) for p in REASON_PATTERNS) for reason in quarantined.reasons), \
            quarantined.reasons
        json.loads(quarantined.raw)


def _check_fast_equals_generic(parsed: Any, normalized: Normalized[Any]) -> None:
    context = _Context("prop", parsed.version, parsed.last_updated, normalized.fetched_at)
    generic = _normalize_generic(parsed, context, _status_generic)
    assert normalized.records == generic.records
    assert normalized.quirks == generic.quirks
    assert [q.reasons for q in normalized.quarantined] == [q.reasons for q in generic.quarantined]


def _check_result(result: ValidationResult) -> None:
    for feed, records in ((STATION_INFORMATION, result.information), (STATION_STATUS, result.status)):
        if feed in result.summary.seen:
            assert result.summary.seen[feed] == result.summary.valid[feed] + result.summary.quarantined[feed]
            assert result.summary.valid[feed] == len(records)
    for record in result.information:
        assert -90 <= record.lat <= 90 and -180 <= record.lon <= 180
        assert (record.lat, record.lon) != (0, 0)
        assert record.capacity is None or 0 <= record.capacity <= MAX_PLAUSIBLE_COUNT
    for record in result.status:
        for count in (record.num_bikes_available, record.num_ebikes_available, record.num_bikes_disabled,
                      record.num_docks_available, record.num_docks_disabled):
            assert count is None or 0 <= count <= MAX_PLAUSIBLE_COUNT
        assert record.last_reported not in CONFIG.last_reported_sentinels
    for quarantined in result.quarantined:
        assert quarantined.reasons
        assert all(any(p.fullmatch(reason) for p in REASON_PATTERNS) for reason in quarantined.reasons)
    for ids in (
        [r.station_id for r in result.information],
        [r.station_id for r in result.status],
    ):
        assert len(ids) == len(set(ids))  # duplicates never pass
    json.dumps(result.summary.to_dict())


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
)
def test_any_feed_pair_raises_only_feed_error(base: int, plans: Any, headers: Any, damage: Any, wrong_urls: bool,
                                              language: str | None, fetch_offset: int, reference_offset: int | None,
                                              previous_offset: int | None, known_count: int) -> None:
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
        _check_normalized(info, parsed_info.stations)
    if parsed_status is not None and parsed_status.feed == STATION_STATUS:
        status_ = normalize_status(parsed_status, "prop", fetched_at)
        _check_normalized(status_, parsed_status.stations)
        _check_fast_equals_generic(parsed_status, status_)
    if info is not None or status_ is not None:
        _check_result(validate(info, status_, config=CONFIG, reference_time=reference_time,
                               previous_last_updated=previous))
    if status_ is not None:
        ids = [record.station_id for record in status_.records]
        known = set(ids[:known_count])  # some stations known, the rest orphans
        capacities = {sid: (known_count * 7 + i * 13) % 40 - 3 for i, sid in enumerate(ids)}  # plausible or not
        _check_result(validate(None, status_, config=CONFIG, known_station_ids=known))
        _check_result(validate(None, status_, config=CONFIG, known_station_ids=capacities))


@SOME
@given(json_values, st.sampled_from([STATION_INFORMATION, STATION_STATUS]))
def test_arbitrary_json_raises_only_feed_error(document: Any, feed: str) -> None:
    parsed = _parse(json.dumps(document).encode(), feed)
    if parsed is not None:
        normalized = (normalize_status if feed == STATION_STATUS else normalize_information)(parsed, "prop", 0.0)
        _check_normalized(normalized, parsed.stations)
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
        assert station["station_id"] not in {r.station_id for r in result.information}
