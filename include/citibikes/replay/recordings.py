"""Recorded real GBFS snapshots shipped with the package (Citi Bike NYC, 2024-03-13 13:07-13:46 UTC).

The live API cannot be reached from every machine, so the replay feed, the tests and the
benchmarks all start from these files: one ``station_information`` and four consecutive
``station_status`` snapshots, gzip-compressed, exactly as the feed served them (data, not code).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Recording:
    system_id: str
    feed: str
    last_updated: int
    path: Path

    def read_bytes(self) -> bytes:
        return gzip.decompress(self.path.read_bytes())


@cache
def recordings(system_id: str = "citibike") -> tuple[Recording, ...]:
    """All recorded snapshots of a system, ordered by feed then ``last_updated``."""
    found = []
    for path in DATA_DIR.glob(f"{system_id}_*.json.gz"):
        stem = path.name.removesuffix(".json.gz").removeprefix(f"{system_id}_")
        feed, _, stamp = stem.rpartition("_")
        found.append(Recording(system_id, feed, int(stamp), path))
    if not found:
        raise FileNotFoundError(f"no recorded snapshots for system {system_id!r} in {DATA_DIR}")
    return tuple(sorted(found, key=lambda r: (r.feed, r.last_updated)))


def recorded(feed: str, system_id: str = "citibike") -> tuple[Recording, ...]:
    """The snapshots of one feed (``station_information`` or ``station_status``), oldest first."""
    return tuple(r for r in recordings(system_id) if r.feed == feed)
