"""
### citibikes_analytics: the service measures a city auditor computes, as a report in the lake

Every day at 06:00 UTC, and on demand with parameters. For each system (the `system` param, else every
enabled one) and period (`first_day` to `last_day`, local days of the system's time zone; empty: the
last local day that has ended), it measures from the lake through the DuckDB catalog, with SQL:

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
| `refresh_catalog` | brings the DuckDB catalog up to date with the lake (a no-op in 0.2 s when nothing is new) |
| `measure` (one per system) | the measures, and the report at `reports/analytics/system=<id>/period=<first>_<last>/`: `stations.parquet` and `stations.csv` (one row per station), `summary.json`, `report.html` (charts: availability by hour of day, the worst stations, fines by window); a rerun of a period replaces it |

Days asked for without data, or a system without a time zone (`timezone:` in the systems file, else
the feed's system_information), fail the system's task at once with one line naming the fix; a daily
run whose day has no data (a lake younger than a day; a feed down all day, which the checks report)
skips it; a catalog, lake or feed that cannot be reached fails it with retries. Connections: `citibikes_lake` (the lake, as for every DAG).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from citibikes.analytics.errors import AnalyticsError, NoData
from citibikes.config import load_settings
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
    },
    tags=["citibikes", "analytics", "duckdb"],
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
        except AnalyticsError as exc:
            raise AirflowFailException(str(exc)) from None
        print(f"{', '.join(s.system_id for s in systems)}: {first or 'the last local day that ended'}"
              f"{' to ' + last if last else ''}")
        return [{"system": system.system_id, "first": first, "last": last or first} for system in systems]

    @task
    def refresh_catalog() -> str:
        """The DuckDB catalog, up to date with the lake."""
        from citibikes.catalog import refresh_catalog as refresh

        hook, settings = LakeHook(), load_settings()
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

    measure.partial(catalog=refresh_catalog()).expand(period=plan())


def _day(text: str, name: str) -> str:
    """A param's day, checked (empty: none)."""
    try:
        return str(date.fromisoformat(text)) if text else ""
    except ValueError:
        raise AnalyticsError(f"{name} {text!r} is not a day; write YYYY-MM-DD, or leave it empty") from None


citibikes_analytics()
