"""The minute DAG's tasks - fetch, validate, produce, write, report - each for every system at once.

Airflow task instances are expensive on small machines (measured here: 50 mapped trivial task
instances take about 26 s on 2 cores, a 4-task chain about 5 s), so the DAG has one task per
part of the step (:mod:`citibikes.ingest`) rather than one per system and part. Each task isolates
the systems (fetch and validate run them concurrently): a system that fails or overruns its
deadline is recorded as failed for this run and left out of the later tasks, while the others go
on. Only a broker that does not acknowledge the one flush of ``produce`` fails the task as a whole
(it is retried). ``report`` names the failed systems; ``write`` says which lake tables got files
(:func:`landed`), so the DAG emits asset events only for those. ``citibikes run`` runs the same
tasks in a row (:func:`run_all`).

Between tasks, records travel through the lake (the raw archive written by ``fetch`` and the
staged :class:`~citibikes.ingest.Step` under ``_state/staging/<run>/``); XCom carries small typed
results per system (:class:`Fetch`, :class:`Validate`, :class:`Produce`, :class:`Write`, as plain data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pyarrow as pa

from citibikes.config import Settings, SystemConfig
from citibikes.errors import one_line
from citibikes.gbfs.model import STATION_STATUS
from citibikes.ingest import (
    Fetched,
    Step,
    check_fetched,
    fetch_system,
    landed_rows,
    outcome,
    publish_step,
    run_record,
    select,
    step_files,
)
from citibikes.lake import Lake, RunRecord
from citibikes.lake.layout import safe_file_name
from citibikes.quality import QualitySummary
from citibikes.state import decode_hook, encode_hook, load_state, save_state
from citibikes.stream.publish import Publisher

log = logging.getLogger("citibikes.tasks")


class TaskResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One system's result of one task; ``ok`` False with the ``error`` when it failed there."""

    ok: bool = True
    error: str | None = None


class Fetch(TaskResult):
    fetched: Fetched | None = None
    started_at: float = 0.0
    fetch_s: float = 0.0
    unpublished: list[str] = []
    """The system's steps still to be sent again (its state's ``unpublished``)."""


class Validate(TaskResult):
    staged: str | None = None
    """The staged step's key in the lake's state store; None when the system had no new data."""
    unpublished: list[str] = []
    """Earlier steps that ``produce`` sends again first."""
    summary: QualitySummary | None = None
    validate_s: float = 0.0


class Produce(TaskResult):
    published: int = 0
    produce_s: float = 0.0


class Write(TaskResult):
    run: RunRecord | None = None
    landed: dict[str, int] = {}
    """Rows written per lake table (``pipeline_runs`` included)."""


R = TypeVar("R", bound=TaskResult)
Plain = Mapping[str, Any]
"""Results as XCom carries them: per system id, a result as plain data (``msgspec.to_builtins``)."""


def _typed(results: Plain | None, kind: type[R]) -> dict[str, R]:
    return msgspec.convert(dict(results or {}), dict[str, kind])


def _plain(results: Mapping[str, TaskResult]) -> dict[str, Any]:
    return msgspec.to_builtins(dict(results))


def _ok(results: Mapping[str, TaskResult]) -> list[str]:
    return [system_id for system_id, result in results.items() if result.ok]


def enabled(systems: Sequence[SystemConfig]) -> list[SystemConfig]:
    return [system for system in systems if system.enabled]


def for_each_system(systems: Sequence[SystemConfig], func: Callable[[SystemConfig], R], failed: Callable[[str], R], *,
                    max_workers: int = 8, deadline_s: float | None = None) -> dict[str, R]:
    """Run ``func`` for every system concurrently; a system that raises or overruns the deadline
    gets ``failed(reason)`` as its result instead of stopping the others."""
    results: dict[str, R] = {}
    if not systems:
        return results
    # Not a `with` block: leaving it would wait for a slow system, which is what the deadline prevents.
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(systems))), thread_name_prefix="system")
    futures = {pool.submit(func, system): system.system_id for system in systems}
    done, pending = wait(futures, timeout=deadline_s)
    for future in done:
        try:
            results[futures[future]] = future.result()
        except Exception as exc:  # noqa: BLE001 - isolated per system
            log.warning("%s: %s", futures[future], one_line(exc))
            results[futures[future]] = failed(one_line(exc))
    for future in pending:
        future.cancel()
        results[futures[future]] = failed(f"not finished within {deadline_s:.0f} s; skipped this run")
    pool.shutdown(wait=False, cancel_futures=True)
    return {system.system_id: results[system.system_id] for system in systems}


def fetch(settings: Settings, lake: Lake, *, deadline_s: float = 45.0) -> dict[str, Any]:
    """Fetch every enabled system concurrently and archive new bodies; no system waits for another."""
    def one(system: SystemConfig) -> Fetch:
        started, began = time.time(), time.perf_counter()
        state = load_state(lake, system.system_id)
        fetched = fetch_system(system, lake, state)
        fetched.bodies = {}  # archived in the lake; XCom carries the keys only
        return Fetch(fetched=fetched, started_at=started, fetch_s=time.perf_counter() - began,
                     unpublished=state.unpublished)

    return _plain(for_each_system(enabled(settings.systems), one, lambda error: Fetch(ok=False, error=error),
                                  deadline_s=deadline_s))


STAGING = "staging"


def _staging_key(run_id: str, system_id: str = "") -> str:
    """``staging/<run>/<system>/step.msgpack`` (a folder per system, so each can be deleted alone)."""
    folder = f"{STAGING}/{safe_file_name(run_id)}"
    return f"{folder}/{system_id}/step.msgpack" if system_id else folder


def _left_over(lake: Lake, run_id: str) -> dict[str, list[str]]:
    """Per system, the staged steps earlier runs did not land (their lake write failed), oldest run first."""
    current = _staging_key(run_id) + "/"
    found: dict[str, list[str]] = {}
    for key in lake.list_state(STAGING):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "step.msgpack" and not key.startswith(current):
            found.setdefault(parts[2], []).append(key)
    return found


def _encode_table(value: Any) -> Any:
    """A staged step's tables as Arrow IPC streams."""
    if isinstance(value, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return sink.getvalue().to_pybytes()
    return encode_hook(value)


def _decode_table(kind: type, value: Any) -> Any:
    if kind is pa.Table:
        return pa.ipc.open_stream(value).read_all()
    return decode_hook(kind, value)


def _load_step(lake: Lake, key: str) -> Step:
    data = lake.read_state(key)
    if data is None:
        raise FileNotFoundError(f"staged step {key} is missing; the validate task must run again")
    try:
        return msgspec.msgpack.decode(data, type=Step, dec_hook=_decode_table)
    except (msgspec.DecodeError, pa.ArrowInvalid) as exc:
        raise ValueError(f"staged step {key} cannot be read ({exc}); the validate task must run again") from None


def validate(settings: Settings, lake: Lake, run_id: str, fetched: Plain) -> dict[str, Any]:
    """Check each system's new data against its state and stage the step in the lake."""
    fetches = _typed(fetched, Fetch)

    def one(system: SystemConfig) -> Validate:
        record, unpublished = fetches[system.system_id].fetched, fetches[system.system_id].unpublished
        assert record is not None
        if not record.has_new_data:
            return Validate(unpublished=unpublished)
        began = time.perf_counter()
        for feed, key in record.raw_keys.items():
            body = lake.read_raw(system.system_id, feed, record.last_updated[feed])
            if body is None:
                raise FileNotFoundError(f"raw archive {key} is missing; the fetch must run again")
            record.bodies[feed] = body
        state = load_state(lake, system.system_id)
        checked = check_fetched(record, state, settings.quality, language=system.language)
        step = select(state, checked, system_id=system.system_id, snapshot_every_s=settings.status_snapshot_every_s,
                      client_state=record.client_state)
        key = _staging_key(run_id, system.system_id)
        lake.write_state(key, msgspec.msgpack.encode(step, enc_hook=_encode_table))
        return Validate(staged=key, summary=step.summary, validate_s=time.perf_counter() - began,
                        unpublished=unpublished)

    systems = [system for system in enabled(settings.systems) if system.system_id in _ok(fetches)]
    return _plain(for_each_system(systems, one, lambda error: Validate(ok=False, error=error)))


def produce(settings: Settings, lake: Lake, publisher: Publisher, validated: Plain) -> dict[str, Any]:
    """Publish every system's steps (the unpublished ones of earlier runs, then this run's) with one
    flush; raise (and retry the task) on any delivery failure.

    A system whose staged step cannot be read or encoded fails alone (what of it was sent already
    is sent again by its next run, with the same message ids); the others are published.
    """
    began = time.perf_counter()
    results: dict[str, Produce] = {}
    for system_id, result in _typed(validated, Validate).items():
        steps = [*result.unpublished, *([result.staged] if result.staged else [])]
        if not result.ok or not steps:
            continue
        try:
            results[system_id] = Produce(published=sum(publish_step(_load_step(lake, key), publisher) for key in steps))
        except Exception as exc:  # noqa: BLE001 - isolated per system
            log.warning("%s: produce failed: %s", system_id, one_line(exc))
            results[system_id] = Produce(ok=False, error=one_line(exc))
    publisher.flush()  # DeliveryError: the task fails and retries; nothing has landed, no state has moved
    for result in results.values():
        result.produce_s = time.perf_counter() - began
    return _plain(results)


def write(settings: Settings, lake: Lake, run_id: str, fetched: Plain, validated: Plain,
          produced: Plain | None) -> dict[str, Any]:
    """Land each system's step in the lake, advance its state and record its run.

    A step Kafka did not acknowledge (``produce`` failed, or its task did: ``produced`` None) lands
    all the same, so every message the broker did take is in the lake, and is kept for the next run
    to send again; its run is recorded as failed. A step an earlier run staged but could not land
    (``report`` keeps it) lands first, and is sent again too. A system whose lake write or state save
    raises fails alone; the others land.
    """
    fetches, validations, productions = _typed(fetched, Fetch), _typed(validated, Validate), _typed(produced, Produce)
    left_over = _left_over(lake, run_id)

    def one(system_id: str) -> Write:
        fetch_, validation = fetches[system_id], validations[system_id]
        record = fetch_.fetched
        assert record is not None
        production = productions.get(system_id)
        has_steps = validation.staged is not None or bool(validation.unpublished)
        delivered = not has_steps or (production is not None and production.ok)
        # What stays to be sent: nothing once delivered, else the earlier steps and a copy of this one
        # (the run's staging area is removed by `report`).
        unpublished = [] if delivered else list(validation.unpublished)
        landed_before = _land_left_over(lake, system_id, left_over.get(system_id, []), unpublished)
        step = _load_step(lake, validation.staged) if validation.staged is not None else None
        if not delivered and step is not None:
            unpublished.append(_keep_unpublished(lake, system_id, safe_file_name(run_id), step))
        durations: dict[str, float | None] = {"fetch": fetch_.fetch_s, "validate": validation.validate_s}
        if step is None:
            state = load_state(lake, system_id)
            outcome_, reason = outcome(None, record, state, settings.quality)
            if not delivered:
                outcome_, reason = "failed", _undelivered(production)
            save_state(lake, system_id, msgspec.structs.replace(state, client=record.client_state,
                                                                unpublished=unpublished))
            _forget_sent(lake, validation, delivered, landed_before)
            run = run_record(run_id, system_id, fetch_.started_at, outcome_, durations=durations, error=reason)
            lake.write_runs([run])
            return Write(run=run, landed={"pipeline_runs": 1})
        began = time.perf_counter()
        lake.write_files(step_files(step, lake))
        save_state(lake, system_id, msgspec.structs.replace(step.state, unpublished=unpublished))
        _forget_sent(lake, validation, delivered, landed_before)
        durations.update(produce=production.produce_s if production else None, write=time.perf_counter() - began)
        outcome_, reason = outcome(step, record, step.state, settings.quality)
        if not delivered:
            outcome_, reason = "failed", _undelivered(production)
        run = run_record(run_id, system_id, fetch_.started_at, outcome_, step=step,
                         published=production.published if delivered and production else 0,
                         durations=durations, error=reason)
        lake.write_runs([run])
        return Write(run=run, landed={**landed_rows(step), "pipeline_runs": 1})

    results: dict[str, Write] = {}
    for system_id in _ok(validations):  # lake writes are fast; one after the other keeps errors simple to read
        if system_id not in fetches:
            continue
        try:
            results[system_id] = one(system_id)
        except Exception as exc:  # noqa: BLE001 - isolated per system
            log.warning("%s: write failed: %s", system_id, one_line(exc))
            results[system_id] = Write(ok=False, error=one_line(exc))
    return _plain(results)  # staging stays until `report`, so a retried write finds its steps


def _undelivered(production: Produce | None) -> str:
    why = production.error if production is not None else "its task did not complete"
    return f"produce failed: {why}; landed in the lake, the next run sends it to Kafka again"


def _keep_unpublished(lake: Lake, system_id: str, name: str, step: Step) -> str:
    """A copy of ``step`` for a later ``produce`` to send; returns its key."""
    key = f"{system_id}/unpublished/{name}/step.msgpack"
    lake.write_state(key, msgspec.msgpack.encode(step, enc_hook=_encode_table))
    return key


def _land_left_over(lake: Lake, system_id: str, keys: list[str], unpublished: list[str]) -> list[str]:
    """Land the steps earlier runs staged but did not land, oldest first, and add them to ``unpublished``
    (whether Kafka took them is not known; sent again, their messages are dropped as duplicates). Their
    files are named by their feed times, so landing one twice changes nothing; the state stays as this
    run's validation made it. Returns the staged keys to delete once the state lists the copies."""
    steps = []
    for key in keys:
        try:
            steps.append((key, _load_step(lake, key)))
        except (FileNotFoundError, ValueError) as exc:  # unreadable: its feed is in raw/, nothing to land
            log.error("%s: %s; deleted", system_id, exc)
            lake.delete_state(key.rpartition("/")[0])
    steps.sort(key=lambda pair: pair[1].state.last_updated.get(STATION_STATUS, 0))
    for key, step in steps:
        lake.write_files(step_files(step, lake))
        unpublished.append(_keep_unpublished(lake, system_id, key.split("/")[1], step))
    return [key for key, _ in steps]


def _forget_sent(lake: Lake, validation: Validate, delivered: bool, landed_before: list[str]) -> None:
    """Delete the copies of earlier steps once Kafka acknowledged them, and the staged steps landed late
    (after the state listed them: a crash in between leaves a file, never a state naming none)."""
    for key in (validation.unpublished if delivered else []) + landed_before:
        lake.delete_state(key.rpartition("/")[0])  # each has a folder of its own


def landed(written: Plain) -> dict[str, dict[str, Any]]:
    """Per lake table that got files in this ``write``: total ``rows`` and rows per system
    (``systems``). Tables that got nothing are absent: the DAG emits asset events only for these."""
    tables: dict[str, dict[str, Any]] = {}
    for system_id, result in _typed(written, Write).items():
        for table, rows in result.landed.items():
            entry = tables.setdefault(table, {"rows": 0, "systems": {}})
            entry["rows"] += rows
            entry["systems"][system_id] = rows
    return tables


def all_failed(results: Plain) -> str | None:
    """The failures, in one line, when there were systems and every one failed (a lake or network
    outage, worth retrying the task); else None."""
    typed = _typed(results, TaskResult)
    if typed and not _ok(typed):
        return "; ".join(f"{system_id}: {result.error}" for system_id, result in typed.items())
    return None


def report(settings: Settings, lake: Lake, run_id: str, results: Mapping[str, Plain | None]) -> tuple[list[str], dict[str, str]]:
    """One line per system and the failures (system -> reason); records runs of systems that failed
    before ``write`` and removes the run's staging area (the last task, run whatever happened before)."""
    lines, failed = [], {}
    written = {sid: r for sid, r in _typed(results.get("write"), Write).items() if r.ok and r.run is not None}
    fetches = _typed(results.get("fetch"), Fetch)
    for system in enabled(settings.systems):
        sid = system.system_id
        run = written[sid].run if sid in written else None
        if run is not None and run.outcome == "stale":
            failed[sid] = f"stale: {run.error}"
            lines.append(f"{sid}: STALE - {run.error}")
        elif run is not None and run.outcome == "failed":  # landed, but Kafka did not acknowledge it
            failed[sid] = run.error or "failed"
            lines.append(f"{sid}: FAILED - {run.error}")
        elif run is not None:
            lines.append(f"{sid}: {run.outcome} - {run.stations_status or 0} stations, {run.stations_valid or 0} valid, "
                         f"{run.stations_quarantined or 0} quarantined, {run.stations_published or 0} published")
        else:
            reason = _failure(sid, results)
            failed[sid] = reason
            lines.append(f"{sid}: FAILED - {reason}")
            started = fetches[sid].started_at if sid in fetches else time.time()
            lake.write_runs([run_record(run_id, sid, started, "failed", error=reason)])
    # Staging goes, except the steps that did not land (a lake write failed): the next run lands them.
    landed = {sid for sid, r in _typed(results.get("write"), Write).items() if r.ok}
    validations = _typed(results.get("validate"), Validate)
    kept = {sid for sid, v in validations.items() if v.staged and sid not in landed}
    if kept:
        for sid in set(validations) - kept:
            lake.delete_state(_staging_key(run_id, sid).rpartition("/")[0])
    else:
        lake.delete_state(_staging_key(run_id))
    return lines, failed


def _failure(system_id: str, results: Mapping[str, Plain | None]) -> str:
    """Why a system did not land: the first task that failed it, or the first that did not complete."""
    for name, plain in results.items():
        if plain is None:
            return f"{name} did not complete (see its task log)"
        result = _typed(plain, TaskResult).get(system_id)
        if result is not None and not result.ok:
            return f"{name} failed: {result.error}"
    return "not processed"


@dataclass
class RunSummary:
    lines: list[str]
    failed: dict[str, str]
    outcomes: dict[str, int]
    """Systems per run outcome (success, no_new_data, skipped, stale, failed)."""
    processed: int = 0
    sent: int = 0
    quarantined: int = 0
    duration_s: float = 0.0


def run_all(settings: Settings, lake: Lake, publisher: Publisher, run_id: str) -> RunSummary:
    """All tasks in a row, in one process: what ``citibikes run`` does each interval (the DAG's path)."""
    began = time.perf_counter()
    fetched = fetch(settings, lake)
    validated = validate(settings, lake, run_id, fetched)
    try:
        produced: Plain = produce(settings, lake, publisher, validated)
    except Exception as exc:  # noqa: BLE001 - every system that had data failed to publish
        produced = _plain({sid: Produce(ok=False, error=one_line(exc)) for sid, result in _typed(validated, Validate).items()
                           if result.ok and (result.staged or result.unpublished)})
    written = write(settings, lake, run_id, fetched, validated, produced)
    lines, failed = report(settings, lake, run_id,
                           {"fetch": fetched, "validate": validated, "produce": produced, "write": written})
    runs = [result.run for result in _typed(written, Write).values() if result.ok and result.run is not None]
    outcomes: dict[str, int] = {}
    for outcome_ in [run.outcome for run in runs] + ["failed"] * len(set(failed) - {run.system_id for run in runs}):
        outcomes[outcome_] = outcomes.get(outcome_, 0) + 1
    return RunSummary(lines=lines, failed=failed, outcomes=outcomes,
                      processed=sum(run.stations_status or 0 for run in runs),
                      sent=sum(run.stations_published or 0 for run in runs),
                      quarantined=sum(run.stations_quarantined or 0 for run in runs),
                      duration_s=time.perf_counter() - began)
