"""The data-quality checks' Athena SQL run on Trino (the engine Athena's SQL is) over the lake's tables as the Glue
crawler declares them (partition keys as strings), against the same checks on the DuckDB catalog: every check's
results and offending rows agree, on the lake the pipeline made and on one broken for four checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.checks_lake import SYSTEMS, ChecksLake, checks_lake
from support.trino import TrinoServer

from citibikes.catalog import connect, refresh_catalog
from citibikes.checks import CheckParams, Result, build_checks, run_on_duckdb, to_results


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> ChecksLake:
    return checks_lake(tmp_path_factory.mktemp("checks-lake"))


def broken(made: ChecksLake, folder: Path) -> ChecksLake:
    lake = made.copy(folder)
    lake.duplicate_a_file("citibike")
    lake.rewrite_newest("synth-01", "num_bikes_available", 0, -3)
    lake.fail_a_run("citibike")
    lake.quarantine_many("synth-01", 400)
    return lake


@pytest.mark.parametrize("breakage", [None, broken])
def test_the_checks_agree_on_duckdb_and_on_trino(made: ChecksLake, breakage, trino_server: TrinoServer,  # noqa: ANN001
                                                 tmp_path: Path) -> None:
    lake = breakage(made, tmp_path) if breakage else made
    settings = lake.settings
    refresh_catalog(lake.lake, settings.catalog_path)
    params = CheckParams.from_settings(settings, datetime.now(UTC), systems=SYSTEMS)
    con = connect(settings.catalog_path)
    try:
        on_duckdb, _ = run_on_duckdb(con, build_checks(params), params.as_of)
        offending_on_duckdb = {c.name: sorted(map(tuple, con.execute(c.offending_sql).fetchall()))
                               for c in build_checks(params)}
    finally:
        con.close()
    schema = f"checks_{uuid.uuid4().hex[:12]}"
    trino_server.register(lake.root / "lake", schema)
    cursor = trino_server.connect().cursor()
    on_trino: list[Result] = []
    for check in build_checks(params, dialect="athena", database=schema):
        cursor.execute(check.results_sql)
        on_trino += to_results(check, cursor.fetchall(), params.as_of)
        cursor.execute(check.offending_sql)
        offending = sorted(tuple(_utc(v) for v in row) for row in cursor.fetchall())
        assert offending == offending_on_duckdb[check.name], check.name

    def key(result: Result) -> tuple:
        return result.check_name, result.system_id or "", result.metric

    assert sorted(on_trino, key=key) == sorted(on_duckdb, key=key)
    failed = {r.check_name for r in on_duckdb if not r.passed}
    assert failed == ({"duplicates", "value_ranges", "failed_runs", "quarantine_rate"} if breakage else set())


def _utc(value: object) -> object:
    """Trino's timestamps come without a zone (they are UTC); DuckDB's with it."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value
