"""Backfill's file handling: which files it reads, in what order, and which information goes with each status."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.replay.backfill import SnapshotFile, pair, scan
from citibikes.replay.recordings import recorded


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
