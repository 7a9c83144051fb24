"""The common-sql check operators, run on the lake's catalog, with their results kept and their offending rows logged.

Each class is the provider's operator (``SQLColumnCheckOperator``, ``SQLTableCheckOperator``,
``SQLCheckOperator``) with :class:`LakeCheck` in front, which gives it a :class:`~citibikes.checks.Check`
(``check``, its SQL in the engine's dialect) and an ``engine``:

* ``duckdb``: the hook is :class:`~citibikes_airflow.hooks.catalog.CatalogDuckDBHook` (the catalog
  file, read-only); ``athena``: the operator's own hook for its ``conn_id`` (an ``athena``
  connection: the Amazon provider's ``AthenaSQLHook``).
* After the operator's verdict, the check's ``results_sql`` is run and its rows pushed to XCom
  (key ``results``) for the DAG's ``record`` task, and logged.
* When the check failed, the first :data:`~citibikes.checks.OFFENDING_ROWS` rows of its
  ``offending_sql`` are logged, and the task fails without a retry (the data would not change).
* When the catalog cannot be queried, the task fails with one line naming the check, the engine
  and the fix, and is retried (the catalog file may be being created, Athena may be busy).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from airflow.providers.common.sql.hooks.handlers import fetch_all_handler
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.providers.common.sql.operators.sql import (
    SQLCheckOperator,
    SQLColumnCheckOperator,
    SQLTableCheckOperator,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from citibikes.catalog import CatalogError
from citibikes.checks import Check, limited, offending_lines, to_results
from citibikes.config import load_settings
from citibikes.errors import first_line
from citibikes_airflow.hooks.catalog import CatalogDuckDBHook
from citibikes_airflow.hooks.lake import LakeHook

ENGINES = ("duckdb", "athena")


class LakeCheck:
    """What the lake's check operators add to the provider's (see the module doc)."""

    def __init__(self, *, check: dict[str, Any], engine: str, as_of: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is unknown; use one of {', '.join(ENGINES)}")
        self.check, self.engine, self.as_of = check, engine, as_of

    def get_db_hook(self) -> DbApiHook:
        if self.engine == "duckdb":
            return CatalogDuckDBHook(load_settings().catalog_path, s3=LakeHook().s3_access(), duckdb_conn_id=self.conn_id)
        return super().get_db_hook()

    def execute(self, context: Any) -> None:
        check = Check(**self.check)
        try:
            super().execute(context)
            verdict = None
        except AirflowFailException as failed:  # the operator's verdict (retry_on_failure=False)
            verdict = failed
        except Exception as exc:  # noqa: BLE001 - the catalog, not the data
            raise self._unreachable(check, exc) from None
        hook = self.get_db_hook()
        try:
            results = to_results(check, hook.get_records(check.results_sql), datetime.fromisoformat(self.as_of))
            rows = [] if verdict is None else hook.run(limited(check.offending_sql), handler=fetch_all_handler)
        except Exception as exc:  # noqa: BLE001 - the catalog, not the data
            raise self._unreachable(check, exc) from None
        context["ti"].xcom_push(key="results", value=msgspec.to_builtins(results))
        for result in results:
            self.log.info("%s", result.line())
        if verdict is None:
            return
        for line in offending_lines(check, [column[0] for column in hook.last_description or ()], rows or []):
            self.log.error("%s", line)
        failed = "; ".join(result.line() for result in results if not result.passed)
        raise AirflowFailException(f"check {check.name} failed: {failed or first_line(verdict)}; "
                                   "its offending rows are logged above")

    def _unreachable(self, check: Check, exc: Exception) -> Exception:
        where = load_settings().catalog_path if self.engine == "duckdb" else f"Athena connection {self.conn_id!r}"
        if isinstance(exc, CatalogError):
            return exc
        if isinstance(exc, AirflowNotFoundException):  # no retry defines a connection
            return AirflowFailException(f"check {check.name}: {first_line(exc)}; define it (see the DAG's docs)")
        fix = ("refresh the catalog (citibikes_catalog DAG or `citibikes catalog --refresh`)" if self.engine == "duckdb"
               else "check the connection (type athena: extra work_group, region_name) and the Glue database")
        return CatalogError(f"check {check.name} cannot query the {self.engine} catalog ({where}): "
                            f"{first_line(exc)}; {fix}")


class LakeColumnCheckOperator(LakeCheck, SQLColumnCheckOperator):
    """``SQLColumnCheckOperator`` on the lake's catalog."""


class LakeTableCheckOperator(LakeCheck, SQLTableCheckOperator):
    """``SQLTableCheckOperator`` on the lake's catalog."""


class LakeSQLCheckOperator(LakeCheck, SQLCheckOperator):
    """``SQLCheckOperator`` on the lake's catalog."""


OPERATOR_CLASSES = {"column": LakeColumnCheckOperator, "table": LakeTableCheckOperator, "sql": LakeSQLCheckOperator}
"""The operator of each kind of :data:`~citibikes.checks.CHECK_OPERATORS`."""
