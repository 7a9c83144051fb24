"""Backfill's file handling: which files it reads, in what order, and which information goes with each status."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from citibikes.config import load_settings
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.lake import open_lake
from citibikes.pipeline import Fetched, SystemState, land_validated, validate_fetched
from citibikes.replay.backfill import SnapshotFile, backfill, minute_files, pair, scan
from citibikes.replay.recordings import recorded
from citibikes.stream.publish import Publisher
from test_publish import TOPICS, FakeProducer


def _file(feed: str, last_updated: int) -> SnapshotFile:
    return SnapshotFile(last_updated, feed, Path(f"{feed}-{last_updated}.json"))


def test_each_status_gets_the_latest_information_at_or_before_it() -> None:
    info = {t: _file(STATION_INFORMATION, t) for t in (100, 200, 300)}
    status = {t: _file(STATION_STATUS, t) for t in (50, 100, 150, 250, 300, 400)}
    pairs = pair(sorted([*info.values(), *status.values()]))
    assert [(s.last_updated, i.last_updated if i else None) for s, i in pairs] == [
        (50, None),  # before the first information: none to pair with
        (100, 100),  # equal timestamps: the information counts as "at or before"
        (150, 100),
        (250, 200),
        (300, 300),
        (400, 300),
    ]
    assert [s for s, _ in pairs] == [status[t] for t in sorted(status)]


def test_no_information_at_all_pairs_every_status_with_none() -> None:
    assert pair([_file(STATION_STATUS, 1), _file(STATION_STATUS, 2)]) == [
        (_file(STATION_STATUS, 1), None), (_file(STATION_STATUS, 2), None)]


def test_scan_orders_by_last_updated_not_by_names_or_folders(tmp_path: Path) -> None:
    """Names and folders sort newest first here; the scan still gives the oldest first."""
    statuses = recorded(STATION_STATUS)  # oldest first
    places = ["a.json", "b/status.json.gz", "c/d/x.json", "c/e/y.json"]  # the order a walk meets them
    assert places == sorted(places)
    for recording, place in zip(reversed(statuses), places):
        path = tmp_path / place
        path.parent.mkdir(parents=True, exist_ok=True)
        body = recording.read_bytes()
        path.write_bytes(gzip.compress(body) if place.endswith(".gz") else body)
    (information,) = recorded(STATION_INFORMATION)
    (tmp_path / "c" / "e" / "z.json").write_bytes(information.read_bytes())
    (tmp_path / "README.md").write_text("# bike archive\n")
    (tmp_path / "c" / "notes.txt").write_text("scraped hourly\n")
    (tmp_path / "broken.json").write_text('{"hello": "world"}')
    (tmp_path / ".hidden.json").write_text("not looked at")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.json").write_text("not looked at")
    found = scan(tmp_path)
    assert [(s.feed, s.last_updated) for s in found.snapshots] == [
        (STATION_INFORMATION, information.last_updated),  # at the first status's time: information first
        *((STATION_STATUS, r.last_updated) for r in statuses),
    ]
    assert [s.path.relative_to(tmp_path).as_posix() for s in found.snapshots] == ["c/e/z.json", *reversed(places)]
    assert found.skipped == {"unsupported_suffix": 2, "not_gbfs_station_feed": 1}
    assert [(s.last_updated, i.path.name) for s, i in pair(found.snapshots)] == [
        (r.last_updated, "z.json") for r in statuses]


def test_a_backfill_leaves_alone_the_snapshots_the_live_pipeline_landed(tmp_path: Path) -> None:
    """The minute DAG landed one of the snapshots in a file of its own: a backfill over the same
    period ingests the others only, so no snapshot has rows in two files (a span and a minute)."""
    settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LAKE_URI": str(tmp_path / "lake")})
    lake = open_lake(settings.lake_uri)
    archive = tmp_path / "archive"
    archive.mkdir()
    statuses, (information,) = recorded(STATION_STATUS), recorded(STATION_INFORMATION)
    for recording in (*statuses, information):
        (archive / f"{recording.feed}-{recording.last_updated}.json").write_bytes(recording.read_bytes())
    live = statuses[1]  # as `fetch -> validate -> write` of a minute run land it
    fetched = Fetched(system_id="citibike", fetched_at=float(live.last_updated), outcomes={STATION_STATUS: "new"},
                      last_updated={STATION_STATUS: live.last_updated}, bodies={STATION_STATUS: live.read_bytes()})
    land_validated(validate_fetched(fetched, SystemState(), settings.quality, reference_time=float(live.last_updated)),
                   lake)
    assert minute_files(lake, "citibike") == {live.last_updated}
    producer = FakeProducer()

    report = backfill(archive, "citibike", settings=settings, lake=lake,
                      publisher=Publisher(producer, TOPICS))  # type: ignore[arg-type]
    assert (report.snapshots, report.already_done, report.processed, report.failed) == (4, 1, 3, 0)
    table = lake.read_table("station_status")
    rows = list(zip((int(t.timestamp()) for t in table.column("last_updated").to_pylist()),
                    table.column("station_id").to_pylist()))
    assert len(rows) == len(set(rows)), "a station's observation is in the lake once"
    assert {t for t, _ in rows} == {r.last_updated for r in statuses}
    sent = [dict(message["headers"])["last_updated"] for message in producer.produced]
    assert sent and str(live.last_updated).encode() not in sent, "the live snapshot is not sent again"
