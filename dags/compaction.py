"""
### citibikes_compaction: each closed day (or hour) of small files becomes one sorted file

Every hour, one run at a time. For each system, every day of `station_status`,
`station_information` and `quarantine` that ended at least `settle_s` ago (default
`CITIBIKES_COMPACTION_SETTLE`, 7200 s), and every hour of a day still open that ended that long
ago, that reads two files or more is written again as one file sorted by station and time
(`<day or hour folder>/_compacted/v<N>/compacted.parquet`, a day's with `hour` as a column; its
sources named in its metadata); the catalog is then switched to it in one atomic replacement, and
the files it replaced are deleted once the catalog has read the compacted file for `grace_s`
(default `CITIBIKES_COMPACTION_GRACE`, 3600 s). Readers through the catalog never see a row missing
or doubled: no folder glob reads `_compacted/`, and a reader opening the catalog reads either the
old files or the new one. A reader must not keep one catalog connection longer than the grace
period.

A lake catalogued by Glue (`CITIBIKES_CATALOG=glue`, or `auto` with an `aws` lake connection) is
compacted by hour only (Glue's partitions are hours): `refresh` also moves each compacted hour's
Glue partition to its compacted file's folder (the `_compacted/` folders are not crawled, and the
crawler, crawling only new folders, never moves it back), and `delete` waits until Glue has pointed
there for `grace_s` too. A late file in a moved hour is read by Athena once the next run folds it in.

| task | what it does |
|---|---|
| `plan` | the systems with days or hours to compact, and how many |
| `compact` | one mapped task per system: writes the compacted files (whole or not at all); logs files and bytes per observation before and after |
| `refresh` | crawls the lake into the DuckDB catalog, which learns the compacted files from the lake (on Glue it is compaction's record of the lake), and moves Glue's partitions; emits `citibikes.catalog` |
| `delete` | deletes the sources and older versions of the compacted files the catalogs have read for `grace_s` |

`dry_run` logs what would be compacted and deleted and changes nothing. Bad input in the lake
(a foreign file, a file in `_compacted/` compaction did not write) fails the task at once, naming
the file and the fix; an unreachable lake or a file changed under compaction is retried. A crash
at any point leaves the data whole, and the next run goes on from where it stopped.
Logic: `include/citibikes/compaction.py`; this file only wires it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from citibikes import compaction
from citibikes.catalog import CatalogError, CatalogInputError, refresh_catalog
from citibikes.catalog.glue import choose_catalog
from citibikes.config import load_settings
from citibikes_airflow.assets import CATALOG
from citibikes_airflow.hooks.lake import LakeHook

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(minutes=30),
}

settings = load_settings()


@contextlib.contextmanager
def bad_input_fails() -> Iterator[None]:
    """Bad input in the lake fails the task without retries (a person fixes the lake)."""
    try:
        yield
    except CatalogInputError as exc:
        raise AirflowFailException(str(exc)) from None


def glue() -> compaction.Glue | None:
    """The Glue database to keep in step, when the lake is catalogued there (``CITIBIKES_CATALOG``, or
    ``auto`` with an ``aws`` lake connection); a bad setting fails the task without retries."""
    hook = LakeHook()
    connection_type = hook.get_connection(LakeHook.default_conn_name).conn_type
    try:
        chosen = choose_catalog(load_settings().catalog, connection_type)
    except CatalogError as exc:
        raise AirflowFailException(str(exc)) from None
    if chosen == "glue" and connection_type != "aws":
        raise AirflowFailException("the citibikes_lake connection is a folder (fs), and Glue catalogs an S3 lake; "
                                   "set CITIBIKES_CATALOG=duckdb (or auto)")
    return compaction.Glue(hook.aws(), load_settings().glue_database) if chosen == "glue" else None


@dag(
    dag_id="citibikes_compaction",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    params={
        "settle_s": Param(settings.compaction_settle_s, type="integer", minimum=0,
                          description="compact a day (an hour of an open day) once it ended this many seconds ago"),
        "grace_s": Param(settings.compaction_grace_s, type="integer", minimum=0,
                         description="delete replaced files once the catalog has read their compacted file this long"),
        "dry_run": Param(False, type="boolean", description="log what would be done, change nothing"),
    },
    tags=["citibikes", "compaction", "duckdb", "glue"],
    doc_md=__doc__,
)
def citibikes_compaction():
    @task
    def plan(params=None) -> list[str]:
        """The systems with closed days or hours to compact (one mapped ``compact`` each)."""
        with bad_input_fails():
            counts = compaction.systems_with_work(LakeHook().get_lake(), load_settings().catalog_path,
                                                  settle_s=params["settle_s"], by_day=glue() is None)
        print(", ".join(f"{system}: {n} partitions" for system, n in sorted(counts.items())) or "nothing to compact")
        return sorted(counts)

    @task(map_index_template="{{ system }}", doc_md="Write the compacted files of one system's closed days and hours.")
    def compact(system: str, params=None) -> dict:
        """Write the compacted files of one system's closed days and hours; logs files and bytes before and after."""
        with bad_input_fails():
            summary = compaction.compact_files(LakeHook().get_lake(), load_settings().catalog_path,
                                               settle_s=params["settle_s"], system=system, dry_run=params["dry_run"],
                                               by_day=glue() is None)
        print("\n".join(summary.lines()[:-1]))
        return summary.as_dict()

    @task(outlets=[CATALOG], trigger_rule="none_failed")
    def refresh(params=None) -> dict:
        """Switch the catalogs to the compacted files: a crawl, one atomic replacement of the catalog file;
        on Glue, the hour partitions moved to their compacted files' folders."""
        if params["dry_run"]:
            raise AirflowSkipException("dry run: the catalog stays as it is")
        hook, target = LakeHook(), glue()
        lake, path = hook.get_lake(), load_settings().catalog_path
        with bad_input_fails():
            summary = refresh_catalog(lake, path, s3=hook.s3_access(), grace_s=params["grace_s"])
        print(summary.line())
        if target:
            print(f"Glue database {target.database}: {compaction.switch_glue(lake, path, target)} partition(s) moved "
                  "to their compacted files")
        return summary.extra()

    @task(trigger_rule="none_failed")
    def delete(params=None) -> dict:
        """Delete what the catalogs have read compacted for the grace period: sources and older versions."""
        files, size = compaction.delete_replaced(LakeHook().get_lake(), load_settings().catalog_path,
                                                 grace_s=params["grace_s"], dry_run=params["dry_run"], glue=glue())
        print(f"{'would delete' if params['dry_run'] else 'deleted'} {files:,} replaced files ({size:,} bytes)")
        return {"files": files, "bytes": size}

    compact.expand(system=plan()) >> refresh() >> delete()


citibikes_compaction()
