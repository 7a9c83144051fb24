"""Data-quality checks of the lake, written once as SQL and run on DuckDB (the catalog file) or Athena.

:mod:`citibikes.checks.definitions` holds the checks and their invariants;
:mod:`citibikes.checks.results` turns what they measure into rows of the lake's ``checks`` table
and runs them on a DuckDB catalog (``citibikes checks``). The Airflow DAG ``citibikes_checks`` runs
them with the common-sql check operators.
"""

from citibikes.checks.definitions import CHECK_DOCS, CHECK_OPERATORS, OFFENDING_ROWS, Check, CheckParams, ChecksError, build_checks, translate
from citibikes.checks.results import Result, limited, offending_lines, run_on_duckdb, to_results

__all__ = ["CHECK_DOCS", "CHECK_OPERATORS", "OFFENDING_ROWS", "Check", "CheckParams", "ChecksError", "Result", "build_checks", "limited",
           "offending_lines", "run_on_duckdb", "to_results", "translate"]
