"""Where each file lives in the lake: Hive-style partitions derived from the feed's own clock.

Every object name derives from the feed's ``last_updated`` (or the run id), never from the time
this pipeline ran, so a retried or repeated run writes the same key again and overwrites instead
of adding a duplicate. ``date``/``hour`` are the UTC date and hour of ``last_updated``::

    curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271.parquet
    curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271-1710338811.parquet
    curated/station_information/system=citibike/date=2024-03-13/hour=13/1710335271.parquet
    quarantine/system=citibike/date=2024-03-13/hour=13/station_status-1710335271.parquet
    raw/system=citibike/feed=station_status/date=2024-03-13/hour=13/1710335271.json.zst
    pipeline_runs/date=2024-03-13/scheduled__2024-03-13T13_00_00_00_00-citibike.parquet
    curated/rebalancing/system=citibike/date=2024-03-13/asset_triggered__2024-03-13T13_31_02.123456_00_00.parquet
    curated/checks/date=2024-03-13/asset_triggered__2024-03-13T13_32_05.654321_00_00.parquet
    reports/analytics/system=citibike/period=2024-03-01_2024-03-31/report.html
    _state/<key>
    _athena/<query id>.csv

A rebalancing to-do list, and the results of a run of the data-quality checks, are named after
the Airflow run that made them and dated by the run's ``run_after`` (both fixed for the run), so a
rerun replaces its file instead of adding one.

A backfill writes the snapshots of an hour together: the second name holds the station_status rows
of several snapshots, the first to the last ``last_updated`` of its name (:func:`curated_key` with
``last``; the quarantine likewise). The same snapshots give the same name again.

Names starting with ``.`` or ``_`` are never data: temporary files, the state store and Athena's
query results (the output location of the workgroup ``citibikes aws setup`` creates) use them, and
readers (pyarrow datasets, the ``*.parquet`` glob) skip them.

Compaction (:mod:`citibikes.compaction`) writes a partition folder's rows, sorted, as one file below
it, where no folder glob reads it: ``<folder>/_compacted/v<N>/compacted.parquet`` (:func:`compacted_key`).
The folder is an hour (``.../hour=13``), or a day (``.../date=2024-03-13``) whose file holds its hours'
rows with ``hour`` as a column (:data:`DAY_COLUMN`). The file's key-value metadata ``citibikes.compaction``
names the files below the folder it holds, its *sources* (a day's: ``hour=13/1710335271.parquet``,
``hour=13/_compacted/v1/compacted.parquet``...). What a table holds is then every file except the sources
of each folder's newest compacted file and that folder's older versions (:func:`live_keys`): the
catalog and :meth:`citibikes.lake.Lake.files` read that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from citibikes.config import SYSTEM_ID_PATTERN
from citibikes.lake.errors import LakeError

FEED_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
STATE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
STATE_PREFIX = "_state"
RAW_PREFIX = "raw"
ATHENA_RESULTS_PREFIX = "_athena"
REPORTS_PREFIX = "reports"
COMPACTED_FOLDER = "_compacted"
COMPACTED_NAME = "compacted.parquet"
COMPACTED_PATTERN = re.compile(rf"/{COMPACTED_FOLDER}/v([0-9]+)/[^/._][^/]*\.parquet$")
COMPACTION_METADATA = "citibikes.compaction"
"""The key-value metadata of a compacted file: JSON ``{"version": N, "sources": [paths below its folder]}``,
and of a day's, ``"hour_rows"``: its rows in each hour 0-23."""
DAY_COLUMN = "hour"
"""The partition key a compacted day's file holds as a column (INTEGER), the last of its table's keys."""


@dataclass(frozen=True)
class TableLayout:
    """One table of the lake: its folder and the Hive partition keys below it, outermost first."""

    name: str
    prefix: str
    partition_keys: tuple[str, ...]


TABLES: dict[str, TableLayout] = {
    "station_status": TableLayout("station_status", "curated/station_status", ("system", "date", "hour")),
    "station_information": TableLayout(
        "station_information", "curated/station_information", ("system", "date", "hour")
    ),
    "quarantine": TableLayout("quarantine", "quarantine", ("system", "date", "hour")),
    "pipeline_runs": TableLayout("pipeline_runs", "pipeline_runs", ("date",)),
    "rebalancing": TableLayout("rebalancing", "curated/rebalancing", ("system", "date")),
    "checks": TableLayout("checks", "curated/checks", ("date",)),
}


def table_layout(name: str) -> TableLayout:
    try:
        return TABLES[name]
    except KeyError:
        raise LakeError(f"unknown lake table {name!r}; use one of {', '.join(TABLES)}") from None


def utc_date_hour(posix_seconds: float) -> tuple[str, str]:
    """The UTC date (``2024-03-13``) and hour (``13``, ``7``: not zero-padded, so DuckDB's and
    Glue's partition type detection see an integer) of a POSIX time."""
    try:
        moment = datetime.fromtimestamp(posix_seconds, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise LakeError(f"{posix_seconds!r} is not a POSIX time in seconds (years 1-9999); "
                        "it cannot name a lake partition") from None
    return moment.strftime("%Y-%m-%d"), str(moment.hour)


def check_system_id(system_id: str) -> str:
    if not isinstance(system_id, str) or not SYSTEM_ID_PATTERN.match(system_id):
        raise LakeError(
            f"system id {system_id!r} cannot name a lake partition; use lowercase letters, digits, '-' or '_'"
        )
    return system_id


def check_feed(feed: str) -> str:
    if not isinstance(feed, str) or not FEED_PATTERN.match(feed):
        raise LakeError(f"feed name {feed!r} cannot name a lake file; use lowercase letters, digits and '_'")
    return feed


def hive_partition(system_id: str, last_updated: int) -> str:
    """``system=<id>/date=<YYYY-MM-DD>/hour=<H>`` for a feed's ``last_updated``."""
    date, hour = utc_date_hour(last_updated)
    return f"system={check_system_id(system_id)}/date={date}/hour={hour}"


def curated_key(table: str, system_id: str, last_updated: int, last: int | None = None) -> str:
    """The curated Parquet file of one snapshot of ``station_status`` or ``station_information``, or
    of the snapshots from ``last_updated`` to ``last`` (one hour partition: that of the first)."""
    if table not in ("station_status", "station_information"):
        raise LakeError(f"no curated table {table!r}; use station_status or station_information")
    return f"{TABLES[table].prefix}/{hive_partition(system_id, last_updated)}/{_span(last_updated, last)}.parquet"


def quarantine_key(system_id: str, feed: str, last_updated: int, last: int | None = None) -> str:
    """The quarantine Parquet file of one snapshot of one feed (or of several: see :func:`curated_key`)."""
    return f"quarantine/{hive_partition(system_id, last_updated)}/{check_feed(feed)}-{_span(last_updated, last)}.parquet"


def _span(first: int, last: int | None) -> str:
    return f"{int(first)}" if last is None or int(last) == int(first) else f"{int(first)}-{int(last)}"


def compacted_key(folder: str, version: int) -> str:
    """Version ``version`` of the compacted file of the partition folder ``folder`` (a key)."""
    return f"{folder}/{COMPACTED_FOLDER}/v{int(version)}/{COMPACTED_NAME}"


def compacted_version(key: str) -> int | None:
    """N for a compacted file's key (``<folder>/_compacted/v<N>/<name>.parquet``), else None."""
    match = COMPACTED_PATTERN.search(key)
    return int(match.group(1)) if match else None


def compacted_folder(key: str) -> str | None:
    """The folder a compacted file compacts (the key before ``/_compacted/v<N>/``), else None."""
    return key.split(f"/{COMPACTED_FOLDER}/", 1)[0] if compacted_version(key) is not None else None


def is_day_file(key: str) -> bool:
    """Whether ``key`` is a compacted day's file (its folder ends in ``date=<YYYY-MM-DD>``)."""
    folder = compacted_folder(key)
    return folder is not None and folder.rsplit("/", 1)[-1].startswith("date=")


def _compaction(metadata: dict[bytes, bytes] | None) -> dict:
    try:
        found = json.loads((metadata or {})[COMPACTION_METADATA.encode()])
    except (KeyError, TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def compacted_sources(metadata: dict[bytes, bytes] | None) -> tuple[str, ...] | None:
    """The sources a compacted file's Parquet key-value metadata names (None: it names none)."""
    sources = _compaction(metadata).get("sources")
    return tuple(sources) if isinstance(sources, list) and all(isinstance(n, str) for n in sources) else None


def compacted_hour_rows(metadata: dict[bytes, bytes] | None) -> tuple[int, ...] | None:
    """A compacted day's rows in each hour 0-23, as its metadata says (None: it does not)."""
    rows = _compaction(metadata).get("hour_rows")
    ok = isinstance(rows, list) and len(rows) == 24 and all(isinstance(n, int) and n >= 0 for n in rows)
    return tuple(rows) if ok else None


def live_keys(keys: Iterable[str], sources: Callable[[str], Iterable[str]]) -> list[str]:
    """The files whose rows a table holds, of ``keys`` (its data and compacted files, in order): every
    key except the ``sources`` of the newest compacted file of each folder and that folder's older
    compacted versions. A day's file holds its hours' files, their compacted ones included."""
    keys = list(keys)
    newest: dict[str, tuple[int, str]] = {}
    for key in keys:
        if (version := compacted_version(key)) is not None:
            folder = compacted_folder(key)
            newest[folder] = max(newest.get(folder, (-1, "")), (version, key))
    held = {f"{folder}/{name}" for folder, (_, key) in newest.items() for name in sources(key)}
    return [key for key in keys if key not in held and
            (compacted_version(key) is None or newest[compacted_folder(key)][1] == key)]


def raw_key(system_id: str, feed: str, last_updated: int, suffix: str = ".json.zst") -> str:
    """The zstd-compressed copy of the feed exactly as fetched."""
    date, hour = utc_date_hour(last_updated)
    return (
        f"{RAW_PREFIX}/system={check_system_id(system_id)}/feed={check_feed(feed)}/date={date}/hour={hour}/"
        f"{int(last_updated)}{suffix}"
    )


def legacy_raw_key(system_id: str, feed: str, last_updated: int) -> str:
    """Where archives written before the switch to zstd are: the gzip-compressed copy."""
    return raw_key(system_id, feed, last_updated, suffix=".json.gz")


def safe_file_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (Airflow run ids
    contain ``:`` and ``+``); never starting with ``.`` or ``_`` so readers do not skip it."""
    name = UNSAFE_NAME_CHARS.sub("_", text)
    if not name or name[0] in "._":
        name = f"r{name}"
    return name


def run_key(run_id: str, system_id: str, started_at: float) -> str:
    """The one-row Parquet file of one pipeline run for one system, dated by its UTC start."""
    if not run_id:
        raise LakeError("a pipeline run needs a run_id to name its lake file; pass the Airflow run id")
    date, _ = utc_date_hour(started_at)
    return f"pipeline_runs/date={date}/{safe_file_name(run_id)}-{check_system_id(system_id)}.parquet"


def rebalancing_key(run_id: str, system_id: str, run_after: float) -> str:
    """The to-do list one run made for one system, dated by the run's UTC ``run_after``."""
    if not run_id:
        raise LakeError("a rebalancing list needs a run_id to name its lake file; pass the Airflow run id")
    date, _ = utc_date_hour(run_after)
    return f"{TABLES['rebalancing'].prefix}/system={check_system_id(system_id)}/date={date}/{safe_file_name(run_id)}.parquet"


def checks_key(run_id: str, run_after: float) -> str:
    """The results of one run of the data-quality checks, dated by the run's UTC ``run_after``."""
    if not run_id:
        raise LakeError("check results need a run_id to name their lake file; pass the Airflow run id")
    date, _ = utc_date_hour(run_after)
    return f"{TABLES['checks'].prefix}/date={date}/{safe_file_name(run_id)}.parquet"


def report_key(report: str, system_id: str, period: str, name: str) -> str:
    """Where a report's file lives: ``reports/analytics/system=citibike/period=2026-01-01_2026-01-31/report.html``
    (a rerun of a period replaces it)."""
    return f"{REPORTS_PREFIX}/{report}/system={check_system_id(system_id)}/period={period}/{name}"


def state_key(key: str) -> str:
    """``_state/<key>``; keys are slash-separated names of letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(key, str) or not STATE_KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise LakeError(
            f"state key {key!r} is not usable; use names of letters, digits, '.', '_', '-' "
            "separated by '/', e.g. 'citibike/http.json'"
        )
    return f"{STATE_PREFIX}/{key}"
