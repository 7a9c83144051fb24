"""The hourly availability rollup: ``station_status_hourly``, a view of Parquet day files beside the catalog.

One row per ``(system, date, hour, station_id)`` of ``station_status`` (``date`` and ``hour`` are the
partition's: the UTC hour of the snapshots' ``last_updated``) with what dashboards and audits of
availability use (:data:`AGGREGATES`). Means are over observations, the snapshots the lake holds
(one a minute from the minute DAG), so ``bikes_mean`` is the time-average of a station's bikes when
snapshots are evenly spaced. Why: a ``GROUP BY`` over a month of Citi Bike (95 million rows) takes
3-6 s on two cores, most of it hashing ``station_id`` strings; the rollup answers the same questions
from 1.6 million rows.

The rows live in one Parquet file per system and day, ``<catalog folder>/<catalog name>.rollup/
system=<id>/date=<YYYY-MM-DD>/<digest>.parquet`` (written whole: temporary file, fsync, rename), not in
the catalog file, which every crawl rewrites: a crawl writes only the day files whose content changed.
Every station_status partition gets a *digest* of the files it reads (keys, sizes, modification times,
and the aggregate's SQL); a day file is named by the digest of its partitions' digests (and the lake),
so its name says exactly what it holds. ``_rollups`` lists each partition's digest, its day file and
``aggregated_in``, the catalog version that aggregated it (NULL: found in a day file already on disk).
A crawl keeps every day whose file exists under its digest name; for another day it writes a new
file from the previous day file's rows of unchanged partitions and fresh aggregates of the others
(the current hour, a compacted hour or day, a late file), read from the files the crawl registered (a
compacted day's file for the hours aggregated). So a
minute's crawl writes one file, today's. A catalog built anew reuses the day files whose names match
and aggregates the rest. A partition that cannot be read fails the crawl with a :class:`CatalogError`
(retryable) and leaves the previous catalog in place.

A day file the current catalog does not list (superseded, or left by a crawl that failed) is
recorded in ``_rollup_retired`` with the time a crawl first saw it unlisted, and deleted by a crawl
once that is ``grace_s`` ago (``CITIBIKES_COMPACTION_GRACE``): a reader still holding an older
catalog reads its day files meanwhile, as with compaction's replaced files.

The rollup is as fresh as the last crawl; the ``station_status`` view sees new minute files at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from citibikes.catalog.crawl import CatalogState, FileRecord, partition_reads
from citibikes.catalog.scan import literal, scan_sql
from citibikes.catalog.errors import CatalogError
from citibikes.errors import first_line
from citibikes.lake import layout
from citibikes.lake.errors import LakeError
from citibikes.lake.filesystem import Storage, parse_lake_uri
from citibikes.lake.tables import parquet_bytes

log = logging.getLogger("citibikes.catalog")

SOURCE = "station_status"
TABLE = "station_status_hourly"
KEYS = {"system": "VARCHAR", "date": "DATE", "hour": "INTEGER", "station_id": "VARCHAR"}
AGGREGATES = {
    "observations": ("BIGINT", "count(*)"),
    "bikes_mean": ("DOUBLE", "avg(num_bikes_available)"),
    "bikes_min": ("INTEGER", "min(num_bikes_available)"),
    "bikes_max": ("INTEGER", "max(num_bikes_available)"),
    "ebikes_mean": ("DOUBLE", "avg(num_ebikes_available)"),
    "docks_mean": ("DOUBLE", "avg(num_docks_available)"),
    "empty_observations": ("BIGINT", "count_if(num_bikes_available = 0)"),
    "full_observations": ("BIGINT", "count_if(num_docks_available = 0)"),
    "renting_observations": ("BIGINT", "count_if(is_renting)"),
    "first_observed": ("TIMESTAMP WITH TIME ZONE", "min(last_updated)"),
    "last_observed": ("TIMESTAMP WITH TIME ZONE", "max(last_updated)"),
}
"""Column: (DuckDB type, aggregate over the partition's rows of one station). README: "The catalog"."""
COLUMNS = {**KEYS, **{name: kind for name, (kind, _) in AGGREGATES.items()}}
ARROW_TYPES = {"VARCHAR": pa.string(), "DATE": pa.date32(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
               "DOUBLE": pa.float64(), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", "UTC")}
SCHEMA = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in COLUMNS.items()])
"""Of a day file: every column, ``system`` and ``date`` included (the view reads the files as they are)."""
SELECT = f"SELECT {', '.join(KEYS)}, {', '.join(f'{sql} AS {name}' for name, (_, sql) in AGGREGATES.items())}"
"""Part of every digest: a changed definition aggregates everything again."""
FIND_LIMIT = 100
"""Files read one by one to name the one that fails (on S3 each is a request; the error may be passing)."""


@dataclass
class Result:
    """What :func:`build` did; ``expired``: day files to delete once the new catalog is in place."""

    aggregated: int = 0
    files_written: int = 0
    bytes_written: int = 0
    expired: list[Path] = field(default_factory=list)


def folder(catalog: Path) -> Path:
    """The day files' folder: named after the catalog file, so two catalogs in one folder never share it."""
    return catalog.parent.resolve() / f"{catalog.name.split('.')[0]}.rollup"


def digests(state: CatalogState) -> dict[str, tuple[str, list[FileRecord]]]:
    """Per station_status partition: the digest of the files it reads, and those files."""
    reads = partition_reads(record for record in state.files.values() if record.table == SOURCE)
    return {path: (_digest([SELECT, *sorted(f"{r.key} {r.size} {r.mtime_ns}" for r in files)]), files)
            for path, files in reads.items()}


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def build(con: duckdb.DuckDBPyConnection, state: CatalogState, catalog: Path, grace_s: int) -> Result:
    """Write the day files whose content changed, and create ``station_status_hourly``, ``_rollups`` and
    ``_rollup_retired`` in the new catalog ``con`` (the catalog file ``catalog`` is the one it replaces)."""
    root, result = folder(catalog), Result()
    current = digests(state)
    listed, retired = _previous(con, state, catalog)
    days: dict[tuple[str, str], list[str]] = {}
    for partition in sorted(current):
        values = state.tables[SOURCE].partitions[partition].values
        days.setdefault((values["system"], values["date"]), []).append(partition)
    rows = []
    for (system, day), partitions in days.items():
        name = f"system={system}/date={day}/{_digest([state.lake, *(current[p][0] for p in partitions)])}.parquet"
        kept = {p for p in partitions if p in listed and listed[p][0] == current[p][0] and (root / listed[p][1]).exists()}
        fresh = []
        if not (root / name).exists():  # else the same content is on disk already (listed, or a failed crawl's)
            fresh = [p for p in partitions if p not in kept]
            previous = root / listed[min(kept)][1] if kept else None  # a day's partitions share one file
            result.bytes_written += _write_day(con, state, root / name, previous, sorted(_hour(p) for p in kept),
                                               fresh, current)
            result.files_written, result.aggregated = result.files_written + 1, result.aggregated + len(fresh)
        for partition in partitions:
            read = state.tables[SOURCE].partitions[partition]
            rows.append((partition, system, date.fromisoformat(day), _hour(partition),
                         current[partition][0], read.file_count, read.rows, name,
                         state.version if partition in fresh else listed[partition][2] if partition in kept else None))
    _create(con, root, rows)
    result.expired = _retire(con, root, {row[7] for row in rows}, retired, grace_s)
    return result


def _retire(con: duckdb.DuckDBPyConnection, root: Path, listed: set[str], retired: dict[str, datetime],
            grace_s: int) -> list[Path]:
    """Record every file of ``root`` not ``listed`` in ``_rollup_retired`` (since when: as the previous catalog
    says, else now); returns those retired ``grace_s`` ago or longer."""
    now = datetime.now(UTC)
    files = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()} if root.exists() else {}
    since = {name: retired.get(name, now) for name in files if name not in listed}
    con.register("_arrow", pa.table({"file": pa.array(list(since), pa.string()),
                                     "retired_at": pa.array(list(since.values()), pa.timestamp("us", "UTC"))}))
    con.execute("CREATE TABLE _rollup_retired AS SELECT * FROM _arrow ORDER BY file")
    con.unregister("_arrow")
    return [files[name] for name, at in since.items() if (now - at).total_seconds() >= grace_s]


def _hour(partition: str) -> int:
    return int(partition.rsplit("=", 1)[1])


def _create(con: duckdb.DuckDBPyConnection, root: Path, rows: list[tuple]) -> None:
    """``_rollups`` and the view of its day files (an empty table with the columns while there is none)."""
    names = ("partition", "system", "date", "hour", "digest", "files", "rows", "file", "aggregated_in")
    kinds = (pa.string(), pa.string(), pa.date32(), pa.int32(), pa.string(), pa.int64(), pa.int64(), pa.string(), pa.int64())
    con.register("_arrow", pa.table({n: pa.array([r[i] for r in rows], k) for i, (n, k) in enumerate(zip(names, kinds))}))
    con.execute("CREATE TABLE _rollups AS SELECT * FROM _arrow ORDER BY system, date, hour")
    con.unregister("_arrow")
    files = sorted({row[7] for row in rows})
    if files:
        listing = ", ".join(literal(str(root / name)) for name in files)
        con.execute(f"CREATE VIEW {TABLE} AS SELECT * FROM read_parquet([{listing}], hive_partitioning = false)")
    else:
        con.execute(f"CREATE TABLE {TABLE} ({', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})")


def _write_day(con: duckdb.DuckDBPyConnection, state: CatalogState, path: Path, previous: Path | None, kept_hours: list[int],
               fresh: list[str], current: dict[str, tuple[str, list[FileRecord]]]) -> int:
    """Write one day file: the previous day file's rows of ``kept_hours`` and the aggregates of the ``fresh``
    partitions; returns its size."""
    parts = []
    if previous:
        try:
            parts.append(con.execute("SELECT * FROM read_parquet(?) WHERE list_contains(?, hour)",
                                     [str(previous), kept_hours]).arrow().read_all())
        except duckdb.Error as exc:
            raise CatalogError(f"cannot read rollup file {previous}: {first_line(exc)}; move it away (the next crawl "
                               "aggregates its day anew)") from None
    if fresh:
        table = state.tables[SOURCE]
        files = list(dict.fromkeys(f"{state.lake}/{r.key}" for p in fresh for r in current[p][1]))
        hours = sorted(_hour(p) for p in fresh)  # a compacted day's file holds the day's other hours too

        def aggregate(paths: list[str]) -> str:
            days = [path for path in paths if layout.is_day_file(path)]
            scan = scan_sql(table.partition_keys, [path for path in paths if path not in days], days, table.union_by_name)
            return f"{SELECT} FROM ({scan}) WHERE hour IN ({', '.join(map(str, hours))}) GROUP BY ALL"

        try:
            parts.append(con.execute(aggregate(files)).arrow().read_all())
        except duckdb.Error as exc:
            file, error = _first_unreadable(con, aggregate, files) or (f"{len(fresh)} partition(s) from {fresh[0]}", exc)
            raise CatalogError(f"cannot aggregate {file} of {SOURCE} into {TABLE}: {first_line(error)}; a retry reads "
                               "the lake as it is then (was it rewritten or removed during the crawl?); if it fails "
                               "again, the file is damaged: write it again or move it out of the lake") from None
    rows = pa.concat_tables([part.cast(SCHEMA) for part in parts]).sort_by([(key, "ascending") for key in KEYS])
    data = parquet_bytes(rows)
    storage = Storage(pafs.LocalFileSystem(), parse_lake_uri(str(path.parent)))
    try:
        storage.put(path.name, data)
    except LakeError as exc:
        raise CatalogError(f"cannot write rollup file {path}: {exc}") from None
    return len(data)


def _first_unreadable(con: duckdb.DuckDBPyConnection, aggregate: Callable[[list[str]], str],
                      files: list[str]) -> tuple[str, Exception] | None:
    """The first of ``files`` the aggregate cannot read, and why (DuckDB's errors do not always name the file)."""
    for file in files[:FIND_LIMIT]:
        try:
            con.execute(aggregate([file])).fetchall()
        except duckdb.Error as exc:
            return file, exc
    return None


def _previous(con: duckdb.DuckDBPyConnection, state: CatalogState,
              previous: Path) -> tuple[dict[str, tuple[str, str, int | None]], dict[str, datetime]]:
    """Of the catalog being replaced: per partition its digest, day file and ``aggregated_in`` (none when it
    describes another lake), and the retired day files with since when; nothing of a catalog of an older format."""
    if not previous.exists():
        return {}, {}
    try:
        con.execute(f"ATTACH {literal(str(previous))} AS previous (READ_ONLY)")
        try:
            if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'previous' AND "
                           "table_name IN ('_rollups', '_rollup_retired')").fetchone()[0] < 2:
                return {}, {}
            (lake,), = con.execute("SELECT lake FROM previous._crawl").fetchall()
            listed = {} if lake != state.lake else {
                partition: (digest, file, version) for partition, digest, file, version in
                con.execute("SELECT partition, digest, file, aggregated_in FROM previous._rollups").fetchall()}
            return listed, dict(con.execute("SELECT file, retired_at FROM previous._rollup_retired").fetchall())
        finally:
            con.execute("DETACH previous")
    except duckdb.Error as exc:
        raise CatalogError(f"cannot read {TABLE} of the previous catalog {previous}: {first_line(exc)}; retry, or "
                           "move that file away (the next crawl builds it anew)") from None


def delete_expired(result: Result) -> int:
    """Delete the expired day files (after the new catalog is in place) and their emptied folders; returns how many."""
    deleted = 0
    for path in result.expired:
        try:
            path.unlink(missing_ok=True)
            deleted += 1
        except OSError as exc:
            log.warning("cannot delete rollup file %s: %s; the next crawls retry", path, first_line(exc))
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break
    return deleted
