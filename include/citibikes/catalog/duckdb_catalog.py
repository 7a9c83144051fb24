"""The embedded catalog: a DuckDB file with one view per lake table, replaced whole on every change.

``<state_dir>/catalog/citibikes.duckdb`` (``Settings.catalog_path``) holds a view per table, named
like the Glue tables (``station_status``, ``station_information``, ``quarantine``, ``pipeline_runs``,
...), so a user opens the file and queries a table by name without knowing the lake's layout::

    duckdb.connect(".state/catalog/citibikes.duckdb", read_only=True).sql("select count(*) from station_status")

Each view reads its partitions' files with ``read_parquet(..., hive_partitioning = true,
hive_types = {'system': VARCHAR, 'date': DATE, 'hour': INTEGER})``, and the files of compacted days
(``hour`` a column of theirs) with a second ``read_parquet`` joined by ``UNION ALL BY NAME``
(:func:`citibikes.catalog.scan.scan_sql`); the list it reads is made from the ``_partitions`` table:
while no file of a system's day is compacted or held by a compacted file, one glob for the day
(``system=x/date=d/hour=*/*.parquet``), else per hour its folder's glob or its files (its day's
compacted file, its own, late files: :mod:`citibikes.catalog.crawl`). A query expands the globs when it
binds, so a new minute file (or a new hour of a day none of whose hours is compacted) shows up
without a crawl; a new day or system, or a new hour of a day with compacted hours, shows up at the
next crawl (the catalog DAG crawls whenever the ingest DAG lands files).
Binding lists every folder the view names: about 1 s for 36,000 hour partitions as 1,500 day globs,
2 s as 36,000 hour globs (``bench/catalog_views.py``). DuckDB also binds a view when it is created,
so the crawler reads the lake once more then (an S3 lake needs :class:`S3Access`), and a glob that
matches nothing fails: a day emptied between two crawls (a retention job) fails the table's queries
until the next crawl. A table the pipeline writes that has no file yet is an empty table with the
right columns; a new folder below ``curated/`` appears at the first crawl that finds files in it.

Beside the views: ``_tables``, ``_partitions`` (``location`` is the folder; ``files`` NULL while
the folder's files are read, else the files read), ``_files`` (each data file's size, modification
time, schema fingerprint, rows and, of a compacted file, version, sources, rows per hour (a day's) and
``switched_at``, when the catalog first read it: a crawl reads only new footers), ``_schemas`` and
``_crawl`` (when, which lake, which catalog version), and
the view ``station_status_hourly`` with ``_rollups`` and ``_rollup_retired`` (:mod:`citibikes.catalog.rollup`:
its rows live in Parquet day files beside the catalog, written only when a day's partitions change).
Everything but ``switched_at`` comes from the lake, so the file is a cache: a catalog of an older
format is built anew (and a deleted one too), with the same views and rollup.

A change never modifies the file: a crawl writes a new file beside it and renames it over the old
one (``os.replace``). A reader that has the catalog open keeps reading the snapshot it opened; a
reader that opens it afterwards gets the new one; the writer never waits for readers (DuckDB allows
one writer *or* many read-only processes per file). Writers take turns on a lock file beside the
catalog. One DuckDB process caches the databases it has open by path: in a process that still holds
a connection to the catalog, ``duckdb.connect(path)`` returns that old snapshot; :func:`connect`
(``ATTACH``) always opens the current file. A view expands its globs at each query, so a reader
holding an old catalog reads a day's folders as they are now: compaction deletes the files it
replaced only when the current catalog has read their compacted file for a grace period
(:mod:`citibikes.compaction`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from citibikes.catalog import rollup
from citibikes.catalog.crawl import (
    CatalogState,
    FileRecord,
    Partition,
    Table,
    columns_text,
    crawl,
)
from citibikes.catalog.scan import literal, scan_sql
from citibikes.catalog.errors import CatalogError
from citibikes.config import Settings
from citibikes.errors import first_line
from citibikes.lake import Lake, layout
from citibikes.lake.filesystem import fsync_folder

log = logging.getLogger("citibikes.catalog")

FORMAT = 5
"""Of the metadata tables; a catalog of an older format is built anew, one of a newer format refused."""
LOCK_WAIT_S = 120.0
"""How long a writer waits for the one before it (a crawl of a big lake takes a while)."""
ARROW_PARTITION_TYPES = {"system": pa.string(), "date": pa.date32(), "hour": pa.int32()}


@dataclass(frozen=True)
class S3Access:
    """How DuckDB reaches an S3 lake (httpfs and a secret): what the crawler needs to create the views
    (DuckDB binds a view, expanding its globs, when it is created) and a reader to query them."""

    region: str
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None
    """``http://host:port`` of an S3-compatible server (path-style); None for AWS."""

    @classmethod
    def from_environment(cls, endpoint_url: str | None, region: str) -> S3Access:
        """The standard AWS variables' keys (what ``citibikes`` commands open an S3 lake with)."""
        return cls(region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"),
                   os.environ.get("AWS_SESSION_TOKEN"), endpoint_url)

    def prepare(self, con: duckdb.DuckDBPyConnection) -> None:
        """Load httpfs (from the ``duckdb-extension-httpfs`` package: no download) and add the secret."""
        from duckdb_extensions import import_extension

        import_extension("httpfs", con=con)
        con.load_extension("httpfs")
        options = [f"REGION {literal(self.region)}"]
        if self.access_key:
            options += [f"KEY_ID {literal(self.access_key)}", f"SECRET {literal(self.secret_key or '')}"]
        if self.session_token:
            options.append(f"SESSION_TOKEN {literal(self.session_token)}")
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            options += [f"ENDPOINT {literal(parts.netloc)}", "URL_STYLE 'path'", f"USE_SSL {parts.scheme == 'https'}"]
        con.execute(f"CREATE OR REPLACE SECRET citibikes_lake (TYPE s3, {', '.join(options)})")


@dataclass(frozen=True)
class CrawlSummary:
    path: Path
    version: int
    tables: dict[str, dict[str, int]]
    """Per table: partitions, files, rows (at the crawl)."""
    footers_read: int
    duration_s: float
    rollup_partitions_aggregated: int = 0
    """Partitions of station_status the crawl aggregated into station_status_hourly (the others were kept)."""
    rollup_files_written: int = 0
    rollup_bytes_written: int = 0
    rollup_files_deleted: int = 0
    """Day files of the rollup written, and deleted after the grace period (:mod:`citibikes.catalog.rollup`)."""

    def line(self) -> str:
        listed = ", ".join(f"{name} ({t['partitions']} partitions, {t['rows']:,} rows)" for name, t in self.tables.items())
        return (f"catalog {self.path} version {self.version}: {listed or 'no tables'}; "
                f"{self.footers_read} new file(s) checked, {self.rollup_partitions_aggregated} hour(s) aggregated "
                f"into {self.rollup_files_written} rollup day file(s), {self.rollup_files_deleted} old one(s) deleted, "
                f"in {self.duration_s:.1f} s")

    def extra(self) -> dict[str, Any]:
        """For the ``citibikes.catalog`` asset event."""
        return {"path": str(self.path), "version": self.version, "tables": self.tables, "footers_read": self.footers_read,
                "rollup_partitions_aggregated": self.rollup_partitions_aggregated,
                "rollup_files_written": self.rollup_files_written, "rollup_bytes_written": self.rollup_bytes_written,
                "rollup_files_deleted": self.rollup_files_deleted}


# -- writers -----------------------------------------------------------------------------------

def refresh_catalog(lake: Lake, path: Path | str, *, s3: S3Access | None = None, lock_wait_s: float = LOCK_WAIT_S,
                    grace_s: int = Settings.compaction_grace_s) -> CrawlSummary:
    """Crawl the lake and replace the catalog at ``path`` with what it found (see the module doc).
    On bad input (:class:`~citibikes.catalog.errors.CatalogInputError`) the catalog stays as it was.
    An S3 lake needs ``s3``: DuckDB reads the lake when it creates the views. ``grace_s``: how long
    rollup day files no longer listed stay (``CITIBIKES_COMPACTION_GRACE``)."""
    path, began = Path(path), time.perf_counter()
    with writer_lock(path, lock_wait_s):
        previous = load_state(path)
        if previous is not None and previous.lake != lake.uri:
            log.warning("catalog %s described lake %s; building it anew for %s", path, previous.lake, lake.uri)
            previous = CatalogState(lake=lake.uri, version=previous.version)
        state = crawl(lake, previous)
        state.version += 1
        built = write_state(path, state, s3, grace_s)
        deleted = rollup.delete_expired(built)
    tables = {name: {"partitions": len(t.partitions), "files": t.file_count, "rows": t.rows} for name, t in state.tables.items()}
    return CrawlSummary(path, state.version, tables, state.footers_read, time.perf_counter() - began, built.aggregated,
                        built.files_written, built.bytes_written, deleted)


@contextlib.contextmanager
def writer_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One catalog writer at a time (an advisory lock on ``<catalog>.lock``, released if the process dies)."""
    lock_path = path.with_name(f"{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CatalogError(f"cannot create the catalog's lock {lock_path}: {first_line(exc)}; "
                           "make the state folder writable (CITIBIKES_STATE_DIR)") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CatalogError(f"another crawl has been writing catalog {path} for "
                                       f"{wait_s:.0f} s (lock {lock_path}); retry when it is done") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def write_state(path: Path, state: CatalogState, s3: S3Access | None = None,
                grace_s: int = Settings.compaction_grace_s) -> rollup.Result:
    """Write ``state`` as a new DuckDB file beside ``path`` and rename it over ``path`` (call under :func:`writer_lock`);
    returns what the rollup did (:mod:`citibikes.catalog.rollup`: the day files it wrote, those to delete now)."""
    if state.lake.startswith("s3://") and s3 is None:
        raise CatalogError(f"the DuckDB catalog of S3 lake {state.lake} needs the lake's S3 settings to create its "
                           "views (DuckDB reads the lake then); pass them, or keep this lake's catalog in Glue")
    folder = path.parent
    for leftover in folder.glob(f".{path.name}.*.tmp*"):  # of a writer that died; none runs now
        leftover.unlink(missing_ok=True)
    temporary = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        con = duckdb.connect(str(temporary))
        try:
            if s3 is not None:
                s3.prepare(con)
            _fill(con, state)
            built = rollup.build(con, state, path, grace_s)
        finally:
            con.close()
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        fsync_folder(folder)
        return built
    except CatalogError:
        raise
    except (duckdb.Error, OSError) as exc:
        raise CatalogError(f"cannot write catalog {path}: {first_line(exc)}; check the state folder "
                           "(space, permissions)") from None
    finally:
        for name in (temporary, Path(f"{temporary}.wal")):
            name.unlink(missing_ok=True)


def _fill(con: duckdb.DuckDBPyConnection, state: CatalogState) -> None:
    tables = list(state.tables.values())
    partitions = [p for t in tables for p in t.partitions.values()]
    files = list(state.files.values())
    values = [p.values for p in partitions]
    metadata = {
        "_crawl": pa.table({
            "catalog_version": pa.array([state.version], pa.int64()), "format": pa.array([FORMAT], pa.int32()),
            "lake": [state.lake], "crawled_at": pa.array([datetime.now(UTC)], pa.timestamp("us", "UTC")),
            "footers_read": pa.array([state.footers_read], pa.int64()),
        }),
        "_schemas": pa.table({
            "fingerprint": list(state.schemas), "columns": [columns_text(s) for s in state.schemas.values()],
            "arrow_schema": pa.array([s.serialize().to_pybytes() for s in state.schemas.values()], pa.binary()),
        }),
        "_tables": pa.table({
            "table_name": [t.name for t in tables], "prefix": [t.prefix for t in tables], "root": [t.root for t in tables],
            "partition_keys": pa.array([list(t.partition_keys) for t in tables], pa.list_(pa.string())),
            "schema_fingerprint": [t.fingerprint for t in tables],
            "union_by_name": pa.array([t.union_by_name for t in tables], pa.bool_()),
            "partitions": pa.array([len(t.partitions) for t in tables], pa.int64()),
            "files": pa.array([t.file_count for t in tables], pa.int64()),
            "rows": pa.array([t.rows for t in tables], pa.int64()), "bytes": pa.array([t.bytes for t in tables], pa.int64()),
        }),
        "_partitions": pa.table({
            "table_name": pa.array([p.table for p in partitions], pa.string()),
            "partition": pa.array([p.path for p in partitions], pa.string()),
            "system": pa.array([v.get("system") for v in values], pa.string()),
            "date": pa.array([date.fromisoformat(v["date"]) if "date" in v else None for v in values], pa.date32()),
            "hour": pa.array([int(v["hour"]) if "hour" in v else None for v in values], pa.int32()),
            "location": pa.array([p.location for p in partitions], pa.string()),
            "files": pa.array([list(p.files) if p.files is not None else None for p in partitions], pa.list_(pa.string())),
            "file_count": pa.array([p.file_count for p in partitions], pa.int64()),
            "rows": pa.array([p.rows for p in partitions], pa.int64()),
            "bytes": pa.array([p.bytes for p in partitions], pa.int64()),
        }),
        "_files": pa.table({
            "table_name": pa.array([f.table for f in files], pa.string()), "key": pa.array([f.key for f in files], pa.string()),
            "partition": pa.array([f.partition for f in files], pa.string()),
            "size": pa.array([f.size for f in files], pa.int64()), "mtime_ns": pa.array([f.mtime_ns for f in files], pa.int64()),
            "fingerprint": pa.array([f.fingerprint for f in files], pa.string()),
            "rows": pa.array([f.rows for f in files], pa.int64()),
            "compacted_version": pa.array([f.version for f in files], pa.int32()),
            "sources": pa.array([list(f.sources) if f.sources is not None else None for f in files], pa.list_(pa.string())),
            "hour_rows": pa.array([list(f.hour_rows) if f.hour_rows is not None else None for f in files],
                                  pa.list_(pa.int64())),
            "switched_at": pa.array([f.switched_at for f in files], pa.timestamp("us", "UTC")),
        }),
    }
    for name, arrow in metadata.items():
        con.register("_arrow", arrow)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _arrow')
        con.unregister("_arrow")
    for table in tables:
        if table.partitions:
            try:
                con.execute(view_sql(table))  # DuckDB binds the view now: expands its globs, reads a footer
            except duckdb.Error as exc:
                raise CatalogError(f"cannot create the view of table {table.name} in {state.lake}: {first_line(exc)}; "
                                   "a retry registers the lake as it is then (were files removed during the crawl?), "
                                   "else check the lake's settings") from None
        else:  # a table the pipeline writes, with no file yet: empty, with its columns
            con.register("_arrow", _empty(table, state.schemas[table.fingerprint]))
            con.execute(f'CREATE TABLE "{table.name}" AS SELECT * FROM _arrow')
            con.unregister("_arrow")


def _empty(table: Table, schema: pa.Schema) -> pa.Table:
    """No rows, the columns a view of the table would have (hive columns after the file's, by name)."""
    keys = sorted(table.partition_keys)
    return pa.schema([*schema, *(pa.field(k, ARROW_PARTITION_TYPES.get(k, pa.string())) for k in keys)]).empty_table()


def read_list(table: Table) -> tuple[list[str], list[str]]:
    """What a table's view reads (see the module doc): the files and globs read with every partition key
    from the path (a glob per day while none of its files is compacted or held, else per hour the
    folder's glob or its files), and the compacted days' files."""
    groups: dict[str, list[Partition]] = {}
    by_day = table.partition_keys[-1:] == ("hour",)
    for partition in table.partitions.values():
        parent = partition.path.rsplit("/", 1)[0] if by_day and "/" in partition.path else partition.path
        groups.setdefault(parent if by_day else partition.path, []).append(partition)
    entries: list[str] = []
    days: dict[str, None] = {}
    for parent, members in groups.items():
        if by_day and all(p.files is None for p in members) and "/" in members[0].path:
            entries.append(f"{table.root}/{parent}/hour=*/*.parquet")
            continue
        for partition in members:
            for file in partition.files if partition.files is not None else [f"{partition.location}/*.parquet"]:
                if layout.is_day_file(file):
                    days[file] = None
                else:
                    entries.append(file)
    return entries, list(days)


def view_sql(table: Table) -> str:
    return f'CREATE VIEW "{table.name}" AS {scan_sql(table.partition_keys, *read_list(table), table.union_by_name)}'


# -- readers -----------------------------------------------------------------------------------

def _attach(path: Path, alias: str) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the catalog file attached read-only (the current file, whatever
    this process has open), or a one-line CatalogError."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {literal(str(path))} AS {alias} (READ_ONLY)")
    except duckdb.Error as exc:
        con.close()
        text = first_line(exc)
        if "lock" in text.lower():
            raise CatalogError(f"catalog {path} is open for writing by another process ({text.split('held in', 1)[-1].strip()}); "
                               "close it: open the catalog with read_only=True") from None
        raise CatalogError(f"cannot open catalog {path}: {text}; move it away, and the next crawl builds it anew "
                           "from the lake (compacted partitions are then read from their folders)") from None
    return con


def connect(path: Path | str, s3: S3Access | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the current catalog, its tables queryable by name (``s3``: how to
    reach an S3 lake's files)."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"no catalog at {path} yet; run `citibikes catalog --refresh` or let the "
                           "citibikes_catalog DAG run")
    con = _attach(path, "citibikes")
    con.execute("USE citibikes")
    if s3 is not None:
        s3.prepare(con)
    return con


def load_state(path: Path) -> CatalogState | None:
    """The state the catalog at ``path`` holds (None when there is no catalog yet)."""
    if not path.exists():
        return None
    con = _attach(path, "old")
    try:
        try:
            (version, format_, lake, footers_read), = con.execute(
                "SELECT catalog_version, format, lake, footers_read FROM old._crawl").fetchall()
        except duckdb.Error as exc:
            raise CatalogError(f"{path} is not a citibikes catalog ({first_line(exc)}); move it away, and the next "
                               "crawl builds it anew") from None
        if format_ < FORMAT:
            log.warning("catalog %s has the older format %s; building it anew from the lake", path, format_)
            return CatalogState(lake=lake, version=version)
        if format_ != FORMAT:
            raise CatalogError(f"catalog {path} has format {format_}, this citibikes writes {FORMAT}; upgrade "
                               "citibikes, or move the file away to build it anew")
        state = CatalogState(lake=lake, version=version, footers_read=footers_read)
        for fp, blob in con.execute("SELECT fingerprint, arrow_schema FROM old._schemas").fetchall():
            state.schemas[fp] = pa.ipc.read_schema(pa.py_buffer(blob))
        for name, prefix, root, keys, fp, union in con.execute(
                "SELECT table_name, prefix, root, partition_keys, schema_fingerprint, union_by_name FROM old._tables").fetchall():
            state.tables[name] = Table(name, prefix, root, tuple(keys), fp, union)
        for row in con.execute("SELECT table_name, partition, location, files, file_count, rows, bytes "
                               "FROM old._partitions").fetchall():
            name, partition, location, files, count, rows, size = row
            state.tables[name].partitions[partition] = Partition(
                name, partition, location, tuple(files) if files is not None else None, count, rows, size)
        files = con.execute("SELECT table_name, key, partition, size, mtime_ns, fingerprint, rows, compacted_version, "
                            "sources, hour_rows, switched_at FROM old._files").arrow().read_all()
        for record in files.to_pylist():
            state.files[record["key"]] = FileRecord(
                record["table_name"], record["key"], record["partition"], record["size"], record["mtime_ns"],
                record["fingerprint"], record["rows"], record["compacted_version"],
                tuple(record["sources"]) if record["sources"] is not None else None,
                tuple(record["hour_rows"]) if record["hour_rows"] is not None else None, record["switched_at"])
        return state
    finally:
        con.close()


def describe(path: Path | str, *, partitions: bool = False) -> list[str]:
    """What ``citibikes catalog`` prints: the crawl, each table (partitions, files, rows at the crawl,
    columns) and, with ``partitions``, each partition."""
    path = Path(path)
    con = connect(path)
    try:
        (version, lake, crawled_at), = con.execute("SELECT catalog_version, lake, crawled_at FROM _crawl").fetchall()
        lines = [f"catalog {path} (version {version}, crawled {crawled_at:%Y-%m-%d %H:%M:%S %Z}) of lake {lake}"]
        rows = con.execute("SELECT t.table_name, t.partitions, t.files, t.rows, t.partition_keys, s.columns FROM _tables t "
                           "JOIN _schemas s ON s.fingerprint = t.schema_fingerprint ORDER BY t.table_name").fetchall()
        width = max((len(name) for name, *_ in rows), default=5)
        for name, count, files, total, keys, columns in rows:
            lines.append(f"  {name:<{width}}  {count:>6,} partitions  {files:>8,} files  {total:>12,} rows"
                         f"  partitioned by {', '.join(keys) or '-'}")
            if partitions:
                lines.extend(
                    f"    {partition}  {n:,} files  {r:,} rows" + ("  compacted" if compacted else "")
                    for partition, n, r, compacted in con.execute(
                        "SELECT partition, file_count, rows, list_bool_or(list_transform(files, f -> f LIKE '%/_compacted/%')) "
                        "FROM _partitions WHERE table_name = ? ORDER BY system NULLS FIRST, date, hour, partition",
                        [name]).fetchall())
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_rollup_retired'").fetchone()[0]:  # format 4 on
            (count, hours, days, aggregated), = con.execute(
                f"SELECT (SELECT count(*) FROM {rollup.TABLE}), count(*), count(DISTINCT file), count_if(aggregated_in = ?) "
                "FROM _rollups", [version]).fetchall()
            lines.append(f"  {rollup.TABLE}: {count:,} rows in {days:,} day files of {rollup.folder(path)}, the hourly "
                         f"rollup of {hours:,} station_status partitions as of this crawl ({aggregated:,} aggregated by it)")
        lines.append(f"query it: duckdb.connect({str(path)!r}, read_only=True).sql('select count(*) from station_status')")
        return lines
    finally:
        con.close()
