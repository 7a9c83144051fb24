"""The service analytics (issue 16) on series landed by the backfill and read through the DuckDB catalog.

Hand-built series whose answers are worked out in the comments, then the same figures from the independent
computation of ``tests/support/audit.py`` (plain Python over the raw files) on hand-built, random, recorded
and replayed series. Monday 2 March 2026 is in New York's winter time (UTC-5).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from s3_fixture import S3Server, s3_lake_uri, s3_server  # noqa: F401  (fixtures)
from support.audit import audit
from support.series import Series, local, measured
from support.trino import TrinoServer

from citibikes.analytics.engines import DuckDBEngine
from citibikes.analytics.measures import Analytics, Period, measure
from citibikes.analytics.run import run
from citibikes.catalog import S3Access, connect, refresh_catalog
from citibikes.config import SystemConfig, load_settings
from citibikes.lake import open_lake
from citibikes.replay.backfill import backfill
from citibikes.replay.evolve import ReplayFeed, citibike_spec
from citibikes.replay.recordings import recorded

MONDAY = date(2026, 3, 2)


def by_id(analytics: Analytics) -> dict:
    return {s.station_id: s for s in analytics.stations}


def durations_series() -> Series:
    """Stations far apart (no network matters here), each showing one rule."""
    s = Series()
    for index, name in enumerate(("gap", "edge", "clock", "capzero", "broken", "flagged")):
        s.station(name, north_ft=10_000 * index)
    s.stations["capzero"]["capacity"] = 0
    s.stations["broken"]["capacity"] = 10
    # gap: empty from 12:00; nothing seen between 12:30 and 13:20 (50 min > 40) closes it at 12:30 (30 min);
    # 13:20 closes nothing more and opens nothing (the close came first); 13:30 opens, 13:40 closes (10 min)
    for when, bikes in (("11:50", 5), ("12:00", 0), ("12:10", 0), ("12:20", 0), ("12:30", 0), ("13:20", 0),
                        ("13:30", 0), ("13:40", 3)):
        s.at(f"2026-03-02 {when}:00", gap=bikes)
    # edge: empty from 05:50, but the durations' window starts at 06:00: the walk starts at 06:00, opens at 06:10,
    # closes at 06:20 (10 min); empty again at 23:50, still open at the window's end 23:59: dropped
    for when, bikes in (("05:40", 0), ("05:50", 0), ("06:00", 0), ("06:10", 0), ("06:20", 2), ("23:40", 3),
                        ("23:50", 0), ("23:59", 0)):
        s.at(f"2026-03-02 {when}:00", edge=bikes)
    # clock: empty at each of these; in the unusable windows: 07:00:00, 10:58:00, 10:59:00 (not 06:59:59,
    # 10:59:30, 11:00:00)
    for when in ("06:59:59", "07:00:00", "10:58:00", "10:59:00", "10:59:30", "11:00:00"):
        s.at(f"2026-03-02 {when}", clock=0)
    # capzero: capacity 0, 0 bikes and 0 docks: unusable at 08:00 and 17:00, no broken-bike share
    s.at("2026-03-02 08:00:00", capzero={"num_bikes_available": 0, "num_docks_available": 0})
    s.at("2026-03-02 17:00:00", capzero={"num_bikes_available": 0, "num_docks_available": 0})
    # broken (capacity 10): disabled/capacity 0.2, 0.1, left out (3 + 10 > 10; quarantined for capacity), 0.0
    for when, bikes, disabled in (("12:00", 3, 2), ("12:10", 4, 1), ("12:20", 3, 10), ("12:30", 2, 0)):
        s.at(f"2026-03-02 {when}:00", broken={"num_bikes_available": bikes, "num_bikes_disabled": disabled,
                                              "num_docks_available": 0})
    # flagged: never reported (last_reported 86400: quarantined) yet empty at 08:00 and 09:00: both count; its
    # 10:00 record's bikes are text: skipped
    s.at("2026-03-02 08:00:00", flagged={"num_bikes_available": 0, "last_reported": 86400})
    s.at("2026-03-02 09:00:00", flagged={"num_bikes_available": 0, "last_reported": 86400})
    s.at("2026-03-02 10:00:00", flagged={"num_bikes_available": "x", "num_docks_available": 3})
    # twice: listed twice in the 09:00 feed, its first copy without last_reported (normalization rejects it) and
    # empty, the second valid: the first counts (unusable at 09:00), the second is skipped as a later copy
    s.station("twice", north_ft=70_000)
    s.at("2026-03-02 08:00:00", twice=5)
    s.at("2026-03-02 09:00:00", twice={"num_bikes_available": 0, "last_reported": None})
    s.at("2026-03-02 09:00:00", twice_again={"station_id": "twice", "num_bikes_available": 5})
    # dropped: described until 13:00, when station_information stops listing it; its records after that do not
    # count (quarantined as unknown_station). The 05:00 feed comes before any description: no snapshot.
    s.station("dropped", north_ft=60_000)
    s.information = {local("2026-03-02 05:30:00"): list(s.stations),
                     local("2026-03-02 13:00:00"): [name for name in s.stations if name != "dropped"]}
    s.at("2026-03-02 05:00:00", dropped=0)
    for when in ("12:00", "12:40", "13:10", "13:50"):
        s.at(f"2026-03-02 {when}:00", dropped=0)
    return s


def standard_series() -> Series:
    """A, B (1,000 ft east of A) and C (1,800 ft east of B) make the network; D (10,000 ft north) stands alone.
    A and B are each other's nearest neighbour; C's is B."""
    s = Series()
    s.station("a")
    s.station("b", east_ft=1000)
    s.station("c", east_ft=2800)
    s.station("d", north_ft=10_000)
    # Monday peak: A and B empty 09:00-11:20, A back at 11:30 (and A missing from the 10:00 snapshot)
    for minute in range(8 * 60 + 50, 12 * 60 + 10, 10):
        when = f"2026-03-02 {minute // 60:02d}:{minute % 60:02d}:00"
        empty = 9 * 60 <= minute <= 11 * 60 + 20
        records = {"b": 0 if empty else 5, "c": 5, "d": 5}
        if minute != 10 * 60:
            records["a"] = 0 if empty else (2 if minute >= 11 * 60 + 30 else 5)
        s.at(when, **records)
    # Monday night to Tuesday (off-peak): A and B full (20 bikes, no dock) from 21:00 to 01:00, docks at 01:10
    for minute in range(20 * 60 + 50, 25 * 60 + 30, 10):
        day, clock = (2, minute) if minute < 24 * 60 else (3, minute - 24 * 60)
        when = f"2026-03-0{day} {clock // 60:02d}:{clock % 60:02d}:00"
        full = 21 * 60 <= minute <= 25 * 60
        s.at(when, a=20 if full else 15, b=20 if full else 15, c=5, d=5)
    # Tuesday peak: A and B empty 09:00-10:50, back at 11:00; A is not renting, and missing at 09:40
    for minute in range(9 * 60, 11 * 60 + 10, 10):
        when = f"2026-03-03 {minute // 60:02d}:{minute % 60:02d}:00"
        bikes = 0 if minute < 11 * 60 else 2
        records = {"b": bikes, "c": 5, "d": 5}
        if minute != 9 * 60 + 40:
            records["a"] = {"num_bikes_available": bikes, "is_renting": False}
        s.at(when, **records)
    return s


@pytest.fixture(scope="module")
def durations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Analytics, Path]:
    folder = durations_series().write(tmp_path_factory.mktemp("durations-feed"))
    return measured(folder, tmp_path_factory.mktemp("durations"), MONDAY, MONDAY), folder


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Analytics, Path]:
    folder = standard_series().write(tmp_path_factory.mktemp("standard-feed"))
    return measured(folder, tmp_path_factory.mktemp("standard"), MONDAY, date(2026, 3, 3)), folder


def test_a_gap_over_40_minutes_closes_episodes_at_the_earlier_snapshot(durations: tuple[Analytics, Path]) -> None:
    gap = by_id(durations[0])["gap"]
    assert (gap.episodes, gap.longest_h, gap.median_h, gap.mean_h) == (2, 0.5, 1200 / 3600, 1200 / 3600)


def test_durations_count_only_the_window_and_drop_what_is_still_open(durations: tuple[Analytics, Path]) -> None:
    edge = by_id(durations[0])["edge"]
    assert (edge.episodes, edge.longest_h) == (1, 600 / 3600)


def test_unusable_windows_include_their_ends_to_the_second(durations: tuple[Analytics, Path]) -> None:
    analytics, _ = durations
    times = {at for at in durations_series().snapshots}
    in_windows = {"07:00:00", "08:00:00", "09:00:00", "10:00:00", "10:58:00", "10:59:00", "17:00:00"}
    assert {local(f"2026-03-02 {t}") for t in in_windows} <= times
    assert analytics.system.window_snapshots == len(in_windows)
    clock = by_id(analytics)["clock"]
    assert (clock.unusable, clock.unusable_share) == (3, 3 / len(in_windows))


def test_capacity_0_leaves_the_broken_bike_share_out(durations: tuple[Analytics, Path]) -> None:
    stations = by_id(durations[0])
    assert (stations["capzero"].unusable, stations["capzero"].broken_snapshots, stations["capzero"].broken_median) \
        == (2, 0, None)
    broken = stations["broken"]
    assert broken.snapshots == 4 and broken.broken_snapshots == 3
    assert broken.broken_median == pytest.approx(0.1) and broken.broken_mean == pytest.approx(0.1)


def test_a_station_counts_only_while_it_is_described(durations: tuple[Analytics, Path]) -> None:
    analytics, _ = durations
    dropped = by_id(analytics)["dropped"]
    assert (dropped.snapshots, dropped.skipped, dropped.episodes) == (2, 0, 0)  # 12:00 and 12:40 (opens, never closes)
    # feeds listing no described station are no snapshots: 05:00 (before any description), 13:10 and 13:50
    undescribed = {local(f"2026-03-02 {when}:00") for when in ("05:00", "13:10", "13:50")}
    assert undescribed <= set(durations_series().snapshots)
    assert analytics.system.snapshots == len(durations_series().snapshots) - len(undescribed)


def test_quarantined_records_still_count_and_unreadable_ones_are_skipped(durations: tuple[Analytics, Path]) -> None:
    analytics, _ = durations
    flagged = by_id(analytics)["flagged"]
    assert (flagged.snapshots, flagged.quarantined_counted, flagged.skipped, flagged.unusable) == (2, 2, 1, 2)
    broken = by_id(analytics)["broken"]
    assert broken.quarantined_counted == 1  # its capacity_exceeded record
    twice = by_id(analytics)["twice"]
    assert (twice.snapshots, twice.quarantined_counted, twice.skipped, twice.unusable) == (2, 1, 1, 1)
    assert analytics.system.skipped == 2


def test_the_network_and_each_stations_nearest_neighbour(standard: tuple[Analytics, Path]) -> None:
    analytics, _ = standard
    stations = by_id(analytics)
    assert {s: (v.in_network, v.neighbour_id) for s, v in stations.items()} == {
        "a": (True, "b"), "b": (True, "a"), "c": (True, "b"), "d": (False, None)}
    assert stations["a"].neighbour_ft == pytest.approx(1000, rel=0.01)
    assert analytics.system.projection == "EPSG:2263" and analytics.system.network_stations == 3


def test_rebalancing_violations_and_fines(standard: tuple[Analytics, Path]) -> None:
    stations = by_id(standard[0])
    # Monday peak, A+B empty 09:00-11:30 (A missing at 10:00 changes nothing: B is empty): 2.5 h, $50 each.
    # Tuesday peak: B's series (its flags: renting) opens at 09:00 after the overnight gap and closes at 11:00:
    # 2 h, $50. A's series has A's flags (not renting) but B's at 09:40, where A is missing: opens at 09:40,
    # closes at 11:00: 80 min, an instance with no whole hour beyond the grace: $0.
    assert (stations["a"].peak_instances, stations["a"].peak_fines) == (2, 50)
    assert (stations["b"].peak_instances, stations["b"].peak_fines) == (2, 100)
    # Off-peak, A+B full 21:00-01:10: 4 h 10 min, 2 whole hours beyond the 2 h grace: $100 each.
    assert (stations["a"].off_peak_instances, stations["a"].off_peak_fines) == (1, 100)
    assert (stations["b"].off_peak_instances, stations["b"].off_peak_fines) == (1, 100)
    # C's pair (C+B) always has C's 5 bikes; D has no neighbour.
    assert all((stations[s].peak_instances, stations[s].off_peak_instances, stations[s].fines) == (0, 0, 0)
               for s in "cd")
    assert standard[0].system.fines == 50 + 100 + 100 + 100


# --------------------------------------------------------------------------- the independent computation

INTEGERS = ("snapshots", "skipped", "unusable", "broken_snapshots", "episodes", "in_network", "neighbour_id",
            "peak_instances", "peak_fines", "off_peak_instances", "off_peak_fines", "fines")
FLOATS = ("unusable_share", "broken_median", "broken_mean", "longest_h", "median_h", "mean_h")


def assert_same_figures(analytics: Analytics, expected: dict) -> None:
    stations = by_id(analytics)
    assert sorted(stations) == sorted(expected["stations"])
    for station_id, figures in expected["stations"].items():
        got = stations[station_id]
        assert {f: getattr(got, f) for f in INTEGERS} == {f: figures[f] for f in INTEGERS}, station_id
        for f in FLOATS:
            assert getattr(got, f) == (None if figures[f] is None else pytest.approx(figures[f], rel=1e-12)), \
                (station_id, f)
    system = analytics.system
    assert {k: getattr(system, k) for k in expected["system"]} == expected["system"]


@pytest.fixture(params=["duckdb", "trino"])
def trino(request: pytest.FixtureRequest) -> TrinoServer | None:
    """Where the SQL runs: the DuckDB catalog (None), or Trino, the engine of Athena's SQL, over the lake's tables
    as the Glue crawler makes them (the same queries, translated by sqlglot)."""
    return request.getfixturevalue("trino_server") if request.param == "trino" else None


@pytest.mark.parametrize("series", [durations_series, standard_series])
def test_hand_built_series_match_the_independent_computation(series, trino: TrinoServer | None,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    folder = series().write(tmp_path / "feed")
    expected = audit(folder, "test", "America/New_York", MONDAY, date(2026, 3, 3))
    assert expected["system"]["records"] > 0
    assert_same_figures(measured(folder, tmp_path, MONDAY, date(2026, 3, 3), trino=trino), expected)


def random_series(seed: int) -> Series:
    """Eight stations in two clusters, 36 hours of snapshots 5-15 minutes apart with feed outages, stations
    missing, zeros in runs, flags off, quarantined and unreadable records."""
    rng = random.Random(seed)
    s = Series()
    for index in range(8):
        s.station(f"s{index}", north_ft=rng.uniform(0, 1500) + (20_000 if index >= 6 else 0),
                  east_ft=rng.uniform(0, 1500), capacity=rng.choice([0, 10, 20, 20, 20]))
    at = local("2026-03-02 00:00:00")
    end = local("2026-03-03 12:00:00")
    state = {f"s{i}": 5 for i in range(8)}
    while at < end:
        at += rng.choice([300, 600, 900]) if rng.random() > 0.03 else rng.randint(2401, 7200)
        records = {}
        for station in state:
            if rng.random() < 0.05:
                continue  # missing from this snapshot
            if rng.random() < 0.2:
                state[station] = rng.choice([0, 0, 0, 1, 3, 20])
            record: dict = {"num_bikes_available": state[station]}
            capacity = s.stations[station]["capacity"]
            record["num_docks_available"] = max(capacity - state[station], 0) if rng.random() > 0.1 else 0
            record["num_bikes_disabled"] = rng.choice([0, 0, 1, 2])
            record["is_renting"] = rng.random() > 0.1
            record["is_returning"] = rng.random() > 0.1
            if rng.random() < 0.05:
                record["last_reported"] = 86400
            if rng.random() < 0.02:
                record["num_bikes_available"] = "many"
            records[station] = record
        if records:
            s.at(at, **records)
    return s


@pytest.mark.parametrize(("seed", "trino"), [(1, "duckdb"), (2, "duckdb"), (3, "duckdb"), (1, "trino")], indirect=["trino"])
def test_random_series_match_the_independent_computation(seed: int, trino: TrinoServer | None, tmp_path: Path) -> None:
    folder = random_series(seed).write(tmp_path / "feed")
    expected = audit(folder, "test", "America/New_York", MONDAY, date(2026, 3, 3))
    assert expected["system"]["skipped"] > 0 and expected["system"]["records"] > 500
    assert_same_figures(measured(folder, tmp_path, MONDAY, date(2026, 3, 3), trino=trino), expected)


def test_recorded_citi_bike_snapshots_match_the_independent_computation(trino: TrinoServer | None,
                                                                         tmp_path: Path) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    for recording in (*recorded("station_information"), *recorded("station_status")):
        (folder / f"{recording.feed}_{recording.last_updated}.json").write_bytes(recording.read_bytes())
    day = date(2024, 3, 13)
    expected = audit(folder, "citibike", "America/New_York", day, day)
    analytics = measured(folder, tmp_path, day, day, system_id="citibike", trino=trino)
    assert expected["system"]["records"] > 8000 and analytics.system.quarantined_counted > 0
    assert_same_figures(analytics, expected)


@pytest.mark.parametrize("trino", ["duckdb"], indirect=True)  # on Trino too it took 40 s of CI's 25 min
def test_a_replayed_day_matches_the_independent_computation(trino: TrinoServer | None, tmp_path: Path) -> None:
    """The replay feed's Citi Bike (2,208 stations) every 5 minutes for 26 hours from Monday 05:00 local."""
    feed = ReplayFeed(citibike_spec(system_id="citibike"))
    folder = tmp_path / "feed"
    folder.mkdir()
    start = local("2026-03-02 05:00:00")
    (folder / "station_information.json").write_bytes(feed.station_information(start).body)
    for step in range(26 * 12):
        status = feed.station_status(start + 300 * step)
        (folder / f"station_status-{status.last_updated}.json").write_bytes(status.body)
    expected = audit(folder, "citibike", "America/New_York", MONDAY, date(2026, 3, 3))
    analytics = measured(folder, tmp_path, MONDAY, date(2026, 3, 3), system_id="citibike", trino=trino)
    assert analytics.system.episodes > 100 and analytics.system.fines > 0
    assert_same_figures(analytics, expected)


# --------------------------------------------------------------------------- the command line

CLI = [sys.executable, "-m", "citibikes.cli", "analytics"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [\w.]+ - (DEBUG|INFO|WARNING|ERROR) - .+$")


@pytest.fixture(scope="module")
def cli_lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The standard series backfilled into a lake, and the environment of a user with two systems configured."""
    work = tmp_path_factory.mktemp("cli")
    folder = standard_series().write(work / "feed")
    (work / "systems.yaml").write_text(
        "systems:\n  - id: test\n    discovery_url: http://127.0.0.1:9/gbfs.json\n    timezone: America/New_York\n"
        "  - id: other\n    discovery_url: http://127.0.0.1:9/gbfs.json\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITIBIKES_")}
    env.update({"CITIBIKES_SYSTEMS_FILE": str(work / "systems.yaml"), "CITIBIKES_LAKE_URI": str(work / "lake"),
                "CITIBIKES_STATE_DIR": str(work / "state")})
    settings = load_settings(env)
    assert not backfill(folder, "test", settings=settings, lake=open_lake(settings.lake_uri), workers=1).failed
    return env


def test_the_command_prints_the_figures_and_writes_the_report(cli_lake: dict[str, str]) -> None:
    done = subprocess.run([*CLI, "--system", "test", "--from", "2026-03-02", "--to", "2026-03-03"], env=cli_lake,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("test from 2026-03-02 to 2026-03-03 (America/New_York): ")
    assert "peak 4 violations $150, off-peak 2 violations $200, total $350" in lines[4]
    report = Path(lines[5].removeprefix("report: ").split(" (")[0])
    assert report == Path(cli_lake["CITIBIKES_LAKE_URI"], "reports/analytics/system=test/period=2026-03-02_2026-03-03",
                          "report.html")
    assert report.exists() and (report.parent / "stations.parquet").exists()


def test_the_command_prints_every_figure_as_json(cli_lake: dict[str, str]) -> None:
    done = subprocess.run([*CLI, "--system", "test", "--json"], env=cli_lake, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["system"]["first"], figures["system"]["last"]) == ("2026-03-02", "2026-03-03")  # the data's days
    assert {s["station_id"]: s["fines"] for s in figures["stations"]} == {"a": 150, "b": 200, "c": 0, "d": 0}


@pytest.mark.parametrize("args, message", [
    ([], "2 systems are enabled; choose one with --system (test, other)"),
    (["--system", "nope"], "system 'nope' is not in the systems file"),
    (["--system", "test", "--from", "March"], "write days as YYYY-MM-DD"),
    (["--system", "test", "--from", "2026-03-03", "--to", "2026-03-02"], "the period starts (2026-03-03) after it ends"),
    (["--system", "test", "--from", "2026-05-01", "--to", "2026-05-02"],
     "the catalog has no station_status of test from 2026-05-01 to 2026-05-02 (America/New_York); choose days it holds"),
    (["--system", "other"], "other: no timezone in the systems file and its system_information could not be read"),
    (["--system", "test", "--to", "2026-04-10"],  # without --from: 30 days, to 2026-04-10
     "the catalog has no station_status of test from 2026-03-12 to 2026-04-10"),
])
def test_a_run_that_cannot_be_made_is_one_line_with_the_fix(cli_lake: dict[str, str], args: list[str],
                                                              message: str) -> None:
    done = subprocess.run([*CLI, *args], env=cli_lake, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]  # the feed's retries are logged
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], done.stderr


# --------------------------------------------------------------------------- a lake on S3


@pytest.mark.s3
def test_an_s3_lake_gives_the_same_figures_and_gets_its_report(s3_server: S3Server, s3_lake_uri: str,
                                                                standard: tuple[Analytics, Path], tmp_path: Path) -> None:
    """The analytics read an S3 lake through the DuckDB catalog (httpfs) and write the report into it."""
    expected, folder = standard
    local = open_lake(str(tmp_path / "local"))
    settings = load_settings({"CITIBIKES_LAKE_URI": str(tmp_path / "local"), "CITIBIKES_STATE_DIR": str(tmp_path)})
    assert not backfill(folder, "test", settings=settings, lake=local, workers=1).failed
    lake = open_lake(s3_lake_uri, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                     access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    lake.write_files([(key, local.storage.get(key)) for table in ("station_status", "station_information", "quarantine")
                      for key in local.files(table)])
    s3 = S3Access(s3_server.region, s3_server.access_key, s3_server.secret_key, endpoint_url=s3_server.endpoint_url)
    catalog = tmp_path / "catalog" / "citibikes.duckdb"
    refresh_catalog(lake, catalog, s3=s3)
    con = connect(catalog, s3)
    try:
        analytics, keys = run(DuckDBEngine(con), lake, SystemConfig("test", "http://127.0.0.1:9/gbfs.json", timezone="America/New_York"),
                              MONDAY, date(2026, 3, 3))
    finally:
        con.close()
    assert analytics == expected
    assert keys[-1] == "reports/analytics/system=test/period=2026-03-02_2026-03-03/report.html"
    assert b"<svg" in lake.storage.get(keys[-1])


def test_a_lake_whose_quarantine_predates_the_counts_skips_its_quarantined_records(tmp_path: Path) -> None:
    """Quarantine files written before the quarantine kept counts: their records are skipped, not an error."""
    series = durations_series()
    folder = series.write(tmp_path / "feed")
    settings = load_settings({"CITIBIKES_LAKE_URI": str(tmp_path / "lake"), "CITIBIKES_STATE_DIR": str(tmp_path)})
    lake = open_lake(settings.lake_uri)
    assert not backfill(folder, "test", settings=settings, lake=lake, workers=1).failed
    for key in lake.files("quarantine"):
        path = Path(lake.storage.path(key))
        old = pq.read_table(path)
        pq.write_table(old.drop_columns([c for c in old.column_names if c.startswith(("num_", "is_"))]), path)
    refresh_catalog(lake, settings.catalog_path)
    con = connect(settings.catalog_path)
    try:
        analytics = measure(DuckDBEngine(con), Period("test", "America/New_York", MONDAY, MONDAY))
    finally:
        con.close()
    flagged = by_id(analytics)["flagged"]
    assert (flagged.snapshots, flagged.skipped) == (0, 3)
    assert by_id(analytics)["gap"].episodes == 2
