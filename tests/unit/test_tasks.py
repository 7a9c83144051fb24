"""The task helpers the DAG decides with: when a whole task fails, and which tables get asset events."""

from __future__ import annotations

from citibikes import tasks

BROKEN = {"ok": False, "error": "OSError: disk full"}


def test_a_task_fails_only_when_every_system_failed() -> None:
    assert tasks.all_failed({}) is None  # no system had anything to do
    assert tasks.all_failed({"a": {"ok": True}, "b": BROKEN}) is None
    assert tasks.all_failed({"a": BROKEN, "b": {"ok": False, "error": "lake unreachable"}}) == \
        "a: OSError: disk full; b: lake unreachable"


def test_landed_adds_up_rows_per_table_of_the_systems_that_landed() -> None:
    written = {
        "a": {"landed": {"station_status": 5, "quarantine": 2, "pipeline_runs": 1}},
        "b": {"landed": {"pipeline_runs": 1}},  # no new data: only its run row
        "c": BROKEN,
    }
    assert tasks.landed(written) == {
        "station_status": {"rows": 5, "systems": {"a": 5}},
        "quarantine": {"rows": 2, "systems": {"a": 2}},
        "pipeline_runs": {"rows": 2, "systems": {"a": 1, "b": 1}},
    }


def test_results_cross_xcom_as_plain_data_and_come_back_typed() -> None:
    results = {"a": tasks.Produce(published=3, produce_s=0.5), "b": tasks.Produce(ok=False, error="boom")}
    plain = tasks._plain(results)
    assert plain == {"a": {"published": 3, "produce_s": 0.5}, "b": {"ok": False, "error": "boom"}}
    assert tasks._typed(plain, tasks.Produce) == results
