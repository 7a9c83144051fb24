"""Check results as rows (the lake's ``checks`` table), as lines, and the checks run on a DuckDB catalog.

The Airflow DAG runs each check's operator and then its ``results_sql`` through the operator's
hook; ``citibikes checks`` runs the ``results_sql`` of every check here, on the DuckDB catalog,
without Airflow. Both turn the rows into :class:`Result` s the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import msgspec

from citibikes.catalog.errors import CatalogError
from citibikes.checks.definitions import OFFENDING_ROWS, Check
from citibikes.errors import first_line


class Result(msgspec.Struct, kw_only=True):
    """One measure of one check (and system): a row of the lake's ``checks`` table, without the run."""

    check_name: str
    system_id: str | None
    metric: str
    observed: float | None
    threshold: float | None
    """None: the check could not run (``metric`` ``not_run``)."""
    passed: bool
    as_of: float
    """End of the window the check read (POSIX s)."""

    def line(self) -> str:
        observed = "none" if self.observed is None else f"{self.observed:g}"
        where = f" {self.system_id}" if self.system_id else ""
        threshold = "" if self.threshold is None else f" (threshold {self.threshold:g})"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.check_name}{where}: {self.metric} = {observed}{threshold}"


def to_results(check: Check, rows: Sequence[Sequence[Any]], as_of: datetime) -> list[Result]:
    """A check's ``results_sql`` rows (``metric, system_id, observed, threshold, passed``) as results."""
    return [Result(check_name=check.name, system_id=system, metric=metric,
                   observed=None if observed is None else float(observed), threshold=float(threshold),
                   passed=bool(passed), as_of=as_of.timestamp())
            for metric, system, observed, threshold, passed in sorted(rows, key=lambda row: row[1] or "")]


def offending_lines(check: Check, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """What a failed check logs: a header, then each offending row as ``column=value`` pairs."""
    first = f" (the first {OFFENDING_ROWS})" if len(rows) >= OFFENDING_ROWS else ""
    lines = [f"{check.name}: {len(rows)} offending row(s){first}:"]
    lines += ["  " + ", ".join(f"{name}={value}" for name, value in zip(columns, row)) for row in rows]
    return lines


def limited(sql: str) -> str:
    """``sql`` limited to the rows a failed check logs."""
    return f"SELECT * FROM ({sql}) AS offending LIMIT {OFFENDING_ROWS}"


def run_on_duckdb(con: duckdb.DuckDBPyConnection, checks: Sequence[Check],
                  as_of: datetime) -> tuple[list[Result], list[str]]:
    """Every check's results on an open DuckDB catalog, and the offending rows of those that failed
    (as lines); a check that cannot be run is a one-line CatalogError naming it."""
    results: list[Result] = []
    lines: list[str] = []
    for check in checks:
        try:
            found = to_results(check, con.execute(check.results_sql).fetchall(), as_of)
            if not all(result.passed for result in found):
                cursor = con.execute(limited(check.offending_sql))
                lines += offending_lines(check, [d[0] for d in cursor.description], cursor.fetchall())
        except duckdb.Error as exc:
            raise CatalogError(f"check {check.name} cannot read the catalog: {first_line(exc)}; refresh the "
                               "catalog (citibikes catalog --refresh) and run the checks again") from None
        results += found
    return results, lines
