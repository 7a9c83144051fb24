"""The minute DAG's stages - fetch, validate, produce, write, report - each for every system at once.

Airflow task instances are expensive on small machines (measured here: 50 mapped trivial task
instances take about 26 s on 2 cores, a 4-task chain about 5 s), so the DAG has one task per
stage rather than one per system and stage. Each stage isolates the systems (fetch and validate
run them concurrently): a system that fails or overruns its deadline is recorded as failed for this
run and left out of the later stages, while the others go on. Only a broker that does not
acknowledge the one flush of ``produce`` fails the stage as a whole (it is retried). The ``report``
stage names the failed systems. ``write`` says which lake tables got files (:func:`landed`), so
the DAG emits asset events only for those.

Between tasks, records travel through the lake (the raw archive written by ``fetch`` and a staging
area under ``_state/staging/<run>/``); XCom carries only small JSON summaries per system.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

import msgspec

from citibikes.config import Settings
from citibikes.lake import Lake
from citibikes.pipeline import (
    Fetched,
    Published,
    Queued,
    Validated,
    advance_state,
    enabled,
    fetch_system,
    for_each_system,
    land_validated,
    landed_rows,
    load_change_capture,
    load_state,
    no_data_outcome,
    success_outcome,
    one_line,
    run_record,
    save_change_capture,
    save_state,
    stage_validated,
    validate_fetched,
)
from citibikes.stream.publish import Publisher

log = logging.getLogger("citibikes.stages")

Results = dict[str, dict[str, Any]]
"""Per system id: ``{"ok": bool, ...}``; failures carry ``stage`` and ``error``."""


def _failure(stage: str, error: BaseException | str) -> dict[str, Any]:
    return {"ok": False, "stage": stage, "error": error if isinstance(error, str) else one_line(error)}


def _staging_key(run_id: str, system_id: str = "") -> str:
    safe_run = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return f"staging/{safe_run}/{system_id}.msgpack" if system_id else f"staging/{safe_run}"


def _ok(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [system_id for system_id, result in results.items() if result.get("ok")]


def fetch(settings: Settings, lake: Lake, *, deadline_s: float = 45.0) -> Results:
    """Fetch every enabled system concurrently and archive new bodies; no system waits for another."""
    def one(system):
        started = time.perf_counter()
        fetched = fetch_system(system, lake, load_state(lake, system.system_id))
        fetched.bodies = {}  # archived in the lake; XCom carries the keys only
        return {"ok": True, "fetched": msgspec.to_builtins(fetched), "fetch_s": time.perf_counter() - started,
                "started_at": time.time() - (time.perf_counter() - started)}

    results = for_each_system(enabled(settings.systems), one, deadline_s=deadline_s)
    return {sid: r if isinstance(r, dict) else _failure("fetch", r) for sid, r in results.items()}


def validate(settings: Settings, lake: Lake, run_id: str, fetched: Results) -> Results:
    """Normalize and validate each system's new data; stage the result in the lake."""
    def one(system):
        item = fetched[system.system_id]
        record = msgspec.convert(item["fetched"], Fetched)
        if not record.has_new_data:
            return {"ok": True, "new_data": False, "outcomes": record.outcomes}
        started = time.perf_counter()
        for feed, key in record.raw_keys.items():
            body = lake.read_raw(system.system_id, feed, record.last_updated[feed])
            if body is None:
                raise FileNotFoundError(f"raw archive {key} is missing; the fetch must run again")
            record.bodies[feed] = body
        validated = validate_fetched(record, load_state(lake, system.system_id), settings.quality)
        key = _staging_key(run_id, system.system_id)
        lake.write_state(key, msgspec.msgpack.encode(validated))
        return {"ok": True, "new_data": True, "staged": key, "summary": validated.summary,
                "valid": validated.valid_status, "quarantined": len(validated.quarantined),
                "validate_s": time.perf_counter() - started}

    systems = [s for s in enabled(settings.systems) if fetched.get(s.system_id, {}).get("ok")]
    results = for_each_system(systems, one)
    return {sid: r if isinstance(r, dict) else _failure("validate", r) for sid, r in results.items()}


def _load_staged(lake: Lake, key: str) -> Validated:
    data = lake.read_state(key)
    if data is None:
        raise FileNotFoundError(f"staged records {key} are missing; the validate task must run again")
    try:
        return msgspec.msgpack.decode(data, type=Validated)
    except msgspec.DecodeError as exc:  # ValidationError is one too
        raise ValueError(f"staged records {key} cannot be decoded ({exc}); the validate task must run again") from exc


def produce(settings: Settings, lake: Lake, publisher: Publisher, validated: Results) -> Results:
    """Publish every system's changes with one flush; raise (and retry the task) on any delivery failure.

    A system whose staged records cannot be read, or whose selection or encoding raises, fails
    alone before anything is sent; the others are published. Change capture advances only for
    systems whose records the broker acknowledged.
    """
    started = time.perf_counter()
    results: Results = {}
    batch = Queued(publisher)
    systems, captures_by_system = [], {}
    for system_id in [sid for sid in _ok(validated) if validated[sid].get("new_data")]:
        try:
            captures = load_change_capture(lake, system_id, settings.status_snapshot_every_s)
            staged = stage_validated([(_load_staged(lake, validated[system_id]["staged"]), captures)], publisher)
        except Exception as exc:  # noqa: BLE001 - isolated per system
            log.warning("%s: produce failed: %s", system_id, one_line(exc))
            results[system_id] = _failure("produce", exc)
            continue
        batch.extend(staged)
        systems.append(system_id)
        captures_by_system[system_id] = captures
    batch.send()
    published = batch.confirm()  # DeliveryError: the task fails and retries; no state has moved
    elapsed = time.perf_counter() - started
    for system_id, p in zip(systems, published):
        try:
            save_change_capture(lake, system_id, captures_by_system[system_id])
        except Exception as exc:  # noqa: BLE001 - delivered; the next run re-selects against the old state
            log.warning("%s: saving change capture failed: %s", system_id, one_line(exc))
            results[system_id] = _failure("produce", exc)
            continue
        results[system_id] = {"ok": True, "published": msgspec.to_builtins(p), "produce_s": elapsed}
    return results


def write(settings: Settings, lake: Lake, run_id: str, fetched: Results, validated: Results, produced: Results) -> Results:
    """Land each published system in the lake, advance its state and record its run.

    A system whose lake write or state save raises fails alone; the others land. Each result
    says under ``landed`` how many rows it wrote per table (see :func:`landed`).
    """
    def one(system_id: str) -> dict[str, Any]:
        fetch_item, validate_item = fetched[system_id], validated[system_id]
        durations = {"fetch": fetch_item.get("fetch_s"), "validate": validate_item.get("validate_s")}
        started_at = fetch_item.get("started_at") or time.time()
        record_fetched = msgspec.convert(fetch_item["fetched"], Fetched)
        state = load_state(lake, system_id)
        rows: dict[str, int] = {}
        if not validate_item.get("new_data"):
            outcome, reason = no_data_outcome(record_fetched, state, settings.quality)
            save_state(lake, system_id, advance_state(state, record_fetched, None))
            run = run_record(run_id, system_id, started_at, outcome, durations=durations, error=reason)
        else:
            validated_record = _load_staged(lake, validate_item["staged"])
            published = msgspec.convert(produced[system_id]["published"], Published)
            started = time.perf_counter()
            land_validated(validated_record, lake, information_changed=published.information_changed)
            rows = landed_rows(validated_record, information_changed=published.information_changed)
            save_state(lake, system_id, advance_state(state, record_fetched, validated_record))
            durations.update(produce=produced[system_id]["produce_s"], write=time.perf_counter() - started)
            outcome, reason = success_outcome(validated_record)
            run = run_record(run_id, system_id, started_at, outcome, validated=validated_record,
                             published=published, durations=durations, error=reason)
        lake.write_run(run)
        return {"ok": True, "run": msgspec.to_builtins(run), "landed": {**rows, "pipeline_runs": 1}}

    systems = [sid for sid in _ok(validated)
               if not validated[sid].get("new_data") or produced.get(sid, {}).get("ok")]
    results: Results = {}
    for system_id in systems:  # lake writes are fast; sequential keeps errors simple to read
        try:
            results[system_id] = one(system_id)
        except Exception as exc:  # noqa: BLE001 - isolated per system
            log.warning("%s: write failed: %s", system_id, one_line(exc))
            results[system_id] = _failure("write", exc)
    return results  # staging stays until `report`, so a retried write finds its records


def landed(written: Results) -> dict[str, dict[str, Any]]:
    """Per lake table that got files in this ``write``: total ``rows`` and rows per system
    (``systems``). Tables that got nothing are absent: the DAG emits asset events only for these."""
    tables: dict[str, dict[str, Any]] = {}
    for system_id, result in written.items():
        for table, rows in (result.get("landed") or {}).items():
            entry = tables.setdefault(table, {"rows": 0, "systems": {}})
            entry["rows"] += rows
            entry["systems"][system_id] = rows
    return tables


def all_failed(results: Results) -> str | None:
    """The failures, in one line, when there were systems and every one failed (a lake or network
    outage, worth retrying the task); else None."""
    if results and not any(r.get("ok") for r in results.values()):
        return "; ".join(f"{sid}: {r['error']}" for sid, r in results.items())
    return None


def report(settings: Settings, lake: Lake, run_id: str, stages: Mapping[str, Results | None]) -> tuple[list[str], dict[str, str]]:
    """One line per system and the failures (system -> reason); records runs of failed systems and
    removes the run's staging area (the last stage, run whatever happened before)."""
    lines, failed = [], {}
    written = {sid: r for sid, r in (stages.get("write") or {}).items() if r.get("ok")}
    for system in enabled(settings.systems):
        sid = system.system_id
        if sid in written and written[sid]["run"]["outcome"] == "stale":
            failed[sid] = f"stale: {written[sid]['run']['error']}"
            lines.append(f"{sid}: STALE - {written[sid]['run']['error']}")
            continue
        if sid in written:
            run = written[sid]["run"]
            lines.append(
                f"{sid}: {run['outcome']} - {run.get('stations_status') or 0} stations, "
                f"{run.get('stations_valid') or 0} valid, {run.get('stations_quarantined') or 0} quarantined, "
                f"{run.get('stations_published') or 0} published"
            )
            continue
        reason = next(
            (f"{name} failed: {r[sid]['error']}" for name, r in stages.items() if r and sid in r and not r[sid].get("ok")),
            next((f"{name} did not complete (see its task log)" for name, r in stages.items() if r is None), "not processed"),
        )
        failed[sid] = reason
        lines.append(f"{sid}: FAILED - {reason}")
        fetch_item = (stages.get("fetch") or {}).get(sid, {})
        lake.write_run(run_record(run_id, sid, fetch_item.get("started_at") or time.time(), "failed", error=reason))
    lake.delete_state(_staging_key(run_id))
    return lines, failed


@dataclass
class RunSummary:
    lines: list[str]
    failed: dict[str, str]
    outcomes: dict[str, int]
    """Systems per run outcome (success, no_new_data, skipped, failed)."""
    processed: int = 0
    sent: int = 0
    quarantined: int = 0
    duration_s: float = 0.0


def run_all(settings: Settings, lake: Lake, publisher: Publisher, run_id: str) -> RunSummary:
    """All stages in a row, in one process: what ``citibikes run`` does each interval (the DAG's path)."""
    started = time.perf_counter()
    fetched = fetch(settings, lake)
    validated = validate(settings, lake, run_id, fetched)
    try:
        produced: Results | None = produce(settings, lake, publisher, validated)
    except Exception as exc:  # noqa: BLE001 - every system that had data failed to publish
        produced = {sid: _failure("produce", exc) for sid in _ok(validated) if validated[sid].get("new_data")}
    written = write(settings, lake, run_id, fetched, validated, {s: r for s, r in produced.items() if r.get("ok")})
    lines, failed = report(settings, lake, run_id,
                           {"fetch": fetched, "validate": validated, "produce": produced, "write": written})
    runs = {sid: item["run"] for sid, item in written.items() if item.get("ok")}
    outcomes: dict[str, int] = {}
    for outcome in [r["outcome"] for r in runs.values()] + ["failed"] * len(set(failed) - set(runs)):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return RunSummary(
        lines=lines, failed=failed, outcomes=outcomes,
        processed=sum(r.get("stations_status") or 0 for r in runs.values()),
        sent=sum(r.get("stations_published") or 0 for r in runs.values()),
        quarantined=sum(r.get("stations_quarantined") or 0 for r in runs.values()),
        duration_s=time.perf_counter() - started,
    )
