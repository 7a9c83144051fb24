"""Backfill from recorded GBFS snapshots: a folder of feed files -> check -> (Kafka) -> lake.

1. **Find** the snapshots (:mod:`citibikes.replay.scan`): each status file paired with the latest
   station_information at or before it, minus those already done (a run that succeeded, or a
   snapshot the live pipeline landed in a file of its own).
2. **Prepare** them in a pool of processes (:func:`prepared`), the stateless work: each distinct
   station_information whose content differs from the one before it, each status file against the
   stations it describes (a station_information that cannot be read is replaced by the one before). Results
   come back in order, a bounded window ahead. (The recorded files are not copied into the lake's
   ``raw/`` archive: they are the raw record already.)
3. **In order**, one snapshot after the other (:func:`ingest`): select what changed against the
   state (:func:`~citibikes.ingest.select`), produce it when publishing, and every
   :data:`SNAPSHOTS_PER_FLUSH` snapshots have the broker acknowledge them (:class:`Landing`). A
   flush that fails fails its snapshots and the state goes back to the last acknowledged one; the
   later snapshots go on from there. Acknowledged snapshots land: their description versions and
   rejected descriptions at once, their station_status rows in one file per hour (up to
   :data:`SPAN_SNAPSHOTS` snapshots), each run record right after its file.

Idempotent: a snapshot's run id is derived from the system and its ``last_updated`` and the files
are named after the snapshots they hold, so running a backfill again changes nothing, and one that
stopped half-way goes on where it stopped (the snapshots of an hour's file are recorded together,
after it). History lands in the lake; it is published to Kafka only when asked
(``citibikes backfill --publish``): the live topics keep days, not years, and their consumers want
the present.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from citibikes import changes
from citibikes.config import QualityConfig, Settings
from citibikes.errors import one_line
from citibikes.gbfs.model import STATION_INFORMATION, STATION_INFORMATION_SCHEMA, STATION_STATUS
from citibikes.ingest import Checked, Step, check_information, check_status, outcome, publish_step, \
    run_record, select, step_files
from citibikes.lake import Lake, RunRecord
from citibikes.lake.layout import compacted_version, hive_partition
from citibikes.lake.store import LakeFile, quarantine_file, status_file
from citibikes.quality import Described, Validated
from citibikes.replay.scan import SnapshotFile, pair, read_snapshot_file, scan
from citibikes.state import SystemState
from citibikes.stream.publish import DeliveryError, Publisher

log = logging.getLogger("citibikes.backfill")

SNAPSHOTS_PER_FLUSH = 32
"""Snapshots whose records the broker acknowledges at once (a flush per snapshot cost the broker
about as much CPU as the whole pipeline); a flush that fails fails them all."""
SPAN_SNAPSHOTS = 60
"""At most this many snapshots of one hour partition share a station_status file: an hour of minutes."""
AHEAD_PER_WORKER = 4
"""Snapshots being prepared per worker process, so that none waits while this process lands."""


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


def backfill(folder: Path, system_id: str, *, settings: Settings, lake: Lake, publisher: Publisher | None = None,
             progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
             workers: int | None = None) -> BackfillReport:
    """Ingest every recorded snapshot of ``folder`` for ``system_id`` (see the module doc); publish to
    Kafka too when a ``publisher`` is given."""
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        found = scan(folder, partial(pool.map, chunksize=8))
        pairs = pair(found.snapshots)
        report = BackfillReport(snapshots=len(pairs), skipped_files=found.skipped)
        done = {run.run_id for run in lake.read_runs(system_id) if run.outcome == "success"}
        landed = minute_files(lake, system_id)
        todo = [(status, information) for status, information in pairs
                if run_id_for(system_id, status.last_updated) not in done and status.last_updated not in landed]
        report.already_done = len(pairs) - len(todo)
        names = {run_id_for(system_id, status.last_updated): status.path.name for status, _ in todo}
        records = ingest(todo, system_id, pool=pool, settings=settings, lake=lake, publisher=publisher,
                         ahead=AHEAD_PER_WORKER * workers)
        for record in progress(records, len(todo)) if progress else records:
            if record.outcome == "failed":
                report.failed += 1
                report.errors.append(f"{names.get(record.run_id, record.run_id)}: {record.error}")
                continue
            report.processed += 1
            report.records += record.stations_status or 0
            report.published += record.stations_published or 0
            report.quarantined += record.stations_quarantined or 0
    return report


def minute_files(lake: Lake, system_id: str) -> set[int]:
    """The ``last_updated`` of the station_status snapshots the live pipeline (the minute DAG,
    ``citibikes run``) landed in files of their own: a backfill leaves them alone, so that the rows
    of a snapshot are never in two files (a backfill's hour file and a minute's file). A compacted
    file's metadata names the minute files it holds, a day's below their hour folders (they are deleted once
    compaction is done with them)."""
    keys = lake.files(STATION_STATUS, system_id)
    names = [key.rsplit("/", 1)[-1] for key in keys]
    names += [name.rsplit("/", 1)[-1] for key in keys if compacted_version(key) is not None
              for name in lake.compacted_sources(key)]
    return {int(stem) for stem in (name.removesuffix(".parquet") for name in names) if stem.isdigit()}


# -- 2. preparing, in a pool ------------------------------------------------------------------------

@dataclass
class _Information:
    """One distinct station_information content, checked in the pool."""

    file: SnapshotFile
    checked: Future[Validated]
    previous: _Information | None
    """The last one before it that could be checked: what its status snapshots fall back to if it cannot."""
    described: Described | None = None
    """The stations it describes, once checked (what its status snapshots are checked against)."""
    reported: bool = False

    def usable(self) -> _Information | None:
        """This one if it could be checked, else the last one before it that could."""
        failure = self.checked.exception()
        if failure is None:
            return self
        if not self.reported:
            log.warning("%s ignored (its status snapshots are checked against the one before): %s",
                        self.file.path, one_line(failure))
            self.reported = True
        return self.previous

    def stations(self) -> Described:
        if self.described is None:
            self.described = Described.of(self.checked.result())
        return self.described


@dataclass
class Prepared:
    """A status snapshot on its way from the pool."""

    status: SnapshotFile
    information: _Information | None
    checked: Future[Validated] | None = None
    failure: BaseException | None = None
    """Why it could not be prepared (the pool is gone)."""

    def result(self, state: SystemState) -> Checked:
        """The checked snapshot (raises what preparing it raised). Its station_information is part
        of it when the state has not landed that content yet; one that cannot be read is counted
        (``feed:unusable_station_information``) and the last one that could stands in."""
        if self.failure is not None:
            raise self.failure
        assert self.checked is not None
        status = self.checked.result()
        checked = Checked(status=status, versions={STATION_STATUS: status.version})
        information = self.information.usable() if self.information is not None else None
        if information is not self.information:
            checked.quirks.append("feed:unusable_station_information")
        if information is not None and information.file.digest != state.information_digest:
            checked.information = information.checked.result()
            checked.information_digest = information.file.digest
            checked.versions[STATION_INFORMATION] = checked.information.version
        return checked


def prepared(pairs: Iterable[tuple[SnapshotFile, SnapshotFile | None]], pool: Executor, system_id: str,
             quality: QualityConfig, *, ahead: int, language: str | None = "en") -> Iterator[Prepared]:
    """The snapshots in order, each being prepared in the pool ``ahead`` of the one yielded."""
    window: deque[Prepared] = deque()
    information: _Information | None = None
    for status, information_file in pairs:
        item = Prepared(status, None)
        try:
            if information_file is not None and (information is None
                                                 or information.file.digest != information_file.digest):
                checking = pool.submit(_check_information_file, information_file, system_id, language)
                information = _Information(information_file, checking,
                                           information.usable() if information is not None else None)
            item.information = information if information_file is not None else None
            source = item.information.usable() if item.information is not None else None
            known = source.stations() if source is not None else None
            item.checked = pool.submit(_check_status_file, status, system_id, quality, known)
        except Exception as exc:  # noqa: BLE001 - the snapshot fails with it (the pool is gone)
            item.failure = exc
        window.append(item)
        if len(window) > ahead:
            yield window.popleft()
    yield from window


def _check_status_file(file: SnapshotFile, system_id: str, quality: QualityConfig,
                       known: Described | None) -> Validated:
    """(In the pool.) A recorded status snapshot checked as of its own time."""
    moment = float(file.last_updated)
    return check_status(read_snapshot_file(file.path), system_id, moment, quality, known=known, reference_time=moment)


def _check_information_file(file: SnapshotFile, system_id: str, language: str | None) -> Validated:
    """(In the pool.) A recorded station_information checked."""
    moment = float(file.last_updated)
    return check_information(read_snapshot_file(file.path), system_id, moment, language=language,
                             reference_time=moment)


# -- 3. in order: select, publish, land, record -----------------------------------------------------

def ingest(pairs: list[tuple[SnapshotFile, SnapshotFile | None]], system_id: str, *, pool: Executor,
           settings: Settings, lake: Lake, publisher: Publisher | None, ahead: int = AHEAD_PER_WORKER,
           snapshots_per_flush: int = SNAPSHOTS_PER_FLUSH) -> Iterator[RunRecord]:
    """Ingest the snapshots in order, ``ahead`` of them being prepared in ``pool``; yield each one's
    run record once it is written."""
    state = SystemState(descriptions=landed_descriptions(lake, system_id, pairs[0][0].last_updated) if pairs else {})
    with Landing(lake, system_id, publisher, state, settings.quality) as landing:
        language = next((system.language for system in settings.systems if system.system_id == system_id), "en")
        for item in prepared(pairs, pool, system_id, settings.quality, ahead=ahead, language=language):
            began, run_id = time.time(), run_id_for(system_id, item.status.last_updated)
            try:
                checked = item.result(state)
            except Exception as exc:  # noqa: BLE001 - this snapshot fails; the next ones go on
                landing.fail(run_id, began, exc)
                continue
            step = select(state, checked, system_id=system_id, snapshot_every_s=settings.status_snapshot_every_s,
                          publish=publisher is not None)
            landing.add(run_id, began, step)
            state = step.state
            if len(landing.batch) >= snapshots_per_flush:
                state = landing.flush()
                yield from landing.written()
        landing.flush(last=True)
        yield from landing.written(wait=True)


def landed_descriptions(lake: Lake, system_id: str, at: int) -> dict[str, str]:
    """The fingerprint of each station's description version in the lake at time ``at``, so that a
    backfill lands only descriptions that differ from those (one that stopped goes on as if it had not)."""
    versions = lake.read_table(STATION_INFORMATION, system_id).select(STATION_INFORMATION_SCHEMA.names)
    versions = versions.filter(pc.less_equal(versions["last_updated"].cast(pa.int64()), at * 1000))
    versions = versions.sort_by([("last_updated", "ascending")])
    return dict(zip(versions["station_id"].to_pylist(), changes.description_fingerprints(versions)))


@dataclass
class _InFlight:
    """One snapshot between its selection and its run record."""

    run_id: str
    started_at: float
    step: Step
    published: int | None


class Landing:
    """Snapshots from their selection to their run record: sent (when publishing), acknowledged a
    batch at a time, their station_status rows waiting in their hour's span, written.

    The files of an acknowledged batch are encoded and written by one writer thread, in order,
    while the next batch is selected and sent (Parquet and fsync release the GIL). A write that
    fails stops the backfill: the writes queued after it write nothing, and the next batch raises
    its error (what was written before stays). Use it as a context manager."""

    WRITES_AHEAD = 2
    """Batches whose files may wait for the writer thread before the next batch waits for them."""

    def __init__(self, lake: Lake, system_id: str, publisher: Publisher | None, state: SystemState,
                 quality: QualityConfig) -> None:
        self.lake, self.system_id, self.publisher, self.quality = lake, system_id, publisher, quality
        self.batch: list[_InFlight] = []
        """Selected (and sent), not acknowledged yet."""
        self.span: list[_InFlight] = []
        """Acknowledged snapshots of one hour partition, whose station_status rows are not written yet."""
        self.confirmed = state
        """The state after the last acknowledged snapshot: where to go on from after a failed flush."""
        self._failed: list[RunRecord] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lake-write")
        self._writing: deque[Future[list[RunRecord]]] = deque()
        self._written: list[RunRecord] = []
        self._broken: BaseException | None = None

    def __enter__(self) -> Landing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.shutdown(wait=True)

    def add(self, run_id: str, started_at: float, step: Step) -> None:
        published = publish_step(step, self.publisher) if self.publisher is not None else None
        self.batch.append(_InFlight(run_id, started_at, step, published))

    def fail(self, run_id: str, started_at: float, exc: BaseException) -> None:
        log.error("%s: %s", run_id, one_line(exc))
        self._failed.append(run_record(run_id, self.system_id, started_at, "failed", error=one_line(exc)))

    def flush(self, *, last: bool = False) -> SystemState:
        """Have the broker acknowledge the batch, then hand it to the writer; returns the state to go on from."""
        batch, self.batch = self.batch, []
        if batch and self.publisher is not None:
            try:
                self.publisher.flush()
            except DeliveryError as exc:
                for snapshot in batch:
                    self.fail(snapshot.run_id, snapshot.started_at, exc)
                batch = []
        if batch:
            self.confirmed = batch[-1].step.state
        spans = self._close_spans(batch, last=last)
        while len(self._writing) > self.WRITES_AHEAD:  # the writer is behind: wait for it
            self._written += self._writing.popleft().result()
        failed, self._failed = self._failed, []
        self._writing.append(self._writer.submit(self._write, batch, spans, failed))
        return self.confirmed

    def written(self, *, wait: bool = False) -> list[RunRecord]:
        """The run records written since the last call (all of them with ``wait``); raises what a write raised."""
        while self._writing and (wait or self._writing[0].done()):
            self._written += self._writing.popleft().result()
        records, self._written = self._written, []
        return records

    def _close_spans(self, batch: list[_InFlight], *, last: bool) -> list[list[_InFlight]]:
        """Put the acknowledged snapshots in the open span; the spans they close (all, when ``last``)."""
        closed = []
        for snapshot in batch:
            partition = hive_partition(self.system_id, snapshot.step.state.last_updated[STATION_STATUS])
            if self.span and (partition != self._partition() or len(self.span) >= SPAN_SNAPSHOTS):
                closed.append(self.span)
                self.span = []
            self.span.append(snapshot)
        if last and self.span:
            closed.append(self.span)
            self.span = []
        return closed

    def _partition(self) -> str:
        return hive_partition(self.system_id, self.span[0].step.state.last_updated[STATION_STATUS])

    def _write(self, acknowledged: list[_InFlight], spans: list[list[_InFlight]],
               failed: list[RunRecord]) -> list[RunRecord]:
        """(In the writer thread.) The acknowledged snapshots' description versions and rejected
        descriptions, the closed spans' files, as one group; then the run records of the spans'
        snapshots and of those that failed. Nothing after a write that failed."""
        if self._broken is not None:
            raise self._broken
        try:
            files = [file for snapshot in acknowledged for file in step_files(snapshot.step, self.lake, status=False)]
            for span in spans:
                files += self._span_files(span)
            self.lake.write_files(files)
            records = failed + [self._record(snapshot) for span in spans for snapshot in span]
            if records:
                self.lake.write_runs(records)
        except BaseException as exc:
            self._broken = exc
            raise
        return records

    def _span_files(self, span: list[_InFlight]) -> list[LakeFile]:
        """A span's station_status rows as one file and its rejected status records as another."""
        first = span[0].step.state.last_updated[STATION_STATUS]
        last = span[-1].step.state.last_updated[STATION_STATUS]
        tables = [snapshot.step.status for snapshot in span if snapshot.step.status is not None]
        rejected = [record for snapshot in span for record in snapshot.step.quarantined if record.feed == STATION_STATUS]
        files = [status_file(self.system_id, pa.concat_tables(tables), first, last)] if tables else []
        if rejected:
            files.append(quarantine_file(self.system_id, STATION_STATUS, rejected, first, last))
        return files

    def _record(self, snapshot: _InFlight) -> RunRecord:
        outcome_, reason = outcome(snapshot.step, None, snapshot.step.state, self.quality)
        return run_record(snapshot.run_id, self.system_id, snapshot.started_at, outcome_, step=snapshot.step,
                          published=snapshot.published, error=reason)
