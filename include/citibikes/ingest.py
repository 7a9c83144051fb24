"""One ingest step for one system: fetch, check, select, then publish, land and record.

The minute DAG (each part in its own task, over all systems: :mod:`citibikes.tasks`), ``citibikes
run`` (those tasks in a row) and ``citibikes backfill`` (over recorded snapshots:
:mod:`citibikes.replay.backfill`) all go through these functions, so there is one pipeline:

* :func:`fetch_system` fetches the feeds and archives every new body in the lake;
* :func:`check_information` and :func:`check_status` parse, normalize and validate one body - a
  function of their arguments only, so backfill runs them in a pool of processes;
* :func:`select` compares what was checked with the system's state: the descriptions that changed,
  the statuses to publish, and the state once the step is delivered and landed (a :class:`Step`);
* :func:`publish_step` produces a step's messages, :func:`step_files` are its lake files, and
  :func:`run_record` records it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from citibikes import changes
from citibikes.config import QualityConfig, SystemConfig
from citibikes.gbfs.client import ClientState, FetchResult, GbfsClient
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS, VEHICLE_TYPES, QuarantinedRecord
from citibikes.gbfs.normalize import normalize_information, normalize_status
from citibikes.gbfs.parse import ParsedFeed, parse_feed
from citibikes.lake import Lake, RunRecord, layout
from citibikes.lake.store import LakeFile, information_file, quarantine_file, status_file
from citibikes.quality import Described, QualitySummary, Validated, information_rules, status_rules, summarize
from citibikes.state import SystemState
from citibikes.stream.publish import Publisher

log = logging.getLogger("citibikes.ingest")

FEEDS = (STATION_INFORMATION, STATION_STATUS)


class Fetched(msgspec.Struct):
    """The outcome of fetching one system's feeds (bodies only for new data)."""

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
    version: str | None = None
    """The GBFS version gbfs.json declares."""
    quirks: list[str] = []
    """What went wrong with a feed the step can do without (vehicle_types.json)."""

    @property
    def has_new_data(self) -> bool:
        return any(outcome == "new" for outcome in self.outcomes.values())


def fetch_system(system: SystemConfig, lake: Lake, state: SystemState) -> Fetched:
    """Fetch station_information, station_status and (when listed) vehicle_types; archive every new body."""
    client = GbfsClient(system, state=ClientState.from_dict(state.client) if state.client else None)
    try:
        fetched = _fetch(client)
        fetched.client_state = client.state.to_dict()
    finally:
        client.close()
    for feed, body in fetched.bodies.items():
        fetched.raw_keys[feed] = lake.write_raw(system.system_id, feed, fetched.last_updated[feed], body)
    return fetched


def _fetch(client: GbfsClient, *, force: bool = False) -> Fetched:
    """The station feeds and, when gbfs.json lists it, vehicle_types.json (a system can do without it:
    if it cannot be fetched or read, the quirk ``feed:unusable_vehicle_types`` says so); new bodies in memory."""
    system_id = client.system.system_id
    discovery = client.discover(force=force)
    results = {feed: _usable(client.fetch(feed, force=force), system_id) for feed in FEEDS}
    quirks = []
    if VEHICLE_TYPES in discovery.feeds:
        try:
            results[VEHICLE_TYPES] = _usable(client.fetch(VEHICLE_TYPES, force=force), system_id)
        except FeedError as exc:
            log.warning("%s: vehicle_types.json ignored: %s", system_id, exc)
            quirks.append("feed:unusable_vehicle_types")
    return Fetched(
        system_id=system_id,
        fetched_at=max(r.fetched_at for r in results.values()),
        outcomes={feed: r.outcome for feed, r in results.items()},
        last_updated={feed: r.last_updated for feed, r in results.items() if r.last_updated is not None},
        bodies={feed: r.body for feed, r in results.items() if r.outcome == "new" and r.body is not None},
        version=discovery.version,
        quirks=quirks,
    )


def _usable(result: FetchResult, system_id: str) -> FetchResult:
    """The result, unless its new body has no readable last_updated: then the FeedError saying why
    (an HTML page, truncated JSON...)."""
    if result.outcome == "new" and result.body is not None and result.last_updated is None:
        parse_feed(result.body, result.feed, system_id=system_id)
        raise FeedError("the feed has no readable last_updated; it is not a usable GBFS document",
                        reason="bad_header", system_id=system_id, feed=result.feed, url=result.url)
    return result


# -- checking: bytes -> valid rows and quarantine (no state, no I/O) -----------------------------

def check_information(body: bytes, system_id: str, fetched_at: float, *, language: str | None = "en",
                      reference_time: float | None = None) -> Validated:
    """A station_information body parsed, normalized and validated (FeedError if unusable)."""
    parsed = parse_feed(body, STATION_INFORMATION, system_id=system_id)
    return information_rules(normalize_information(parsed, system_id, fetched_at, language=language), reference_time)


def check_status(body: bytes, system_id: str, fetched_at: float, quality: QualityConfig, *,
                 known: Described | None, vehicle_types: Collection[str] | None = None,
                 reference_time: float | None = None) -> Validated:
    """A station_status body parsed, normalized and validated against the ``known`` stations."""
    parsed = parse_feed(body, STATION_STATUS, system_id=system_id)
    return status_rules(normalize_status(parsed, system_id, fetched_at), quality, reference_time,
                        known=known, vehicle_types=vehicle_types)


def vehicle_type_ids(parsed: ParsedFeed) -> list[str]:
    """The ids a vehicle_types.json defines."""
    ids = {str(record["vehicle_type_id"]) for record in parsed.records
           if isinstance(record, dict) and isinstance(record.get("vehicle_type_id"), (str, int))}
    return sorted(ids)


class Checked(msgspec.Struct):
    """A step's new data, checked: what :func:`select` needs besides the state."""

    information: Validated | None = None
    """None when station_information did not change (same content as the last one landed)."""
    information_digest: str | None = None
    status: Validated | None = None
    vehicle_types: list[str] | None = None
    versions: dict[str, str] = {}
    """The GBFS version of each feed parsed in this step."""
    quirks: list[str] = []
    """Feed quirks of the step beyond the station feeds' (an unusable vehicle_types.json)."""


def check_fetched(fetched: Fetched, state: SystemState, quality: QualityConfig, *, language: str | None = "en",
                  reference_time: float | None = None) -> Checked:
    """Check a fetch's new bodies. A station_information whose stations are described as in the last
    one landed (same :func:`~citibikes.changes.information_digest`) is not checked again."""
    checked = Checked(vehicle_types=state.vehicle_types, quirks=list(fetched.quirks))
    if fetched.version is not None:
        checked.versions["gbfs"] = fetched.version
    body = fetched.bodies.get(VEHICLE_TYPES)
    if body is not None:
        try:  # it only names the vehicle types: a broken one must not stop the station feeds
            parsed = parse_feed(body, VEHICLE_TYPES, system_id=fetched.system_id)
        except FeedError as exc:
            log.warning("%s: vehicle_types.json ignored: %s", fetched.system_id, exc)
            checked.quirks.append("feed:unusable_vehicle_types")
        else:
            checked.vehicle_types = vehicle_type_ids(parsed)
            checked.versions[VEHICLE_TYPES] = parsed.version
    known = state.described if len(state.described.ids) else None
    body = fetched.bodies.get(STATION_INFORMATION)
    if body is not None:
        digest = changes.information_digest(body)
        if digest is None or digest != state.information_digest:
            try:
                checked.information = check_information(body, fetched.system_id, fetched.fetched_at,
                                                        language=language, reference_time=reference_time)
            except FeedError as exc:
                if STATION_STATUS not in fetched.bodies:
                    raise
                # the statuses are checked against the last description that could be read, and land
                log.warning("%s: station_information ignored: %s", fetched.system_id, exc)
                checked.quirks.append("feed:unusable_station_information")
            else:
                checked.information_digest = digest
                checked.versions[STATION_INFORMATION] = checked.information.version
                known = Described.of(checked.information)
    body = fetched.bodies.get(STATION_STATUS)
    if body is not None:
        checked.status = check_status(body, fetched.system_id, fetched.fetched_at, quality, known=known,
                                      vehicle_types=checked.vehicle_types, reference_time=reference_time)
        checked.versions[STATION_STATUS] = checked.status.version
    return checked


# -- selecting: what changed since the state, and the state after the step ------------------------

class Step(msgspec.Struct, kw_only=True):
    """One system's new data of one step, ready to publish and land."""

    system_id: str
    status: pa.Table | None = None
    """Every valid station_status observation (all are landed)."""
    descriptions: pa.Table | None = None
    """The station descriptions that changed (published and landed as new versions)."""
    quarantined: list[QuarantinedRecord] = []
    publish: list[int] = []
    """The status rows to publish: changed stations, or all of them in a full snapshot."""
    full_snapshot: bool = False
    summary: QualitySummary | None = None
    state: SystemState
    """The system's state once this step is delivered and landed."""


def select(state: SystemState, checked: Checked, *, system_id: str, snapshot_every_s: int,
           publish: bool = True, client_state: Mapping[str, Any] | None = None) -> Step:
    """The step that ``checked`` makes of ``state`` (see the module doc). Without ``publish`` the
    statuses to publish are not selected and the published fingerprints stay as they are."""
    after = msgspec.structs.replace(state, last_updated=dict(state.last_updated),
                                    versions={**state.versions, **checked.versions},
                                    vehicle_types=checked.vehicle_types)
    if client_state is not None:
        after.client = dict(client_state)
    step = Step(system_id=system_id, state=after)
    information, status = checked.information, checked.status
    if information is not None:
        ids = information.table["station_id"].to_pylist()
        fingerprints = changes.description_fingerprints(information.table)
        rows = changes.changed(ids, fingerprints, state.descriptions)
        if rows:
            step.descriptions = information.table.take(pa.array(rows, pa.int64()))
        after.descriptions = {**state.descriptions, **{ids[row]: fingerprints[row] for row in rows}}
        after.described = Described.of(information)
        after.information_digest = checked.information_digest
        after.last_updated[STATION_INFORMATION] = information.last_updated
        step.quarantined += information.quarantined
    if status is not None:
        step.status = status.table
        step.quarantined += status.quarantined
        after.last_updated[STATION_STATUS] = status.last_updated
        if publish:
            ids = status.table["station_id"].to_pylist()
            fingerprints = changes.status_fingerprints(status.table)
            step.full_snapshot = (status.table.num_rows > 0  # an empty or stale snapshot publishes nothing
                                  and status.last_updated - state.snapshot_at >= snapshot_every_s)
            step.publish = list(range(len(ids))) if step.full_snapshot else changes.changed(ids, fingerprints,
                                                                                            state.published)
            after.published = {**state.published, **{ids[row]: fingerprints[row] for row in step.publish}}
            if step.full_snapshot:
                after.snapshot_at = status.last_updated
    if information is not None or status is not None:
        mixed = ["feed:mixed_versions"] if len(set(after.versions.values())) > 1 else []
        previous = state.last_updated.get(STATION_STATUS) if status is not None else None
        step.summary = summarize(information, status, previous_last_updated=previous, extra_quirks=mixed + checked.quirks)
    return step


# -- publishing, landing, recording ---------------------------------------------------------------

def publish_step(step: Step, publisher: Publisher) -> int:
    """Hand a step's messages to the producer (the caller flushes); returns how many."""
    sent = 0
    if step.descriptions is not None:
        sent += publisher.send_table(STATION_INFORMATION, step.descriptions)
    if step.status is not None and step.publish:
        sent += publisher.send_table(STATION_STATUS, step.status, step.publish)
    return sent + publisher.send_quarantine(step.quarantined)


def step_files(step: Step, lake: Lake, *, status: bool = True) -> list[LakeFile]:
    """A step's lake files: its description versions, its quarantine and (unless a backfill writes
    them a span of snapshots at a time) its station_status rows."""
    files = []
    if step.descriptions is not None:
        at = step.state.last_updated[STATION_INFORMATION]
        files.append(information_file(step.system_id, with_landed(lake, step.system_id, at, step.descriptions), at))
    for feed in FEEDS:
        rejected = [record for record in step.quarantined if record.feed == feed]
        if rejected and (status or feed != STATION_STATUS):
            files.append(quarantine_file(step.system_id, feed, rejected, rejected[0].last_updated))
    if status and step.status is not None and step.status.num_rows:
        files.append(status_file(step.system_id, step.status, step.state.last_updated[STATION_STATUS]))
    return files


def with_landed(lake: Lake, system_id: str, at: int, descriptions: pa.Table) -> pa.Table:
    """The descriptions that took effect at ``at``, with those a file of that time holds already (landed
    by a run that started from another point, e.g. a backfill resumed with gaps, or the live pipeline):
    a version's file only gains rows, so landing it again never loses one."""
    landed = lake.read_file(layout.curated_key(STATION_INFORMATION, system_id, at), STATION_INFORMATION)
    if landed is None:
        return descriptions
    others = landed.filter(pc.invert(pc.is_in(landed["station_id"], descriptions["station_id"])))
    return pa.concat_tables([descriptions, others])


def landed_rows(step: Step) -> dict[str, int]:
    """Rows per lake table that :func:`step_files` writes; a table it writes no file to is absent."""
    rows = {
        "station_status": step.status.num_rows if step.status is not None else 0,
        "station_information": step.descriptions.num_rows if step.descriptions is not None else 0,
        "quarantine": len(step.quarantined),
    }
    return {table: count for table, count in rows.items() if count}


def outcome(step: Step | None, fetched: Fetched | None, state: SystemState,
            quality: QualityConfig) -> tuple[str, str | None]:
    """(outcome, reason) of a step that landed. ``stale`` when station_status arrived older than
    ``max_feed_age_s`` (its records are quarantined), or, without new data, has not advanced for
    longer than that (the system may be down while its server keeps answering); ``skipped`` when
    every feed was within its ttl; ``no_new_data`` or ``success`` otherwise."""
    summary = step.summary if step is not None else None
    if summary is not None:
        if summary.stale_feeds:
            return "stale", f"station_status arrived {summary.feed_age_s or 0:.0f} s old; records quarantined"
        return "success", None
    last = state.last_updated.get(STATION_STATUS)
    if fetched is not None and last is not None and fetched.fetched_at - last > quality.max_feed_age_s:
        return "stale", (f"station_status has not advanced for {fetched.fetched_at - last:.0f} s "
                         f"(last_updated {last}); the system may be down")
    if fetched is not None and set(fetched.outcomes.values()) == {"skipped_ttl"}:
        return "skipped", None
    return "no_new_data", None


def run_record(run_id: str, system_id: str, started_at: float, outcome_: str, *, step: Step | None = None,
               published: int | None = None, durations: Mapping[str, float | None] | None = None,
               error: str | None = None) -> RunRecord:
    summary = step.summary if step is not None else None
    durations = durations or {}
    return RunRecord(
        run_id=run_id, system_id=system_id, started_at=started_at, finished_at=time.time(), outcome=outcome_,
        stations_information=summary.seen.get(STATION_INFORMATION) if summary else None,
        stations_status=summary.seen.get(STATION_STATUS) if summary else None,
        stations_valid=summary.valid.get(STATION_STATUS) if summary else None,
        stations_quarantined=sum(summary.quarantined.values()) if summary else None,
        stations_published=published,
        quarantine_reasons=dict(summary.quarantined_by_reason) if summary else {},
        fetch_s=durations.get("fetch"), validate_s=durations.get("validate"),
        produce_s=durations.get("produce"), write_s=durations.get("write"),
        error=error,
    )


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
    """Fetch a system's feeds once and check them, without Kafka or the lake (FeedError when a feed
    is unusable). ``recorded`` files are judged as of the station_status file's own time (a saved
    snapshot is not stale); live URLs as of now."""
    fetched = _fetch(client, force=True)
    discovery = client.discover()
    reference = float(fetched.last_updated[STATION_STATUS]) if recorded and STATION_STATUS in fetched.last_updated else None
    checked = check_fetched(fetched, SystemState(), quality, language=client.system.language, reference_time=reference)
    step = select(SystemState(), checked, system_id=fetched.system_id, snapshot_every_s=0, publish=False)
    assert step.summary is not None
    return Inspection(system_id=fetched.system_id, source=discovery.url, version=discovery.version,
                      language=discovery.language, last_updated=dict(fetched.last_updated),
                      summary=step.summary.to_dict())

