"""Recorded GBFS files on disk: found by content, ordered by their own clock, paired.

Public "git-scraping" archives keep years of GBFS files, usually under names that say nothing
about their content. Files are therefore recognized by what they hold (a station_status or a
station_information document; anything else is skipped and counted), ordered by their own
``last_updated`` whatever their names and folders, and each status snapshot is paired with the
latest information at or before it. Only names ending in one of :data:`FILE_SUFFIXES` are read
(plain, gzip or zstd); hidden files and folders (``.git``) are not looked at. Reading each file's
header is the same work for every file, so :func:`scan` takes the ``map`` to run it with (a
process pool's, for a backfill).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from citibikes.changes import data_digest
from citibikes.gbfs.discovery import DEFAULT_MAX_BYTES, read_local_file
from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.fields import Invalid, as_posix
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.lake import LakeError
from citibikes.lake.store import ZSTD_MAGIC, decompress_raw

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


@dataclass(frozen=True, order=True)
class SnapshotFile:
    last_updated: int
    feed: str
    path: Path
    digest: str | None = field(default=None, compare=False)
    """Of a station_information: :func:`~citibikes.changes.information_digest` of its content."""


@dataclass
class Scan:
    snapshots: list[SnapshotFile] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Files not used, by reason (``unsupported_suffix``, ``unreadable``, ``not_gbfs_station_feed``, ``duplicate``)."""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def scan(folder: Path, map_: Callable[..., Iterable[Any]] = map) -> Scan:
    """Every station_status / station_information file below ``folder`` (recursively), oldest first."""
    if not folder.is_dir():
        raise FeedError(f"{folder} is not a folder; give the folder that holds the recorded feed files",
                        reason="unreachable", url=str(folder))
    result = Scan()
    seen: set[tuple[str, int]] = set()
    for path, found in zip(*_looked_at(folder, result, map_)):
        if isinstance(found, str):
            result.skip(found)
        elif (found.feed, found.last_updated) in seen:
            result.skip("duplicate")
        else:
            seen.add((found.feed, found.last_updated))
            result.snapshots.append(found)
    result.snapshots.sort()
    return result


def _looked_at(folder: Path, result: Scan, map_: Callable[..., Iterable[Any]]) -> tuple[list[Path], list[Any]]:
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.endswith(FILE_SUFFIXES):
                paths.append(Path(root) / name)
            else:
                result.skip("unsupported_suffix")
    return paths, list(map_(look_at, paths))


def look_at(path: Path) -> SnapshotFile | str:
    """What a file holds, or why it is skipped (``unreadable``, ``not_gbfs_station_feed``)."""
    try:
        body = read_snapshot_file(path)
    except FeedError:
        return "unreadable"
    try:
        document = _DOCUMENT.decode(body)
        last_updated = as_posix(document.last_updated, set())
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, Invalid):
        return "not_gbfs_station_feed"
    data = bytes(document.data)
    feed = detect_feed(data)
    if feed is None or last_updated <= 0:
        return "not_gbfs_station_feed"
    digest = data_digest(data) if feed == STATION_INFORMATION else None
    return SnapshotFile(last_updated, feed, path, digest)


class _Document(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"null")
    last_updated: Any = None


_DOCUMENT = msgspec.json.Decoder(_Document)
_FIRST_STATIONS_BYTES = 4096
_MARKERS = {
    STATION_STATUS: (b'"num_bikes_available"', b'"num_vehicles_available"', b'"num_docks_available"'),
    STATION_INFORMATION: (b'"lat"',),
}


class _StationKeys(msgspec.Struct):
    """The few keys that tell a status record from an information record."""

    num_bikes_available: Any = None
    num_vehicles_available: Any = None
    num_docks_available: Any = None
    lat: Any = None
    lon: Any = None


class _Stations(msgspec.Struct):
    stations: list[_StationKeys] = []


def detect_feed(data: bytes) -> str | None:
    """``station_status``, ``station_information`` or None, from a document's ``data`` object alone:
    the keys only one of the two feeds has in its first stations (the first few KB after
    ``"stations"``: reading the whole body for them cost more than the rest of the scan), or, when
    that does not decide, the first 20 stations vote."""
    start = data.find(b'"stations"')
    first = data[start:start + _FIRST_STATIONS_BYTES]
    found = [feed for feed, markers in _MARKERS.items() if any(marker in first for marker in markers)]
    if start >= 0 and len(found) == 1:
        return found[0]
    try:
        stations = msgspec.json.decode(data, type=_Stations | None)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    sample = stations.stations[:20] if stations is not None else []
    status_votes = sum(s.num_bikes_available is not None or s.num_vehicles_available is not None
                       or s.num_docks_available is not None for s in sample)
    information_votes = sum(s.lat is not None and s.lon is not None for s in sample)
    if status_votes > information_votes:
        return STATION_STATUS
    if information_votes > status_votes:
        return STATION_INFORMATION
    return None


def pair(snapshots: Iterable[SnapshotFile]) -> list[tuple[SnapshotFile, SnapshotFile | None]]:
    """Each status snapshot with the latest information snapshot at or before it (or None)."""
    snapshots = list(snapshots)
    information = [s for s in snapshots if s.feed == STATION_INFORMATION]
    times = [s.last_updated for s in information]
    pairs = []
    for status in (s for s in snapshots if s.feed == STATION_STATUS):
        index = bisect.bisect_right(times, status.last_updated) - 1
        pairs.append((status, information[index] if index >= 0 else None))
    return pairs

