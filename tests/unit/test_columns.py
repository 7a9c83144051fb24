"""The columnar pipeline equals the reference path, record for record, file for file, message for message.

The pipeline keeps a status snapshot in columns (:class:`StationStatusColumns`) from the bytes to
Parquet and makes structs only for the stations it publishes. The reference is the per-record path
it replaced: every status record through the generic normalizer (``_status_generic``), the same
quality rules on a list of :class:`StationStatus`, Arrow tables built from the structs, change capture
and the Kafka messages of the structs. On the recorded Citi Bike snapshots, the 2.3 and 3.0 fixtures,
the replay feed's ``citibike-v3`` and ``synth`` systems and random mutations of a real snapshot, both
give the same valid records, quarantined records (with their reasons), summaries, Parquet tables (and
bytes), change-capture selections and Kafka messages (topic, key, value, headers). Backfill's worker
process gives the same run records, lake files and messages as preparing each snapshot in-process,
a failed snapshot included.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citibikes.config import QualityConfig, load_settings
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS, StationStatusColumns
from citibikes.gbfs.normalize import (
    _Context,
    _normalize_generic,
    _status_generic,
    normalize_information,
    normalize_status_body,
    normalize_status_columns,
    parse_feed,
)
from citibikes.gbfs import normalize
from citibikes.lake import filesystem, open_lake
from citibikes.lake.tables import build_table, parquet_bytes
from citibikes.pipeline import (
    ChainStart,
    Fetched,
    SnapshotWorker,
    SystemState,
    Validated,
    encode_validated,
    publish_validated,
    validate_fetched,
)
from citibikes.quality import ValidationResult, validate
from citibikes.replay.backfill import Snapshot, ingest_snapshot, ingest_snapshots, new_change_capture, snapshot_fetched
from citibikes.replay.evolve import ReplayFeed, resolve_system
from citibikes.replay.recordings import recorded
from citibikes.stream.publish import ChangeCapture, Publisher, encode_value, status_fingerprint, status_fingerprints
from test_properties import _apply_edits, edit_lists, header_values
from test_publish import TOPICS, FakeProducer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
SYSTEM = "sys"
CONFIG = QualityConfig()
T0 = 1_767_225_600  # replay start (2026-01-01)


# --------------------------------------------------------------------------- the two paths


def reference(bodies: dict[str, bytes], fetched_at: float, state: SystemState, *,
              reference_time: float | None = None) -> ValidationResult:
    """The per-record path: generic normalization of every status record, rules on structs."""
    information = status = None
    if STATION_INFORMATION in bodies:
        information = normalize_information(parse_feed(bodies[STATION_INFORMATION], STATION_INFORMATION),
                                            SYSTEM, fetched_at)
    if STATION_STATUS in bodies:
        parsed = parse_feed(bodies[STATION_STATUS], STATION_STATUS)
        status = _normalize_generic(parsed, _Context(SYSTEM, parsed.version, parsed.last_updated, fetched_at),
                                    _status_generic)
    return validate(information, status, config=CONFIG, reference_time=reference_time,
                    known_station_ids=state.stations if information is None and state.stations else None,
                    previous_last_updated=state.last_updated.get(STATION_STATUS))


def columnar(bodies: dict[str, bytes], fetched_at: float, state: SystemState, *,
             reference_time: float | None = None) -> Validated:
    """What the pipeline does (``validate_fetched``)."""
    fetched = Fetched(system_id=SYSTEM, fetched_at=fetched_at, outcomes={feed: "new" for feed in bodies},
                      last_updated={feed: parse_feed(body, feed).last_updated for feed, body in bodies.items()},
                      bodies=dict(bodies))
    return validate_fetched(fetched, state, CONFIG, reference_time=reference_time)


def as_reference_validated(result: ValidationResult, validated: Validated) -> Validated:
    """The reference result in a Validated, its status a list of structs (what the pipeline used to carry)."""
    return msgspec.structs.replace(validated, information=result.information, status=result.status,
                                   quarantined=result.quarantined, summary=result.summary.to_dict())


def assert_same(result: ValidationResult, validated: Validated) -> None:
    """Same records, quarantine, summary, Parquet tables (content and bytes)."""
    encode = encode_value  # as the Publisher encodes message values
    status = validated.status.records() if validated.status is not None else []
    assert status == result.status
    assert [encode(r) for r in status] == [encode(r) for r in result.status]  # the Kafka values
    assert validated.information == result.information
    assert [encode(q) for q in validated.quarantined] == [encode(q) for q in result.quarantined]
    assert validated.summary == result.summary.to_dict()
    if validated.status is not None:
        assert status_fingerprints(validated.status) == [status_fingerprint(r) for r in result.status]
        ours, theirs = build_table("station_status", validated.status), build_table("station_status", result.status)
        assert ours.equals(theirs)
        assert parquet_bytes(ours) == parquet_bytes(theirs)
    assert encode_validated(validated) == encode_validated(as_reference_validated(result, validated))
    # the DAG stages hand it over as msgpack: nothing is lost on the way (a tuple in the summary becomes a list)
    try:
        staged = msgspec.msgpack.encode(validated)
    except OverflowError:  # an integer beyond 64 bits in station_information's extras: msgpack has none (status extras are text)
        return
    assert msgspec.msgpack.encode(msgspec.msgpack.decode(staged, type=Validated)) == staged
    assert msgspec.msgpack.decode(staged, type=Validated).status == validated.status


def published(batches: list[tuple[Validated, dict[str, ChangeCapture]]]) -> list[dict[str, Any]]:
    """The Kafka messages of consecutive steps (change capture committed after each)."""
    producer = FakeProducer()
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    for batch in batches:
        publish_validated([batch], publisher)
    return [{k: v for k, v in message.items() if k != "on_delivery"} for message in producer.produced]


def check_steps(steps: list[tuple[dict[str, bytes], float, float | None]], snapshot_every_s: int = 900) -> None:
    """Validate consecutive steps both ways (state carried as the pipeline carries it); compare everything."""
    state_ours, state_ref = SystemState(), SystemState()
    ours, theirs = [], []
    captures_ours, captures_ref = new_change_capture(snapshot_every_s), new_change_capture(snapshot_every_s)
    for bodies, fetched_at, reference_time in steps:
        result = reference(bodies, fetched_at, state_ref, reference_time=reference_time)
        validated = columnar(bodies, fetched_at, state_ours, reference_time=reference_time)
        assert_same(result, validated)
        ours.append((validated, captures_ours))
        theirs.append((as_reference_validated(result, validated), captures_ref))
        stations = {r.station_id: r.capacity for r in validated.information} if validated.information else None
        last = {**state_ours.last_updated, **validated.last_updated}
        state_ours = SystemState(stations=stations if stations is not None else state_ours.stations, last_updated=last)
        state_ref = state_ours
    assert published(ours) == published(theirs)
    assert {f: c.dumps() for f, c in captures_ours.items()} == {f: c.dumps() for f, c in captures_ref.items()}


# --------------------------------------------------------------------------- real and replayed feeds


def test_recorded_citibike_snapshots() -> None:
    information = recorded(STATION_INFORMATION)[0].read_bytes()
    statuses = [r.read_bytes() for r in recorded(STATION_STATUS)]
    first = json.loads(statuses[0])["last_updated"]
    steps = [({STATION_INFORMATION: information, STATION_STATUS: statuses[0]}, first + 5.0, None)]
    steps += [({STATION_STATUS: body}, json.loads(body)["last_updated"] + 5.0, json.loads(body)["last_updated"] + 5.0)
              for body in statuses[1:]]
    check_steps(steps)
    check_steps(steps, snapshot_every_s=0)  # every snapshot whole
    for body in statuses:  # status alone, stations unknown: every record an orphan-free check
        check_steps([({STATION_STATUS: body}, json.loads(body)["last_updated"] + 5.0, None)])


@pytest.mark.parametrize("version", ["v2.3", "v3.0"])
def test_fixtures(version: str) -> None:
    bodies = {feed: (FIXTURES / version / f"{feed}.json").read_bytes() for feed in (STATION_INFORMATION, STATION_STATUS)}
    fetched_at = parse_feed(bodies[STATION_STATUS], STATION_STATUS).last_updated + 5.0
    check_steps([(bodies, fetched_at, None), ({STATION_STATUS: bodies[STATION_STATUS]}, fetched_at, None)])
    check_steps([({STATION_STATUS: bodies[STATION_STATUS]}, fetched_at + 3600, None)])  # stale: all quarantined


@pytest.mark.parametrize("system_id", ["citibike", "citibike-v3", "synth-03", "synth-11"])
def test_replay_systems(system_id: str) -> None:
    feed = ReplayFeed(resolve_system(system_id))
    steps = []
    for minute in range(4):
        now = T0 + 60 * minute
        bodies = {STATION_STATUS: feed.station_status(now).body}
        if minute == 0:
            bodies[STATION_INFORMATION] = feed.station_information(now).body
        steps.append((bodies, now + 1.5, now + 1.5))
    check_steps(steps)


# --------------------------------------------------------------------------- mutations of a real snapshot


def _real_pair(size: int = 24) -> tuple[dict[str, Any], dict[str, Any]]:
    information = json.loads(recorded(STATION_INFORMATION)[0].read_bytes())
    status = json.loads(recorded(STATION_STATUS)[0].read_bytes())
    stations = status["data"]["stations"]
    # ordinary stations, the "never reported" ones, and both of Citi Bike's record shapes
    chosen = stations[:size] + [s for s in stations if s["last_reported"] == 86400][:3]
    chosen += [s for s in stations if "num_scooters_available" not in s][:3]
    ids = {s["station_id"] for s in chosen}
    information["data"]["stations"] = [s for s in information["data"]["stations"] if s["station_id"] in ids]
    status["data"]["stations"] = chosen
    return information, status


REAL_PAIR = _real_pair()


@settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plans=st.tuples(edit_lists, edit_lists), headers=st.tuples(header_values, header_values),
       with_information=st.booleans(), fetch_offset=st.integers(-600, 600), known_count=st.integers(0, 40))
def test_mutated_real_snapshot(plans: Any, headers: Any, with_information: bool, fetch_offset: int,
                               known_count: int) -> None:
    documents = [_apply_edits(copy.deepcopy(doc), plan, header) for doc, plan, header in zip(REAL_PAIR, plans, headers)]
    bodies = {feed: json.dumps(doc).encode() for feed, doc in zip((STATION_INFORMATION, STATION_STATUS), documents)}
    try:
        status = parse_feed(bodies[STATION_STATUS], STATION_STATUS)
    except Exception:  # noqa: BLE001 - a broken feed is the same error either way; nothing to compare
        return
    if not with_information:
        del bodies[STATION_INFORMATION]
    else:
        try:
            parse_feed(bodies[STATION_INFORMATION], STATION_INFORMATION)
        except Exception:  # noqa: BLE001
            del bodies[STATION_INFORMATION]
    fetched_at = status.last_updated + fetch_offset + 0.25
    ids = [s.get("station_id") for s in status.stations if isinstance(s, dict)]
    capacities = {sid: (known_count * 7 + i * 13) % 40 - 3 if i % 5 else None
                  for i, sid in enumerate(ids[:known_count]) if isinstance(sid, str)}
    state = SystemState(stations=capacities, last_updated={STATION_STATUS: status.last_updated - 60})
    result = reference(bodies, fetched_at, state)
    validated = columnar(bodies, fetched_at, state)
    assert_same(result, validated)
    captures = new_change_capture(900)
    captures_ref = new_change_capture(900)
    assert published([(validated, captures)]) == published([(as_reference_validated(result, validated), captures_ref)])


def test_columns_round_trip_through_records() -> None:
    feed = ReplayFeed(resolve_system("citibike-v3"))
    validated = columnar({STATION_STATUS: feed.station_status(T0).body}, T0 + 1.0, SystemState())
    columns = validated.status
    assert isinstance(columns, StationStatusColumns) and len(columns) > 2000
    records = columns.records()
    again = StationStatusColumns.from_records(records, system_id=columns.system_id, last_updated=columns.last_updated,
                                              fetched_at=columns.fetched_at)
    assert again == columns
    assert columns.records([5, 1, 3]) == [records[5], records[1], records[3]] == columns.take([5, 1, 3]).records()
    assert columns.record(7) == records[7]
    assert columns.without([0, 2]).records() == [r for i, r in enumerate(records) if i not in (0, 2)]


# --------------------------------------------------------------------------- backfill's worker process


class FlakyProducer(FakeProducer):
    """Fails the flushes whose numbers (1-based) it is given, as a broker that does not acknowledge."""

    def __init__(self, failing_flushes: set[int]) -> None:
        super().__init__()
        self.failing, self.flushes, self.start = failing_flushes, 0, 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        failed = self.flushes in self.failing
        if failed:
            for message in self.produced[self.start:]:
                message["on_delivery"](type("Err", (), {"str": lambda self: "Local: Message timed out"})(),
                                       type("Msg", (), {"topic": lambda self: message["topic"]})())
        self.start = len(self.produced)
        return 0


def _snapshots(first: int = 0) -> list[Snapshot]:
    """Seven minute snapshots (from ``first`` on); station_information with the first one and the
    fifth (the first one's is that of minute 0), an HTML error page for the sixth."""
    feed = ReplayFeed(resolve_system("citibike"))
    snapshots = []
    for minute in range(first, 7):
        now = T0 + 60 * minute
        status = feed.station_status(now)
        information = feed.station_information(T0 if minute == first else now) if minute in (first, 4) else None
        body = b"<html>Service Unavailable</html>" if minute == 5 else status.body
        snapshots.append(Snapshot(status.last_updated, body, information.last_updated if information else None,
                                  information.body if information else None))
    return snapshots


def _one_at_a_time(snapshots: list[Snapshot], system_id: str, *, settings: Any, lake: Any, publisher: Publisher,
                   state: SystemState, captures: dict[str, ChangeCapture], worker: None) -> Any:
    """The reference for ingest_snapshots' chain: each snapshot alone (prepare, send, confirm, land), a
    failed one's station_information handed to the next."""
    carried: Snapshot | None = None
    for snapshot in snapshots:
        if carried is not None and carried.information_body is not None and snapshot.information_body is None:
            snapshot = dataclasses.replace(snapshot, information_last_updated=carried.information_last_updated,
                                           information_body=carried.information_body)
        record, state = ingest_snapshot(snapshot, system_id, settings=settings, lake=lake, publisher=publisher,
                                        run_id=f"backfill__{system_id}__{snapshot.status_last_updated}",
                                        state=state, captures=captures)
        carried = snapshot if record.outcome == "failed" else None
        yield snapshot, record, state


def _ingest(tmp_path: Path, worker: SnapshotWorker | None, failing_flushes: set[int], ingest: Any = ingest_snapshots,
            first: int = 0) -> dict[str, Any]:
    lake = open_lake(str(tmp_path))
    settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LAKE_URI": str(tmp_path)})
    producer = FlakyProducer(failing_flushes)
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    captures = new_change_capture(900)
    runs, states = [], []
    for snapshot, record, state in ingest(_snapshots(first), "citibike", settings=settings, lake=lake,
                                          publisher=publisher, state=SystemState(), captures=captures, worker=worker):
        runs.append((snapshot.status_last_updated, record.outcome, record.error, record.stations_information,
                     record.stations_status, record.stations_valid, record.stations_quarantined,
                     record.stations_published))
        states.append(state)
    files = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*"))
             if p.is_file() and "pipeline_runs" not in p.parts and not _spanned(p.relative_to(tmp_path))}
    messages = [{k: v for k, v in m.items() if k != "on_delivery"} for m in producer.produced]
    return {"runs": runs, "states": states, "files": files, "rows": _spanned_rows(tmp_path), "messages": messages,
            "captures": {feed: capture.dumps() for feed, capture in captures.items()}}


def _spanned(key: Path) -> bool:
    """station_status rows and their rejections: written a span of snapshots to a file."""
    return key.parts[:2] == ("curated", "station_status") or (key.parts[0] == "quarantine"
                                                              and key.name.startswith("station_status-"))


def _spanned_rows(lake: Path) -> dict[str, list[str]]:
    """The rows of the span files, as sorted JSON lines, by table: what the lake holds, however spanned."""
    rows: dict[str, list[str]] = {}
    for path in sorted(lake.rglob("*.parquet")):
        key = path.relative_to(lake)
        if _spanned(key):
            rows.setdefault(key.parts[0], []).extend(
                json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(path).to_pylist())
    return {table: sorted(lines) for table, lines in rows.items()}


def test_the_chained_backfill_gives_what_one_snapshot_at_a_time_gives(tmp_path: Path) -> None:
    failing = {1, 4}  # the first snapshot (it brings station_information) and a later one are not acknowledged
    alone = _ingest(tmp_path / "alone", None, failing, partial(ingest_snapshots, snapshots_per_flush=1))
    assert alone == _ingest(tmp_path / "one-at-a-time", None, failing, _one_at_a_time)
    with SnapshotWorker() as worker:
        together = _ingest(tmp_path / "worker", worker, failing, partial(ingest_snapshots, snapshots_per_flush=1))
        again = _ingest(tmp_path / "again", worker, set())  # the same worker, reused
    assert together == alone
    runs = alone["runs"]
    assert [outcome for _, outcome, *_ in runs] == ["failed", "success", "success", "failed", "success", "failed",
                                                    "success"]
    assert "did not acknowledge" in runs[0][2] and "HTML" in runs[5][2]
    assert runs[1][3] == runs[0][3] > 2000, "the failed snapshot's station_information is sent again with the next"
    assert runs[4][3] > 2000 and runs[2][3] is None
    assert len(again["runs"]) == 7 and [r[1] for r in again["runs"]].count("failed") == 1
    assert {key for key in alone["files"] if key.startswith("curated/station_information")}  # landed once delivered


def test_snapshots_acknowledged_together_give_what_one_at_a_time_gives(tmp_path: Path) -> None:
    """One flush for several snapshots: the same messages, files, states and change capture as one
    flush each (the broken feed in the middle fails alone); a flush that is not acknowledged fails
    all of its snapshots, and the following ones are redone from the real state."""
    reference = _ingest(tmp_path / "one-at-a-time", None, set(), _one_at_a_time)
    with SnapshotWorker() as worker:
        for per_flush in (2, 3, 8):
            for preparer in (None, worker):
                grouped = _ingest(tmp_path / f"per-flush-{per_flush}-{bool(preparer)}", preparer, set(),
                                  partial(ingest_snapshots, snapshots_per_flush=per_flush))
                assert grouped == reference, (per_flush, preparer)
        failing = _ingest(tmp_path / "failing", worker, {1}, partial(ingest_snapshots, snapshots_per_flush=3))
    runs = failing["runs"]
    assert [outcome for _, outcome, *_ in runs] == ["failed"] * 3 + ["success", "success", "failed", "success"]
    assert all("did not acknowledge" in error for _, _, error, *_ in runs[:3])
    assert runs[3][3] == runs[0][3] > 2000, "the failed flush's station_information is sent again with the next"
    assert failing["states"][:3] == [SystemState()] * 3
    # From the first snapshot after the failed flush on, as if the failed ones had never been there.
    rest = _ingest(tmp_path / "rest", None, set(), _one_at_a_time, first=3)
    assert [run[1:] for run in runs[3:]] == [run[1:] for run in rest["runs"]]
    assert failing["files"].keys() >= rest["files"].keys()
    assert failing["rows"] == rest["rows"], "the failed flush's snapshots landed nothing"
    assert failing["captures"] == rest["captures"]


def test_a_span_whose_file_cannot_be_written_fails_its_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush's files are written as one group; when that fails, the snapshots of the span whose
    file could not be written fail together (their records are in Kafka: change capture and the
    messages stand), and every snapshot's raw archive is written, the broken feed's too."""
    real_replace = filesystem.os.replace

    def replace(source: str, target: str) -> None:
        if "curated/station_status" in str(target):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    reference = _ingest(tmp_path / "reference", None, set())
    monkeypatch.setattr(filesystem.os, "replace", replace)
    failing = _ingest(tmp_path / "failing", None, set())
    outcomes = [outcome for _, outcome, *_ in failing["runs"]]
    assert outcomes == ["failed"] * 7
    assert all("cannot write" in run[2] and "No space left on device" in run[2]
               for i, run in enumerate(failing["runs"]) if i != 5)
    assert [run[3:] for run in failing["runs"]] == [run[3:] for run in reference["runs"]]
    assert failing["messages"] == reference["messages"] and failing["captures"] == reference["captures"]
    raw = [key for key in failing["files"] if key.startswith("raw/") and "station_status" in key]
    assert len(raw) == 7
    assert not failing["rows"] and reference["rows"]["curated"]
    assert not [key for key in failing["files"] if key.endswith(".tmp")]


def test_snapshots_of_an_hour_share_their_files(tmp_path: Path) -> None:
    """A span holds consecutive acknowledged snapshots of one hour, at most ``span_snapshots``: the
    rows are those of a file per snapshot, in fewer files named after their first and last snapshot."""
    reference = _ingest(tmp_path / "one-at-a-time", None, set(), _one_at_a_time)
    spans = _ingest(tmp_path / "spans", None, set(), partial(ingest_snapshots, span_snapshots=4))
    assert spans["rows"] == reference["rows"] and spans["runs"] == reference["runs"]
    times = [snapshot.status_last_updated for snapshot in _snapshots()]
    landed = times[:5] + times[6:]  # minute 5 is an error page
    assert sorted(path.name for path in (tmp_path / "spans").rglob("*.parquet")
                  if path.parts[-6:-4] == ("curated", "station_status")) == [
        f"{landed[0]}-{landed[3]}.parquet", f"{landed[4]}-{landed[5]}.parquet"]
    assert len(list((tmp_path / "one-at-a-time").glob("curated/station_status/**/*.parquet"))) == 6


def test_a_dead_worker_fails_the_snapshot_it_held_and_a_new_one_goes_on(tmp_path: Path) -> None:
    """The worker process is killed before the backfill: the first snapshot fails with that reason
    (one line), those submitted behind it are prepared again by a new worker process, and the rest
    of the backfill is what it is when the first snapshot fails otherwise (here: not acknowledged)."""
    with SnapshotWorker() as worker:
        dead = worker.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        worker._process.join(5)  # dead before the backfill starts
        killed = _ingest(tmp_path / "killed", worker, set(), partial(ingest_snapshots, snapshots_per_flush=2))
        assert worker.pid != dead
    unacknowledged = _ingest(tmp_path / "unacknowledged", None, {1}, partial(ingest_snapshots, snapshots_per_flush=1))
    runs = killed["runs"]
    assert runs[0][1] == "failed" and "worker process preparing the snapshot stopped (exit code -9)" in runs[0][2]
    assert "\n" not in runs[0][2]
    assert [run[1:] for run in runs[1:]] == [run[1:] for run in unacknowledged["runs"][1:]]
    assert killed["states"] == unacknowledged["states"] and killed["captures"] == unacknowledged["captures"]


def test_closing_a_worker_that_died_with_answers_due(tmp_path: Path) -> None:
    settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LAKE_URI": str(tmp_path)})
    worker = SnapshotWorker().start()
    worker.submit(snapshot_fetched(_snapshots()[1], "citibike"), ChainStart.of(SystemState(), new_change_capture(900)),
                  settings.quality)
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    worker.close()  # drains an error answer, then nothing is left to stop
    assert worker.pid is None


def test_a_backfill_stopped_early_leaves_the_worker_ready_for_the_next(tmp_path: Path) -> None:
    """Stopped after its first landed snapshots (as by Ctrl-C), with snapshots prepared ahead: the
    next backfill on the same worker gets its own snapshots' results, not those left behind."""
    lake = open_lake(str(tmp_path))
    settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LAKE_URI": str(tmp_path)})
    publisher = Publisher(FlakyProducer(set()), TOPICS)  # type: ignore[arg-type]

    def ingest(snapshots: list[Snapshot], worker: SnapshotWorker) -> Any:
        return ingest_snapshots(snapshots, "citibike", settings=settings, lake=lake, publisher=publisher,
                                state=SystemState(), captures=new_change_capture(900), worker=worker,
                                snapshots_per_flush=2, span_snapshots=1)

    with SnapshotWorker() as worker:
        results = ingest(_snapshots(), worker)
        _, first, _ = next(results)
        results.close()
        ((_, again, _),) = ingest(_snapshots()[:1], worker)
    assert first.outcome == again.outcome == "success"
    assert again.stations_information == first.stations_information > 2000  # minute 0's, not minute 2's

# --------------------------------------------------------------------------- learned shapes (typed decoding)


def _parsed_the_usual_way(body: bytes, system_id: str) -> Any:
    return normalize_status_columns(parse_feed(body, STATION_STATUS, system_id=system_id), system_id, 7.5)


def _same_normalized(fast: Any, usual: Any) -> None:
    for name in ("feed", "system_id", "version", "last_updated", "fetched_at", "records", "quarantined", "quirks"):
        assert getattr(fast, name) == getattr(usual, name), name
    assert list(fast.sources) == list(usual.sources)


@pytest.mark.parametrize("system", ["citibike", "citibike-v3"])
def test_a_learned_shape_decodes_what_parsing_gives(system: str) -> None:
    feed = ReplayFeed(resolve_system(system))
    normalize._SHAPES.pop(system, None)
    for minute in range(6):
        body = feed.station_status(T0 + 60 * minute).body
        fast = normalize_status_body(body, system, 7.5)
        assert (type(fast.sources) is list) == (minute == 0), "the first snapshot teaches the shape, the next use it"
        _same_normalized(fast, _parsed_the_usual_way(body, system))
    assert system in normalize._SHAPES


def _real_status_with_keys_added(steps: list[str]) -> bytes:
    """The real snapshot with record 16 given the same new keys in another order: a vendor key
    (the name hypothesis found) and ``swap_coordinates``' ``lat``/``lon`` (absent in status: both null)."""
    document = copy.deepcopy(REAL_PAIR[1])
    record = document["data"]["stations"][16]
    for step in steps:
        if step == "vendor":
            record["\u00dbx\U000c61db \x9f\U0010df5c\U000a916d"] = -1
        else:
            record["lat"], record["lon"] = record.get("lon"), record.get("lat")
    return json.dumps(document).encode()


def test_a_quarantined_record_has_one_text_whatever_its_key_order() -> None:
    """A shape learned from a record with the same keys in another order rebuilds the raw record in
    that order; its quarantined text is still the usual path's: keys sorted (test_mutated_real_snapshot
    found it: a shape left by an earlier example, then a stale feed quarantining every record)."""
    teacher = _real_status_with_keys_added(["coordinates", "vendor"])
    body = _real_status_with_keys_added(["vendor", "coordinates"])
    normalize._SHAPES.pop(SYSTEM, None)
    normalize_status_body(teacher, SYSTEM, 7.5)
    assert SYSTEM in normalize._SHAPES
    fast, usual = normalize_status_body(body, SYSTEM, 7.5), _parsed_the_usual_way(body, SYSTEM)
    assert type(fast.sources) is not list, "the learned shape decoded it"
    _same_normalized(fast, usual)
    assert list(fast.sources[16]) != list(usual.sources[16]), "the learned order, not the record's own"
    last_updated = parse_feed(body, STATION_STATUS).last_updated
    state = SystemState(last_updated={STATION_STATUS: last_updated - 60})
    validated = columnar({STATION_STATUS: body}, last_updated + 310.25, state)  # stale: every record quarantined
    assert SYSTEM in normalize._SHAPES and len(validated.quarantined) == len(REAL_PAIR[1]["data"]["stations"])
    assert_same(reference({STATION_STATUS: body}, last_updated + 310.25, state), validated)
    raw = validated.quarantined[16].raw
    assert raw == msgspec.json.encode(json.loads(raw), order="sorted").decode()
    normalize._SHAPES.pop(SYSTEM, None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=edit_lists, header=header_values)
def test_a_learned_shape_falls_back_for_anything_else(plan: Any, header: Any) -> None:
    """Learned from the real snapshot, then any edit of it: the same result as parsing (or the same error)."""
    normalize._SHAPES.pop("learner", None)
    normalize_status_body(json.dumps(REAL_PAIR[1]).encode(), "learner", 7.5)
    assert "learner" in normalize._SHAPES
    body = json.dumps(_apply_edits(copy.deepcopy(REAL_PAIR[1]), plan, header)).encode()
    try:
        usual = _parsed_the_usual_way(body, "learner")
    except Exception as exc:  # noqa: BLE001 - then the same error
        with pytest.raises(type(exc)) as raised:
            normalize_status_body(body, "learner", 7.5)
        assert str(raised.value) == str(exc)
        return
    _same_normalized(normalize_status_body(body, "learner", 7.5), usual)


def _learned_from_real(system: str) -> Any:
    normalize._SHAPES.pop(system, None)
    normalize_status_body(json.dumps(REAL_PAIR[1]).encode(), system, 7.5)
    return normalize._SHAPES[system]


@pytest.mark.parametrize("value", [1, 0, "yes", None, 2**70, 1.0, [1], {"a": 1}])
def test_vendor_values_of_another_type_give_the_usual_extras_text(value: Any) -> None:
    """The extras text is kept by the tuple of vendor values, where True and 1 (or 1 and 1.0) are one
    key: only values of the types learned may use it; others take the usual way, text included."""
    shape = _learned_from_real("vendor-types")
    normalize_status_body(json.dumps(REAL_PAIR[1]).encode(), "vendor-types", 7.5)
    assert shape.texts is not None and len(shape.texts) >= 2  # Citi Bike's vendor fields: one type each
    document = copy.deepcopy(REAL_PAIR[1])
    document["data"]["stations"][0]["eightd_has_available_keys"] = value
    document["data"]["stations"][1]["legacy_id"] = value
    body = json.dumps(document).encode()
    fast, usual = normalize_status_body(body, "vendor-types", 7.5), _parsed_the_usual_way(body, "vendor-types")
    _same_normalized(fast, usual)
    assert fast.records.extras == usual.records.extras
    assert json.loads(fast.records.extras[0])["eightd_has_available_keys"] == value


def test_vendor_values_that_never_repeat_keep_the_text_cache_bounded() -> None:
    shape = _learned_from_real("vendor-counter")
    shape.max_texts = 50
    for minute in range(1, 6):
        document = copy.deepcopy(REAL_PAIR[1])
        for index, station in enumerate(document["data"]["stations"]):
            station["legacy_id"] = f"{minute}-{index}"  # a new value every time
        body = json.dumps(document).encode()
        fast = normalize_status_body(body, "vendor-counter", 7.5)
        assert type(fast.sources) is not list, "the learned shape decoded it"
        _same_normalized(fast, _parsed_the_usual_way(body, "vendor-counter"))
        assert len(shape.texts) <= shape.max_texts


def test_vendor_values_of_several_types_are_not_cached_and_still_right() -> None:
    document = copy.deepcopy(REAL_PAIR[1])
    document["data"]["stations"][0]["legacy_id"] = 466  # an int where the others have text
    body = json.dumps(document).encode()
    normalize._SHAPES.pop("vendor-mixed", None)
    normalize_status_body(body, "vendor-mixed", 7.5)
    assert normalize._SHAPES["vendor-mixed"].texts is None
    again = normalize_status_body(body, "vendor-mixed", 7.5)
    assert type(again.sources) is not list, "the learned shape decoded it"
    _same_normalized(again, _parsed_the_usual_way(body, "vendor-mixed"))
