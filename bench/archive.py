"""A recorded GBFS archive like the ones scrapers keep ("git-scraping"), for benchmarks and tests.

Users backfill archives that a scraper wrote: every 5-20 minutes a ``station_status.json`` and a
``station_information.json`` side by side in a folder per commit, both re-serialized with sorted
keys. This module writes one from the recorded Citi Bike snapshots, played by the offline replay
feed (:mod:`citibikes.replay.evolve`) in real time (speed 1), with one-second ticks so that a
snapshot's ``last_updated`` is the drawn instant (the documents' ``ttl`` is therefore 1).

* Snapshot times: the first at ``start``, then intervals drawn uniformly from 300-1200 s (seeded).
  Each snapshot's folder is named after its status ``last_updated`` in UTC, e.g.
  ``2026-01-01T00-07-12/``.
* station_information: its ``last_updated`` is the status's or up to 5 s earlier, new every time.
  Its content changes ``information_changes`` times, evenly spaced over the archive (default: one
  per 100 snapshots); each change renames one station and adds 1-4 docks to two others (seeded).
  Only existing stations change and capacity only grows, so the status records, which know nothing
  of the changes, stay consistent with the information (no new station ids, no capacity exceeded).
  Between changes the information files are byte-identical apart from ``last_updated``.

The default 819 snapshots (2,208 stations each, about 1.6 GB, a week) take about 6 s on an idle
machine with 2 cores (13 s in one process).

Usage, from the repository root: ``.venv/bin/python bench/archive.py FOLDER [--snapshots 819]
[--seed 13] [--changes N]``; then ``citibikes backfill FOLDER --system citibike``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import msgspec

from citibikes.replay.evolve import ReplayFeed, citibike_spec

SYSTEM_ID = "citibike"
START = 1_767_225_600  # 2026-01-01T00:00:00Z
MIN_INTERVAL_S = 300
MAX_INTERVAL_S = 1200
MAX_INFORMATION_LEAD_S = 5
"""How many seconds before the status the information's ``last_updated`` may lie."""
SNAPSHOTS_PER_CHANGE = 100
STATUS_FILE = "station_status.json"
INFORMATION_FILE = "station_information.json"

_sorted_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Archive:
    """What :func:`write_archive` wrote."""

    folder: Path
    snapshots: int
    status_records: int
    """station_status records in all snapshots (stations x snapshots)."""
    information_versions: int
    """Distinct station_information contents (``last_updated`` aside): changes + 1."""
    bytes: int


def write_archive(folder: Path, snapshots: int = 819, *, seed: int = 13, start: int = START,
                  information_changes: int | None = None) -> Archive:
    """Write ``snapshots`` status/information pairs below ``folder`` (missing or empty).

    ``information_changes`` defaults to one per 100 snapshots and must be below ``snapshots``.
    The same arguments write the same bytes. The status files are rendered by a process per core
    (rendering is most of the work: the feed is a pure function of time, so order does not matter).
    """
    if snapshots < 1:
        raise ValueError(f"snapshots={snapshots}: write at least one")
    changes = snapshots // SNAPSHOTS_PER_CHANGE if information_changes is None else information_changes
    if not 0 <= changes < snapshots:
        raise ValueError(f"information_changes={changes}: between 0 and snapshots - 1 ({snapshots - 1})")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: an archive goes into a new folder")
    timing = random.Random(seed)
    times = list(accumulate((timing.randint(MIN_INTERVAL_S, MAX_INTERVAL_S) for _ in range(snapshots - 1)),
                            initial=start))
    commits = [folder / datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H-%M-%S") for at in times]
    for commit in commits:
        commit.mkdir(parents=True)
    replay_feed()  # built before the pool forks, so the workers inherit it
    with ProcessPoolExecutor() as pool:
        statuses = pool.map(write_status, commits, times, chunksize=16)
        information_bytes = write_information(commits, times, changes, seed)  # meanwhile, in this process
        status_records, status_bytes = map(sum, zip(*statuses))
    return Archive(folder, snapshots, status_records, changes + 1, status_bytes + information_bytes)


@cache
def replay_feed() -> ReplayFeed:
    """Citi Bike in real time (speed 1) with one-second ticks: ``last_updated`` is the instant asked for."""
    return ReplayFeed(citibike_spec(system_id=SYSTEM_ID), tick_s=1.0, speed=1.0)


def write_status(commit: Path, at: int) -> tuple[int, int]:
    """Write the station_status of ``at`` into ``commit``; returns its records and bytes."""
    status = msgspec.json.decode(replay_feed().station_status(at).body)
    return len(status["data"]["stations"]), write_sorted(commit / STATUS_FILE, status)


def write_information(commits: list[Path], times: list[int], changes: int, seed: int) -> int:
    """Write every snapshot's station_information, changing its content ``changes`` times evenly
    spaced; returns the bytes written."""
    leads, edits = random.Random(f"{seed}:lead"), random.Random(f"{seed}:information")
    changed_at = {k * len(commits) // (changes + 1) for k in range(1, changes + 1)}
    information = msgspec.json.decode(replay_feed().station_information(times[0]).body)  # only last_updated moves
    stations = information["data"]["stations"]
    written = 0
    for index, (commit, at) in enumerate(zip(commits, times)):
        if index in changed_at:
            change_information(stations, edits)
        if index == 0 or index in changed_at:  # the stations encoded once per version, sorted like the rest
            information["data"] = {"stations": msgspec.Raw(_sorted_encoder.encode(stations))}
        information["last_updated"] = at - leads.randint(0, MAX_INFORMATION_LEAD_S)
        written += write_sorted(commit / INFORMATION_FILE, information)
    return written


def change_information(stations: list[dict[str, Any]], rng: random.Random) -> None:
    """Rename one station and add 1-4 docks to two others, in place (capacity never shrinks)."""
    renamed, *enlarged = rng.sample(stations, 3)
    renamed["name"] = f"{renamed['name']} (temporary)"
    for station in enlarged:
        station["capacity"] += rng.randint(1, 4)


def write_sorted(path: Path, document: Any) -> int:
    """Write ``document`` as JSON with sorted keys, as the scraper re-serialized it; returns its size."""
    body = _sorted_encoder.encode(document)
    path.write_bytes(body)
    return len(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the archive (missing or empty)")
    parser.add_argument("--snapshots", type=int, default=819)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--changes", type=int, default=None,
                        help="station_information content changes (default: one per 100 snapshots)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    archive = write_archive(args.folder, args.snapshots, seed=args.seed, information_changes=args.changes)
    print(f"wrote {archive.snapshots:,} snapshots ({archive.status_records:,} station_status records, "
          f"{archive.information_versions} station_information versions, {archive.bytes / 1e6:,.1f} MB) "
          f"to {archive.folder} in {time.perf_counter() - started:.1f} s")
    print(f"ingest it with: citibikes backfill {archive.folder} --system {SYSTEM_ID}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
