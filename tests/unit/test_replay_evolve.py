"""The replayed feed's evolution, without HTTP: invariants over many ticks, determinism, rendering.

Expected values come from the raw recordings (decoded here independently), not from the timeline
under test, so a bug in how the timeline reads the recordings shows up as a failure.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime

import pytest

from citibikes.replay.evolve import ReplayFeed, resolve_system
from citibikes.replay.timeline import (
    BIKES,
    BIKES_DISABLED,
    DOCKS,
    DOCKS_DISABLED,
    EBIKES,
    TOTAL_FIELDS,
    build_timeline,
    event_path,
    ping_pong_segments,
    segment_events,
)
from citibikes.replay.recordings import Recording, recorded

T0 = 1_800_000_000.0
"""A fixed wall-clock start (2027-01-15) so every run checks the same ticks."""
TICK_S = 15.0
TICKS = 170
"""About two ping-pong loops at the default speed (one loop = 4678 recorded s / 4 = 1170 s)."""
COUNTS = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled",
          "num_docks_available", "num_docks_disabled")
STATE_FIELDS = (*COUNTS, "is_renting", "is_returning")
SENTINEL = 86400


def total(record: dict) -> int:
    return (record["num_bikes_available"] + record["num_bikes_disabled"]
            + record["num_docks_available"] + record["num_docks_disabled"])


@pytest.fixture(scope="module")
def recorded_status() -> list[dict[str, dict]]:
    """The four recorded snapshots: station_id -> record."""
    return [{r["station_id"]: r for r in json.loads(rec.read_bytes())["data"]["stations"]}
            for rec in recorded("station_status")]


@pytest.fixture(scope="module")
def feed() -> ReplayFeed:
    return ReplayFeed(resolve_system("citibike"), tick_s=TICK_S)


@pytest.fixture(scope="module")
def run(feed: ReplayFeed) -> list[dict]:
    """The decoded station_status document of each of TICKS consecutive ticks."""
    return [json.loads(feed.station_status(T0 + i * TICK_S).body) for i in range(TICKS)]


def by_id(document: dict) -> dict[str, dict]:
    return {record["station_id"]: record for record in document["data"]["stations"]}


def states_at(feed: ReplayFeed, at: float) -> dict[str, tuple]:
    """Station id as recorded -> state (the counts, then the flags) at wall-clock time ``at``."""
    return {track.station_id: state for track, (state, _) in zip(feed.tracks, feed.states(at))}


def test_counts_stay_valid_over_two_loops(run: list[dict], recorded_status: list[dict[str, dict]]) -> None:
    totals = {sid: [total(snapshot[sid]) for snapshot in recorded_status] for sid in recorded_status[0]}
    for document in run:
        stations = document["data"]["stations"]
        assert len(stations) == 2208
        for record in stations:
            counts = [record[name] for name in COUNTS]
            assert min(counts) >= 0, record
            assert record["num_ebikes_available"] <= record["num_bikes_available"], record
            low, high = min(totals[record["station_id"]]), max(totals[record["station_id"]])
            assert low <= total(record) <= high, (record, low, high)
            assert record["last_reported"] <= document["last_updated"], record


def test_docks_move_against_bikes_when_the_total_is_fixed(run: list[dict],
                                                          recorded_status: list[dict[str, dict]]) -> None:
    fixed = {sid for sid in recorded_status[0]
             if len({total(snapshot[sid]) for snapshot in recorded_status}) == 1}
    moves = 0
    for before, after in zip(map(by_id, run), map(by_id, run[1:])):
        for sid in fixed:
            a, b = before[sid], after[sid]
            bikes = b["num_bikes_available"] - a["num_bikes_available"]
            disabled_same = all(a[n] == b[n] for n in ("num_bikes_disabled", "num_docks_disabled"))
            if bikes and disabled_same:
                assert b["num_docks_available"] - a["num_docks_available"] == -bikes, (a, b)
                moves += 1
    assert moves > 1000


def test_not_installed_and_sentinel_stations_are_preserved(run: list[dict],
                                                           recorded_status: list[dict[str, dict]]) -> None:
    first = recorded_status[0]
    not_installed = {sid for sid, r in first.items() if r["is_installed"] == 0}
    sentinel = {sid for sid, r in first.items() if r["last_reported"] == SENTINEL}
    assert len(not_installed) == 14 and len(sentinel) == 7
    for document in run:
        stations = by_id(document)
        for sid in not_installed:
            record = stations[sid]
            assert [record[n] for n in COUNTS] == [0] * 5
            assert (record["is_installed"], record["is_renting"], record["is_returning"]) == (0, 0, 0)
        for sid in sentinel:
            assert stations[sid]["last_reported"] == SENTINEL


def test_real_quirks_are_kept(run: list[dict], recorded_status: list[dict[str, dict]]) -> None:
    document = run[0]
    assert document["version"] == "2.3" and document["ttl"] == 15
    stations = by_id(document)
    for sid, original in recorded_status[0].items():
        record = stations[sid]
        assert type(record["is_installed"]) is int and type(record["is_renting"]) is int
        assert record["legacy_id"] == original["legacy_id"]
        assert ("num_scooters_available" in record) == ("num_scooters_available" in original)


def test_last_updated_is_the_tick_start_and_advances_each_tick(run: list[dict], feed: ReplayFeed) -> None:
    stamps = [document["last_updated"] for document in run]
    assert stamps[0] == T0
    assert all(later - earlier == TICK_S for earlier, later in zip(stamps, stamps[1:]))
    now = time.time()
    current = json.loads(feed.station_status(now).body)["last_updated"]
    assert now - TICK_S < current <= now


def test_same_tick_gives_identical_bytes_and_other_ticks_do_not(feed: ReplayFeed) -> None:
    first = feed.station_status(T0 + 0.001).body
    assert feed.station_status(T0 + TICK_S - 0.001).body == first
    assert ReplayFeed(resolve_system("citibike"), tick_s=TICK_S).station_status(T0 + 7).body == first
    assert feed.station_status(T0 + TICK_S).body != first
    other_seed = ReplayFeed(resolve_system("citibike", base_seed=1), tick_s=TICK_S)
    assert other_seed.station_status(T0).body != first


def test_documents_are_identical_in_another_process(feed: ReplayFeed) -> None:
    code = ("import sys; from citibikes.replay.evolve import ReplayFeed, resolve_system; "
            "sys.stdout.write(ReplayFeed(resolve_system('synth-07'), tick_s=15).station_status(1.8e9).etag)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = ReplayFeed(resolve_system("synth-07"), tick_s=TICK_S).station_status(1.8e9).etag
    assert other.stdout == here


def test_counts_change_over_time(run: list[dict]) -> None:
    changed_per_tick = []
    ever_changed: set[str] = set()
    for before, after in zip(map(by_id, run), map(by_id, run[1:])):
        changed = {sid for sid, record in after.items()
                   if any(record[n] != before[sid][n] for n in COUNTS)}
        changed_per_tick.append(len(changed))
        ever_changed |= changed
    assert sum(1 for n in changed_per_tick if n > 0) >= 0.9 * len(changed_per_tick)
    assert statistics.median(changed_per_tick) >= 10
    assert len(ever_changed) >= 1000


def test_last_reported_moves_exactly_with_changes(run: list[dict], feed: ReplayFeed) -> None:
    checked_unchanged = 0
    for index in range(1, len(run)):
        before, after = by_id(run[index - 1]), by_id(run[index])
        tick, previous_tick = run[index]["last_updated"], run[index - 1]["last_updated"]
        same_segment = feed.position(previous_tick)[:2] == feed.position(tick)[:2]
        for sid, record in after.items():
            old = before[sid]
            if any(record[n] != old[n] for n in STATE_FIELDS):
                assert previous_tick <= record["last_reported"] <= tick, (old, record)
            elif same_segment:
                assert record["last_reported"] == old["last_reported"], (old, record)
                checked_unchanged += 1
    assert checked_unchanged > 100_000


def test_each_segment_starts_at_snapshot_a_and_reaches_snapshot_b(feed: ReplayFeed,
                                                                   recorded_status: list[dict[str, dict]]) -> None:
    segments = feed.timeline.segments
    assert [(s.start, s.end) for s in segments] == [(0, 1), (1, 2), (2, 3), (3, 2), (2, 1), (1, 0)]
    cycle = 1000  # any loop: the recorded states do not depend on it
    for index, segment in enumerate(segments):
        for snapshot, fraction in ((segment.start, 0.0), (segment.end, 1.0)):
            states = states_at(feed, feed.time_of(cycle, index, fraction))
            for sid, record in recorded_status[snapshot].items():
                if record["is_installed"] and record["last_reported"] != SENTINEL:
                    assert list(states[sid][:5]) == [record[n] for n in COUNTS], (index, sid)


def test_stations_move_gradually_between_snapshots(feed: ReplayFeed) -> None:
    cycle, index = 1000, 0

    def at(fraction: float) -> dict[str, tuple]:
        return states_at(feed, feed.time_of(cycle, index, fraction))

    a, b = at(0.0), at(1.0)
    middle = at(0.5)
    assert sum(1 for sid, state in middle.items() if state not in (a[sid], b[sid])) > 100
    arrived = [sum(1 for sid, state in at(f).items() if state == b[sid] != a[sid]) for f in (0.1, 0.5, 0.9)]
    assert arrived[0] < arrived[1] < arrived[2]


def random_state(rng: random.Random) -> tuple[int, ...]:
    """Small stations, often all e-bikes or empty: the edges where invariants break first."""
    bikes = rng.randint(0, 8)
    ebikes = rng.choice((0, bikes, rng.randint(0, bikes)))
    return (bikes, ebikes, rng.randint(0, 3), rng.randint(0, 8), rng.randint(0, 2),
            rng.randint(0, 1), rng.randint(0, 1))


def test_segment_events_keep_every_invariant() -> None:
    """Random station pairs A -> B, including e-bike-heavy drops and capacity changes."""
    rng = random.Random(7)
    for case in range(3000):
        a, b = random_state(rng), random_state(rng)
        path = event_path(a, segment_events(a, b, rng))
        assert path[0] == a and path[-1] == b, case
        totals = [sum(state[f] for f in TOTAL_FIELDS) for state in path]
        assert totals == sorted(totals) or totals == sorted(totals, reverse=True), (case, path)
        for state in path:
            assert min(state) >= 0 and state[EBIKES] <= state[BIKES], (case, path)
            for field in (BIKES, BIKES_DISABLED, DOCKS, DOCKS_DISABLED):
                assert min(a[field], b[field]) <= state[field] <= max(a[field], b[field]), (case, path)
        assert all(earlier != later for earlier, later in zip(path, path[1:])), (case, path)


def write_recording(folder, feed: str, last_updated: int, stations: list[dict]) -> Recording:
    path = folder / f"test_{feed}_{last_updated}.json.gz"
    document = {"data": {"stations": stations}, "last_updated": last_updated, "ttl": 60, "version": "1.1"}
    path.write_bytes(gzip.compress(json.dumps(document).encode()))
    return Recording("test", feed, last_updated, path)


def status_record(station_id: str, bikes: int, docks: int, *, installed: int = 1, reported: int = 1000) -> dict:
    return {"station_id": station_id, "num_bikes_available": bikes, "num_ebikes_available": 0,
            "num_bikes_disabled": 0, "num_docks_available": docks, "num_docks_disabled": 0,
            "is_installed": installed, "is_renting": installed, "is_returning": installed,
            "last_reported": reported}


def test_not_installed_stations_are_zero_and_sentinel_stations_frozen_even_if_recorded_otherwise(tmp_path) -> None:
    info = write_recording(tmp_path, "station_information", 1000, [
        {"station_id": sid, "name": sid, "lat": 40.7, "lon": -74.0, "capacity": 10} for sid in "abc"])
    statuses = [
        write_recording(tmp_path, "station_status", 1000, [
            status_record("a", 4, 6, installed=0), status_record("b", 4, 6, reported=SENTINEL),
            status_record("c", 4, 6)]),
        write_recording(tmp_path, "station_status", 1600, [
            status_record("a", 7, 3, installed=0), status_record("b", 9, 1, reported=SENTINEL),
            status_record("c", 9, 1)]),
    ]
    feed = ReplayFeed(resolve_system("citibike"), timeline=build_timeline(info, statuses))
    for step in range(0, 1200, 20):
        (a, _), (b, b_reported), _ = feed.states(T0 + step)
        assert a == (0, 0, 0, 0, 0, 0, 0)
        assert b[:5] == (4, 0, 0, 6, 0) and b_reported == SENTINEL
    assert {feed.states(T0 + step)[2][0][BIKES] for step in range(0, 300)} == set(range(4, 10))


def test_ping_pong_has_no_jump() -> None:
    segments = ping_pong_segments([100, 940, 1780, 2439])
    assert [(s.start, s.end, s.duration_s) for s in segments] == [
        (0, 1, 840), (1, 2, 840), (2, 3, 659), (3, 2, 659), (2, 1, 840), (1, 0, 840)]
    assert all(s.end == nxt.start for s, nxt in zip(segments, segments[1:] + segments[:1]))


def test_speed_sets_how_fast_the_loop_plays() -> None:
    spec = resolve_system("citibike")
    slow, fast = ReplayFeed(spec, speed=1.0), ReplayFeed(spec, speed=8.0)
    assert slow.time_of(1, 0, 0.0) - slow.time_of(0, 0, 0.0) == pytest.approx(4678.0)
    assert fast.time_of(1, 0, 0.0) - fast.time_of(0, 0, 0.0) == pytest.approx(4678.0 / 8)


def test_v3_renders_the_same_counts_in_gbfs_3_shape(feed: ReplayFeed) -> None:
    v3 = ReplayFeed(resolve_system("citibike-v3"), tick_s=TICK_S)
    v2_stations = by_id(json.loads(feed.station_status(T0).body))
    document = json.loads(v3.station_status(T0).body)
    assert document["version"] == "3.0" and document["ttl"] == 15
    assert datetime.fromisoformat(document["last_updated"]).timestamp() == T0
    for record in document["data"]["stations"]:
        v2 = v2_stations[record["station_id"]]
        assert "num_bikes_available" not in record and "num_ebikes_available" not in record
        assert record["num_vehicles_available"] == v2["num_bikes_available"]
        types = {t["vehicle_type_id"]: t["count"] for t in record["vehicle_types_available"]}
        assert sum(types.values()) == record["num_vehicles_available"]
        assert types["2"] == v2["num_ebikes_available"]
        assert record["num_vehicles_disabled"] == v2["num_bikes_disabled"]
        assert record["num_docks_available"] == v2["num_docks_available"]
        assert all(type(record[k]) is bool for k in ("is_installed", "is_renting", "is_returning"))
        assert datetime.fromisoformat(record["last_reported"]).timestamp() == v2["last_reported"]
    information = json.loads(v3.station_information(T0).body)["data"]["stations"]
    assert all(s["name"][0]["language"] == "en" and isinstance(s["name"][0]["text"], str) for s in information)
    assert all(m == m.lower() for s in information for m in s.get("rental_methods", []))
    assert v3.feed_paths()["vehicle_types"] == "3.0/vehicle_types.json"
    vehicle_types = json.loads(v3.document("vehicle_types", T0).body)["data"]["vehicle_types"]
    assert {t["vehicle_type_id"] for t in vehicle_types} == {"1", "2"}


def test_station_information_content_is_stable(feed: ReplayFeed) -> None:
    first = json.loads(feed.station_information(T0).body)
    later = json.loads(feed.station_information(T0 + 3600).body)
    assert later["last_updated"] == first["last_updated"] + 3600
    assert later["data"] == first["data"]
    assert len(first["data"]["stations"]) == 2208


def test_synthetic_systems_are_distinct_and_derived(feed: ReplayFeed) -> None:
    originals = {s["station_id"]: s for s in json.loads(feed.station_information(T0).body)["data"]["stations"]}
    seen: list[set[str]] = []
    for number in (1, 4, 5, 42):
        synth = ReplayFeed(resolve_system(f"synth-{number:02d}"), tick_s=TICK_S)
        stations = json.loads(synth.station_information(T0).body)["data"]["stations"]
        spec = resolve_system(f"synth-{number:02d}")
        prefix = f"synth-{number:02d}-"
        assert all(s["station_id"].startswith(prefix) for s in stations)
        expected = 2208 * spec.station_fraction
        assert abs(len(stations) - expected) <= 0.1 * expected + 5
        for station in stations[:50]:
            original = originals[station["station_id"].removeprefix(prefix)]
            assert station["lat"] == pytest.approx(original["lat"] + spec.lat_shift)
            assert station["lon"] == pytest.approx(original["lon"] + spec.lon_shift)
        ids = {s["station_id"].removeprefix(prefix) for s in stations}
        status = json.loads(synth.station_status(T0).body)["data"]["stations"]
        assert {s["station_id"].removeprefix(prefix) for s in status} == ids
        seen.append(ids)
    assert seen[0] != seen[2], "synth-01 and synth-05 keep the same share but other stations"
    assert len(seen[1]) == 2208


def test_synthetic_systems_evolve_on_their_own(feed: ReplayFeed) -> None:
    full = ReplayFeed(resolve_system("synth-04"), tick_s=TICK_S)
    synth, real = states_at(full, T0), states_at(feed, T0)
    assert sum(1 for sid in real if real[sid] != synth[sid]) > 100
    again = ReplayFeed(resolve_system("synth-04"), tick_s=TICK_S).station_status(T0).body
    assert again == full.station_status(T0).body


@pytest.mark.parametrize("name", ["synth-1", "synth-100", "synth-ab", "synth-", "citibike-v2", "x-synth-01", ""])
def test_unknown_system_names_resolve_to_none(name: str) -> None:
    assert resolve_system(name) is None


@pytest.mark.parametrize("tick_s, speed", [(0.5, 4.0), (15.0, 0.0), (15.0, -1.0)])
def test_invalid_tick_or_speed_is_refused(tick_s: float, speed: float) -> None:
    with pytest.raises(ValueError):
        ReplayFeed(resolve_system("citibike"), tick_s=tick_s, speed=speed)

