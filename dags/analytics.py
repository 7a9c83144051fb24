"""
### citibikes_analytics: the service measures a city auditor computes, as a report in the lake

Every day at 06:00 UTC, and on demand with parameters. For each system (the `system` param, else every
enabled one) and period (`first_day` to `last_day`, local days of the system's time zone; empty: the
last local day that has ended), it measures from the lake through the catalog, with SQL: the DuckDB
catalog, or for a Glue catalog the same SQL on Athena (in Athena's dialect, by sqlglot; the catalog
follows the `catalog` param as the checks do: default `CITIBIKES_CATALOG`, else `auto`, the lake
connection's type: `fs` DuckDB, `aws` Glue):

- the share of time each station is unusable (0 bikes or 0 docks in 07:00-10:59 and 16:00-21:59);
- its broken-bike share (disabled bikes over capacity: median and mean);
- its empty/full episodes within 06:00-23:59 (longest, mean, median hours), with the live consumer's episode machine;
- violations of the rebalancing standard (each station with its nearest neighbour in the 2,000 ft network;
  peak instances of 1 h or more, off-peak of 2 h or more) and their fines ($50 per whole hour beyond that).

Every station record of the feed counts, quarantined or not (the quarantine keeps the counts it could
read); records whose counts cannot be read are skipped and counted. Definitions and their reasons:
`include/citibikes/analytics/`.

| task | does |
|---|---|
| `plan` | the systems and days of this run (bad params fail here, without retries) |
| `refresh_catalog` | brings the DuckDB catalog up to date with the lake (a no-op in 0.2 s when nothing is new; nothing for Glue, which the `citibikes_catalog` DAG's crawler keeps) |
| `measure` (one per system) | the measures, and the report at `reports/analytics/system=<id>/period=<first>_<last>/`: `stations.parquet` and `stations.csv` (one row per station), `summary.json`, `report.html` (charts: availability by hour of day, the worst stations, fines by window); a rerun of a period replaces it |

Days asked for without data, or a system without a time zone (`timezone:` in the systems file, else
the feed's system_information), fail the system's task at once with one line naming the fix; a daily
run whose day has no data (a lake younger than a day; a feed down all day, which the checks report)
skips it; a catalog, Athena, lake or feed that cannot be reached fails it with retries. Connections:
`citibikes_lake` (the lake, as for every DAG); for Athena `citibikes_athena` (type `athena`, extra
`{"work_group": "citibikes", "region_name": ...}`; AWS credentials from `citibikes_lake`), on the
tables of the Glue database `CITIBIKES_GLUE_DATABASE`. On Athena each query scans the period's
files again (five of them read the records): about 5 x the period's Parquet bytes billed.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from citibikes.analytics.errors import AnalyticsError, NoData
from citibikes.catalog import CatalogError
from citibikes.catalog.glue import choose_catalog
from citibikes.config import CATALOGS, load_settings
from citibikes.errors import first_line
from citibikes_airflow.hooks.catalog import ENGINES, athena_engine
from citibikes_airflow.hooks.lake import LakeHook

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=30),
}


@dag(
    dag_id="citibikes_analytics",
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args=DEFAULT_ARGS,
    params={
        "system": Param("", type="string", description="system id; empty: every enabled system"),
        "first_day": Param("", type="string", description="first local day, YYYY-MM-DD; empty: the last day that ended"),
        "last_day": Param("", type="string", description="last local day, YYYY-MM-DD; empty: first_day (or the last day that ended)"),
        "catalog": Param(load_settings().catalog, enum=list(CATALOGS),
                         description="auto (follow the citibikes_lake connection: fs -> DuckDB, aws -> Athena), duckdb or glue"),
    },
    tags=["citibikes", "analytics", "duckdb", "athena"],
    doc_md=__doc__,
)
def citibikes_analytics():
    @task
    def plan(params=None) -> list[dict]:
        """The systems and days of this run (checked here, once: bad params fail without retries)."""
        from citibikes.analytics.run import choose_system

        settings = load_settings()
        try:
            systems = ([choose_system(settings, params["system"])] if params["system"]
                       else [s for s in settings.systems if s.enabled])
            first, last = (_day(params[name], name) for name in ("first_day", "last_day"))
            engine = ENGINES[choose_catalog(params["catalog"], LakeHook().get_connection(LakeHook.default_conn_name).conn_type)]
        except (AnalyticsError, CatalogError) as exc:
            raise AirflowFailException(str(exc)) from None
        print(f"{', '.join(s.system_id for s in systems)}: {first or 'the last local day that ended'}"
              f"{' to ' + last if last else ''}, on {engine}")
        return [{"system": system.system_id, "first": first, "last": last or first, "engine": engine}
                for system in systems]

    @task
    def refresh_catalog(planned: list[dict]) -> str:
        """The DuckDB catalog, up to date with the lake (Glue's is the citibikes_catalog DAG's business)."""
        from citibikes.catalog import refresh_catalog as refresh

        hook, settings = LakeHook(), load_settings()
        if not planned or planned[0]["engine"] != "duckdb":
            print("the Glue catalog is kept by the citibikes_catalog DAG's crawler: nothing to refresh here")
            return ""
        summary = refresh(hook.get_lake(), settings.catalog_path, s3=hook.s3_access(), grace_s=settings.compaction_grace_s)
        print(summary.line())
        return str(settings.catalog_path)

    @task(map_index_template="{{ period['system'] }}", doc_md="One system's measures and report.")
    def measure(period: dict, catalog: str, dag_run=None) -> dict:
        """One system's measures and report: the planned days, else the last local day that ended before the run."""
        import msgspec

        from citibikes.analytics.engines import DuckDBEngine
        from citibikes.analytics.run import choose_system, lines, run, system_timezone
        from citibikes.catalog import connect
        from citibikes.gbfs.errors import FeedError

        hook = LakeHook()
        lake = hook.get_lake()
        system = choose_system(load_settings(), period["system"])
        try:
            zone = ZoneInfo(system_timezone(system))
            yesterday = datetime.fromtimestamp(dag_run.run_after.timestamp(), zone).date() - timedelta(days=1)
            first = date.fromisoformat(period["first"]) if period["first"] else yesterday
            last = date.fromisoformat(period["last"]) if period["last"] else first
            if period["engine"] == "athena":
                analytics, keys = _on_athena(lambda engine: run(engine, lake, system, first, last))
            else:
                con = connect(catalog, s3=hook.s3_access())
                try:
                    analytics, keys = run(DuckDBEngine(con), lake, system, first, last)
                finally:
                    con.close()
        except NoData as exc:
            if not period["first"]:  # the day that ended has nothing (a new lake, a feed down all day: see the checks)
                raise AirflowSkipException(str(exc)) from None
            raise AirflowFailException(str(exc)) from None
        except AnalyticsError as exc:
            if isinstance(exc.__cause__, FeedError):
                raise  # the feed, asked for the time zone, may answer next time: retried
            raise AirflowFailException(str(exc)) from None
        print("\n".join(lines(analytics)))
        print(f"report: {lake.storage.uri(keys[-1])}")
        return {"report": keys[-1], **msgspec.to_builtins(analytics.system)}

    planned = plan()
    measure.partial(catalog=refresh_catalog(planned)).expand(period=planned)


def _on_athena(work):  # noqa: ANN001, ANN202 - work(SqlEngine) -> its result
    """``work`` on Athena over the Glue database; Athena or AWS failing is one line naming the fix (retried)."""
    from airflow.sdk.exceptions import AirflowNotFoundException
    from botocore.exceptions import BotoCoreError, ClientError
    from pyathena.error import Error as AthenaError

    database = load_settings().glue_database
    try:
        with athena_engine(database, LakeHook.default_conn_name) as engine:
            return work(engine)
    except (AthenaError, BotoCoreError, ClientError, AirflowNotFoundException) as exc:
        raise CatalogError(f"Athena cannot measure the Glue database {database!r}: {first_line(exc)}; check the "
                           "citibikes_athena connection (type athena, extra work_group, region_name), that the "
                           "citibikes_catalog DAG has crawled the lake, and Athena's query history") from None


def _day(text: str, name: str) -> str:
    """A param's day, checked (empty: none)."""
    try:
        return str(date.fromisoformat(text)) if text else ""
    except ValueError:
        raise AnalyticsError(f"{name} {text!r} is not a day; write YYYY-MM-DD, or leave it empty") from None


citibikes_analytics()
