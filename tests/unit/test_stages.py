"""The stage helpers the DAG decides with: when a whole task fails, and which tables get asset events."""

from __future__ import annotations

from citibikes import stages

BROKEN = stages._failure("write", OSError("disk full"))


def test_a_task_fails_only_when_every_system_failed() -> None:
    assert stages.all_failed({}) is None  # no system had anything to do
    assert stages.all_failed({"a": {"ok": True}, "b": BROKEN}) is None
    assert stages.all_failed({"a": BROKEN, "b": stages._failure("write", "lake unreachable")}) == \
        "a: OSError: disk full; b: lake unreachable"


def test_landed_adds_up_rows_per_table_of_the_systems_that_landed() -> None:
    written = {
        "a": {"ok": True, "landed": {"station_status": 5, "quarantine": 2, "pipeline_runs": 1}},
        "b": {"ok": True, "landed": {"pipeline_runs": 1}},  # no new data: only its run row
        "c": BROKEN,
    }
    assert stages.landed(written) == {
        "station_status": {"rows": 5, "systems": {"a": 5}},
        "quarantine": {"rows": 2, "systems": {"a": 2}},
        "pipeline_runs": {"rows": 2, "systems": {"a": 1, "b": 1}},
    }
