"""
### citibikes_checks: data-quality checks of the lake, after every catalog update

Runs when the catalog DAG emits `citibikes.catalog`, one run at a time. The checks are SQL written
once (`include/citibikes/checks/definitions.py`, DuckDB's dialect; translated to Athena's by
sqlglot) and run by the common-sql check operators on the catalog the catalog DAG keeps: the DuckDB
file `<state>/catalog/citibikes.duckdb` (the official DuckDB provider's hook, read-only), or the Glue
database `CITIBIKES_GLUE_DATABASE` through Athena (the Amazon provider's `AthenaSQLHook`). Which one
follows the catalog DAG's rule: the `catalog` param (default `CITIBIKES_CATALOG`, else `auto`: the
`citibikes_lake` connection's type, `fs` -> DuckDB, `aws` -> Athena).

They read a window: the `window_hours` (default `CITIBIKES_CHECK_WINDOW_HOURS`, 24) of the feeds'
clock before `as_of` (default: when the run was triggered), of the enabled systems.

| task | operator | passes when |
|---|---|---|
| `plan` | | the engine and each check's SQL for this run (bad params fail here, once) |
| `freshness` | `SQLTableCheckOperator` | per system, the newest observation is at most `max_age_s` (`CITIBIKES_CHECK_MAX_AGE`, 900) before `as_of` |
| `rows_per_hour` | `SQLCheckOperator` | every snapshot of an hour holds at least `min_completeness` (`CITIBIKES_CHECK_MIN_COMPLETENESS`, 0.9) of the stations seen in that hour: an hour's rows >= that share of snapshots x stations |
| `duplicates` | `SQLCheckOperator` | no two rows share (system, station, `last_updated`) |
| `value_ranges` | `SQLColumnCheckOperator` | every count (bikes, e-bikes, disabled bikes, docks, disabled docks) is 0 to 100,000 |
| `described_stations` | `SQLCheckOperator` | every station with a status has a description in `station_information` |
| `quarantine_rate` | `SQLTableCheckOperator` | per system, quarantined status records are at most `max_quarantine_rate` (`CITIBIKES_CHECK_MAX_QUARANTINE_RATE`, 0.05) of all |
| `failed_runs` | `SQLTableCheckOperator` | no `pipeline_runs` row of a run started in the window has outcome `failed` |
| `record` | | writes every check's results to the lake table `checks` (`curated/checks/date=/<run id>.parquet`; a rerun replaces it), then fails the run if a check failed |

Why these invariants hold on correct data (and why rows per hour are not compared with
`pipeline_runs`) is in the module doc of `include/citibikes/checks/definitions.py`. The check tasks
are mapped (one instance each) because their SQL depends on the run's engine and params.

A failed check fails its task at once (no retry: the data would not change), logs its results and
its first 20 offending rows; `record` still runs. A catalog that cannot be queried (no catalog file
yet, Athena unreachable) fails the task with one line naming the check, the catalog and the fix, and
is retried. Connections: `citibikes_catalog` (type `duckdb`, optional: its extra may set
`memory_limit`, `threads`); for Athena `citibikes_athena` (type `athena`, extra `{"work_group":
"citibikes"}`, the workgroup `citibikes aws setup` makes; region and endpoint from `citibikes_lake`'s
extra; keys as its login/password, else the default AWS chain, e.g. the workers' role).
Logic: `include/citibikes/checks/`; operators: `plugins/citibikes_airflow/operators/checks.py`.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from citibikes.catalog import CatalogError
from citibikes.catalog.glue import choose_catalog
from citibikes.checks import CHECK_DOCS, CHECK_OPERATORS, CheckParams, ChecksError, Result, build_checks
from citibikes.config import CATALOGS, load_settings
from citibikes_airflow.assets import CATALOG
from citibikes_airflow.hooks.catalog import ATHENA_CONN_ID, ENGINES
from citibikes_airflow.hooks.lake import LakeHook
from citibikes_airflow.operators.checks import OPERATOR_CLASSES

LAKE_CONN_ID = LakeHook.default_conn_name
CATALOG_CONN_ID = "citibikes_catalog"

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 2,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=10),
}

settings = load_settings()


@dag(
    dag_id="citibikes_checks",
    schedule=[CATALOG],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=20),
    default_args=DEFAULT_ARGS,
    params={
        "catalog": Param(settings.catalog, enum=list(CATALOGS),
                         description="auto (follow the citibikes_lake connection: fs -> DuckDB, aws -> Athena), duckdb or glue"),
        "as_of": Param("", type="string", description="end of the window, ISO 8601 with a time zone; empty: when the run was triggered"),
        "window_hours": Param(settings.check_window_h, type="integer", minimum=1),
        "max_age_s": Param(settings.check_max_age_s, type="integer", minimum=1),
        "max_quarantine_rate": Param(settings.check_max_quarantine_rate, type="number", minimum=0, maximum=1),
        "min_completeness": Param(settings.check_min_completeness, type="number", minimum=0, maximum=1),
    },
    tags=["citibikes", "checks", "duckdb", "athena"],
    doc_md=__doc__,
)
def citibikes_checks():
    @task
    def plan(params=None, dag_run=None) -> list[dict]:
        """The window's end and every check's operator arguments for this run (as a list of one: what
        each check's task maps over)."""
        current = load_settings()
        try:
            engine = ENGINES[choose_catalog(params["catalog"], LakeHook().get_connection(LAKE_CONN_ID).conn_type)]
            as_of = datetime.fromisoformat(params["as_of"]) if params["as_of"] else dag_run.run_after
            check_params = CheckParams.from_settings(
                current, as_of, window_h=params["window_hours"], max_age_s=params["max_age_s"],
                max_quarantine_rate=params["max_quarantine_rate"], min_completeness=params["min_completeness"])
        except (CatalogError, ChecksError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from None
        connection = ({"conn_id": CATALOG_CONN_ID} if engine == "duckdb"
                      else {"conn_id": ATHENA_CONN_ID, "hook_params": {"aws_conn_id": LAKE_CONN_ID}})
        checks = build_checks(check_params, dialect=engine,
                              database=current.glue_database if engine == "athena" else None)
        print(f"engine {engine}; window {check_params.start.isoformat()} to {check_params.as_of.isoformat()}, "
              f"systems {', '.join(check_params.systems)}")
        common = {"engine": engine, "as_of": check_params.as_of.isoformat(), **connection}
        return [{"as_of": check_params.as_of.isoformat(),
                 **{check.name: {"check": dataclasses.asdict(check), **common, **check.operator_args} for check in checks}}]

    @task(trigger_rule="all_done")
    def record(planned: list[dict]) -> None:
        """Write every check's results (a row saying so for a check that did not run) to the lake; fail if one failed."""
        context = get_current_context()
        results = []
        for name in CHECK_OPERATORS:
            pushed = context["ti"].xcom_pull(task_ids=name, key="results", map_indexes=0)
            results += ([Result(**row) for row in pushed] if pushed else
                        [Result(check_name=name, system_id=None, metric="not_run", observed=None, threshold=None,
                                passed=False, as_of=datetime.fromisoformat(planned[0]["as_of"]).timestamp())])
        run = context["dag_run"]
        key = LakeHook().get_lake().write_checks(run.run_id, run.run_after.timestamp(), time.time(), results)
        failed = [f"{r.check_name}{' ' + r.system_id if r.system_id else ''}" for r in results if not r.passed]
        print(f"{len(results)} results written to {key}; {len(failed)} failed")
        if failed:
            raise AirflowFailException(f"{len(failed)} check result(s) failed: {', '.join(failed)}; each check's task "
                                       f"log has its offending rows, {key} all results")

    planned = plan()
    checks = [OPERATOR_CLASSES[kind].partial(task_id=name, retry_on_failure=False, doc_md=f"Passes when {CHECK_DOCS[name]}.")
              .expand_kwargs(planned.map(_arguments_of(name))) for name, kind in CHECK_OPERATORS.items()]
    checks >> record(planned)


def _arguments_of(name: str):  # noqa: ANN202 - a function for XComArg.map (a named one: Airflow keeps its source)
    def arguments(planned: dict) -> dict:
        """One check's operator arguments from the plan."""
        return planned[name]

    return arguments


citibikes_checks()
