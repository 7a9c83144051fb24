"""The lake's catalogs as Airflow reaches them: the DuckDB catalog file as a common-sql hook (the official
DuckDB provider's ``DuckDBHook``, read-only), and the Glue catalog through Athena as the analytics' engine.

The database is always the catalog file of the settings (``<state>/catalog/citibikes.duckdb``), so
it cannot drift from where the catalog DAG writes it. The connection ``citibikes_catalog`` (type
``duckdb``) is optional, like the provider's default one: its extra may set ``memory_limit``,
``threads`` and other DuckDB settings. For an S3 lake the views read S3, so the lake's S3 settings
are added as a DuckDB secret (httpfs from the ``duckdb-extension-httpfs`` package: no download).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

from citibikes.analytics.engines import SqlEngine
from citibikes.catalog import CatalogError, S3Access

ENGINES = {"duckdb": "duckdb", "glue": "athena"}
"""The engine that queries each catalog."""
ATHENA_CONN_ID = "citibikes_athena"
"""Athena's connection (type ``athena``: the Amazon provider's ``AthenaSQLHook``; extra ``work_group``,
``region_name``); its AWS credentials are the lake connection's."""


class CatalogDuckDBHook(DuckDBHook):
    default_conn_name = "citibikes_catalog"
    hook_name = "citibikes DuckDB catalog"

    def __init__(self, path: Path | str, *, s3: S3Access | None = None, **kwargs: Any) -> None:
        super().__init__(database=str(path), read_only=True, **kwargs)
        self.path, self.s3 = Path(path), s3

    def get_conn(self):  # noqa: ANN201 - DuckDBHook's
        if not self.path.exists():
            raise CatalogError(f"no catalog at {self.path} yet; let the citibikes_catalog DAG run (or run "
                               "`citibikes catalog --refresh`), then run the checks again")
        return super().get_conn()

    def configure_secrets(self, conn) -> None:  # noqa: ANN001 - DuckDBHook's
        if self.s3 is not None:
            self.s3.prepare(conn)


@contextmanager
def athena_engine(database: str, aws_conn_id: str) -> Iterator[SqlEngine]:
    """The Glue ``database``'s tables through Athena (:data:`ATHENA_CONN_ID`, credentials of ``aws_conn_id``), as
    the analytics' engine; a result is read from its CSV in S3 by pyathena's ``ArrowCursor``, at once."""
    from airflow.providers.amazon.aws.hooks.athena_sql import AthenaSQLHook
    from pyathena.arrow.cursor import ArrowCursor

    connection = AthenaSQLHook(athena_conn_id=ATHENA_CONN_ID, aws_conn_id=aws_conn_id).get_conn()
    try:
        yield SqlEngine(connection, "athena", database, cursor=lambda: connection.cursor(ArrowCursor))
    finally:
        connection.close()
