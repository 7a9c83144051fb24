"""The stage helpers the DAG decides with: when a whole task fails."""

from __future__ import annotations

from citibikes import stages

BROKEN = stages._failure("write", OSError("disk full"))


def test_a_task_fails_only_when_every_system_failed() -> None:
    assert stages.all_failed({}) is None  # no system had anything to do
    assert stages.all_failed({"a": {"ok": True}, "b": BROKEN}) is None
    assert stages.all_failed({"a": BROKEN, "b": stages._failure("write", "lake unreachable")}) == \
        "a: OSError: disk full; b: lake unreachable"

