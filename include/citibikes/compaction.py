"""Compaction: a day's (or, while the day is open, an hour's) small files become one file sorted by
station and time, and readers through the catalog never see a row missing or doubled, during or after.

The unit is the system's day once it is closed (it ended at least ``settle_s`` ago): one file of a
day of Citi Bike (3.2 million rows, 1.66 bytes per observation against 2.4 in hour files: each hour
file repeats every station's id and its own dictionaries), with ``hour`` as a column. While the day
is open, each closed hour (132,000 Citi Bike rows: one row group) is compacted on its own, so today's
minute files do not wait for midnight. The lake's convention that names starting with ``_`` are not
data does the work, in three steps:

1. **Write** (:func:`compact_files`): each closed day, or closed hour of an open day, of station_status,
   station_information and quarantine that reads two files or more gets its rows - what the catalog
   reads now: the folder's files, or its newest compacted version and the late files beside it -
   sorted by ``station_id`` and ``last_updated``, as ``<folder>/_compacted/v<N>/compacted.parquet``,
   written whole or not at all (a temporary file renamed, or one S3 PUT) with the lake's own Parquet
   encoding. Its key-value metadata names its version and its sources (every file below the folder it
   holds, and what those held: a backfill tells minute files by them), and a day's its rows per hour.
   No folder glob of any catalog reads ``_compacted/`` (nor do Athena or pyarrow datasets), so writing
   it changes nothing for readers.
2. **Switch**: a crawl (:func:`citibikes.catalog.refresh_catalog`) learns the new version from the
   lake (:mod:`citibikes.catalog.crawl`) and replaces the catalog in one rename: a reader that
   opens it reads the compacted file and the files none holds, never both.
3. **Delete** (:func:`delete_replaced`): a later run deletes the sources and older versions of each
   compacted file the current catalog has read for at least ``grace_s``. Until then readers of
   an older catalog keep their rows; after it, a reader still holding a catalog opened before the
   switch would miss them (a view expands its globs at each query): open a new connection per query
   or session (:func:`citibikes.catalog.connect`), not one kept longer than the grace period.

A crash anywhere leaves the data whole: before the rename there is no compacted file; after it the
lake says what each folder holds, and the next crawl or run goes on from there. A second run
changes nothing (a compacted day without late files reads one file; deleted files are gone).
A late file landing in a compacted day or hour is read at once, beside the compacted file, and folded
into the next version. Never delete anything below ``_compacted/`` by hand.

**On Glue** (``glue``: a lake catalogued by the Glue crawler, read by Athena) the unit is the hour,
Glue's partition. The DuckDB catalog is kept as compaction's record of the lake (what each partition
reads, when each compacted file was first read); step 2 also moves each compacted hour's Glue
partition to its compacted file's folder (:func:`switch_glue`: Athena reads a partition's location,
never a ``_compacted/`` folder below it), and step 3 waits until Glue has pointed there for
``grace_s`` too. A late file in a moved hour is read by Athena once the next run folds it in.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from citibikes.aws.client import Aws
from citibikes.catalog import CatalogError, S3Access, refresh_catalog
from citibikes.catalog.crawl import CatalogState, FileRecord, crawl, partition_reads
from citibikes.catalog.duckdb_catalog import load_state
from citibikes.catalog.glue import SWITCHED_PARAMETER, move_partitions
from citibikes.catalog.glue import partitions as glue_partitions
from citibikes.lake import Lake, layout
from citibikes.lake.tables import parquet_bytes

log = logging.getLogger("citibikes.compaction")

DAY_S, HOUR_S = 86_400, 3_600
SORT_KEYS = {
    "station_status": ("station_id", "last_updated"),
    "station_information": ("station_id", "last_updated"),
    "quarantine": ("station_id", "last_updated"),
}
"""The tables compacted (those the pipeline writes a file per minute to), each sorted by station and time."""


@dataclass(frozen=True)
class Work:
    """One folder to compact (a day ``system=x/date=d``, or an hour): the files it reads now, the
    version to write, its sources."""

    table: str
    partition: str
    version: int
    reads: tuple[FileRecord, ...]
    sources: tuple[str, ...]

    @property
    def day(self) -> bool:
        return not self.partition.rsplit("/", 1)[-1].startswith(f"{layout.DAY_COLUMN}=")


@dataclass
class Figures:
    """One table's compacted partitions: their rows, and files and bytes before and after."""

    partitions: int = 0
    rows: int = 0
    files_before: int = 0
    bytes_before: int = 0
    files_after: int = 0
    bytes_after: int = 0

    def add(self, other: Figures) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CompactionSummary:
    """What a compaction did (or, ``dry_run``, would do): figures per table, files deleted."""

    tables: dict[str, Figures] = field(default_factory=dict)
    deleted_files: int = 0
    deleted_bytes: int = 0
    duration_s: float = 0.0
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would compact" if self.dry_run else "compacted"
        lines = []
        for name, f in self.tables.items():
            after = "" if self.dry_run else (f" -> {f.files_after:,} files, {f.bytes_after:,} bytes "
                                             f"({_per_row(f.bytes_after, f.rows)} bytes/observation)")
            lines.append(f"{name}: {verb} {f.partitions:,} partitions, {f.rows:,} rows: {f.files_before:,} files, "
                         f"{f.bytes_before:,} bytes ({_per_row(f.bytes_before, f.rows)} bytes/observation){after}")
        lines.append(f"{'would delete' if self.dry_run else 'deleted'} {self.deleted_files:,} replaced files "
                     f"({self.deleted_bytes:,} bytes); {self.duration_s:.1f} s")
        return lines

    def as_dict(self) -> dict:
        return {"tables": {name: vars(f) for name, f in self.tables.items()}, "deleted_files": self.deleted_files,
                "deleted_bytes": self.deleted_bytes, "duration_s": round(self.duration_s, 3), "dry_run": self.dry_run}


def _per_row(size: int, rows: int) -> str:
    return f"{size / rows:.2f}" if rows else "-"


def lake_state(lake: Lake, catalog_path: Path | str) -> CatalogState:
    """The lake as a crawl sees it now (footers read only of files the catalog does not know)."""
    previous = load_state(Path(catalog_path))
    return crawl(lake, previous if previous is not None and previous.lake == lake.uri else None)


def plan(state: CatalogState, *, settle_s: int, now: float, system: str | None = None, by_day: bool = True) -> list[Work]:
    """What to compact: each day closed ``settle_s`` before ``now`` (or compacted already), and each
    closed hour of another day, that reads two files or more (``by_day`` False: hours only, for Glue)."""
    work = []
    for name in SORT_KEYS:
        table = state.tables.get(name)
        if table is None or table.partition_keys != ("system", "date", layout.DAY_COLUMN):
            continue
        records = [record for record in state.files.values() if record.table == name]
        days: dict[str, dict[str, list[FileRecord]]] = {}
        for path, reads in partition_reads(records).items():
            days.setdefault(path.rsplit("/", 1)[0], {})[path] = reads
        for day, hours in sorted(days.items()):
            values = dict(part.split("=", 1) for part in day.split("/"))
            start = datetime.fromisoformat(values["date"]).replace(tzinfo=UTC).timestamp()
            if system is not None and values["system"] != system:
                continue
            if by_day and (start + DAY_S + settle_s <= now or any(r.hour_rows for reads in hours.values() for r in reads)):
                units = [(day, list(dict.fromkeys(record for reads in hours.values() for record in reads)))]
            else:
                units = [(path, reads) for path, reads in sorted(hours.items())
                         if start + (int(path.rsplit("=", 1)[1]) + 1) * HOUR_S + settle_s <= now]
            work.extend(_work(name, records, folder, reads) for folder, reads in units if len(reads) >= 2)
    return work


def _work(table: str, records: list[FileRecord], folder: str, reads: list[FileRecord]) -> Work:
    """Compact ``folder`` (below the table's root): its sources are every file below it but its own
    compacted versions, and what the compacted ones among them (and those versions) hold."""
    base = f"{layout.TABLES[table].prefix}/{folder}"
    own = [r for r in records if layout.compacted_folder(r.key) == base]
    below = [r for r in records if r.key.startswith(f"{base}/") and r not in own]
    sources = {r.key.removeprefix(f"{base}/") for r in below}
    for record in [*below, *own]:
        inner = layout.compacted_folder(record.key) or ""
        sources.update(f"{inner}/{name}".removeprefix(f"{base}/") for name in record.sources or ())
    return Work(table, folder, max((r.version for r in own), default=0) + 1, tuple(reads), tuple(sorted(sources)))


def systems_with_work(lake: Lake, catalog_path: Path | str, *, settle_s: int, now: float | None = None,
                      by_day: bool = True) -> dict[str, int]:
    """Per system, how many partitions :func:`compact_files` would compact now."""
    counts: dict[str, int] = {}
    for item in plan(lake_state(lake, catalog_path), settle_s=settle_s, now=now or time.time(), by_day=by_day):
        system = item.partition.split("/", 1)[0].removeprefix("system=")
        counts[system] = counts.get(system, 0) + 1
    return counts


def write_compacted(lake: Lake, item: Work) -> int:
    """Write one folder's compacted file; returns its size. The rows read must be those the crawl counted."""
    tables = []
    for record in item.reads:
        table = lake.read_file(record.key, item.table)
        if table is None or table.num_rows != record.rows:
            raise CatalogError(f"{lake.storage.uri(record.key)} changed while table {item.table} partition "
                               f"{item.partition} was being compacted; run the compaction again")
        if item.day and record.hour_rows is None:  # an hour's file: its hour from its folder
            hour = int(record.partition.rsplit("=", 1)[1])
            table = table.append_column(pa.field(layout.DAY_COLUMN, pa.int32(), nullable=False),
                                        pa.array([hour] * table.num_rows, pa.int32()))
        tables.append(table)
    rows = pa.concat_tables(tables).sort_by([(key, "ascending") for key in SORT_KEYS[item.table]])
    metadata = {"version": item.version, "sources": list(item.sources)}
    if item.day:
        counts = pc.value_counts(rows[layout.DAY_COLUMN]).to_pylist()
        metadata["hour_rows"] = [next((c["counts"] for c in counts if c["values"] == hour), 0) for hour in range(24)]
    key = layout.compacted_key(f"{layout.TABLES[item.table].prefix}/{item.partition}", item.version)
    data = parquet_bytes(rows, {layout.COMPACTION_METADATA: json.dumps(metadata)})
    lake.storage.delete_tree(key.rsplit("/", 1)[0])  # what a writer killed while writing this version left
    lake.write_files([(key, data)])
    return len(data)


def compact_files(lake: Lake, catalog_path: Path | str, *, settle_s: int, now: float | None = None,
                  system: str | None = None, dry_run: bool = False, by_day: bool = True) -> CompactionSummary:
    """Step 1: write the compacted file of every partition :func:`plan` names (of one ``system``, or all)."""
    began = time.perf_counter()
    summary = CompactionSummary(dry_run=dry_run)
    for item in plan(lake_state(lake, catalog_path), settle_s=settle_s, now=now or time.time(), system=system,
                     by_day=by_day):
        figures = Figures(1, sum(r.rows for r in item.reads), len(item.reads), sum(r.size for r in item.reads))
        if not dry_run:
            figures.files_after, figures.bytes_after = 1, write_compacted(lake, item)
            log.info("%s %s: %d files -> version %d", item.table, item.partition, len(item.reads), item.version)
        summary.tables.setdefault(item.table, Figures()).add(figures)
    summary.duration_s = time.perf_counter() - began
    return summary


def delete_replaced(lake: Lake, catalog_path: Path | str, *, grace_s: int, now: float | None = None,
                    dry_run: bool = False, glue: Glue | None = None) -> tuple[int, int]:
    """Step 3: delete the sources and older versions of every compacted file the current catalog has read
    for ``grace_s`` or longer (and, with ``glue``, that Glue's partition has pointed at as long); returns
    the files and bytes deleted (or, ``dry_run``, due)."""
    state = load_state(Path(catalog_path))
    if state is None:
        return 0, 0
    now = now or time.time()
    in_glue = glue_switches(lake, glue) if glue else None
    versions: dict[str, list[FileRecord]] = {}
    for record in state.files.values():
        if record.version is not None:
            versions.setdefault(layout.compacted_folder(record.key), []).append(record)
    files = size = 0
    for folder, compacted in versions.items():
        current = max(compacted, key=lambda r: r.version)
        if current.switched_at is None or current.switched_at.timestamp() + grace_s > now:
            continue
        if in_glue is not None and in_glue.get(current.key.rsplit("/", 1)[0], math.inf) + grace_s > now:
            continue
        held = [state.files.get(f"{folder}/{name}") for name in current.sources or ()]
        for record in [r for r in held if r is not None] + [r for r in compacted if r.version < current.version]:
            if dry_run or _delete(lake, record):
                files, size = files + 1, size + record.size
    return files, size


def _delete(lake: Lake, record: FileRecord) -> bool:
    """Delete one replaced file (an older version with its folder), and its folder if that is now empty;
    False if it was gone already."""
    try:
        lake.filesystem.delete_file(lake.storage.path(record.key))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise lake.storage.error(exc, f"cannot delete {lake.storage.uri(record.key)}") from None
    if record.version is not None:  # what a crashed writer may have left beside it
        lake.storage.delete_tree(record.key.rsplit("/", 1)[0])
    if lake.storage.local:  # leave no emptied folder behind (S3 has none)
        folder = Path(lake.storage.path(record.key)).parent
        folder = folder.parent if record.version is not None else folder
        for _ in range(2):  # _compacted/ or the hour's folder, then the hour's folder or the day's
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    return True


@dataclass(frozen=True)
class Glue:
    """The Glue database a lake is catalogued in, and the AWS session to reach it."""

    aws: Aws
    database: str


def switch_glue(lake: Lake, catalog_path: Path | str, glue: Glue, now: float | None = None) -> int:
    """Step 2 on Glue: point each hour partition whose rows are all in its compacted file at that file's
    folder (Athena reads a partition's location; the crawler, which crawls only new folders, never moves
    it back). A partition Glue does not have yet, or with late files beside its compacted file, keeps
    its folder (whose files hold its rows) until a later run. Returns the partitions moved."""
    state, moved = load_state(Path(catalog_path)), 0
    for name in SORT_KEYS:
        records = [record for record in (state.files.values() if state else ()) if record.table == name]
        known = glue_partitions(glue.aws, glue.database, name) if records else {}
        moves = {}
        for path, reads in partition_reads(records).items():
            folder = layout.compacted_folder(reads[0].key)
            values = tuple(part.split("=", 1)[1] for part in path.split("/"))
            partition = known.get(values)
            if len(reads) > 1 or folder != f"{layout.TABLES[name].prefix}/{path}" or partition is None:
                continue
            location = lake.storage.uri(reads[0].key.rsplit("/", 1)[0]) + "/"
            if partition["StorageDescriptor"].get("Location") != location:
                moves[values] = (partition, location)
        moved += move_partitions(glue.aws, glue.database, name, moves, now or time.time())
    return moved


def glue_switches(lake: Lake, glue: Glue) -> dict[str, float]:
    """Per compacted file's folder (a key) a Glue partition points at, since when."""
    root, found = lake.storage.uri().rstrip("/") + "/", {}
    for name in SORT_KEYS:
        for partition in glue_partitions(glue.aws, glue.database, name).values():
            location = partition["StorageDescriptor"].get("Location", "").rstrip("/")
            at = (partition.get("Parameters") or {}).get(SWITCHED_PARAMETER)
            if at and location.startswith(root):
                found[location.removeprefix(root)] = float(at)
    return found


def compact(lake: Lake, catalog_path: Path | str, *, settle_s: int, grace_s: int, now: float | None = None,
            dry_run: bool = False, s3: S3Access | None = None, glue: Glue | None = None) -> CompactionSummary:
    """The three steps: write the compacted files, switch the catalog to them, delete what the
    catalog has not read for ``grace_s`` (what the ``citibikes_compaction`` DAG and ``citibikes
    compact`` do). ``s3``: how DuckDB reaches an S3 lake; ``glue``: the lake is catalogued in Glue
    (hours only, its partitions moved too)."""
    if glue and not lake.uri.startswith("s3://"):
        raise CatalogError(f"lake {lake.uri} is a folder, and Glue catalogs an S3 lake; set CITIBIKES_CATALOG=duckdb "
                           "(or auto) to compact it for the DuckDB catalog")
    began = time.perf_counter()
    summary = compact_files(lake, catalog_path, settle_s=settle_s, now=now, dry_run=dry_run, by_day=glue is None)
    if not dry_run:
        refresh_catalog(lake, catalog_path, s3=s3, grace_s=grace_s)
        if glue:
            switch_glue(lake, catalog_path, glue, now)
    summary.deleted_files, summary.deleted_bytes = delete_replaced(lake, catalog_path, grace_s=grace_s, now=now,
                                                                   dry_run=dry_run, glue=glue)
    summary.duration_s = time.perf_counter() - began
    return summary
