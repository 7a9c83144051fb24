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
| `plan` | the systems and periods of this run (bad params fail here, without retries) |
| `refresh_catalog` | brings the DuckDB catalog up to date with the lake (a no-op in 0.2 s when nothing is new) |
| `measure` (one per system) | the measures, and the report at `reports/analytics/system=<id>/period=<first>_<last>/`: `stations.parquet` and `stations.csv` (one row per station), `summary.json`, `report.html` (charts: availability by hour of day, the worst stations, fines by window); a rerun of a period replaces it |

A period without data, or a system without a time zone (`timezone:` in the systems file, else the
feed's system_information), fails its task at once with one line naming the fix; a catalog or lake that
cannot be reached fails it with retries. Connections: `citibikes_lake` (the lake, as for every DAG).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from citibikes.analytics.errors import AnalyticsError
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
    def plan(params=None, dag_run=None) -> list[dict]:
        """Each system's period: the params' days, else the last local day that ended before the run."""
        from citibikes.analytics.run import choose_system, system_timezone

        settings = load_settings()
        try:
            systems = ([choose_system(settings, params["system"])] if params["system"]
                       else [s for s in settings.systems if s.enabled])
            first = date.fromisoformat(params["first_day"]) if params["first_day"] else None
            last = date.fromisoformat(params["last_day"]) if params["last_day"] else first
            planned = []
            for system in systems:
                zone = system_timezone(system)
                yesterday = datetime.fromtimestamp(dag_run.run_after.timestamp(), ZoneInfo(zone)).date() - timedelta(days=1)
                planned.append({"system": system.system_id, "first": str(first or yesterday),
                                "last": str(last or yesterday)})
        except (AnalyticsError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from None
        print("\n".join(f"{p['system']}: {p['first']} to {p['last']}" for p in planned))
        return planned

    @task
    def refresh_catalog() -> str:
        """The DuckDB catalog, up to date with the lake."""
        from citibikes.catalog import refresh_catalog as refresh

        hook, settings = LakeHook(), load_settings()
        summary = refresh(hook.get_lake(), settings.catalog_path, s3=hook.s3_access(), grace_s=settings.compaction_grace_s)
        print(summary.line())
        return str(settings.catalog_path)

    @task(map_index_template="{{ period['system'] }}", doc_md="One system's measures and report.")
    def measure(period: dict, catalog: str) -> dict:
        """One system's measures and report."""
        import msgspec

        from citibikes.analytics.run import choose_system, lines, run
        from citibikes.catalog import connect

        hook = LakeHook()
        lake = hook.get_lake()
        con = connect(catalog, s3=hook.s3_access())
        try:
            analytics, keys = run(con, lake, choose_system(load_settings(), period["system"]),
                                  date.fromisoformat(period["first"]), date.fromisoformat(period["last"]))
        except AnalyticsError as exc:
            raise AirflowFailException(str(exc)) from None
        finally:
            con.close()
        print("\n".join(lines(analytics)))
        print(f"report: {lake.storage.uri(keys[-1])}")
        return {"report": keys[-1], **msgspec.to_builtins(analytics.system)}

    measure.partial(catalog=refresh_catalog()).expand(period=plan())


citibikes_analytics()
