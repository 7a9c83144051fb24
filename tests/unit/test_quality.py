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
from pathlib import Path
from typing import Any, Callable

import pytest

from citibikes.config import QualityConfig
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.gbfs.normalize import normalize_information, normalize_status, parse_feed
from citibikes.quality import MAX_PLAUSIBLE_COUNT, REASONS, ValidationResult, validate
from citibikes.replay.recordings import recorded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
CONFIG = QualityConfig()
FETCH_DELAY_S = 5.0


def real_doc(feed: str, index: int = 0) -> dict[str, Any]:
    return json.loads(recorded(feed)[index].read_bytes())


def fixture_doc(version: str, feed: str) -> dict[str, Any]:
    return json.loads((FIXTURES / version / f"{feed}.json").read_text())


DATASETS: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]] = {
    "citibike-1.1": lambda: (real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)),
    "fixture-2.3": lambda: (fixture_doc("v2.3", STATION_INFORMATION), fixture_doc("v2.3", STATION_STATUS)),
    "fixture-3.0": lambda: (fixture_doc("v3.0", STATION_INFORMATION), fixture_doc("v3.0", STATION_STATUS)),
}


def header_time(doc: dict[str, Any]) -> float:
    value = doc["last_updated"]
    return value if isinstance(value, int) else datetime.fromisoformat(value).timestamp()


def run(information: dict[str, Any] | None, status: dict[str, Any] | None, *, fetched_at: float | None = None,
        config: QualityConfig = CONFIG, **kwargs: Any) -> ValidationResult:
    """Parse, normalize and validate; each feed is fetched ``FETCH_DELAY_S`` after its own last_updated
    unless ``fetched_at`` says when both were fetched."""
    info = status_ = None
    if information is not None:
        parsed = parse_feed(json.dumps(information).encode(), STATION_INFORMATION)
        when = header_time(information) + FETCH_DELAY_S if fetched_at is None else fetched_at
        info = normalize_information(parsed, "sys", when, language="en")
    if status is not None:
        when = header_time(status) + FETCH_DELAY_S if fetched_at is None else fetched_at
        status_ = normalize_status(parse_feed(json.dumps(status).encode(), STATION_STATUS), "sys", when)
    return validate(info, status_, config=config, **kwargs)


def reasons_by_record(result: ValidationResult) -> dict[tuple[str, str | None, str], list[str]]:
    """(feed, station_id, raw) -> reasons; raw tells copies of one station apart."""
    return {(q.feed, q.station_id, q.raw): q.reasons for q in result.quarantined}


# --------------------------------------------------------------------------- one table row per rule


@dataclass
class Dataset:
    information: dict[str, Any]
    status: dict[str, Any]

    @property
    def v3(self) -> bool:
        return self.status.get("version", "1.0").startswith("3.")

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


def _remove_status(data: Dataset, raw: dict[str, Any]) -> None:
    data.status["data"]["stations"] = [s for s in data.status["data"]["stations"]
                                       if s["station_id"] != raw["station_id"]]


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
    Rule("information without status", STATION_INFORMATION, "no_status", _remove_status),
    Rule("negative bikes", STATION_STATUS, "negative_count:num_bikes_available",
         lambda data, raw: raw.__setitem__(data.bikes_key, -1)),
    Rule("negative docks", STATION_STATUS, "negative_count:num_docks_available", _set("num_docks_available", -2),
         suits=lambda data, raw: "num_docks_available" in raw),
    Rule("negative vehicle type count", STATION_STATUS, "negative_count:vehicle_types_available",
         _set("vehicle_types_available", [{"vehicle_type_id": "bike", "count": -1}])),
    Rule("absurd bikes", STATION_STATUS, "count_too_large:num_bikes_available",
         lambda data, raw: raw.__setitem__(data.bikes_key, MAX_PLAUSIBLE_COUNT + 1)),
    Rule("more than capacity", STATION_STATUS, "capacity_exceeded", _exceed_capacity_by(1),
         suits=lambda data, raw: bool(_capacity(data, raw))),
    Rule("more e-bikes than bikes", STATION_STATUS, "ebikes_exceed_bikes",
         lambda data, raw: raw.__setitem__("num_ebikes_available", raw[data.bikes_key] + 1)),
    Rule("never reported (86400)", STATION_STATUS, "last_reported_sentinel", _set("last_reported", 86400)),
    Rule("never reported (0)", STATION_STATUS, "last_reported_sentinel", _set("last_reported", 0)),
    Rule("reported long ago", STATION_STATUS, "last_reported_too_old",
         lambda data, raw: raw.__setitem__("last_reported", data.time(
             header_time(data.status) - CONFIG.max_report_age_s - 1))),
    Rule("reported in the future", STATION_STATUS, "last_reported_in_future",
         lambda data, raw: raw.__setitem__("last_reported", data.time(data.fetched_at + CONFIG.max_future_skew_s + 1))),
    Rule("duplicate status", STATION_STATUS, "duplicate_station_id",
         lambda data, raw: _duplicate(data, raw, STATION_STATUS), copy_is_target=True),
    Rule("status for an unknown station", STATION_STATUS, "unknown_station", _set("station_id", "ghost-station"),
         side_effects={(STATION_INFORMATION, "no_status")}),
]


def _apply(dataset: str, rule: Rule) -> tuple[ValidationResult, ValidationResult, dict[str, Any], dict[str, Any]]:
    """Baseline result, mutated result, the target record before and after the mutation."""
    information, status = DATASETS[dataset]()
    baseline = run(information, status)
    valid_ids = {r.station_id for r in (baseline.information if rule.feed == STATION_INFORMATION else baseline.status)}
    data = Dataset(copy.deepcopy(information), copy.deepcopy(status))
    stations = (data.information if rule.feed == STATION_INFORMATION else data.status)["data"]["stations"]
    target = next((raw for raw in stations if raw["station_id"] in valid_ids and rule.suits(data, raw)), None)
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
    raw_after = json.dumps(after, separators=(",", ":"))
    target_key = next(key for key in flagged if key[0] == rule.feed and json.loads(key[2]) == json.loads(raw_after))
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
    if rule.copy_is_target:  # the first copy stays valid
        valid = result.information if rule.feed == STATION_INFORMATION else result.status
        assert before["station_id"] in {record.station_id for record in valid}


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
    baseline_valid = {r.station_id for r in run(information, status).status}
    target = next(raw for raw in status["data"]["stations"]
                  if raw["station_id"] in baseline_valid and _capacity(data, raw))
    mutate(data, target)
    result = run(information, status)
    assert (target["station_id"] in {r.station_id for r in result.status}) is valid


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


def test_every_reason_code_is_documented() -> None:
    documented = [re.escape(code).replace(re.escape("<field>"), r"[a-z_]+") for code in REASONS]
    assert all(rule.reason for rule in RULES)
    for rule in RULES:
        assert any(re.fullmatch(pattern, rule.reason) for pattern in documented), rule.reason
    assert "stale_feed" in REASONS


# --------------------------------------------------------------------------- whole-feed rules


@pytest.mark.parametrize("dataset", DATASETS)
def test_stale_status_quarantines_every_record_of_that_feed(dataset: str) -> None:
    information, status = DATASETS[dataset]()
    status["data"]["stations"][0].pop("station_id")  # one record normalize already quarantined
    late = header_time(status) + CONFIG.max_feed_age_s + 1
    result = run(information, status, fetched_at=late)
    assert result.summary.feed_stale and result.status == []
    assert result.summary.stale_feeds == (STATION_STATUS,)
    assert len(result.quarantined) == len(status["data"]["stations"]) + result.summary.quarantined[STATION_INFORMATION]
    stale = [q for q in result.quarantined if q.feed == STATION_STATUS]
    assert len(stale) == len(status["data"]["stations"]) and all(q.reasons[-1] == "stale_feed" for q in stale)
    assert [q.reasons for q in result.quarantined if q.station_id is None] == [["missing_field:station_id",
                                                                                 "stale_feed"]]
    assert result.summary.feed_age_s == pytest.approx(late - header_time(status))
    on_time = run(information, status, fetched_at=header_time(status) + CONFIG.max_feed_age_s)
    assert not on_time.summary.feed_stale and on_time.status


@pytest.mark.parametrize("dataset", DATASETS)
def test_old_station_information_is_not_stale(dataset: str) -> None:
    """Descriptions rarely change: many systems publish station_information hours or days old."""
    information, status = DATASETS[dataset]()
    fresh = run(information, status, reference_time=header_time(status))
    hours_before = int(header_time(status)) - 6 * 3600
    information["last_updated"] = (hours_before if isinstance(information["last_updated"], int)
                                   else datetime.fromtimestamp(hours_before, timezone.utc).isoformat())
    old = run(information, status, reference_time=header_time(status))
    assert not old.summary.feed_stale and old.summary.stale_feeds == ()
    assert "stale_feed" not in old.summary.quarantined_by_reason
    assert old.summary.feed_ages_s[STATION_INFORMATION] == 6 * 3600  # its age is still reported
    assert old.summary.feed_age_s == old.summary.feed_ages_s[STATION_STATUS] == 0
    ids = [record.station_id for record in fresh.information]
    assert ids and [record.station_id for record in old.information] == ids  # valid, not quarantined
    assert len(old.status) == len(fresh.status) and old.summary.orphans == fresh.summary.orphans


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


def _reasons_of(result: ValidationResult, station_id: str) -> list[str]:
    return [reason for q in result.quarantined if q.station_id == station_id for reason in q.reasons]


def test_not_advancing_compares_with_the_previous_last_updated() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    previous = status["last_updated"]
    assert run(information, status, previous_last_updated=previous).summary.not_advancing
    assert run(information, status, previous_last_updated=previous + 60).summary.not_advancing
    assert not run(information, status, previous_last_updated=previous - 60).summary.not_advancing
    assert not run(information, status).summary.not_advancing


def test_status_alone_uses_known_station_ids_for_orphans() -> None:
    status = real_doc(STATION_STATUS)
    ids = [raw["station_id"] for raw in status["data"]["stations"]]
    known = set(ids[5:])
    result = run(None, status, known_station_ids=known)
    assert {q.station_id for q in result.quarantined if "unknown_station" in q.reasons} == set(ids[:5])
    assert result.summary.orphans == {"status_without_information": 5, "information_without_status": None}
    unchecked = run(None, status)
    assert unchecked.summary.orphans["status_without_information"] is None
    assert not any("unknown_station" in q.reasons for q in unchecked.quarantined)
    assert not any("capacity_exceeded" in q.reasons for q in unchecked.quarantined)  # no capacities known


def test_known_station_ids_mapping_supplies_capacities() -> None:
    information, status = real_doc(STATION_INFORMATION), real_doc(STATION_STATUS)
    capacities = {raw["station_id"]: raw["capacity"] for raw in information["data"]["stations"]}
    alone = run(None, status, known_station_ids=capacities)
    together = run(information, status)
    assert reasons_by_record(alone) == {key: reasons for key, reasons in reasons_by_record(together).items()
                                        if key[0] == STATION_STATUS}


def test_information_alone_skips_the_orphan_check() -> None:
    information = real_doc(STATION_INFORMATION)
    result = run(information, None, known_station_ids={"unrelated"})
    assert len(result.information) == len(information["data"]["stations"])
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
    assert summary.valid[STATION_STATUS] == raw_count - len(expected) == len(result.status)
    assert summary.valid[STATION_INFORMATION] == raw_count  # every station has a status
    assert summary.valid[STATION_STATUS] / raw_count > 0.99  # quirks are normalized, not rejected
    assert summary.orphans == {"status_without_information": 0, "information_without_status": 0}
    sentinels = [raw for raw in status["data"]["stations"] if raw["last_reported"] == 86400]
    assert summary.quarantined_by_reason["last_reported_sentinel"] == len(sentinels) > 0
    assert summary.quirks["int_as_bool"] == sum(type(raw["is_installed"]) is int for raw in status["data"]["stations"])


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
    valid = {record.station_id: record for record in result.status}
    assert all(valid[station_id].is_renting is False for station_id in out_of_service)


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
