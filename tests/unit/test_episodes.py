"""The episode state machine on hand-built series whose answers are worked out by hand."""

from __future__ import annotations

from citibikes.live.episodes import MAX_GAP_S, Change, Episode, Observation, StationEpisodes, episodes

M = 60


def obs(at: int, bikes: int = 5, docks: int = 5, renting: bool = True, returning: bool = True) -> Observation:
    return Observation(at, bikes, docks, renting, returning)


def test_the_first_observation_only_starts_the_walk() -> None:
    assert episodes([obs(0, bikes=0), obs(5 * M, bikes=3)]) == []


def test_an_empty_episode_opens_and_closes_at_the_observations_that_show_it() -> None:
    series = [obs(0), obs(5 * M, bikes=0), obs(10 * M, bikes=0), obs(15 * M, bikes=2)]
    assert episodes(series) == [Episode("empty", 5 * M, 15 * M)]


def test_full_needs_returning_and_empty_needs_renting() -> None:
    series = [obs(0), obs(M, bikes=0, renting=False), obs(2 * M, docks=0, returning=False), obs(3 * M)]
    assert episodes(series) == []


def test_a_full_episode_closes_when_docks_free_up_even_if_not_returning() -> None:
    series = [obs(0), obs(M, docks=0), obs(2 * M, docks=1, returning=False)]
    assert episodes(series) == [Episode("full", M, 2 * M)]


def test_an_observation_that_opens_an_episode_closes_nothing() -> None:
    """Empty opens at 1; at 2 full opens (bikes are back too, but nothing closes there); at 3 both close."""
    series = [obs(0), obs(M, bikes=0), obs(2 * M, bikes=4, docks=0), obs(3 * M, bikes=4, docks=1)]
    assert episodes(series) == [Episode("full", 2 * M, 3 * M), Episode("empty", M, 3 * M)]


def test_a_gap_over_40_minutes_closes_at_the_previous_observation() -> None:
    series = [obs(0), obs(M, bikes=0), obs(M + MAX_GAP_S + 1, bikes=0), obs(M + MAX_GAP_S + 2 * M, bikes=0)]
    # closed at 1 min by the gap; the station is still empty but only the next observation reopens it
    machine = StationEpisodes()
    changes = [machine.step(o) for o in series]
    assert changes[2] == [Change("empty", M, M)]
    assert changes[3] == [Change("empty", M + MAX_GAP_S + 2 * M, None)]


def test_a_gap_of_exactly_40_minutes_is_no_gap() -> None:
    series = [obs(0), obs(M, bikes=0), obs(M + MAX_GAP_S, bikes=1)]
    assert episodes(series) == [Episode("empty", M, M + MAX_GAP_S)]


def test_episodes_open_at_the_end_are_dropped_and_both_can_open_at_once() -> None:
    machine = StationEpisodes()
    machine.step(obs(0))
    assert machine.step(obs(M, bikes=0, docks=0)) == [Change("full", M, None), Change("empty", M, None)]
    assert episodes([obs(0), obs(M, bikes=0, docks=0)]) == []


def test_expire_closes_a_silent_station_at_its_last_observation() -> None:
    machine = StationEpisodes()
    machine.step(obs(0))
    machine.step(obs(M, bikes=0))
    assert machine.expire(M + MAX_GAP_S) == []
    assert machine.expire(M + MAX_GAP_S + 1) == [Change("empty", M, M)]
    assert machine.open_episodes() == []
