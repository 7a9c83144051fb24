"""One ingest step for one system: fetch -> validate -> publish -> land, and its run record.

The minute DAG, ``citibikes run`` and ``citibikes backfill`` all go through these functions, so
there is one pipeline, not three. The stages are separate functions because the DAG runs each in
its own task over all systems (:mod:`citibikes.stages`, which ``citibikes run`` calls too), while
backfill chains them in memory over recorded snapshots (:func:`prepare_snapshot` in a worker
process, which stages it too; see :func:`citibikes.replay.backfill.ingest_snapshots`).

State that must survive between runs lives in the lake under ``_state/<system>/``: the HTTP
client's validators and ttl (so unchanged feeds are not refetched or re-emitted), the capacity of
every known station (to validate a status feed when station_information was not refetched) and
the change-capture fingerprints. State is committed only after the data it describes was
delivered, so a failed run is repeated rather than skipped.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import socket
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import msgspec

from citibikes.config import QualityConfig, SystemConfig
from citibikes.gbfs.client import ClientState, FetchResult, GbfsClient
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import (
    STATION_INFORMATION,
    STATION_STATUS,
    QuarantinedRecord,
    StationInformation,
    StationStatusColumns,
)
from citibikes.gbfs.normalize import normalize_information, normalize_status_body, parse_feed
from citibikes.lake import Lake, RunRecord
from citibikes.lake.store import (
    LakeFile,
    LakeTable,
    encode_tables,
    quarantine_tables,
    raw_file,
    station_information_tables,
    station_status_tables,
)
from citibikes.quality import validate
from citibikes.stream.publish import (
    CaptureChange,
    ChangeCapture,
    ChangeCaptureState,
    Encoded,
    Publisher,
    Selection,
    encode_messages,
)

log = logging.getLogger("citibikes.pipeline")

T = TypeVar("T")

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
    """Valid records, quarantined records and the quality summary of one system's step.

    The valid station_status records stay in columns (:class:`StationStatusColumns`) all the way
    to Parquet; structs are made only for the stations change capture publishes.
    """

    system_id: str
    information: list[StationInformation]
    status: StationStatusColumns | None
    """None when the step had no new station_status."""
    quarantined: list[QuarantinedRecord]
    summary: dict[str, Any]
    information_is_new: bool
    status_is_new: bool
    last_updated: dict[str, int] = {}

    @property
    def valid_status(self) -> int:
        return len(self.status) if self.status is not None else 0


def validate_fetched(fetched: Fetched, state: SystemState, quality: QualityConfig, *,
                     reference_time: float | None = None) -> Validated:
    """Parse and normalize the new bodies and apply every quality rule.

    When station_information did not change, the capacities remembered from the last valid one
    stand in for it (orphan and capacity checks still work). ``reference_time`` is "now" for
    staleness; backfills pass the feed's own time.
    """
    normalized: dict[str, Any] = {}
    body = fetched.bodies.get(STATION_INFORMATION)
    if body is not None:
        parsed = parse_feed(body, STATION_INFORMATION, system_id=fetched.system_id)
        normalized[STATION_INFORMATION] = normalize_information(parsed, fetched.system_id, fetched.fetched_at)
    body = fetched.bodies.get(STATION_STATUS)
    if body is not None:
        normalized[STATION_STATUS] = normalize_status_body(body, fetched.system_id, fetched.fetched_at)
    information, status = normalized.get(STATION_INFORMATION), normalized.get(STATION_STATUS)
    if information is None and status is None:
        return Validated(fetched.system_id, [], None, [], {}, False, False, dict(fetched.last_updated))
    result = validate(
        information, status, config=quality, reference_time=reference_time,
        known_station_ids=state.stations if information is None and state.stations else None,
        previous_last_updated=state.last_updated.get(STATION_STATUS),
    )
    return Validated(
        system_id=fetched.system_id,
        information=result.information,
        status=result.status if status is not None else None,  # type: ignore[arg-type]
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
    queued = stage_validated(batches, publisher)
    queued.send()
    return queued.confirm()


def stage_validated(batches: Sequence[tuple[Validated, Mapping[str, ChangeCapture]]], publisher: Publisher) -> Queued:
    """Select each system's records to publish and encode their messages, without producing them yet."""
    queued = Queued(publisher)
    for validated, captures in batches:
        messages, selections, published = stage(validated, captures)
        queued.messages += messages
        queued.skipped += published.skipped_unchanged
        queued.selections.append((captures, [selection.change for selection in selections]))
        queued.published.append(published)
    return queued


def stage(validated: Validated, captures: Mapping[str, ChangeCapture]) -> tuple[list[Encoded], list[Selection], Published]:
    """One system's step staged: change capture's selection per feed (not committed), the encoded
    messages of what it selected and of the quarantine, and what will be published."""
    messages: list[Encoded] = []
    selections: list[Selection] = []
    for feed, records in ((STATION_INFORMATION, validated.information), (STATION_STATUS, validated.status)):
        if records:
            selection = captures[feed].select(records, validated.last_updated[feed])
            messages += encode_messages(feed, selection.records)
            selections.append(selection)
    messages += encode_messages("quarantine", validated.quarantined)
    published = Published(
        sent=len(validated.quarantined) + sum(len(selection.records) for selection in selections),
        skipped_unchanged=sum(selection.skipped for selection in selections),
        full_snapshot=any(selection.full for selection in selections if selection.change.feed == STATION_STATUS),
        information_changed=any(bool(selection.records) for selection in selections
                                if selection.change.feed == STATION_INFORMATION),
    )
    return messages, selections, published


@dataclass
class Queued:
    """Records selected and encoded (:func:`stage_validated`), then handed to the producer
    (:meth:`send`), not acknowledged yet."""

    publisher: Publisher
    published: list[Published] = field(default_factory=list)
    """One per system, in the order of the batches."""
    selections: list[tuple[Mapping[str, ChangeCapture], list[CaptureChange]]] = field(default_factory=list)
    """Per system: its change captures and what committing its selections changes."""
    messages: list[Encoded] = field(default_factory=list)
    skipped: int = 0

    def extend(self, other: Queued) -> None:
        """Add the systems of ``other`` (staged apart, so one that fails to stage stops no other) to this batch."""
        self.published += other.published
        self.selections += other.selections
        self.messages += other.messages
        self.skipped += other.skipped

    def send(self) -> None:
        self.publisher.send(self.messages)
        self.publisher.note_skipped(self.skipped)
        self.messages = []

    def confirm(self) -> list[Published]:
        """Flush: raise DeliveryError unless every record was acknowledged; then advance change capture."""
        self.publisher.flush()
        for captures, changes in self.selections:
            for change in changes:
                captures[change.feed].commit(change)
        return self.published


def land_validated(validated: Validated, lake: Lake, *, information_changed: bool = True) -> list[str]:
    """Write curated Parquet (every valid status observation) and the quarantine to the lake.

    station_information is written only when its content changed (``information_changed``): it
    is re-sent every minute by most systems but changes a few times a day.
    """
    return lake.write_files(encode_validated(validated, information_changed=information_changed))


def landed_rows(validated: Validated, *, information_changed: bool = True) -> dict[str, int]:
    """Rows per lake table that :func:`land_validated` writes; a table it writes no file to is absent."""
    rows = {
        "station_status": validated.valid_status,
        "station_information": len(validated.information) if information_changed else 0,
        "quarantine": len(validated.quarantined),
    }
    return {table: count for table, count in rows.items() if count}


def encode_validated(validated: Validated, *, information_changed: bool = True) -> list[LakeFile]:
    """The files :func:`land_validated` writes, encoded (Parquet bytes) but not written."""
    return encode_tables(_to_land(validated_tables(validated), information_changed))


def _to_land(by_table: Mapping[str, list[T]], information_changed: bool) -> list[T]:
    """Every table's files (or tables), station_information's only when its content changed."""
    return [item for name, items in by_table.items()
            if name != STATION_INFORMATION or information_changed for item in items]


def validated_tables(validated: Validated) -> dict[str, list[LakeTable]]:
    """The lake tables of a validated step, by table name (station_information whenever it was given)."""
    return {
        "station_status": station_status_tables(validated.status) if validated.status else [],
        "station_information": station_information_tables(validated.information) if validated.information else [],
        "quarantine": quarantine_tables(validated.quarantined) if validated.quarantined else [],
    }


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


# -- run records and backfill's steps in memory ---------------------------------------------------

def run_record(run_id: str, system_id: str, started_at: float, outcome: str, *,
               validated: Validated | None = None, published: Published | None = None,
               durations: Mapping[str, float] | None = None, error: str | None = None) -> RunRecord:
    summary = validated.summary if validated else {}
    durations = durations or {}
    return RunRecord(
        run_id=run_id, system_id=system_id, started_at=started_at, finished_at=time.time(), outcome=outcome,
        stations_information=(summary.get("seen") or {}).get(STATION_INFORMATION),
        stations_status=(summary.get("seen") or {}).get(STATION_STATUS),
        stations_valid=(validated.valid_status if validated and validated.status_is_new else None),
        stations_quarantined=len(validated.quarantined) if validated else None,
        stations_published=published.sent if published else None,
        quarantine_reasons=dict(summary.get("quarantined_by_reason") or {}),
        fetch_s=durations.get("fetch"), validate_s=durations.get("validate"),
        produce_s=durations.get("produce"), write_s=durations.get("write"),
        error=error,
    )


class Prepared(msgspec.Struct):
    """A snapshot validated, staged and encoded, not yet published or landed (see :class:`_Chain`)."""

    validated: Validated | None = None
    files: dict[str, list[LakeFile]] = {}
    """Parquet files per table name (see :func:`encode_information`)."""
    archives: list[LakeFile] = []
    """The raw archive of each body (zstd; made first, so that a snapshot that fails has one too)."""
    messages: list[Encoded] = []
    """The encoded messages of what change capture selected and of the quarantine (:func:`stage`)."""
    changes: list[CaptureChange] = []
    """What to commit to change capture once the messages are delivered."""
    published: Published | None = None
    """What the messages publish; None unless staged."""
    error: str | None = None
    """Why preparing failed, in one line (then the step fails with it); ``detail`` has the traceback."""
    detail: str | None = None
    validate_s: float = 0.0
    encode_s: float = 0.0
    stage_s: float = 0.0


def prepare_snapshot(fetched: Fetched, state: SystemState, quality: QualityConfig, *,
                     reference_time: float | None = None) -> Prepared:
    """The part of a step that needs neither Kafka nor the lake: bytes -> validated records (status in
    columns), the Parquet bytes of its station_information (:func:`encode_information`) and the raw
    archive of its bodies.

    A function of its arguments only, so it can run in another process (:class:`SnapshotWorker`).
    Errors do not escape: they are in ``error``. The station_status rows are encoded when they
    land, many snapshots to a file (:func:`citibikes.replay.backfill.ingest_snapshots`).
    """
    prepared = Prepared()
    try:
        prepared.archives = [raw_file(fetched.system_id, feed, fetched.last_updated[feed], body)
                             for feed, body in fetched.bodies.items()]
        if fetched.has_new_data:
            started = time.perf_counter()
            prepared.validated = validate_fetched(fetched, state, quality, reference_time=reference_time)
            encoding = time.perf_counter()
            prepared.files = encode_information(prepared.validated)
            prepared.validate_s, prepared.encode_s = encoding - started, time.perf_counter() - encoding
    except Exception as exc:  # noqa: BLE001 - the step fails with it (see PrepareError)
        prepared.error, prepared.detail = one_line(exc), traceback.format_exc()
    return prepared


def encode_information(validated: Validated) -> dict[str, list[LakeFile]]:
    """A snapshot's station_information files and its rejected station_information records, encoded
    (backfill writes station_status and its rejections a span of snapshots at a time)."""
    rejected = [record for record in validated.quarantined if record.feed == STATION_INFORMATION]
    return {
        "station_information": encode_tables(station_information_tables(validated.information))
        if validated.information else [],
        "quarantine": encode_tables(quarantine_tables(rejected)) if rejected else [],
    }


def landed_files(prepared: Prepared, published: Published) -> list[LakeFile]:
    """The Parquet files of a prepared snapshot to write once its records are acknowledged:
    station_information only when its content changed (as :func:`land_validated`)."""
    return _to_land(prepared.files, published.information_changed)


class PrepareError(Exception):
    """Preparing a snapshot failed (maybe in another process): the one-line reason, the traceback as ``detail``."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


class SnapshotWorker:
    """Another process that prepares snapshots (:class:`_Chain`: :func:`prepare_snapshot`, then
    change capture's selection and the messages, :func:`stage`), so that the next snapshots are
    decoded, validated, selected and encoded on the second core while this process publishes and
    lands the current one. Jobs are answered in the order they were submitted; a job submitted
    without a :class:`ChainStart` goes on from the state and change capture the job before it
    leaves, so several can be submitted ahead. Jobs are sent by a thread: submitting never waits
    for the process to take the job.

    Started with ``spawn``, never ``fork``: this process may already run a Kafka producer's threads.
    If the process dies, the snapshots submitted to it fail with that reason and the next
    :meth:`submit` starts a new one. Use it as a context manager, or :meth:`close` it.
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Any = None
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._lost = 0

    def start(self) -> SnapshotWorker:
        if self._process is None:
            ours, theirs = self._context.Pipe()
            for end in (ours, theirs):
                _enlarge_buffers(end)
            self._process = self._context.Process(target=_prepare_forever, args=(theirs,), daemon=True,
                                                  name="citibikes-prepare")
            self._process.start()
            theirs.close()
            self._connection = ours
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="prepare-send")
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def submit(self, fetched: Fetched, start: ChainStart | None, quality: QualityConfig, *,
               reference_time: float | None = None) -> None:
        self.start()
        assert self._sender is not None
        self._in_flight += 1
        self._sender.submit(self._send, self._connection, _dumps(_Job(fetched, start, quality, reference_time)))

    @staticmethod
    def _send(connection: Any, data: bytes) -> None:
        try:
            connection.send_bytes(data)
        except OSError:  # the process is gone: result() says so
            pass

    def result(self) -> Prepared:
        """The next answer; a Prepared with ``error`` if the process died on it."""
        if self._lost:
            self._lost -= 1
            return Prepared(error="the worker process preparing the snapshots stopped; "
                                  "it is started again for the next snapshot")
        if not self._in_flight:
            raise RuntimeError("no snapshot submitted to the worker")
        self._in_flight -= 1
        try:
            return _loads(self._connection.recv_bytes(), Prepared)
        except (EOFError, OSError):
            self._process.join(1)
            code = self._process.exitcode
            lost = self._in_flight
            self._discard()
            self._lost = lost  # submitted to the process that died: their answers are errors too
            return Prepared(error=f"the worker process preparing the snapshot stopped (exit code {code}); "
                                  "it is started again for the next snapshot")

    def drain(self) -> None:
        """Wait for and drop the answers still due (e.g. of snapshots prepared ahead and not needed)."""
        while self._in_flight or self._lost:
            self.result()

    def close(self) -> None:
        if self._process is not None:
            try:
                self.drain()  # may find the process dead and discard it
                if self._sender is not None:
                    self._sender.submit(self._send, self._connection, b"").result()
            except OSError:
                pass
            if self._process is not None:
                self._process.join(10)
            self._discard()

    def _discard(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        if self._sender is not None:  # before closing the connection it may be sending on
            self._sender.shutdown(wait=True)
        if self._connection is not None:
            self._connection.close()
        self._process, self._connection, self._sender, self._in_flight = None, None, None, 0

    def __enter__(self) -> SnapshotWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlinePreparer:
    """:class:`SnapshotWorker`'s interface without another process: each job runs when its result is asked for."""

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._chain = _Chain()

    def submit(self, fetched: Fetched, start: ChainStart | None, quality: QualityConfig, *,
               reference_time: float | None = None) -> None:
        self._jobs.append(_Job(fetched, start, quality, reference_time))

    def result(self) -> Prepared:
        return self._chain.prepare(self._jobs.popleft())

    def drain(self) -> None:
        self._jobs.clear()

    def close(self) -> None:
        self.drain()


class ChainStart(msgspec.Struct):
    """Where a job starts from, rather than from what the job before it leaves: the system's state
    and each feed's change capture (the first job, and the first after a failure)."""

    state: SystemState
    captures: dict[str, ChangeCaptureState]
    snapshot_every_s: dict[str, int]

    @classmethod
    def of(cls, state: SystemState, captures: Mapping[str, ChangeCapture]) -> ChainStart:
        """A start from ``captures`` as they are now (copied: the chain commits to its start's change
        capture, and an inline preparer reads it later)."""
        return cls(state, {feed: ChangeCaptureState(dict(capture.state.fingerprints), capture.state.last_snapshot_at)
                           for feed, capture in captures.items()},
                   {feed: capture.snapshot_every_s for feed, capture in captures.items()})


class _Job(msgspec.Struct, array_like=True):
    """A snapshot to prepare, as sent to the worker process."""

    fetched: Fetched
    start: ChainStart | None
    """None: from what the job before leaves (the usual case: the state is not sent again)."""
    quality: QualityConfig
    reference_time: float | None


class _Chain:
    """Prepares jobs in order: :func:`prepare_snapshot`, then :func:`stage` - change capture's
    selection and the encoded messages. Each job starts from its :class:`ChainStart` or, without
    one, from what the job before leaves, as if that one is delivered and landed: the state
    advanced (:func:`advance_state`) and its selections committed to change capture (both
    unchanged if it failed)."""

    def __init__(self) -> None:
        self.state = SystemState()
        self.captures = {feed: ChangeCapture(feed=feed) for feed in FEEDS}

    def prepare(self, job: _Job) -> Prepared:
        if job.start is not None:
            self.state = job.start.state
            self.captures = {feed: ChangeCapture(state, job.start.snapshot_every_s[feed], feed)  # the start's own copy
                             for feed, state in job.start.captures.items()}
        prepared = prepare_snapshot(job.fetched, self.state, job.quality, reference_time=job.reference_time)
        if prepared.error is None and prepared.validated is None:
            prepared.error = "the snapshot holds no new station_status or station_information"
        if prepared.error is not None or prepared.validated is None:
            return prepared
        began = time.perf_counter()
        try:
            messages, selections, published = stage(prepared.validated, self.captures)
        except Exception as exc:  # noqa: BLE001 - the step fails with it
            prepared.error, prepared.detail = one_line(exc), traceback.format_exc()
            return prepared
        prepared.messages, prepared.published = messages, published
        prepared.changes = [selection.change for selection in selections]
        prepared.stage_s = time.perf_counter() - began
        for change in prepared.changes:
            self.captures[change.feed].commit(change)
        self.state = advance_state(self.state, job.fetched, prepared.validated)
        return prepared


_MSGPACK, _PICKLE = b"m", b"p"


def _dumps(value: msgspec.Struct) -> bytes:
    """msgpack (fast, the usual case), or pickle for what msgpack cannot hold (an integer beyond 64 bits,
    which JSON allows, in a record's extras)."""
    try:
        return _MSGPACK + msgspec.msgpack.encode(value)
    except OverflowError:
        return _PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes, kind: type[T]) -> T:
    view = memoryview(data)[1:]
    return msgspec.msgpack.decode(view, type=kind) if data[:1] == _MSGPACK else pickle.loads(view)


def _enlarge_buffers(connection: Any, size: int = 4 * 1024 * 1024) -> None:
    """Room for a whole job or answer in the socket buffers, so a send does not wait for the reader."""
    try:
        with socket.socket(fileno=os.dup(connection.fileno())) as end:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:  # not a socket, or not allowed: only slower
        pass


@contextmanager
def fewer_collections(threshold: int = 100_000) -> Iterator[None]:
    """Run the cyclic garbage collector's young generation every ``threshold`` allocations instead of
    700. A snapshot allocates hundreds of thousands of short-lived, acyclic objects (tuples, lists,
    dicts), freed by reference counting; the default threshold ran a collection every ~700 of them,
    about 6% of preparing a snapshot (measured in BENCHMARKS.md)."""
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _prepare_forever(connection: Any) -> None:
    """The worker process: prepare each job received until told to stop (empty message) or the pipe closes."""
    chain = _Chain()
    with fewer_collections():
        while True:
            try:
                data = connection.recv_bytes()
            except (EOFError, OSError, KeyboardInterrupt):
                return
            if not data:
                return
            connection.send_bytes(_dumps(chain.prepare(_loads(data, _Job))))


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
    """``stale`` when station_status arrived older than ``max_feed_age_s`` (its records are quarantined),
    else ``success`` (an old station_information is not stale: descriptions rarely change)."""
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
