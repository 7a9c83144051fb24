"""The quality rules, one table row per rule, run on the real Citi Bike snapshots and on the 2.3 / 3.0 fixtures.

Each row mutates one record of an otherwise unchanged feed and checks that exactly that record
gains the rule's reason (and that nothing else changes beyond the row's declared side effects).
The real-data tests recompute the expected quarantine from the raw JSON with the config's thresholds.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from gbfs_testing import ValidationResult, by_station, encode, fixture_doc, is_v3, posix, real_doc, rows, validate

from citibikes.config import QualityConfig
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.gbfs.normalize import Normalized, normalize_information, normalize_status
from citibikes.gbfs.parse import parse_feed
from citibikes.quality import (
    MAX_PLAUSIBLE_COUNT,
    REASONS,
    Described,
    information_rules,
    status_rules,
)
from citibikes.replay.recordings import recorded

CONFIG = QualityConfig()
FETCH_DELAY_S = 5.0


DATASETS: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]] = {
    "citibike-1.1": lambda: (real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)),
    "fixture-2.3": lambda: (fixture_doc("v2.3", STATION_INFORMATION), fixture_doc("v2.3", STATION_STATUS)),
    "fixture-3.0": lambda: (fixture_doc("v3.0", STATION_INFORMATION), fixture_doc("v3.0", STATION_STATUS)),
}


def header_time(doc: dict[str, Any]) -> int:
    return posix(doc["last_updated"])


def normalized(doc: dict[str, Any], feed: str, fetched_at: float | None = None) -> Normalized:
    """One feed parsed and normalized, fetched ``FETCH_DELAY_S`` after its own last_updated unless
    ``fetched_at`` says when."""
    when = header_time(doc) + FETCH_DELAY_S if fetched_at is None else fetched_at
    parsed = parse_feed(encode(doc), feed)
    if feed == STATION_STATUS:
        return normalize_status(parsed, "sys", when)
    return normalize_information(parsed, "sys", when, language="en")


def run(information: dict[str, Any] | None, status: dict[str, Any] | None, *, fetched_at: float | None = None,
        config: QualityConfig = CONFIG, **kwargs: Any) -> ValidationResult:
    """Parse, normalize and validate (each feed fetched as :func:`normalized` says)."""
    info = normalized(information, STATION_INFORMATION, fetched_at) if information is not None else None
    status_ = normalized(status, STATION_STATUS, fetched_at) if status is not None else None
    return validate(info, status_, config=config, **kwargs)


def valid_ids(result: ValidationResult, feed: str = STATION_STATUS) -> list[str]:
    validated = result.information if feed == STATION_INFORMATION else result.status
    return validated.table["station_id"].to_pylist()


def reasons_by_record(result: ValidationResult) -> dict[tuple[str, str | None, str], list[str]]:
    """(feed, station_id, raw) -> reasons; raw tells copies of one station apart."""
    return {(q.feed, q.station_id, q.raw): q.reasons for q in result.quarantined}


def _reasons_of(result: ValidationResult, station_id: str) -> list[str]:
    return [reason for q in result.quarantined if q.station_id == station_id for reason in q.reasons]


def _virtual_ids(information: dict[str, Any]) -> set[str]:
    return {raw["station_id"] for raw in information["data"]["stations"] if raw.get("is_virtual_station") is True}


# --------------------------------------------------------------------------- one table row per rule


@dataclass
class Dataset:
    information: dict[str, Any]
    status: dict[str, Any]

    @property
    def v3(self) -> bool:
        return is_v3(self.status)

    @property
    def bikes_key(self) -> str:
        return "num_vehicles_available" if self.v3 else "num_bikes_available"

    def time(self, seconds: float) -> int | str:
        """A last_reported value in this feed's own spelling."""
        if self.v3:
            return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
        return int(seconds)

    def info(self, station_id: str) -> dict[str, Any]:
        return next(raw for raw in self.information["data"]["stations"] if raw["station_id"] == station_id)

    def virtual(self, raw: dict[str, Any]) -> bool:
        return self.info(raw["station_id"]).get("is_virtual_station") is True

    @property
    def fetched_at(self) -> float:
        return header_time(self.status) + FETCH_DELAY_S


@dataclass
class Rule:
    name: str
    feed: str
    reason: str
    mutate: Callable[[Dataset, dict[str, Any]], None]
    """Changes the target record (a raw dict of ``feed``) in place; may change the dataset too."""
    suits: Callable[[Dataset, dict[str, Any]], bool] = lambda data, raw: True
    side_effects: set[tuple[str, str]] = field(default_factory=set)
    """(feed, reason) that other records of the target station may gain as a consequence."""
    copy_is_target: bool = False


def _set(key: str, value: Any) -> Callable[[Dataset, dict[str, Any]], None]:
    return lambda data, raw: raw.__setitem__(key, value)


def _delete(key: str) -> Callable[[Dataset, dict[str, Any]], None]:
    return lambda data, raw: raw.pop(key)


def _capacity(data: Dataset, raw: dict[str, Any]) -> int | None:
    return data.info(raw["station_id"]).get("capacity")


def _exceed_capacity_by(extra: int) -> Callable[[Dataset, dict[str, Any]], None]:
    def mutate(data: Dataset, raw: dict[str, Any]) -> None:
        others = sum(raw.get(key) or 0 for key in ("num_docks_available", "num_bikes_disabled",
                                                    "num_vehicles_disabled", "num_docks_disabled"))
        raw[data.bikes_key] = _capacity(data, raw) + CONFIG.capacity_tolerance + extra - others
    return mutate


def _duplicate(data: Dataset, raw: dict[str, Any], feed: str) -> None:
    doc = data.status if feed == STATION_STATUS else data.information
    copy_ = copy.deepcopy(raw)
    copy_["copy"] = True  # a vendor extra, so the copy's raw JSON differs from the original's
    doc["data"]["stations"].append(copy_)


RULES = [
    Rule("lat out of range", STATION_INFORMATION, "lat_out_of_range", _set("lat", 95.5)),
    Rule("lon out of range", STATION_INFORMATION, "lon_out_of_range", _set("lon", -190.0)),
    Rule("null island", STATION_INFORMATION, "null_island", lambda data, raw: raw.update(lat=0, lon=0.0)),
    Rule("swapped coordinates", STATION_INFORMATION, "coordinates_transposed",
         lambda data, raw: raw.update(lat=raw["lon"], lon=raw["lat"])),
    Rule("negative capacity", STATION_INFORMATION, "negative_count:capacity", _set("capacity", -3),
         suits=lambda data, raw: "capacity" in raw),
    Rule("absurd capacity", STATION_INFORMATION, "count_too_large:capacity", _set("capacity", 10**7),
         suits=lambda data, raw: "capacity" in raw),
    Rule("duplicate information", STATION_INFORMATION, "duplicate_station_id",
         lambda data, raw: _duplicate(data, raw, STATION_INFORMATION), copy_is_target=True),
    Rule("negative bikes", STATION_STATUS, "negative_count:num_bikes_available",
         lambda data, raw: raw.__setitem__(data.bikes_key, -1)),
    Rule("negative docks", STATION_STATUS, "negative_count:num_docks_available", _set("num_docks_available", -2),
         suits=lambda data, raw: "num_docks_available" in raw),
    Rule("negative vehicle type count", STATION_STATUS, "negative_count:vehicle_types_available",
         _set("vehicle_types_available", [{"vehicle_type_id": "bike", "count": -1}])),
    Rule("absurd vehicle type count", STATION_STATUS, "count_too_large:vehicle_types_available",
         _set("vehicle_types_available", [{"vehicle_type_id": "bike", "count": MAX_PLAUSIBLE_COUNT + 1}])),
    Rule("absurd bikes", STATION_STATUS, "count_too_large:num_bikes_available",
         lambda data, raw: raw.__setitem__(data.bikes_key, MAX_PLAUSIBLE_COUNT + 1)),
    Rule("more than capacity", STATION_STATUS, "capacity_exceeded", _exceed_capacity_by(1),
         suits=lambda data, raw: bool(_capacity(data, raw))),
    Rule("more e-bikes than bikes", STATION_STATUS, "ebikes_exceed_bikes",
         lambda data, raw: raw.__setitem__("num_ebikes_available", raw[data.bikes_key] + 1)),
    Rule("docked station without num_docks_available", STATION_STATUS, "missing_field:num_docks_available",
         _delete("num_docks_available"),
         suits=lambda data, raw: "num_docks_available" in raw and not data.virtual(raw)),
    Rule("docked station with null num_docks_available", STATION_STATUS, "missing_field:num_docks_available",
         _set("num_docks_available", None), suits=lambda data, raw: not data.virtual(raw)),
    Rule("status without last_reported", STATION_STATUS, "missing_field:last_reported", _delete("last_reported")),
    Rule("status with null last_reported", STATION_STATUS, "missing_field:last_reported",
         _set("last_reported", None)),
    Rule("never reported (86400)", STATION_STATUS, "last_reported_sentinel", _set("last_reported", 86400)),
    Rule("never reported (0)", STATION_STATUS, "last_reported_sentinel", _set("last_reported", 0)),
    Rule("reported long ago", STATION_STATUS, "last_reported_too_old",
         lambda data, raw: raw.__setitem__("last_reported", data.time(
             header_time(data.status) - CONFIG.max_report_age_s - 1))),
    Rule("reported in the future", STATION_STATUS, "last_reported_in_future",
         lambda data, raw: raw.__setitem__("last_reported", data.time(data.fetched_at + CONFIG.max_future_skew_s + 1))),
    Rule("duplicate status", STATION_STATUS, "duplicate_station_id",
         lambda data, raw: _duplicate(data, raw, STATION_STATUS), copy_is_target=True),
    Rule("status for an unknown station", STATION_STATUS, "unknown_station", _set("station_id", "ghost-station")),
]


def _apply(dataset: str, rule: Rule) -> tuple[ValidationResult, ValidationResult, dict[str, Any], dict[str, Any]]:
    """Baseline result, mutated result, the target record before and after the mutation."""
    information, status = DATASETS[dataset]()
    baseline = run(information, status)
    valid = set(valid_ids(baseline, rule.feed))
    data = Dataset(copy.deepcopy(information), copy.deepcopy(status))
    stations = (data.information if rule.feed == STATION_INFORMATION else data.status)["data"]["stations"]
    target = next((raw for raw in stations if raw["station_id"] in valid and rule.suits(data, raw)), None)
    assert target is not None, f"{dataset} has no valid record rule {rule.name!r} can be applied to"
    before = copy.deepcopy(target)
    rule.mutate(data, target)
    after = stations[-1] if rule.copy_is_target else target
    return baseline, run(data.information, data.status), before, after


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_rule_quarantines_exactly_the_broken_record(dataset: str, rule: Rule) -> None:
    baseline, result, before, after = _apply(dataset, rule)
    flagged = reasons_by_record(result)
    target_key = next(key for key in flagged if key[0] == rule.feed and json.loads(key[2]) == after)
    assert rule.reason in flagged[target_key]
    assert flagged[target_key] == sorted(set(flagged[target_key]), key=flagged[target_key].index)  # no repeats
    # nothing else changed, apart from the rule's declared side effects
    unchanged = reasons_by_record(baseline)
    for key, reasons in flagged.items():
        if key == target_key:
            continue
        expected = unchanged.get(key, [])
        extra = [reason for reason in reasons if reason not in expected]
        assert all((key[0], reason) in rule.side_effects for reason in extra), (key[:2], extra)
    assert len(valid_ids(result, rule.feed)) == len(valid_ids(baseline, rule.feed)) - (not rule.copy_is_target)
    if rule.copy_is_target:  # the first copy stays valid
        assert before["station_id"] in valid_ids(result, rule.feed)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(("name", "mutate", "valid"), [
    ("capacity exceeded by exactly the tolerance", _exceed_capacity_by(0), True),
    ("capacity exceeded by one more", _exceed_capacity_by(1), False),
    ("reported exactly max_report_age_s ago",
     lambda data, raw: raw.__setitem__("last_reported", data.time(header_time(data.status) - CONFIG.max_report_age_s)),
     True),
    ("reported exactly max_future_skew_s ahead",
     lambda data, raw: raw.__setitem__("last_reported", data.time(data.fetched_at + CONFIG.max_future_skew_s)), True),
])
def test_rule_thresholds_are_inclusive(dataset: str, name: str, mutate: Callable[[Dataset, dict[str, Any]], None],
                                       valid: bool) -> None:
    information, status = DATASETS[dataset]()
    data = Dataset(information, status)
    baseline_valid = set(valid_ids(run(information, status)))
    target = next(raw for raw in status["data"]["stations"]
                  if raw["station_id"] in baseline_valid and _capacity(data, raw))
    mutate(data, target)
    result = run(information, status)
    assert (target["station_id"] in valid_ids(result)) is valid


def test_a_record_keeps_every_reason_that_applies() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    raw = status["data"]["stations"][100]
    raw.update(num_docks_available=-1, num_ebikes_available=raw["num_bikes_available"] + 1, last_reported=86400)
    status["data"]["stations"].append(dict(raw, legacy_id="copy"))
    result = run(information, status)
    reasons = [q.reasons for q in result.quarantined if q.station_id == raw["station_id"]]
    assert reasons == [
        ["negative_count:num_docks_available", "ebikes_exceed_bikes", "last_reported_sentinel"],
        ["negative_count:num_docks_available", "ebikes_exceed_bikes", "last_reported_sentinel",
         "duplicate_station_id"],
    ]


def test_a_rule_rejection_keeps_the_raw_record_whole() -> None:
    information, status = fixture_doc("v3.0", STATION_INFORMATION), fixture_doc("v3.0", STATION_STATUS)
    raw = status["data"]["stations"][0]
    raw["num_docks_available"] = -4
    result = run(information, status)
    (quarantined,) = result.quarantined
    assert json.loads(quarantined.raw) == raw and list(json.loads(quarantined.raw)) == sorted(raw)
    assert (quarantined.feed, quarantined.station_id, quarantined.system_id) == (STATION_STATUS, raw["station_id"],
                                                                                 "sys")
    assert quarantined.last_updated == header_time(status)


@pytest.mark.parametrize("broken_first", [True, False])
def test_a_copy_after_a_record_normalization_rejected_is_a_later_copy(broken_first: bool) -> None:
    """The first copy of a station in a feed is its record even when it cannot be normalized: a valid copy after it
    is quarantined as ``duplicate_station_id`` (one record per station and feed, in the lake and the analytics)."""
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    stations = status["data"]["stations"]
    valid = dict(stations[100])
    broken = dict(valid, last_reported=None)
    stations[100:101] = [broken, valid] if broken_first else [valid, broken]
    result = run(information, status)
    reasons = [q.reasons for q in result.quarantined if q.station_id == valid["station_id"]]
    if broken_first:
        assert reasons == [["missing_field:last_reported"], ["duplicate_station_id"]]
        assert valid["station_id"] not in valid_ids(result)
    else:
        assert reasons == [["missing_field:last_reported"]] and valid["station_id"] in valid_ids(result)


def test_a_quarantined_status_record_keeps_the_counts_that_could_be_read() -> None:
    """Issue 16: the service analytics counts quarantined records as published, so the quarantine keeps their
    counts and flags; a value that could not be read (a string, a count too large for the lake) is None."""
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    sentinel, broken, huge = status["data"]["stations"][100:103]
    sentinel.update(last_reported=86400, num_bikes_available=0, is_renting=1)
    broken.update(num_docks_available="3", is_returning=0)
    huge.update(num_bikes_available=10**12)
    result = run(information, status)
    by_id = {q.station_id: q for q in result.quarantined}
    kept = by_id[sentinel["station_id"]]
    assert (kept.num_bikes_available, kept.num_bikes_disabled, kept.num_docks_available, kept.is_renting,
            kept.is_returning) == (0, sentinel["num_bikes_disabled"], sentinel["num_docks_available"], True,
                                   bool(sentinel["is_returning"]))
    assert by_id[broken["station_id"]].reasons == ["invalid_type:num_docks_available"]
    assert (by_id[broken["station_id"]].num_docks_available, by_id[broken["station_id"]].is_returning) == (None, False)
    assert by_id[huge["station_id"]].num_bikes_available is None
    assert by_id[huge["station_id"]].num_docks_available == huge["num_docks_available"]


def test_every_reason_code_is_documented() -> None:
    documented = [re.escape(code).replace(re.escape("<field>"), r"[a-z_]+") for code in REASONS]
    assert all(rule.reason for rule in RULES)
    for rule in RULES:
        assert any(re.fullmatch(pattern, rule.reason) for pattern in documented), rule.reason
    assert "stale_feed" in REASONS and "no_status" not in REASONS


# --------------------------------------------------------------------------- issue #13: virtual stations, orphans


@pytest.mark.parametrize("dataset", ["fixture-2.3", "fixture-3.0"])
def test_virtual_stations_need_not_report_docks(dataset: str) -> None:
    """GBFS 2.0+: num_docks_available is required "except for stations that have unlimited docking
    capacity" (is_virtual_station in station_information)."""
    information, status = DATASETS[dataset]()
    virtual = _virtual_ids(information)
    dockless = [raw["station_id"] for raw in status["data"]["stations"]
                if raw["station_id"] in virtual and "num_docks_available" not in raw]
    assert dockless  # the fixtures have such stations
    result = run(information, status)
    assert result.quarantined == []
    table = by_station(result.status.table)
    assert all(table[station_id]["num_docks_available"] is None for station_id in dockless)


def _real_with_virtual_station() -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """The real recording as a 2.3 feed where one station is virtual; both that one and a docked one
    stop reporting docks."""
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    for doc in (information, status):
        doc["version"] = "2.3"  # is_virtual_station came with 2.0
    valid = set(valid_ids(run(information, status)))
    virtual, docked = [raw for raw in status["data"]["stations"] if raw["station_id"] in valid][:2]
    for raw in (virtual, docked):
        del raw["num_docks_available"]
    next(raw for raw in information["data"]["stations"]
         if raw["station_id"] == virtual["station_id"])["is_virtual_station"] = True
    return information, status, virtual["station_id"], docked["station_id"]


def test_real_feed_missing_docks_quarantined_unless_the_station_is_virtual() -> None:
    information, status, virtual, docked = _real_with_virtual_station()
    result = run(information, status)
    assert virtual in valid_ids(result)
    assert _reasons_of(result, docked) == ["missing_field:num_docks_available"]
    assert _reasons_of(result, virtual) == []
    assert result.summary.quarantined_by_reason["missing_field:num_docks_available"] == 1


def test_virtual_stations_are_known_from_the_description_given_or_remembered() -> None:
    information, status, virtual, docked = _real_with_virtual_station()
    together = run(information, status)
    described = Described.of(information_rules(normalized(information, STATION_INFORMATION)))
    assert described.virtual.to_pylist() == [virtual]
    remembered = Described.from_builtins(json.loads(json.dumps(described.to_builtins())))  # the state is JSON
    assert remembered.virtual.to_pylist() == [virtual]
    status_only = [(q.station_id, q.reasons) for q in together.quarantined if q.feed == STATION_STATUS]
    for known in (described, remembered):
        alone = run(None, status, known=known)
        assert [(q.station_id, q.reasons) for q in alone.quarantined] == status_only
    by_hand = Described.from_builtins({"capacity": {raw["station_id"]: raw["capacity"]
                                                    for raw in information["data"]["stations"]},
                                       "virtual": [virtual]})
    assert [(q.station_id, q.reasons) for q in run(None, status, known=by_hand).quarantined] == status_only
    forgotten = Described.from_builtins({"capacity": by_hand.to_builtins()["capacity"], "virtual": []})
    assert set(_reasons_of(run(None, status, known=forgotten), virtual)) == {"missing_field:num_docks_available"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_description_without_status_is_an_orphan_not_quarantined(dataset: str) -> None:
    """A new station, or one out of service, may be missing from station_status: its description stays valid."""
    information, status = DATASETS[dataset]()
    removed = status["data"]["stations"].pop(1)["station_id"]
    result = run(information, status)
    assert removed in valid_ids(result, STATION_INFORMATION)
    assert len(valid_ids(result, STATION_INFORMATION)) == len(information["data"]["stations"])
    assert not [q for q in result.quarantined if q.feed == STATION_INFORMATION]
    assert result.summary.orphans == {"status_without_information": 0, "information_without_status": 1}


def test_status_quarantined_by_normalize_still_reports_its_station() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    del status["data"]["stations"][5]["num_bikes_available"]
    result = run(information, status)
    assert result.summary.quarantined_by_reason["missing_field:num_bikes_available"] == 1
    assert result.summary.orphans["information_without_status"] == 0


def test_status_for_an_unknown_station_is_an_orphan_both_ways() -> None:
    information, status = fixture_doc("v2.3", STATION_INFORMATION), fixture_doc("v2.3", STATION_STATUS)
    status["data"]["stations"][0]["station_id"] = "ghost"
    result = run(information, status)
    assert _reasons_of(result, "ghost") == ["unknown_station"]
    assert result.summary.orphans == {"status_without_information": 1, "information_without_status": 1}


def test_a_station_whose_description_was_rejected_is_still_described() -> None:
    """Its status is not an orphan; having no trusted capacity, the capacity rule skips it."""
    information, status = fixture_doc("v2.3", STATION_INFORMATION), fixture_doc("v2.3", STATION_STATUS)
    info = information["data"]["stations"][0]
    info["lat"] = 123.0
    raw = status["data"]["stations"][0]
    raw["num_bikes_available"] = info["capacity"] * 3  # would exceed a trusted capacity
    result = run(information, status)
    assert _reasons_of(result, info["station_id"]) == ["lat_out_of_range"]  # the description only
    assert raw["station_id"] in valid_ids(result)
    assert result.summary.orphans == {"status_without_information": 0, "information_without_status": 0}
    described = Described.of(result.information)
    assert described.to_builtins()["capacity"][info["station_id"]] is None


# --------------------------------------------------------------------------- issue #13: vehicle types


def _vehicle_type_ids(status: dict[str, Any]) -> set[str]:
    return {entry["vehicle_type_id"] for raw in status["data"]["stations"]
            for entry in raw.get("vehicle_types_available", [])}


@pytest.mark.parametrize("dataset", ["fixture-2.3", "fixture-3.0"])
def test_vehicle_type_not_in_vehicle_types_json_is_a_quirk(dataset: str) -> None:
    information, status = DATASETS[dataset]()
    known = Described.of(information_rules(normalized(information, STATION_INFORMATION)))
    defined = _vehicle_type_ids(status)
    undefined = sorted(defined)[-1]
    naming = sum(any(entry["vehicle_type_id"] == undefined for entry in raw.get("vehicle_types_available", []))
                 for raw in status["data"]["stations"])
    assert naming > 0
    unchecked = status_rules(normalized(status, STATION_STATUS), CONFIG, known=known)
    all_defined = status_rules(normalized(status, STATION_STATUS), CONFIG, known=known, vehicle_types=sorted(defined))
    one_missing = status_rules(normalized(status, STATION_STATUS), CONFIG, known=known,
                               vehicle_types=sorted(defined - {undefined}))
    assert "unknown_vehicle_type_id" not in unchecked.quirks and "unknown_vehicle_type_id" not in all_defined.quirks
    assert one_missing.quirks["unknown_vehicle_type_id"] == naming
    # a quirk: the station's own counts stay usable
    assert one_missing.quarantined == [] and rows(one_missing.table) == rows(unchecked.table)
    result = validate(normalized(information, STATION_INFORMATION), normalized(status, STATION_STATUS), config=CONFIG,
                      vehicle_types=sorted(defined - {undefined}))
    assert result.summary.quirks["unknown_vehicle_type_id"] == naming


def test_numeric_vehicle_type_ids_match_their_text() -> None:
    information, status = fixture_doc("v2.3", STATION_INFORMATION), fixture_doc("v2.3", STATION_STATUS)
    status["data"]["stations"][0]["vehicle_types_available"] = [{"vehicle_type_id": 7, "count": 7}]
    result = run(information, status, vehicle_types=sorted(_vehicle_type_ids(fixture_doc("v2.3", STATION_STATUS))
                                                           | {"7"}))
    assert "unknown_vehicle_type_id" not in result.summary.quirks
    assert result.summary.quirks["numeric_id"] == 1


# --------------------------------------------------------------------------- whole-feed rules


@pytest.mark.parametrize("dataset", DATASETS)
def test_stale_status_quarantines_every_record_of_that_feed(dataset: str) -> None:
    information, status = DATASETS[dataset]()
    status["data"]["stations"][0].pop("station_id")  # one record normalize already quarantined
    late = header_time(status) + CONFIG.max_feed_age_s + 1
    result = run(information, status, fetched_at=late)
    assert result.summary.feed_stale and result.status.table.num_rows == 0
    assert result.summary.stale_feeds == (STATION_STATUS,)
    assert len(result.quarantined) == len(status["data"]["stations"]) + result.summary.quarantined[STATION_INFORMATION]
    stale = [q for q in result.quarantined if q.feed == STATION_STATUS]
    assert len(stale) == len(status["data"]["stations"]) and all(q.reasons[-1] == "stale_feed" for q in stale)
    assert [q.reasons for q in result.quarantined if q.station_id is None] == [["missing_field:station_id",
                                                                                 "stale_feed"]]
    assert result.summary.feed_age_s == pytest.approx(late - header_time(status))
    on_time = run(information, status, fetched_at=header_time(status) + CONFIG.max_feed_age_s)
    assert not on_time.summary.feed_stale and on_time.status.table.num_rows


@pytest.mark.parametrize("dataset", DATASETS)
def test_old_station_information_is_not_stale(dataset: str) -> None:
    """Descriptions rarely change: many systems publish station_information hours or days old."""
    information, status = DATASETS[dataset]()
    fresh = run(information, status, reference_time=header_time(status))
    hours_before = header_time(status) - 6 * 3600
    information["last_updated"] = (hours_before if isinstance(information["last_updated"], int)
                                   else datetime.fromtimestamp(hours_before, timezone.utc).isoformat())
    old = run(information, status, reference_time=header_time(status))
    assert not old.summary.feed_stale and old.summary.stale_feeds == ()
    assert "stale_feed" not in old.summary.quarantined_by_reason
    assert old.summary.feed_ages_s[STATION_INFORMATION] == 6 * 3600  # its age is still reported
    assert old.summary.feed_age_s == old.summary.feed_ages_s[STATION_STATUS] == 0
    ids = valid_ids(fresh, STATION_INFORMATION)
    assert ids and valid_ids(old, STATION_INFORMATION) == ids  # valid, not quarantined
    assert valid_ids(old) == valid_ids(fresh) and old.summary.orphans == fresh.summary.orphans


def test_reference_time_overrides_fetched_at() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    now = status["last_updated"] + 5
    later = run(information, status, fetched_at=now, reference_time=now + CONFIG.max_feed_age_s + 1)
    assert later.summary.feed_stale
    # a clock ahead of fetched_at moves the "future" bound too
    raw = status["data"]["stations"][0]
    raw["last_reported"] = now + CONFIG.max_future_skew_s + 30
    assert "last_reported_in_future" in _reasons_of(run(information, status, fetched_at=now), raw["station_id"])
    assert "last_reported_in_future" not in _reasons_of(
        run(information, status, fetched_at=now, reference_time=now + 60), raw["station_id"])


def test_not_advancing_compares_with_the_previous_last_updated() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    previous = status["last_updated"]
    assert run(information, status, previous_last_updated=previous).summary.not_advancing
    assert run(information, status, previous_last_updated=previous + 60).summary.not_advancing
    assert not run(information, status, previous_last_updated=previous - 60).summary.not_advancing
    assert not run(information, status).summary.not_advancing


def test_status_alone_uses_the_known_stations_for_orphans() -> None:
    status = real_doc(STATION_STATUS)
    ids = [raw["station_id"] for raw in status["data"]["stations"]]
    known = Described.from_builtins({"capacity": {station_id: None for station_id in ids[5:] + ["gone-1", "gone-2"]}})
    result = run(None, status, known=known)
    assert {q.station_id for q in result.quarantined if "unknown_station" in q.reasons} == set(ids[:5])
    assert result.summary.orphans == {"status_without_information": 5, "information_without_status": 2}
    unchecked = run(None, status)
    assert unchecked.summary.orphans == {"status_without_information": None, "information_without_status": None}
    assert not any("unknown_station" in q.reasons for q in unchecked.quarantined)
    assert not any("capacity_exceeded" in q.reasons for q in unchecked.quarantined)  # no capacities known


def test_known_capacities_judge_status_alone_as_together() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    capacities = {raw["station_id"]: raw["capacity"] for raw in information["data"]["stations"]}
    alone = run(None, status, known=Described.from_builtins({"capacity": capacities}))
    together = run(information, status)
    expected = {key: reasons for key, reasons in reasons_by_record(together).items() if key[0] == STATION_STATUS}
    assert reasons_by_record(alone) == expected
    assert "capacity_exceeded" in {reason for reasons in expected.values() for reason in reasons}
    assert alone.summary.orphans == together.summary.orphans


def test_information_alone_skips_the_orphan_check() -> None:
    information = real_doc(STATION_INFORMATION)
    result = run(information, None, known=Described.from_builtins({"capacity": {"unrelated": 3}}))
    assert len(valid_ids(result, STATION_INFORMATION)) == len(information["data"]["stations"])
    assert result.status is None
    assert result.summary.orphans == {"status_without_information": None, "information_without_status": None}
    assert result.summary.seen == {STATION_INFORMATION: len(information["data"]["stations"])}


def test_validate_needs_a_feed() -> None:
    with pytest.raises(ValueError):
        validate(None, None, config=CONFIG)


# --------------------------------------------------------------------------- the real Citi Bike feed


def _expected_status_quarantine(information: dict[str, Any], status: dict[str, Any],
                                 config: QualityConfig) -> dict[str, set[str]]:
    """The real feed's problems, recomputed from the raw JSON with the config's thresholds."""
    capacity = {raw["station_id"]: raw["capacity"] for raw in information["data"]["stations"]}
    oldest = status["last_updated"] - config.max_report_age_s
    expected: dict[str, set[str]] = {}
    for raw in status["data"]["stations"]:
        reasons = set()
        if raw["last_reported"] in config.last_reported_sentinels:
            reasons.add("last_reported_sentinel")
        elif raw["last_reported"] < oldest:
            reasons.add("last_reported_too_old")
        occupied = sum(raw[k] for k in ("num_bikes_available", "num_docks_available", "num_bikes_disabled",
                                        "num_docks_disabled"))
        if occupied > capacity[raw["station_id"]] + config.capacity_tolerance:
            reasons.add("capacity_exceeded")
        if reasons:
            expected[raw["station_id"]] = reasons
    return expected


@pytest.mark.parametrize("index", range(len(recorded(STATION_STATUS))))
def test_real_snapshot_quarantine_is_exactly_the_known_problems(index: int) -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS, index)
    result = run(information, status)
    expected = _expected_status_quarantine(information, status, CONFIG)
    got = {q.station_id: set(q.reasons) for q in result.quarantined}
    assert got == expected
    raw_count = len(status["data"]["stations"])
    summary = result.summary
    assert summary.seen == {STATION_INFORMATION: raw_count, STATION_STATUS: raw_count}
    assert summary.valid[STATION_STATUS] == raw_count - len(expected) == result.status.table.num_rows
    assert summary.valid[STATION_INFORMATION] == raw_count  # every description is valid
    assert summary.valid[STATION_STATUS] / raw_count > 0.99  # quirks are normalized, not rejected
    assert summary.orphans == {"status_without_information": 0, "information_without_status": 0}
    sentinels = [raw for raw in status["data"]["stations"] if raw["last_reported"] == 86400]
    assert summary.quarantined_by_reason["last_reported_sentinel"] == len(sentinels) > 0
    assert summary.quirks == {"int_as_bool": sum(type(raw["is_installed"]) is int
                                                 for raw in status["data"]["stations"])}
    for raw, row in zip((raw for raw in status["data"]["stations"] if raw["station_id"] not in expected),
                        rows(result.status.table), strict=True):
        assert row["station_id"] == raw["station_id"] and row["last_reported"] == raw["last_reported"]


def test_first_real_snapshot_figures() -> None:
    """The numbers the README quotes for the first recorded snapshot."""
    summary = run(real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)).summary
    assert summary.seen[STATION_STATUS] == 2208 and summary.valid[STATION_STATUS] == 2195
    assert summary.quarantined[STATION_STATUS] == 13
    assert summary.quarantined_by_reason == {"last_reported_sentinel": 7, "last_reported_too_old": 4,
                                             "capacity_exceeded": 2}


def test_real_capacity_tolerance_matters() -> None:
    """With zero tolerance the ~65 stations one or two over capacity would be quarantined too."""
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    strict = QualityConfig(capacity_tolerance=0)
    result = run(information, status, config=strict)
    expected = _expected_status_quarantine(information, status, strict)
    assert {q.station_id: set(q.reasons) for q in result.quarantined} == expected
    assert result.summary.quarantined_by_reason["capacity_exceeded"] > run(
        information, status).summary.quarantined_by_reason["capacity_exceeded"]


def test_real_out_of_service_stations_stay_valid() -> None:
    """is_installed/is_renting 0 is a state, not a data problem."""
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    result = run(information, status)
    problems = _expected_status_quarantine(information, status, CONFIG)
    out_of_service = {raw["station_id"] for raw in status["data"]["stations"]
                      if raw["is_renting"] == 0 and raw["station_id"] not in problems}
    assert out_of_service
    valid = by_station(result.status.table)
    assert all(valid[station_id]["is_renting"] is False for station_id in out_of_service)


def test_summary_is_json_ready_and_adds_up() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    status["data"]["stations"][3].pop("num_bikes_available")
    result = run(information, status)
    data = json.loads(json.dumps(result.summary.to_dict()))
    assert data["system_id"] == "sys" and data["version"] == status["version"]
    for feed in (STATION_INFORMATION, STATION_STATUS):
        assert data["seen"][feed] == data["valid"][feed] + data["quarantined"][feed]
    assert sum(data["quarantined"].values()) == len(result.quarantined)
    assert data["quarantined_by_reason"]["missing_field:num_bikes_available"] == 1
    assert sum(data["quarantined_by_reason"].values()) == sum(len(q.reasons) for q in result.quarantined)
    assert data["feed_age_s"] == FETCH_DELAY_S and data["feed_stale"] is False
