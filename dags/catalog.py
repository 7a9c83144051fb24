"""
### citibikes_catalog: the lake's tables by name, for DuckDB or Athena

Runs when the ingest DAG lands data (any of the Assets `citibikes.station_status`,
`citibikes.station_information`, `citibikes.pipeline_runs`), one run at a time, and registers the
lake's tables and partitions in a catalog under the same names: `station_status`,
`station_information`, `quarantine`, `pipeline_runs` and every other folder below `curated/`
(never `raw/` or `_state/`). Emits `citibikes.catalog` when it did, which the checks DAG follows.

| task | what it does |
|---|---|
| `choose` | which catalog: the `catalog` param (default `CITIBIKES_CATALOG`, else `auto`: the `citibikes_lake` connection's type decides, `fs` -> DuckDB, `aws` -> Glue) |
| `crawl_duckdb` | crawls the lake into `<state>/catalog/citibikes.duckdb` (a view per table, partitions typed: `date` DATE, `hour` INTEGER), written beside the old one and renamed over it: readers are never blocked and never see half a catalog. Only new files' footers are read |
| `glue_crawler_config` | the Glue crawler's configuration: database `CITIBIKES_GLUE_DATABASE` (default `citibikes_analytics`), role `CITIBIKES_GLUE_CRAWLER_ROLE` (default `citibikes-glue-crawler`; both made by `citibikes aws setup`), one S3 target per table root, only new folders crawled after the first run; skips the Glue tasks while the crawler runs or ran less than `CITIBIKES_GLUE_CRAWL_EVERY` s (default 1800) ago - a skipped run loses nothing, the next crawls every new folder |
| `crawler_exists` | create or update the crawler |
| `create_crawler` / `update_crawler` | the Amazon provider's `GlueCrawlerCreateOperator` / `GlueCrawlerUpdateOperator` |
| `run_crawler` | `GlueCrawlerRunOperator`: waits for the crawl in the triggerer (deferrable) when aiobotocore is installed (`apache-airflow-providers-amazon[aiobotocore]`), else in its worker |

Bad input - a foreign file in a table folder, a Parquet file whose schema does not fit its table,
a folder lake sent to Glue - fails the task at once with one line naming the object and the fix; the
catalog stays as it was. An unreachable lake, a catalog file another process holds open for
writing, or an AWS error is retried. Events that arrive while a run is going are served by the
next run, which sees the whole lake, so none is needed for correctness.
Logic: `include/citibikes/catalog/`; this file only wires it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib.util import find_spec

import pendulum
from airflow.providers.amazon.aws.hooks.glue_crawler import GlueCrawlerHook
from airflow.providers.amazon.aws.operators.glue_crawler import (
    GlueCrawlerCreateOperator,
    GlueCrawlerRunOperator,
    GlueCrawlerUpdateOperator,
)
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from citibikes.catalog import CatalogError, CatalogInputError, refresh_catalog
from citibikes.catalog.glue import choose_catalog, crawl_due, crawler_config
from citibikes.config import CATALOGS, load_settings
from citibikes_airflow.assets import CATALOG, TABLE_ASSETS
from citibikes_airflow.hooks.lake import LakeHook

DEFERRABLE = find_spec("aiobotocore") is not None
"""The provider's Glue trigger needs aiobotocore (``apache-airflow-providers-amazon[aiobotocore]``);
without it the run task waits for the crawler in its worker slot instead."""
LAKE_CONN_ID = LakeHook.default_conn_name
"""The lake's connection; for an S3 lake it is an ``aws`` connection, and the Glue calls use it too."""

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(minutes=15),
}

settings = load_settings()


@dag(
    dag_id="citibikes_catalog",
    schedule=TABLE_ASSETS["station_status"] | TABLE_ASSETS["station_information"] | TABLE_ASSETS["pipeline_runs"],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=DEFAULT_ARGS,
    params={"catalog": Param(settings.catalog, enum=list(CATALOGS),
                             description="auto (follow the citibikes_lake connection: fs -> DuckDB, aws -> Glue), duckdb or glue")},
    tags=["citibikes", "catalog", "duckdb", "glue"],
    doc_md=__doc__,
)
def citibikes_catalog():
    @task.branch
    def choose(params=None) -> str:
        """DuckDB or Glue: the ``catalog`` param, or the lake connection's type for ``auto``."""
        connection_type = LakeHook().get_connection(LAKE_CONN_ID).conn_type
        try:
            chosen = choose_catalog(params["catalog"], connection_type)
        except CatalogError as exc:
            raise AirflowFailException(str(exc)) from None
        print(f"catalog: {chosen} (param {params['catalog']}, lake connection type {connection_type})")
        return "crawl_duckdb" if chosen == "duckdb" else "glue_crawler_config"

    @task(outlets=[CATALOG])
    def crawl_duckdb(*, outlet_events=None) -> dict:
        """Crawl the lake into the DuckDB catalog; bad input fails at once (the catalog stays as it was)."""
        hook = LakeHook()
        try:  # an S3 lake: DuckDB reads the lake when it creates the views
            settings = load_settings()
            summary = refresh_catalog(hook.get_lake(), settings.catalog_path, s3=hook.s3_access(),
                                      grace_s=settings.compaction_grace_s)
        except CatalogInputError as exc:
            raise AirflowFailException(str(exc)) from None
        print(summary.line())
        outlet_events[CATALOG].extra = summary.extra()
        return summary.extra()

    @task.short_circuit
    def glue_crawler_config() -> dict | bool:
        """The crawler's configuration (one S3 target per table root), or False (skip) when it is not due."""
        current = load_settings()
        lake = LakeHook().get_lake()
        try:
            config = crawler_config(lake.uri, name=current.glue_crawler, role=current.glue_crawler_role,
                                    database=current.glue_database)
        except CatalogError as exc:
            raise AirflowFailException(str(exc)) from None
        hook = GlueCrawlerHook(aws_conn_id=LAKE_CONN_ID)
        crawler = hook.get_crawler(current.glue_crawler) if hook.has_crawler(current.glue_crawler) else None
        if not crawl_due(crawler, datetime.now(UTC), current.glue_crawl_every_s):
            print(f"crawler {current.glue_crawler} runs or ran less than {current.glue_crawl_every_s} s ago; "
                  "the next run crawls what is new by then")
            return False
        return config

    @task.branch
    def crawler_exists(config: dict) -> str:
        """Create the crawler the first time, update it (new table roots) afterwards."""
        return "update_crawler" if GlueCrawlerHook(aws_conn_id=LAKE_CONN_ID).has_crawler(config["Name"]) else "create_crawler"

    chosen = choose()
    config = glue_crawler_config()
    create = GlueCrawlerCreateOperator(task_id="create_crawler", config=config, aws_conn_id=LAKE_CONN_ID,
                                       doc_md="Create the Glue crawler (the Amazon provider's operator).")
    update = GlueCrawlerUpdateOperator(task_id="update_crawler", config=config, aws_conn_id=LAKE_CONN_ID,
                                       doc_md="Update the Glue crawler's targets and settings.")
    run = GlueCrawlerRunOperator(
        task_id="run_crawler", crawler_name=settings.glue_crawler, aws_conn_id=LAKE_CONN_ID, deferrable=DEFERRABLE,
        fail_on_already_running=False, poll_interval=15, trigger_rule="none_failed_min_one_success",
        outlets=[CATALOG], doc_md="Run the crawler and wait for it in the triggerer; emits citibikes.catalog.")
    chosen >> [crawl_duckdb(), config]
    crawler_exists(config) >> [create, update] >> run


citibikes_catalog()
