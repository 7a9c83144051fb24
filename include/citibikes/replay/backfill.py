"""Backfill from recorded GBFS snapshots: a folder of feed files -> validate -> Kafka -> lake.

Public "git-scraping" archives keep years of GBFS files, usually under names that say nothing
about their content. Files are therefore recognized by what they hold (a station_status or a
station_information document; anything else is skipped and counted), ordered by their own
``last_updated`` whatever their names and folders, and each status snapshot is paired with the
latest information at or before it. Only names ending in one of :data:`FILE_SUFFIXES` are read;
other files are counted as ``unsupported_suffix``, hidden files and folders (``.git``) are not
looked at.
Every snapshot then goes through the same validate -> publish -> land path as live runs
(:func:`ingest_snapshots`).

Idempotent: each snapshot's run id is derived from the system and its ``last_updated``, and a
snapshot whose run already succeeded is skipped, so running the same backfill twice changes
nothing (no second copy in Kafka, no second row in the lake). So is a snapshot the live pipeline
already landed (a file of its own under the system's station_status): a backfill over days the
minute DAG ran adds the others only.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping

import msgspec

from citibikes.config import Settings
from citibikes.gbfs.discovery import DEFAULT_MAX_BYTES, read_header, read_local_file
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.lake import Lake, LakeError, RunRecord
from citibikes.lake.layout import hive_partition, raw_key
from citibikes.lake.store import (
    ZSTD_MAGIC,
    LakeFile,
    decompress_raw,
    encode_quarantine_span,
    encode_status_span,
    raw_file,
)
from citibikes.pipeline import (
    ChainStart,
    Fetched,
    InlinePreparer,
    Prepared,
    PrepareError,
    Published,
    SnapshotWorker,
    SystemState,
    advance_state,
    fewer_collections,
    landed_files,
    one_line,
    run_record,
    success_outcome,
)
from citibikes.stream.publish import ChangeCapture, Publisher

log = logging.getLogger("citibikes.backfill")

FILE_SUFFIXES = (".json", ".json.gz", ".gz", ".json.zst", ".zst")
"""Plain, gzip or zstd files (the lake's raw archive is zstd: it can be ingested again)."""


def read_snapshot_file(path: Path) -> bytes:
    """A recorded feed file's body: plain or gzip JSON, or zstd like the lake's raw archive."""
    body = read_local_file(path)
    if not body.startswith(ZSTD_MAGIC):
        return body
    try:
        return decompress_raw(body, max_bytes=DEFAULT_MAX_BYTES)
    except LakeError as exc:
        raise FeedError(f"{path}: {exc}", reason="decode_error", url=path.as_uri()) from None


class _StationKeys(msgspec.Struct):
    """The few keys that tell a status record from an information record."""

    num_bikes_available: Any = None
    num_vehicles_available: Any = None
    num_docks_available: Any = None
    lat: Any = None
    lon: Any = None


class _Stations(msgspec.Struct):
    stations: list[_StationKeys] = []


class _Document(msgspec.Struct):
    data: _Stations | None = None


def detect_feed(body: bytes) -> str | None:
    """``station_status``, ``station_information`` or None, from the document's content alone."""
    try:
        stations = msgspec.json.decode(body, type=_Document).data
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if stations is None or not stations.stations:
        return None
    sample = stations.stations[: min(20, len(stations.stations))]
    status_votes = sum(s.num_bikes_available is not None or s.num_vehicles_available is not None
                       or s.num_docks_available is not None for s in sample)
    information_votes = sum(s.lat is not None and s.lon is not None for s in sample)
    if status_votes > information_votes:
        return STATION_STATUS
    if information_votes > status_votes:
        return STATION_INFORMATION
    return None


@dataclass(frozen=True, order=True)
class SnapshotFile:
    last_updated: int
    feed: str
    path: Path


@dataclass
class Scan:
    snapshots: list[SnapshotFile] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Files not used, by reason (``unsupported_suffix``, ``unreadable``, ``not_gbfs_station_feed``, ``duplicate``)."""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def scan(folder: Path) -> Scan:
    """Every station_status / station_information file below ``folder`` (recursively), oldest first."""
    if not folder.is_dir():
        raise FeedError(f"{folder} is not a folder; give the folder that holds the recorded feed files",
                        reason="unreachable", url=str(folder))
    result, seen = Scan(), set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if not name.endswith(FILE_SUFFIXES):
                result.skip("unsupported_suffix")
                continue
            try:
                body = read_snapshot_file(Path(root) / name)
            except FeedError:
                result.skip("unreadable")
                continue
            feed = detect_feed(body)
            header = read_header(body) if feed else None
            if feed is None or header is None or header.last_updated is None:
                result.skip("not_gbfs_station_feed")
                continue
            if (feed, header.last_updated) in seen:
                result.skip("duplicate")
                continue
            seen.add((feed, header.last_updated))
            result.snapshots.append(SnapshotFile(header.last_updated, feed, Path(root) / name))
    result.snapshots.sort()
    return result


def pair(snapshots: Iterable[SnapshotFile]) -> list[tuple[SnapshotFile, SnapshotFile | None]]:
    """Each status snapshot with the latest information snapshot at or before it (or None)."""
    information = [s for s in snapshots if s.feed == STATION_INFORMATION]
    times = [s.last_updated for s in information]
    pairs = []
    for status in (s for s in snapshots if s.feed == STATION_STATUS):
        index = bisect.bisect_right(times, status.last_updated) - 1
        pairs.append((status, information[index] if index >= 0 else None))
    return pairs


def run_id_for(system_id: str, status_last_updated: int) -> str:
    """The run id of the backfill of one status snapshot: the same for the same snapshot, every time."""
    return f"backfill__{system_id}__{status_last_updated}"


@dataclass
class BackfillReport:
    snapshots: int = 0
    processed: int = 0
    already_done: int = 0
    failed: int = 0
    records: int = 0
    published: int = 0
    quarantined: int = 0
    skipped_files: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    """One status snapshot to ingest, with the station_information body that goes with it when that
    is new (None when the information last ingested still holds)."""

    status_last_updated: int
    status_body: bytes
    information_last_updated: int | None = None
    information_body: bytes | None = None


def new_change_capture(snapshot_every_s: int) -> dict[str, ChangeCapture]:
    return {feed: ChangeCapture(snapshot_every_s=snapshot_every_s, feed=feed)
            for feed in (STATION_INFORMATION, STATION_STATUS)}


def snapshot_fetched(snapshot: Snapshot, system_id: str) -> Fetched:
    """A recorded snapshot as what a fetch of it would have returned (fetched at its own time)."""
    bodies = {STATION_STATUS: snapshot.status_body}
    last_updated = {STATION_STATUS: snapshot.status_last_updated}
    if snapshot.information_body is not None and snapshot.information_last_updated is not None:
        bodies[STATION_INFORMATION] = snapshot.information_body
        last_updated[STATION_INFORMATION] = snapshot.information_last_updated
    return Fetched(
        system_id=system_id,
        fetched_at=float(snapshot.status_last_updated),
        outcomes={feed: "new" for feed in bodies},
        last_updated=last_updated,
        bodies=bodies,
    )


def ingest_snapshot(snapshot: Snapshot, system_id: str, *, settings: Settings, lake: Lake, publisher: Publisher,
                    run_id: str, state: SystemState, captures: dict[str, ChangeCapture]) -> tuple[RunRecord, SystemState]:
    """Archive the snapshot's raw bodies, then validate, publish and land it (one backfill step).

    Returns the run record (``failed`` with the reason when the step failed) and the advanced state.
    """
    ((_, record, state),) = ingest_snapshots([snapshot], system_id, settings=settings, lake=lake, publisher=publisher,
                                             state=state, captures=captures, run_id=lambda _: run_id)
    return record, state


SPAN_SNAPSHOTS = 60
"""At most this many consecutive snapshots of one hour partition share a station_status file (and
a quarantine file): an hour of minute snapshots (:func:`~citibikes.lake.store.encode_status_span`)."""

PREPARE_AHEAD = 16
"""Snapshots handed to the preparer ahead of the one being sent, so that the worker process
always has work while this one waits for the broker (2 left it idle about 2 ms per snapshot; 8
with flushes of 16 gave 3% more than 4 with flushes of 8; since the worker selects and encodes
too, 16 with flushes of 32 gave 1-7% more than 8 with 16, in three alternated runs; BENCHMARKS.md)."""

SNAPSHOTS_PER_FLUSH = 32
"""Backfill asks the broker to acknowledge this many snapshots' records at once (measured in
BENCHMARKS.md: a flush per snapshot took the broker about as much CPU as the whole Python pipeline).
A flush that is not acknowledged fails all of its snapshots (they are done again)."""


@dataclass
class _Step:
    """One snapshot on its way through :func:`ingest_snapshots`."""

    snapshot: Snapshot
    fetched: Fetched
    prepared: Prepared
    run_id: str
    started: float
    state_after: SystemState
    """The state once this snapshot is landed (the state before it, if preparing it failed)."""
    archived: list[Future[LakeFile]]
    """The raw archive files of the bodies (written with the flush's files)."""
    state_before: SystemState
    """The state it was prepared with."""
    failure: BaseException | None = None
    """Why preparing it failed (then it is not sent)."""
    produce_s: float = 0.0
    published: Published | None = None
    """What was acknowledged, once its flush is (then its rows wait in ``span`` for their file)."""
    span: _Span | None = None
    landing: Future[dict[int, RunRecord]] | None = None
    """The writing that gives its run record (by ``id`` of the step): its flush's when it failed
    there, its span's when it was acknowledged."""

    def written(self) -> Future[dict[int, RunRecord]] | None:
        return self.landing or (self.span.written if self.span is not None else None)

    @property
    def staged(self) -> bool:
        """Prepared up to its messages: it is sent."""
        return self.failure is None and self.prepared.published is not None

    def send(self, publisher: Publisher) -> None:
        began = time.perf_counter()
        publisher.send(self.prepared.messages)
        publisher.note_skipped(self.prepared.published.skipped_unchanged if self.prepared.published else 0)
        self.prepared.messages = []  # in the producer's queue now
        self.produce_s += time.perf_counter() - began


@dataclass
class _Span:
    """Acknowledged snapshots of one hour partition whose station_status rows (and their quarantine)
    go in one file each; written with the flush that closes the span, their run records right after."""

    partition: str
    steps: list[_Step] = field(default_factory=list)
    written: Future[dict[int, RunRecord]] | None = None


def ingest_snapshots(snapshots: Iterable[Snapshot], system_id: str, *, settings: Settings, lake: Lake,
                     publisher: Publisher, state: SystemState, captures: dict[str, ChangeCapture],
                     run_id: Callable[[Snapshot], str] | None = None, worker: SnapshotWorker | None = None,
                     snapshots_per_flush: int = SNAPSHOTS_PER_FLUSH,
                     span_snapshots: int = SPAN_SNAPSHOTS) -> Iterator[tuple[Snapshot, RunRecord, SystemState]]:
    """Ingest the snapshots in order; yield each one's run record and the state after it.

    Each snapshot goes through the live path's steps: archive the raw bodies, validate, select the
    changed stations, produce them, wait until the broker acknowledged every record, and only then
    write the Parquet files and advance change capture and the state. Snapshots overlap, so that
    both cores and the broker work all the time:

    * the next :data:`PREPARE_AHEAD` ones are prepared by ``worker``, another process, if given
      (:class:`~citibikes.pipeline.SnapshotWorker`: validated, the raw archive compressed, change
      capture's selection made and its messages encoded), each with the state and change capture
      the one before leaves, as if it is delivered;
    * this one is sent, unless the broker is still acknowledging earlier ones: then it is held
      and sent once those are confirmed; change capture here advances as the broker acknowledges;
    * the broker is asked to acknowledge (a flush) every ``snapshots_per_flush`` sent snapshots
      at once: each flush costs the broker as much as a few thousand records;
    * the station_status rows of acknowledged snapshots wait in a span: up to ``span_snapshots``
      consecutive ones of one hour partition, written as one Parquet file (and their rejected
      records as one quarantine file) once the span closes - at the next hour, when it is full,
      or at the end. A confirmed flush's raw archives, station_information files and closed
      spans are written by a writer thread as one group (one group commit:
      :meth:`~citibikes.lake.Lake.write_files`) while the next flush is sent, then the run
      records of the snapshots that landed (or failed) with it. Run records are yielded in order
      as they are written. Stopped early, the snapshots not landed yet are ingested again by the
      next backfill, into the same spans (a span's snapshots are recorded together, just after
      their file: the next backfill starts at the first of a span).

    Work ahead is done as if the snapshots before it succeed. When one fails instead (broken,
    or not acknowledged: then all those of its flush fail), the work done for the later ones is
    dropped and they are prepared again from the real state and change capture (carrying the
    station_information a failed one brought), so a snapshot's result never depends on work done
    for a failed one. The
    snapshots of a span whose file could not be written fail together: their records are in Kafka
    and change capture counts them, so the later ones stand; the next backfill ingests them again
    (same message ids) and writes their files.
    """
    preparer: SnapshotWorker | InlinePreparer = worker if worker is not None else InlinePreparer()
    run_id = run_id or (lambda snapshot: run_id_for(system_id, snapshot.status_last_updated))
    source = iter(snapshots)
    retry: list[Snapshot] = []  # taken from the source, to prepare again after a failure (last first)
    ahead: deque[Snapshot] = deque()  # submitted to the preparer, in order
    restart: ChainStart | None = ChainStart.of(state, captures)  # for the next submission; None: the preparer's own chain
    carry: Snapshot | None = None  # a failed snapshot whose station_information the next one takes

    def top_up() -> None:
        nonlocal restart, carry
        while len(ahead) < PREPARE_AHEAD:
            snapshot = retry.pop() if retry else next(source, None)
            if snapshot is None:
                return
            if carry is not None:
                snapshot, carry = _carry_information(carry, snapshot), None
            preparer.submit(snapshot_fetched(snapshot, system_id), restart, settings.quality,
                            reference_time=float(snapshot.status_last_updated))
            ahead.append(snapshot)
            restart = None

    def again_from(start: ChainStart, carried: Snapshot | None, *steps: _Step) -> None:
        """Drop what was prepared ahead; prepare ``steps``' snapshots and those ahead again from ``start``."""
        nonlocal restart, carry, assumed
        preparer.drain()
        retry.extend(reversed([step_.snapshot for step_ in steps] + list(ahead)))
        ahead.clear()
        restart, carry, assumed = start, carried, start.state
        top_up()

    flushing: list[_Step] = []  # sent and being acknowledged by `confirming`
    confirming: Future[Any] | None = None
    sent: list[_Step] = []  # sent, not flushed yet
    held: list[_Step] = []  # staged while `flushing` is acknowledged
    landing: deque[_Step] = deque()  # flushed (acknowledged or not), until their run records are yielded
    spans: list[_Span] = []  # the open span (at most one)
    assumed = state  # the state the next snapshot to receive is prepared with
    confirmed = state  # the state after the last acknowledged snapshot: where to start again after a failure
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-flush") as flusher, \
            ThreadPoolExecutor(3, thread_name_prefix="lake-write") as writers, fewer_collections():
        try:
            top_up()
            while ahead or confirming is not None or sent or held:
                if ahead:
                    current = ahead.popleft()
                    step = _receive(current, preparer.result(), system_id, run_id(current), assumed, writers)
                    assumed = step.state_after
                    if step.prepared.error is not None:  # the next were prepared as if it succeeded, without its information
                        step.failure = PrepareError(step.prepared.error, step.prepared.detail)
                        if ahead:
                            again_from(ChainStart.of(assumed, _assumed(captures, flushing + sent + held)), current)
                        else:
                            carry = current
                    top_up()
                    held.append(step)
                if confirming is not None and (confirming.done() or not ahead or len(held) >= snapshots_per_flush):
                    delivery = confirming.exception()
                    confirming = None
                    state = yield from _results(landing, state)  # those written meanwhile
                    confirmed = _land(flushing, delivery, captures, spans, span_snapshots, system_id, lake, writers,
                                      confirmed, last=delivery is None and not (ahead or held or sent))
                    landing += flushing
                    if delivery is not None:  # everything after these was done as if they succeeded: again
                        carried = next((step_.snapshot for step_ in reversed(flushing)
                                        if step_.snapshot.information_body is not None), None)
                        again_from(ChainStart.of(confirmed, captures), carried, *held)
                        held = []
                    flushing = []
                if confirming is None:
                    for step_ in held:
                        if step_.staged:
                            step_.send(publisher)
                    sent += held
                    held = []
                    if sent and (len(sent) >= snapshots_per_flush or not ahead):
                        flushing, sent = sent, []
                        confirming = flusher.submit(publisher.flush)
            if spans:  # the last span (usually closed with the last flush already)
                _land([], None, captures, spans, span_snapshots, system_id, lake, writers, confirmed, last=True)
            yield from _results(landing, state, wait=True)
        finally:
            preparer.drain()  # nothing of this call may be left for the worker's next user
            if confirming is not None:  # stopped early: never leave a flush behind
                confirming.exception()
            if sent:  # produced, never to be landed: delivered now, so that the next flush is not theirs
                with contextlib.suppress(Exception):
                    publisher.flush()


def _results(landing: deque[_Step], state: SystemState, *, wait: bool = False
             ) -> Generator[tuple[Snapshot, RunRecord, SystemState], None, SystemState]:
    """The snapshots whose run records are being written (all of them with ``wait``), in order: each
    one's snapshot, run record and the state after it, once written. Returns the last state.

    Waiting here for the writing of the flush before, rather than yielding only what is written
    already, keeps this thread from running ahead of the writer threads: measured over a replayed
    day, that cost the pipeline process 1-1.5 ms more CPU per snapshot (contention for the GIL)."""
    while landing and (landing[0].written() is not None or wait):
        step = landing.popleft()
        writing = step.written()
        assert writing is not None, "every span is closed before the last results"
        record = writing.result()[id(step)]
        if record.outcome != "failed":
            state = step.state_after
        yield step.snapshot, record, state
    return state


def _receive(snapshot: Snapshot, prepared: Prepared, system_id: str, run_id: str, state: SystemState,
             writers: ThreadPoolExecutor) -> _Step:
    """A prepared snapshot. Its raw archive is written with its flush's files, whatever happens to it:
    the preparer made it, or else (the worker process died) the writer threads compress it."""
    fetched = snapshot_fetched(snapshot, system_id)
    ok = prepared.error is None and prepared.validated is not None
    archived: list[Future[LakeFile]] = []
    for feed, body in fetched.bodies.items():
        made = next((file for file in prepared.archives if file[0] == raw_key(system_id, feed, fetched.last_updated[feed])), None)
        archived.append(_completed(made) if made is not None
                        else writers.submit(raw_file, system_id, feed, fetched.last_updated[feed], body))
    return _Step(snapshot=snapshot, fetched=fetched, prepared=prepared, run_id=run_id, started=time.time(),
                 state_before=state, state_after=advance_state(state, fetched, prepared.validated) if ok else state,
                 archived=archived)


def _assumed(captures: Mapping[str, ChangeCapture], pending: Iterable[_Step]) -> dict[str, ChangeCapture]:
    """Change capture as if the ``pending`` steps (sent or held, not acknowledged yet) were: what
    the preparer's chain had when it prepared the step after them."""
    assumed = {feed: capture.copy() for feed, capture in captures.items()}
    for step in pending:
        if step.staged:
            for change in step.prepared.changes:
                assumed[change.feed].commit(change)
    return assumed


def _completed(value: LakeFile) -> Future[LakeFile]:
    future: Future[LakeFile] = Future()
    future.set_result(value)
    return future


def _land(steps: list[_Step], delivery: BaseException | None, captures: Mapping[str, ChangeCapture],
          spans: list[_Span], span_snapshots: int, system_id: str, lake: Lake, writers: ThreadPoolExecutor,
          confirmed: SystemState, *, last: bool) -> SystemState:
    """Land the steps of a flush that ended (``delivery``: its error, if any): advance change capture
    for those acknowledged and put them in spans; hand a writer thread, as one group, every step's raw
    archive, the acknowledged ones' station_information files and the spans that closed (all of
    them when this is the ``last`` flush), then the run records of the steps that landed or failed.
    Returns the state after the last acknowledged step."""
    failed: list[_Step] = []
    closed: list[_Span] = []
    for step in steps:
        if step.staged and delivery is None:
            step.published = step.prepared.published
            for change in step.prepared.changes:
                captures[change.feed].commit(change)
            partition = hive_partition(system_id, step.snapshot.status_last_updated)
            if spans and (spans[0].partition != partition or len(spans[0].steps) >= span_snapshots):
                closed.append(spans.pop())
            if not spans:
                spans.append(_Span(partition))
            spans[0].steps.append(step)
            step.span = spans[0]
            confirmed = step.state_after
        else:
            failed.append(step)
    if last and spans:
        closed.append(spans.pop())
    writing = writers.submit(_write_landing, lake, system_id, steps, failed, closed, delivery)
    for step in failed:
        step.landing = writing
    for span in closed:
        span.written = writing
    return confirmed


def _write_landing(lake: Lake, system_id: str, steps: list[_Step], failed: list[_Step], closed: list[_Span],
                   delivery: BaseException | None) -> dict[int, RunRecord]:
    """Write a flush's raw archives, its acknowledged steps' station_information files and the closed
    spans' files, all as one group; if that fails, the raw archives alone, and every step of those
    files fails. Then the run records of the failed steps and of the closed spans' steps, as one
    file. Returns the run records by ``id`` of their step."""
    began = time.perf_counter()
    archives = [future.result() for step in steps for future in step.archived]
    landed = [step for span in closed for step in span.steps]
    error: BaseException | None = None
    try:
        files = [file for step in steps if step.published is not None
                 for file in landed_files(step.prepared, step.published)]
        for span in closed:
            files += _span_files(system_id, span)
        lake.write_files(archives + files)
    except Exception as exc:  # noqa: BLE001 - the steps with files fail with it; the archives are written alone
        error = exc
        with contextlib.suppress(Exception):
            lake.write_files(archives)
    seconds = (time.perf_counter() - began) / max(1, len(landed) + len(steps) - len(failed))
    records: dict[int, RunRecord] = {}
    for step in failed:
        durations = _durations(step) if step.staged else None
        records[id(step)] = _failed(step, step.failure or delivery, durations)
    for step in landed:
        published, durations = step.published, _durations(step)
        assert published is not None
        durations["write"] += seconds
        if error is not None:
            records[id(step)] = _failed(step, error, durations, published)
            continue
        validated = step.prepared.validated
        assert validated is not None
        outcome, reason = success_outcome(validated)
        records[id(step)] = run_record(step.run_id, step.fetched.system_id, step.started, outcome,
                                       validated=validated, published=published, durations=durations, error=reason)
    if records:
        lake.write_runs(list(records.values()))
    return records


def _span_files(system_id: str, span: _Span) -> list[LakeFile]:
    """A span's station_status rows as one file and its rejected station_status records as another."""
    validated = [step.prepared.validated for step in span.steps]
    first, last = span.steps[0].snapshot.status_last_updated, span.steps[-1].snapshot.status_last_updated
    status = [v.status for v in validated if v is not None and v.status is not None]
    rejected = [record for v in validated if v is not None for record in v.quarantined if record.feed == STATION_STATUS]
    return (encode_status_span(system_id, first, last, status)
            + encode_quarantine_span(system_id, STATION_STATUS, first, last, rejected))


def _durations(step: _Step) -> dict[str, float]:
    return {"validate": step.prepared.validate_s, "write": step.prepared.encode_s,
            "produce": step.prepared.stage_s + step.produce_s}


def _failed(step: _Step, exc: BaseException | None, durations: Mapping[str, float] | None = None,
            published: Published | None = None) -> RunRecord:
    log.error("%s: %s", step.fetched.system_id, exc)
    log.debug("%s failed: %s", step.fetched.system_id, getattr(exc, "detail", None) or "", exc_info=exc)
    return run_record(step.run_id, step.fetched.system_id, step.started, "failed", validated=step.prepared.validated,
                      published=published, durations=durations, error=one_line(exc) if exc else "failed")


def _carry_information(failed: Snapshot, following: Snapshot) -> Snapshot:
    """``following``, with the station_information ``failed`` brought when it has none of its own
    (that information was never landed, and ``following`` is paired with it)."""
    if following.information_body is None and failed.information_body is not None:
        return dataclasses.replace(following, information_last_updated=failed.information_last_updated,
                                   information_body=failed.information_body)
    return following


def minute_files(lake: Lake, system_id: str) -> set[int]:
    """The ``last_updated`` of the station_status snapshots the live pipeline (the minute DAG,
    ``citibikes run``) landed in files of their own: a backfill leaves them alone, so that the
    rows of a snapshot are never in two files (a backfill's spans and a minute's file)."""
    names = (key.rsplit("/", 1)[-1].removesuffix(".parquet") for key in lake.files("station_status", system_id))
    return {int(name) for name in names if name.isdigit()}


def backfill(folder: Path, system_id: str, *, settings: Settings, lake: Lake, publisher: Publisher,
             progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
             worker: SnapshotWorker | None = None) -> BackfillReport:
    """Ingest every recorded snapshot of ``folder`` for ``system_id``; see the module docstring.

    Snapshots are prepared in a worker process (``worker``, or one started for this backfill)
    while earlier ones are published and landed (see :func:`ingest_snapshots`).
    """
    found = scan(folder)
    pairs = pair(found.snapshots)
    report = BackfillReport(snapshots=len(pairs), skipped_files=found.skipped)
    done = {run.run_id for run in lake.read_runs(system_id) if run.outcome == "success"}
    landed = minute_files(lake, system_id)
    todo = [(status, information) for status, information in pairs
            if run_id_for(system_id, status.last_updated) not in done and status.last_updated not in landed]
    report.already_done = len(pairs) - len(todo)
    names = {status.last_updated: status.path.name for status, _ in todo}

    def snapshots() -> Iterator[Snapshot]:
        last_information: SnapshotFile | None = None
        for status, information in todo:
            new_information = information is not None and information != last_information
            yield Snapshot(
                status_last_updated=status.last_updated,
                status_body=read_snapshot_file(status.path),
                information_last_updated=information.last_updated if new_information else None,
                information_body=read_snapshot_file(information.path) if new_information else None,
            )
            last_information = information  # as if it succeeds: ingest_snapshots re-sends it after a failure

    own_worker = worker is None and len(todo) > 1
    if own_worker:
        worker = SnapshotWorker().start()
    try:
        results = ingest_snapshots(snapshots(), system_id, settings=settings, lake=lake, publisher=publisher,
                                   state=SystemState(), captures=new_change_capture(settings.status_snapshot_every_s),
                                   worker=worker)
        for snapshot, record, _ in (progress(results, len(todo)) if progress else results):
            if record.outcome == "failed":
                report.failed += 1
                report.errors.append(f"{names[snapshot.status_last_updated]}: {record.error}")
                continue
            report.processed += 1
            report.records += record.stations_status or 0
            report.published += record.stations_published or 0
            report.quarantined += record.stations_quarantined or 0
    finally:
        if own_worker and worker is not None:
            worker.close()
    return report
