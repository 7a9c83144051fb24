"""The AWS path: which catalog to keep, and the Glue crawler's configuration over the lake's table folders.

The crawler gets one S3 target (data store) per table root of the layout
(:data:`citibikes.lake.layout.TABLES`: ``curated/station_status/``, ``curated/station_information/``,
``quarantine/``, ``pipeline_runs/``), never the lake's root, so ``raw/``, ``_state/`` and
``_athena/`` never become tables; each target becomes one table named after its folder, as in the
DuckDB catalog. These are the folders the crawler's role (``citibikes aws setup``) may read, so a new
table reaches Glue when the layout names it (the DuckDB catalog takes any folder below ``curated/``).
Names starting with ``_`` or ``.`` are excluded (temporary files, markers). The database and role
are those ``citibikes aws setup`` creates, unless set otherwise. After the
first crawl only new folders (new partitions) are crawled: the tables' schemas are fixed, and files
added to a known partition are read by Athena without a crawl. Each crawler run is billed (at least
a few minutes of DPU time), and the lake gets data every minute: :func:`crawl_due` lets it run at
most every ``CITIBIKES_GLUE_CRAWL_EVERY`` seconds; a run it skips loses nothing, since the next one
crawls every folder that is new by then.

Compaction (:mod:`citibikes.compaction`) moves a compacted hour's partition to its compacted file's
folder (:func:`move_partitions`, marked with :data:`SWITCHED_PARAMETER`); since the crawler crawls only
new folders, and never the ``_compacted/`` ones, it leaves the partition there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from citibikes.aws.client import Aws
from citibikes.aws.plan import CRAWLER_ROLE, TABLE_PREFIXES
from citibikes.catalog.errors import CatalogError

CONNECTION_CATALOGS = {"fs": "duckdb", "aws": "glue"}
"""The catalog ``auto`` chooses for each type of the ``citibikes_lake`` connection."""
EXCLUSIONS = ["**/_*", "**/_*/**", "**/.*", "**/.*/**"]


def choose_catalog(setting: str, connection_type: str) -> str:
    """``duckdb`` or ``glue``: the setting (``CITIBIKES_CATALOG`` or the DAG's ``catalog`` param), or
    for ``auto`` the lake connection's type (``aws``: Glue, ``fs``: DuckDB)."""
    if setting in ("duckdb", "glue"):
        return setting
    if setting != "auto":
        raise CatalogError(f"catalog {setting!r} is unknown; use auto, duckdb or glue")
    try:
        return CONNECTION_CATALOGS[connection_type]
    except KeyError:
        raise CatalogError(f"the lake connection has type {connection_type!r}, which no catalog follows; make it fs "
                           "or aws, or set CITIBIKES_CATALOG to duckdb or glue") from None


def crawler_config(lake_uri: str, *, name: str, database: str, role: str | None = None,
                   prefixes: Iterable[str] = TABLE_PREFIXES) -> dict[str, Any]:
    """The ``CreateCrawler``/``UpdateCrawler`` arguments for a crawler over an S3 lake's table roots
    (``role`` None: the one ``citibikes aws setup`` creates)."""
    if not lake_uri.startswith("s3://"):
        raise CatalogError(f"a Glue crawler reads S3, and the lake is {lake_uri}; set CITIBIKES_CATALOG=duckdb "
                           "for a folder lake")
    base = lake_uri.rstrip("/")
    return {
        "Name": name,
        "Role": role or CRAWLER_ROLE,
        "DatabaseName": database,
        "Description": "citibikes lake: one table per table folder (raw/, _state/, _athena/ are not crawled)",
        "Targets": {"S3Targets": [{"Path": f"{base}/{prefix}/", "Exclusions": EXCLUSIONS} for prefix in sorted(prefixes)]},
        "SchemaChangePolicy": {"UpdateBehavior": "LOG", "DeleteBehavior": "LOG"},
        "RecrawlPolicy": {"RecrawlBehavior": "CRAWL_NEW_FOLDERS_ONLY"},
        "Configuration": json.dumps({
            "Version": 1.0,
            "Grouping": {"TableGroupingPolicy": "CombineCompatibleSchemas"},
            "CrawlerOutput": {"Partitions": {"AddOrUpdateBehavior": "InheritFromTable"}},
        }, sort_keys=True),
    }


def crawl_due(crawler: Mapping[str, Any] | None, now: datetime, every_s: int) -> bool:
    """Whether to run the crawler (``GetCrawler``'s ``Crawler``, None if it does not exist yet): not
    while it runs, and not sooner than ``every_s`` after its last crawl started."""
    if crawler is None:
        return True
    if crawler.get("State") in ("RUNNING", "STOPPING"):
        return False
    started = (crawler.get("LastCrawl") or {}).get("StartTime")
    return started is None or (now - started).total_seconds() >= every_s


# -- compaction on Glue ------------------------------------------------------------------------

SWITCHED_PARAMETER = "citibikes_switched_at"
"""Set on a Glue partition whose location compaction moved to a compacted file's folder: when (POSIX
seconds). The files that file replaced are deleted a grace period later, when no Athena query can
still be reading the old location."""
BATCH = 100
"""Partitions per ``BatchUpdatePartition`` (its limit)."""


def partitions(aws: Aws, database: str, table: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every partition of a Glue table (none while the table does not exist), by its values."""
    target = f"table {database}.{table}"
    if aws.call("glue", "get_table", "glue:GetTable", target, absent=("EntityNotFoundException",),
                DatabaseName=database, Name=table) is None:
        return {}
    pages = aws.pages("glue", "get_partitions", "glue:GetPartitions", target, DatabaseName=database, TableName=table)
    return {tuple(p["Values"]): p for page in pages for p in page["Partitions"]}


def move_partitions(aws: Aws, database: str, table: str, moves: Mapping[tuple[str, ...], tuple[dict[str, Any], str]],
                    now: float) -> int:
    """Point each partition (values -> (the partition, a new location)) at its new location, marked
    with :data:`SWITCHED_PARAMETER`; returns how many."""
    entries = []
    for values, (partition, location) in sorted(moves.items()):
        descriptor = {key: value for key, value in partition["StorageDescriptor"].items()}
        descriptor["Location"] = location
        parameters = {**(partition.get("Parameters") or {}), SWITCHED_PARAMETER: str(int(now))}
        entries.append({"PartitionValueList": list(values),
                        "PartitionInput": {"Values": list(values), "StorageDescriptor": descriptor, "Parameters": parameters}})
    for start in range(0, len(entries), BATCH):
        answer = aws.call("glue", "batch_update_partition", "glue:BatchUpdatePartition", f"table {database}.{table}",
                          DatabaseName=database, TableName=table, Entries=entries[start:start + BATCH])
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise CatalogError(f"Glue refused to move partition {error['PartitionValueList']} of {database}.{table}: "
                               f"{error['ErrorDetail'].get('ErrorMessage', error['ErrorDetail'])}; the next compaction "
                               "retries (nothing is deleted until Glue reads the compacted file)")
    return len(entries)
