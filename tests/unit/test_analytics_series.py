"""The analytics' own logic without the lake: runs walked like every record, pairs laid over, the network, the report."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from citibikes.analytics import network, series
from citibikes.analytics.measures import StationFigures
from citibikes.analytics.report import STATIONS_SCHEMA, html
from citibikes.live.episodes import MAX_GAP_S, Observation, episodes

# A feed every 1-15 minutes, sometimes after an outage of more than 40 minutes (a new segment); a station
# has a record at a feed or not, in one of the 32 states.
feeds = st.lists(st.tuples(st.sampled_from([60, 300, 900, MAX_GAP_S + 1, 3 * 3600]), st.integers(0, 9)),
                 min_size=1, max_size=60)
records = st.lists(st.one_of(st.none(), st.integers(0, 31)), min_size=60, max_size=60)


def timeline(gaps: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Each feed's time and segment (a new one after a long gap, or where the window changes: ``label``)."""
    times, segments, at, segment, label_before = [], [], 0, 0, None
    for gap, label in gaps:
        at += gap
        if times and (gap > MAX_GAP_S or label != label_before):
            segment += 1
        times.append(at)
        segments.append(segment)
        label_before = label
    return times, segments


def runs_of(states: list[int | None], segments: list[int]) -> list[series.Run]:
    """Runs as the SQL makes them: consecutive feeds of one segment in one state."""
    found: list[series.Run] = []
    for k, state in enumerate(states):
        if state is None:
            continue
        before = found[-1] if found else None
        if before and before[2] == k - 1 and before[3] == segments[k] and before[4] == state:
            found[-1] = (0, before[1], k, before[3], state)
        else:
            found.append((0, k, k, segments[k], state))
    return found


def every_record(states: list[int | None], times: list[int]) -> list[Observation]:
    fields = series._FIELDS
    return [Observation(times[k], *fields[state]) for k, state in enumerate(states) if state is not None]


@settings(max_examples=400, deadline=None)
@given(feeds, records)
def test_walking_runs_finds_the_episodes_of_walking_every_record(gaps: list[tuple[int, int]],
                                                                 states: list[int | None]) -> None:
    times, segments = timeline(gaps)
    states = states[:len(times)]
    walked = series.walk(runs_of(states, segments), times)
    assert walked == episodes(every_record(states, times))


@settings(max_examples=400, deadline=None)
@given(feeds, records, records)
def test_a_pair_laid_over_is_the_pair_record_by_record(gaps: list[tuple[int, int]], own: list[int | None],
                                                       other: list[int | None]) -> None:
    times, segments = timeline(gaps)
    own, other = own[:len(times)], other[:len(times)]
    combined = [None if a is None and b is None else series._COMBINED[series.ABSENT if a is None else a]
                [series.ABSENT if b is None else b] for a, b in zip(own, other)]
    laid = series.overlay(runs_of(own, segments), runs_of(other, segments))
    assert [k for _, first, last, _, _ in laid for k in range(first, last + 1)] == [
        k for k, c in enumerate(combined) if c is not None]
    assert all(combined[k] == state for _, first, last, _, state in laid for k in range(first, last + 1))
    assert series.walk(laid, times) == episodes(every_record(combined, times))


def test_a_pair_sums_counts_and_takes_the_stations_flags_first() -> None:
    empty_renting = series.NO_BIKE | series.SOME_DOCK | series.RENTING | series.RETURNING
    some_bikes_closed = series.SOME_DOCK  # bikes, docks, neither renting nor returning
    assert series._COMBINED[empty_renting][empty_renting] & series.NO_BIKE
    assert not series._COMBINED[empty_renting][some_bikes_closed] & series.NO_BIKE  # the neighbour has bikes
    assert series._COMBINED[some_bikes_closed][empty_renting] & series.RENTING == 0  # the station's flags
    assert series._COMBINED[series.ABSENT][empty_renting] == empty_renting & ~series.SOME_DOCK  # the neighbour's alone
    virtual = series.RENTING  # some bikes, docks unreported
    full = series.NO_DOCK | series.RETURNING
    assert series._COMBINED[full][virtual] & series.NO_DOCK  # unreported docks add none
    assert series._COMBINED[series.ABSENT][series.ABSENT] == -1


def test_the_largest_network_and_its_ties() -> None:
    assert network.largest_network(["a", "b", "c", "d", "e"], [("a", "b"), ("d", "e"), ("c", "d")]) == {"c", "d", "e"}
    assert network.largest_network(["x", "y", "a", "b"], [("x", "y"), ("a", "b")]) == {"a", "b"}  # holds the smallest id
    assert network.largest_network(["a", "b"], []) == set()  # no two stations linked: no network


def test_nearest_neighbours_and_their_ties() -> None:
    feet = 1 / 364_000  # about a foot of latitude
    positions = [network.Position("m", 40.75, -73.98), network.Position("n", 40.75 + 1500 * feet, -73.98),
                 network.Position("s", 40.75 - 1600 * feet, -73.98), network.Position("far", 40.75 + 3400 * feet, -73.98),
                 network.Position("alone", 40.80, -73.98)]
    crs, pairs = network.neighbours(positions)
    assert crs == network.NYC_CRS
    assert {p.station_id: p.neighbour_id for p in pairs} == {"m": "n", "n": "m", "s": "m", "far": "n"}
    # an exact tie (two stations at one place, as when a station is split in two): the smaller id
    tie = [network.Position("c", 40.75, -73.98), network.Position("x2", 40.751, -73.98),
           network.Position("x1", 40.751, -73.98)]
    _, pairs = network.neighbours(tie)
    assert {p.station_id: p.neighbour_id for p in pairs} == {"c": "x1", "x1": "x2", "x2": "x1"}


def test_a_local_plane_outside_new_york() -> None:
    paris = [network.Position("a", 48.8566, 2.3522), network.Position("b", 48.8566, 2.3522 + 0.001)]
    crs, pairs = network.neighbours(paris)
    assert crs.startswith("+proj=aeqd") and "+units=us-ft" in crs
    assert abs(pairs[0].distance_ft - 0.001 * 111_320 * 0.6580 / 0.3048006) < 1  # 0.001 degree of longitude at 48.86 N


def test_the_report_table_has_every_station_field_and_the_page_escapes_names() -> None:
    assert STATIONS_SCHEMA.names == list(StationFigures.__struct_fields__)
    from citibikes.analytics.measures import Analytics, HourFigures, SystemFigures
    from datetime import date

    station = StationFigures(system_id="x", station_id="1", name="<b>Main & 1st</b>", lat=1.0, lon=2.0, snapshots=10,
                             quarantined_counted=0, skipped=0, unusable=5, unusable_share=0.5, broken_snapshots=10,
                             broken_median=0.1, broken_mean=0.1, episodes=1, longest_h=1.0, mean_h=1.0, median_h=1.0,
                             in_network=False, neighbour_id=None, neighbour_ft=None, peak_instances=0, peak_fines=0,
                             off_peak_instances=0, off_peak_fines=0, fines=0)
    system = SystemFigures(system_id="x", timezone="UTC", first=date(2026, 1, 1), last=date(2026, 1, 1), snapshots=10,
                           window_snapshots=10, stations=1, records=10, quarantined_counted=0, skipped=0,
                           unusable_share_mean=0.5, unusable_share_median=0.5, broken_median=0.1, broken_mean=0.1,
                           episodes=1, longest_h=1.0, projection="EPSG:2263", network_stations=0, peak_instances=0,
                           peak_fines=0, off_peak_instances=0, off_peak_fines=0, fines=0)
    page = html(Analytics(system, [station], [HourFigures(h, 10, 1, 2) for h in range(24)]))
    assert "&lt;b&gt;Main &amp; 1st&lt;/b&gt;" in page and "<b>Main" not in page and page.count("<svg") == 3
