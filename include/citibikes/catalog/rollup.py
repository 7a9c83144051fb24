"""The hourly availability rollup: ``station_status_hourly``, a table in the catalog file, kept incrementally.

One row per ``(system, date, hour, station_id)`` of ``station_status`` (``date`` and ``hour`` are the
partition's: the UTC hour of the snapshots' ``last_updated``) with what dashboards and audits of
availability use (:data:`AGGREGATES`). Means are over observations, the snapshots the lake holds
(one a minute from the minute DAG), so ``bikes_mean`` is the time-average of a station's bikes when
snapshots are evenly spaced. Why a table: a ``GROUP BY`` over a month of Citi Bike (95 million
rows) takes 3-6 s on two cores, most of it hashing ``station_id`` strings; the table answers the same
questions from 1.6 million rows.

It is exactly the catalog's ``station_status`` at crawl time, and a crawl aggregates little: every
station_status partition gets a *digest* of the files it reads (keys, sizes, modification times,
and the aggregate's SQL), kept in ``_rollups``. A crawl copies the rows of partitions whose digest is
unchanged from the catalog it replaces (attached read-only) and aggregates only the others - the
current hour (a new minute file), a compacted hour, a late file - from their files, listed
explicitly, so the rows are those of the files the crawl registered. ``_rollups.aggregated_in`` is
the catalog version that aggregated a partition. A first crawl (or one of a catalog built anew)
aggregates every partition once. Every crawl still writes all the rows into its new catalog file
(about 1 s and 40 MB for a month of Citi Bike, ``bench/catalog_rollup.py``). A partition that cannot
be read fails the crawl with a :class:`CatalogError` (retryable) and leaves the previous catalog in place.

The rollup is as fresh as the last crawl; the ``station_status`` view sees new minute files at once.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa

from citibikes.catalog.crawl import PARTITION_TYPES, CatalogState, FileRecord, read_set
from citibikes.catalog.errors import CatalogError
from citibikes.errors import first_line

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
SELECT = f"SELECT {', '.join(KEYS)}, {', '.join(f'{sql} AS {name}' for name, (_, sql) in AGGREGATES.items())}"
"""Part of every digest: a changed definition aggregates everything again."""
FIND_LIMIT = 100
"""Files read one by one to name the one that fails (on S3 each is a request; the error may be passing)."""


def digests(state: CatalogState) -> dict[str, tuple[str, list[FileRecord]]]:
    """Per station_status partition: the digest of the files it reads, and those files."""
    groups: dict[str, list[FileRecord]] = {}
    for record in state.files.values():
        if record.table == SOURCE:
            groups.setdefault(record.partition, []).append(record)
    found = {}
    for path, records in groups.items():
        reads = read_set(records)[1]
        text = "\n".join([SELECT, *sorted(f"{r.key} {r.size} {r.mtime_ns}" for r in reads)])
        found[path] = (hashlib.sha256(text.encode()).hexdigest()[:32], reads)
    return found


def build(con: duckdb.DuckDBPyConnection, state: CatalogState, previous: Path) -> int:
    """Create ``station_status_hourly`` and ``_rollups`` in the new catalog ``con``, reusing the rows of
    the catalog file ``previous`` (if any) where a partition's digest is unchanged; returns how many
    partitions were aggregated."""
    columns = [*KEYS.items(), *((name, kind) for name, (kind, _) in AGGREGATES.items())]
    con.execute(f"CREATE TABLE {TABLE} ({', '.join(f'{name} {kind}' for name, kind in columns)})")
    current = digests(state)
    before = _previous_digests(con, state, previous)
    reused = {path for path, (digest, _) in current.items() if before.get(path, (None,))[0] == digest}
    fresh = sorted(set(current) - reused)
    table = state.tables[SOURCE]
    values = {path: table.partitions[path].values for path in current}
    con.register("_arrow", pa.table({
        "partition": list(current),
        "system": [values[p]["system"] for p in current],
        "date": pa.array([date.fromisoformat(values[p]["date"]) for p in current], pa.date32()),
        "hour": pa.array([int(values[p]["hour"]) for p in current], pa.int32()),
        "digest": [digest for digest, _ in current.values()],
        "files": pa.array([len(reads) for _, reads in current.values()], pa.int64()),
        "rows": pa.array([sum(r.rows for r in reads) for _, reads in current.values()], pa.int64()),
        "aggregated_in": pa.array([before[p][1] if p in reused else state.version for p in current], pa.int64()),
    }))
    con.execute("CREATE TABLE _rollups AS SELECT * FROM _arrow ORDER BY system, date, hour")
    con.unregister("_arrow")
    try:
        if reused:  # the partitions an earlier catalog aggregated
            con.execute(f"INSERT INTO {TABLE} SELECT * FROM previous.{TABLE} WHERE (system, date, hour) IN "
                        "(SELECT (system, date, hour) FROM _rollups WHERE aggregated_in < ?)", [state.version])
        if before:
            con.execute("DETACH previous")
    except duckdb.Error as exc:
        raise CatalogError(f"cannot copy {TABLE} from the previous catalog {previous}: {first_line(exc)}; retry, "
                           "or move that file away (the next crawl aggregates the lake anew)") from None
    if fresh:
        files = [f"{state.lake}/{r.key}" for path in fresh for r in current[path][1]]
        types = ", ".join(f"'{k}': {PARTITION_TYPES[k]}" for k in table.partition_keys)
        options = f"hive_partitioning = true, hive_types = {{{types}}}" + (", union_by_name = true" if table.union_by_name else "")
        aggregate = f"{SELECT} FROM read_parquet(?, {options}) GROUP BY ALL"
        try:
            con.execute(f"INSERT INTO {TABLE} {aggregate} ORDER BY ALL", [files])
        except duckdb.Error as exc:
            file, error = _first_unreadable(con, aggregate, files) or (f"{len(fresh)} partition(s) from {fresh[0]}", exc)
            raise CatalogError(f"cannot aggregate {file} of {SOURCE} into {TABLE}: {first_line(error)}; a retry reads "
                               "the lake as it is then (was it rewritten or removed during the crawl?); if it fails "
                               "again, the file is damaged: write it again or move it out of the lake") from None
    return len(fresh)


def _first_unreadable(con: duckdb.DuckDBPyConnection, aggregate: str, files: list[str]) -> tuple[str, Exception] | None:
    """The first of ``files`` the aggregate cannot read, and why (DuckDB's errors do not always name the file)."""
    for file in files[:FIND_LIMIT]:
        try:
            con.execute(aggregate, [[file]]).fetchall()
        except duckdb.Error as exc:
            return file, exc
    return None


def _previous_digests(con: duckdb.DuckDBPyConnection, state: CatalogState, previous: Path) -> dict[str, tuple[str, int]]:
    """Per partition, the digest and ``aggregated_in`` of the catalog being replaced (attached as
    ``previous``); nothing when there is none, it has no rollup yet or describes another lake."""
    if not previous.exists():
        return {}
    try:
        con.execute("ATTACH '" + str(previous).replace("'", "''") + "' AS previous (READ_ONLY)")
        (lake,), = con.execute("SELECT lake FROM previous._crawl").fetchall()
        known = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'previous' AND "
                            "table_name IN ('_rollups', ?)", [TABLE]).fetchone()[0] == 2
        found = {} if lake != state.lake or not known else {
            partition: (digest, version) for partition, digest, version in
            con.execute("SELECT partition, digest, aggregated_in FROM previous._rollups").fetchall()}
    except duckdb.Error as exc:
        raise CatalogError(f"cannot read {TABLE} of the previous catalog {previous}: {first_line(exc)}; retry, or "
                           "move that file away (the next crawl aggregates the lake anew)") from None
    if not found:
        con.execute("DETACH previous")
    return found
