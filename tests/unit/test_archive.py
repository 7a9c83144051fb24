"""The recorded-archive generator writes what a scraper would: status and information side by side
every 5-20 minutes, sorted keys, information content changing only where it says."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench.archive import INFORMATION_FILE, STATUS_FILE, write_archive

LAST_UPDATED = re.compile(rb'"last_updated":\d+')


def _sorted_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    assert keys == sorted(keys), f"keys not sorted: {keys}"
    return dict(pairs)


def _read(path: Path) -> tuple[bytes, dict]:
    body = path.read_bytes()
    return body, json.loads(body, object_pairs_hook=_sorted_keys)


def test_archive_is_what_a_scraper_records(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "archive", 12, seed=5, information_changes=2)

    commits = sorted((tmp_path / "archive").iterdir())
    assert len(commits) == archive.snapshots == 12
    assert all(sorted(p.name for p in c.iterdir()) == [INFORMATION_FILE, STATUS_FILE] for c in commits)
    statuses = [_read(c / STATUS_FILE) for c in commits]
    informations = [_read(c / INFORMATION_FILE) for c in commits]

    status_times = [doc["last_updated"] for _, doc in statuses]
    assert [c.name for c in commits] == [
        datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H-%M-%S") for t in status_times]
    assert all(300 <= b - a <= 1200 for a, b in zip(status_times, status_times[1:]))
    information_times = [doc["last_updated"] for _, doc in informations]
    assert all(0 <= s - i <= 5 for s, i in zip(status_times, information_times))
    assert len(set(information_times)) == 12

    # Byte-identical apart from last_updated, except at the two changes (snapshots 4 and 8).
    contents = [LAST_UPDATED.sub(b'"last_updated":0', body, count=1) for body, _ in informations]
    changed = [i for i in range(1, 12) if contents[i] != contents[i - 1]]
    assert changed == [4, 8]
    assert archive.information_versions == len(set(contents)) == 3

    # A change touches existing stations only and never shrinks a capacity: status stays consistent.
    first, last = (doc["data"]["stations"] for _, doc in (informations[0], informations[-1]))
    assert [s["station_id"] for s in first] == [s["station_id"] for s in last]
    assert all(b["capacity"] >= a["capacity"] for a, b in zip(first, last))
    assert 0 < sum(a != b for a, b in zip(first, last)) <= 6
    information_ids = {s["station_id"] for s in first}
    assert all({s["station_id"] for s in doc["data"]["stations"]} <= information_ids for _, doc in statuses)

    assert archive.status_records == sum(len(doc["data"]["stations"]) for _, doc in statuses)
    assert archive.bytes == sum(len(body) for body, _ in statuses + informations)


def test_archive_needs_a_new_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_archive(tmp_path, 2)
