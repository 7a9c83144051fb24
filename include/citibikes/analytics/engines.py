"""Where the analytics' SQL (:mod:`citibikes.analytics.sql`) runs: the embedded DuckDB catalog, or an engine
reached by a DB-API connection (Athena over the Glue catalog; Trino, which Athena's SQL is, in the tests).

Both give the same three things to :func:`citibikes.analytics.measures.measure`: a table's columns, the work
tables made once for a period (:meth:`load`), and a query's rows. DuckDB keeps the work tables as temporary
tables and binds the parameters. Athena has no temporary tables, so each query carries them as common
table expressions (the engine scans the lake again for each query that reads them; five queries do), its
parameters written in as literals, and the whole is translated by sqlglot.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, Protocol

import duckdb
import sqlglot
from sqlglot import exp


class Engine(Protocol):
    def columns(self, table: str) -> set[str]:
        """The column names of a catalog table (none when it has no such table)."""

    def load(self, tables: list[tuple[str, str]], parameters: dict[str, Any]) -> None:
        """Make the work tables (names and queries, in order) for the queries that follow."""

    def rows(self, query: str, parameters: dict[str, Any] | None = None) -> list[Any]:
        """A query's rows (tuples or lists), over the catalog and the work tables."""


class DuckDBEngine:
    """The embedded catalog: a DuckDB connection that holds the catalog's views."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def columns(self, table: str) -> set[str]:
        return {column[0] for column in self.con.execute(f"SELECT * FROM {table} LIMIT 0").description}

    def load(self, tables: list[tuple[str, str]], parameters: dict[str, Any]) -> None:
        for name, query in tables:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {query}", _used(query, parameters))

    def rows(self, query: str, parameters: dict[str, Any] | None = None) -> list[Any]:
        return self.con.execute(query, _used(query, parameters or {})).fetchall()


class SqlEngine:
    """A DB-API connection to an engine of sqlglot's ``dialect`` (``athena``, ``trino``), the lake's tables in
    ``database`` (Athena: the Glue database). ``cursor`` makes a cursor (default: the connection's; for Athena,
    pyathena's ``ArrowCursor``, which reads a large result from S3 at once rather than a page at a time)."""

    def __init__(self, connection: Any, dialect: str, database: str, cursor: Any = None) -> None:
        self.dialect, self.database = dialect, database
        self.cursor = cursor or connection.cursor
        self.tables: list[exp.CTE] = []

    def columns(self, table: str) -> set[str]:
        """Empty for a table the database lacks (the Glue crawler makes one only once its folder has a file)."""
        query = ("SELECT column_name FROM information_schema.columns WHERE table_schema = $database "
                 "AND table_name = $table")
        return {name for (name,) in self._fetch(_bound(query, {"database": self.database, "table": table}))}

    def load(self, tables: list[tuple[str, str]], parameters: dict[str, Any]) -> None:
        self.tables = [exp.CTE(this=_bound(query, parameters), alias=exp.TableAlias(this=exp.to_identifier(name)))
                       for name, query in tables]

    def rows(self, query: str, parameters: dict[str, Any] | None = None) -> list[Any]:
        tree = _bound(query, parameters or {})
        own = tree.args.get("with_")
        tree.set("with_", exp.With(expressions=[*(cte.copy() for cte in self.tables), *(own.expressions if own else [])]))
        return self._fetch(tree)

    def _fetch(self, tree: exp.Expression) -> list[Any]:
        cursor = self.cursor()
        try:
            cursor.execute(self._translate(tree))
            return cursor.fetchall()
        finally:
            cursor.close()

    def _translate(self, tree: exp.Expression) -> str:
        """The query in the engine's dialect, every table that is not a work table in :attr:`database`."""
        work = {cte.alias for cte in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not table.db and table.name not in work:
                table.set("db", exp.to_identifier(self.database, quoted=True))
        return tree.sql(dialect=self.dialect, unsupported_level=sqlglot.ErrorLevel.RAISE)


def _used(query: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``query`` names (DuckDB refuses others)."""
    return {key: value for key, value in parameters.items() if re.search(rf"\${key}\b", query)}


def _bound(query: str, parameters: dict[str, Any]) -> exp.Expression:
    """``query`` with its ``$name`` parameters as literals: a text as a string; a time as a UTC ``TIMESTAMP`` (the
    lake's times are UTC instants, which Athena reads as timestamps without a zone); a day as its ISO text (a
    Glue partition key is a string, and ISO days compare as their texts do)."""

    def literal(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Placeholder):
            return node
        value = parameters[node.name]
        if isinstance(value, datetime):
            return exp.cast(exp.Literal.string(f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"), "TIMESTAMP")
        if isinstance(value, date):
            return exp.Literal.string(value.isoformat())
        return exp.Literal.string(str(value))

    return sqlglot.parse_one(query, read="duckdb").transform(literal)

