"""One ingest step for one system: fetch -> validate -> publish -> land, and its run record.

The minute DAG, ``citibikes run`` and ``citibikes backfill`` all go through these functions, so
there is one pipeline, not three. The stages are separate functions because the DAG runs each in
its own task over all systems (:mod:`citibikes.stages`, which ``citibikes run`` calls too), while
backfill chains them in memory for one recorded snapshot at a time (:func:`process_snapshot`).

State that must survive between runs lives in the lake under ``_state/<system>/``: the HTTP
client's validators and ttl (so unchanged feeds are not refetched or re-emitted), the capacity of
every known station (to validate a status feed when station_information was not refetched) and
the change-capture fingerprints. State is committed only after the data it describes was
delivered, so a failed run is repeated rather than skipped.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import msgspec

from citibikes.config import QualityConfig, Settings, SystemConfig
from citibikes.gbfs.client import ClientState, FetchResult, GbfsClient
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import (
    STATION_INFORMATION,
    STATION_STATUS,
    QuarantinedRecord,
    StationInformation,
    StationStatus,
)
from citibikes.gbfs.normalize import normalize_information, normalize_status, parse_feed
from citibikes.lake import Lake, RunRecord
from citibikes.lake.store import LakeFile
from citibikes.quality import validate
from citibikes.stream.publish import ChangeCapture, Publisher

log = logging.getLogger("citibikes.pipeline")

FEEDS = (STATION_INFORMATION, STATION_STATUS)


# -- state kept between runs -------------------------------------------------------------------

class SystemState(msgspec.Struct):
    """What one system's next run needs to know about the previous ones."""

    client: dict[str, Any] = {}
    """:class:`ClientState` as a dict: ETag / Last-Modified / ttl / last_updated per feed."""
    stations: dict[str, int | None] = {}
    """Capacity of every station in the latest valid station_information."""
    last_updated: dict[str, int] = {}
    """The newest ``last_updated`` delivered per feed."""


def load_state(lake: Lake, system_id: str) -> SystemState:
    data = lake.read_state(f"{system_id}/pipeline.json")
    return msgspec.json.decode(data, type=SystemState) if data else SystemState()


def save_state(lake: Lake, system_id: str, state: SystemState) -> None:
    lake.write_state(f"{system_id}/pipeline.json", msgspec.json.encode(state))


def load_change_capture(lake: Lake, system_id: str, snapshot_every_s: int) -> dict[str, ChangeCapture]:
    return {
        feed: ChangeCapture.loads(lake.read_state(f"{system_id}/changes-{feed}.json"), snapshot_every_s, feed)
        for feed in FEEDS
    }


def save_change_capture(lake: Lake, system_id: str, captures: Mapping[str, ChangeCapture]) -> None:
    for feed, capture in captures.items():
        lake.write_state(f"{system_id}/changes-{feed}.json", capture.dumps())


# -- the stages --------------------------------------------------------------------------------

class Fetched(msgspec.Struct):
    """The outcome of fetching one system's station feeds (bodies only for new data)."""

    system_id: str
    fetched_at: float
    outcomes: dict[str, str]
    """Per feed: ``new``, ``unchanged``, ``not_modified`` or ``skipped_ttl``."""
    last_updated: dict[str, int]
    raw_keys: dict[str, str] = {}
    """Where each new body was archived in the lake (``raw/...``)."""
    client_state: dict[str, Any] = {}
    bodies: dict[str, bytes] = {}
    """New bodies, in memory only (the DAG re-reads them from the archive)."""

    @property
    def has_new_data(self) -> bool:
        return any(outcome == "new" for outcome in self.outcomes.values())


def fetch_system(system: SystemConfig, lake: Lake, state: SystemState, *, client_options: Mapping[str, Any] | None = None) -> Fetched:
    """Fetch station_information and station_status; archive every new body in the lake."""
    client = GbfsClient(system, state=ClientState.from_dict(state.client) if state.client else None,
                        **(client_options or {}))
    try:
        results: dict[str, FetchResult] = {feed: client.fetch(feed) for feed in FEEDS}
        client_state = client.state.to_dict()
    finally:
        client.close()
    fetched = Fetched(
        system_id=system.system_id,
        fetched_at=max(r.fetched_at for r in results.values()),
        outcomes={feed: r.outcome for feed, r in results.items()},
        last_updated={feed: r.last_updated for feed, r in results.items() if r.last_updated is not None},
        client_state=client_state,
    )
    for feed, result in results.items():
        if result.outcome == "new" and result.body is not None:
            if result.last_updated is None:  # not a GBFS document: say exactly why (HTML, truncated...)
                parse_feed(result.body, feed, system_id=system.system_id)
                raise FeedError("the feed has no readable last_updated; it is not a usable GBFS document",
                                reason="bad_header", system_id=system.system_id, feed=feed, url=result.url)
            fetched.bodies[feed] = result.body
            fetched.raw_keys[feed] = lake.write_raw(system.system_id, feed, result.last_updated, result.body)
    return fetched


class Validated(msgspec.Struct):
    """Valid records, quarantined records and the quality summary of one system's step."""

    system_id: str
    information: list[StationInformation]
    status: list[StationStatus]
    quarantined: list[QuarantinedRecord]
    summary: dict[str, Any]
    information_is_new: bool
    status_is_new: bool
    last_updated: dict[str, int] = {}


def validate_fetched(fetched: Fetched, state: SystemState, quality: QualityConfig, *,
                     reference_time: float | None = None) -> Validated:
    """Parse and normalize the new bodies and apply every quality rule.

    When station_information did not change, the capacities remembered from the last valid one
    stand in for it (orphan and capacity checks still work). ``reference_time`` is "now" for
    staleness; backfills pass the feed's own time.
    """
    normalized: dict[str, Any] = {}
    for feed, normalize in ((STATION_INFORMATION, normalize_information), (STATION_STATUS, normalize_status)):
        body = fetched.bodies.get(feed)
        if body is not None:
            parsed = parse_feed(body, feed, system_id=fetched.system_id)
            normalized[feed] = normalize(parsed, fetched.system_id, fetched.fetched_at)
    information, status = normalized.get(STATION_INFORMATION), normalized.get(STATION_STATUS)
    if information is None and status is None:
        return Validated(fetched.system_id, [], [], [], {}, False, False, dict(fetched.last_updated))
    result = validate(
        information, status, config=quality, reference_time=reference_time,
        known_station_ids=state.stations if information is None and state.stations else None,
        previous_last_updated=state.last_updated.get(STATION_STATUS),
    )
    return Validated(
        system_id=fetched.system_id,
        information=result.information,
        status=result.status,
        quarantined=result.quarantined,
        summary=result.summary.to_dict(),
        information_is_new=information is not None,
        status_is_new=status is not None,
        last_updated={feed: n.last_updated for feed, n in normalized.items()},
    )


class Published(msgspec.Struct):
    sent: int = 0
    skipped_unchanged: int = 0
    full_snapshot: bool = False
    information_changed: bool = False
    """Some station's description changed (or a snapshot is due): land station_information."""


def publish_validated(batches: Sequence[tuple[Validated, Mapping[str, ChangeCapture]]],
                      publisher: Publisher) -> list[Published]:
    """Produce each system's changed stations (or all, on a snapshot) and its quarantine; flush once.

    Raises :class:`~citibikes.stream.publish.DeliveryError` unless the broker acknowledged every
    record of every system; change-capture state advances only after that.
    """
    return queue_validated(batches, publisher).confirm()


def queue_validated(batches: Sequence[tuple[Validated, Mapping[str, ChangeCapture]]],
                    publisher: Publisher) -> Queued:
    """The first half of :func:`publish_validated`: select and produce, without waiting for the broker."""
    queued = Queued(publisher)
    for validated, captures in batches:
        selections, sent, skipped = [], len(validated.quarantined), 0
        for feed, records, publish in (
            (STATION_INFORMATION, validated.information, publisher.publish_information),
            (STATION_STATUS, validated.status, publisher.publish_status),
        ):
            if not records:
                continue
            last_updated = validated.last_updated[feed]
            selected, unchanged, full = captures[feed].select(records, last_updated)
            publish(selected)
            selections.append((feed, selected, full, last_updated))
            sent, skipped = sent + len(selected), skipped + unchanged
        publisher.publish_quarantine(validated.quarantined)
        publisher.note_skipped(skipped)
        queued.selections.append((captures, selections))
        queued.published.append(Published(
            sent=sent, skipped_unchanged=skipped,
            full_snapshot=any(full for feed, _, full, _ in selections if feed == STATION_STATUS),
            information_changed=any(bool(sel) for feed, sel, _, _ in selections if feed == STATION_INFORMATION),
        ))
    return queued


@dataclass
class Queued:
    """Records handed to the producer, not acknowledged yet (see :func:`queue_validated`)."""

    publisher: Publisher
    published: list[Published] = field(default_factory=list)
    """One per system, in the order of the batches."""
    selections: list[tuple[Mapping[str, ChangeCapture], list[tuple[str, list[Any], bool, int]]]] = \
        field(default_factory=list)
    """Per system: its change captures and, per feed, (feed, records sent, full snapshot, last_updated)."""

    def confirm(self) -> list[Published]:
        """Flush: raise DeliveryError unless every record was acknowledged; then advance change capture."""
        self.publisher.flush()
        for captures, selections in self.selections:
            for feed, selected, full, last_updated in selections:
                captures[feed].commit(selected, last_updated, full)
        return self.published


def land_validated(validated: Validated, lake: Lake, *, information_changed: bool = True) -> list[str]:
    """Write curated Parquet (every valid status observation) and the quarantine to the lake.

    station_information is written only when its content changed (``information_changed``): it
    is re-sent every minute by most systems but changes a few times a day.
    """
    return lake.write_files(encode_validated(validated, lake, information_changed=information_changed))


def encode_validated(validated: Validated, lake: Lake, *, information_changed: bool = True) -> list[LakeFile]:
    """The files :func:`land_validated` writes, encoded (Parquet bytes) but not written."""
    files = lake.encode_station_status(validated.status) if validated.status else []
    if validated.information and information_changed:
        files += lake.encode_station_information(validated.information)
    if validated.quarantined:
        files += lake.encode_quarantine(validated.quarantined)
    return files


def advance_state(state: SystemState, fetched: Fetched, validated: Validated | None) -> SystemState:
    """The state after this step was delivered: remember validators, capacities, times."""
    if validated is None:  # nothing new: only the HTTP validators and ttl moved on
        return SystemState(client=fetched.client_state, stations=state.stations, last_updated=state.last_updated)
    stations = state.stations
    if validated.information_is_new and validated.information:
        stations = {r.station_id: r.capacity for r in validated.information}
    return SystemState(
        client=fetched.client_state,
        stations=stations,
        last_updated={**state.last_updated, **validated.last_updated},
    )


# -- one whole step, in memory (CLI run and backfill) -------------------------------------------

@dataclass
class StepTimer:
    durations: dict[str, float] = field(default_factory=dict)

    def __call__(self, stage: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            self.durations[stage] = self.durations.get(stage, 0.0) + time.perf_counter() - started


def run_record(run_id: str, system_id: str, started_at: float, outcome: str, *,
               validated: Validated | None = None, published: Published | None = None,
               durations: Mapping[str, float] | None = None, error: str | None = None) -> RunRecord:
    summary = validated.summary if validated else {}
    durations = durations or {}
    return RunRecord(
        run_id=run_id, system_id=system_id, started_at=started_at, finished_at=time.time(), outcome=outcome,
        stations_information=(summary.get("seen") or {}).get(STATION_INFORMATION),
        stations_status=(summary.get("seen") or {}).get(STATION_STATUS),
        stations_valid=(len(validated.status) if validated and validated.status_is_new else None),
        stations_quarantined=len(validated.quarantined) if validated else None,
        stations_published=published.sent if published else None,
        quarantine_reasons=dict(summary.get("quarantined_by_reason") or {}),
        fetch_s=durations.get("fetch"), validate_s=durations.get("validate"),
        produce_s=durations.get("produce"), write_s=durations.get("write"),
        error=error,
    )


def process_snapshot(fetched: Fetched, *, settings: Settings, lake: Lake, publisher: Publisher, run_id: str,
                     state: SystemState, captures: Mapping[str, ChangeCapture],
                     reference_time: float | None = None) -> tuple[RunRecord, Validated | None, SystemState]:
    """Validate, publish and land one already-fetched snapshot in memory; record the run.

    Used by backfill (snapshots from files) and the benchmarks; the caller owns ``state`` and
    ``captures`` (returned state is the advanced one). Errors do not escape: the run record says
    ``failed`` with the one-line reason.

    The Parquet files are encoded while the broker acknowledges the records (the flush waits in
    another thread, without the GIL); they are written, and change capture advances, only once
    every record was acknowledged - as in :func:`publish_validated` then :func:`land_validated`.
    """
    started = time.time()
    timer = StepTimer()
    validated: Validated | None = None
    published: Published | None = None
    try:
        if not fetched.has_new_data:
            outcome, reason = no_data_outcome(fetched, state, settings.quality)
            record = run_record(run_id, fetched.system_id, started, outcome, error=reason)
            return record, None, advance_state(state, fetched, None)
        validated = timer("validate", validate_fetched, fetched, state, settings.quality, reference_time=reference_time)
        queued = timer("produce", queue_validated, [(validated, captures)], publisher)
        # A thread per step (not a shared pool): nothing to go stale in a forked process.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-flush") as flusher:
            confirming = flusher.submit(queued.confirm)
            try:
                files = timer("write", encode_validated, validated, lake,
                              information_changed=queued.published[0].information_changed)
            finally:  # never leave a flush running behind the next step
                (published,) = timer("produce", confirming.result)
        timer("write", lake.write_files, files)
        state = advance_state(state, fetched, validated)
        outcome, reason = success_outcome(validated)
        record = run_record(run_id, fetched.system_id, started, outcome, validated=validated,
                            published=published, durations=timer.durations, error=reason)
    except Exception as exc:  # noqa: BLE001 - recorded and reported by the caller
        log.error("%s: %s", fetched.system_id, exc)
        log.debug("%s failed", fetched.system_id, exc_info=True)
        record = run_record(run_id, fetched.system_id, started, "failed", validated=validated,
                            published=published, durations=timer.durations, error=one_line(exc))
    lake.write_run(record)
    return record, validated, state


def no_data_outcome(fetched: Fetched, state: SystemState, quality: QualityConfig) -> tuple[str, str | None]:
    """(outcome, reason) of a step without new data.

    ``stale`` when the status feed has not advanced for longer than ``max_feed_age_s`` (the
    system may be down while its server keeps answering), ``skipped`` when every feed was within
    its ttl (not even asked), else ``no_new_data``.
    """
    last = state.last_updated.get(STATION_STATUS)
    if last is not None and fetched.fetched_at - last > quality.max_feed_age_s:
        return "stale", (f"station_status has not advanced for {fetched.fetched_at - last:.0f} s "
                         f"(last_updated {last}); the system may be down")
    if set(fetched.outcomes.values()) == {"skipped_ttl"}:
        return "skipped", None
    return "no_new_data", None


def success_outcome(validated: Validated) -> tuple[str, str | None]:
    """``stale`` when a feed arrived older than ``max_feed_age_s`` (its records are quarantined), else ``success``."""
    stale = validated.summary.get("stale_feeds") or ()
    if stale:
        return "stale", f"{', '.join(stale)} arrived {validated.summary.get('feed_age_s', 0):.0f} s old; records quarantined"
    return "success", None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, (FeedError,)) or ":" in text else f"{type(exc).__name__}: {text}"


def for_each_system(systems: Sequence[SystemConfig], func: Callable[[SystemConfig], Any], *,
                    max_workers: int = 8, deadline_s: float | None = None) -> dict[str, Any]:
    """Run ``func`` for every system concurrently; a system that raises or overruns the deadline
    gets its exception (or TimeoutError) as its result instead of stopping the others."""
    results: dict[str, Any] = {}
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
            results[futures[future]] = exc
    for future in pending:
        future.cancel()
        results[futures[future]] = TimeoutError(f"not finished within {deadline_s:.0f} s; skipped this run")
    pool.shutdown(wait=False, cancel_futures=True)
    return results


def enabled(systems: Iterable[SystemConfig]) -> list[SystemConfig]:
    return [s for s in systems if s.enabled]


@dataclass
class Inspection:
    """What ``citibikes validate`` reports about one system's feeds."""

    system_id: str
    source: str
    version: str
    language: str | None
    last_updated: dict[str, int]
    summary: dict[str, Any]


def inspect_feeds(client: GbfsClient, quality: QualityConfig, *, recorded: bool = False) -> Inspection:
    """Fetch both station feeds once and validate them, without Kafka or the lake.

    ``recorded`` files are judged as of their own ``last_updated`` (staleness does not apply to
    a saved snapshot); live URLs as of now. Raises :class:`FeedError` when a feed is unusable.
    """
    discovery = client.discover(force=True)
    results = {feed: client.fetch(feed, force=True) for feed in FEEDS}
    fetched = Fetched(
        system_id=client.system.system_id,
        fetched_at=max(r.fetched_at for r in results.values()),
        outcomes={feed: r.outcome for feed, r in results.items()},
        last_updated={feed: r.last_updated for feed, r in results.items() if r.last_updated is not None},
        bodies={feed: r.body for feed, r in results.items() if r.body is not None},
    )
    reference = float(max(fetched.last_updated.values())) if recorded and fetched.last_updated else None
    validated = validate_fetched(fetched, SystemState(), quality, reference_time=reference)
    return Inspection(
        system_id=client.system.system_id, source=discovery.url, version=discovery.version,
        language=discovery.language, last_updated=validated.last_updated, summary=validated.summary,
    )
