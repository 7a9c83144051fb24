"""The checks' SQL: written once in DuckDB's dialect, translated to Athena's, run for real on a DuckDB
catalog of a lake the pipeline made; their thresholds and settings; results in the lake."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlglot

from citibikes.catalog import connect, refresh_catalog
from citibikes.checks import CHECK_OPERATORS, Check, CheckParams, ChecksError, build_checks, run_on_duckdb, to_results
from citibikes.config import ConfigError, load_settings
from citibikes.lake import open_lake
from support.pipeline_lake import pipeline_lake

AS_OF = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _params(**overrides) -> CheckParams:
    values = {"as_of": AS_OF, "window_h": 24, "max_age_s": 900, "max_quarantine_rate": 0.05,
              "min_completeness": 0.9, "systems": ("citibike", "synth-01")}
    return CheckParams(**{**values, **overrides})


def _texts(check: Check) -> list[str]:
    """Every SQL text of a check: its queries, and what its operator runs."""
    args = check.operator_args
    texts = [check.results_sql, check.offending_sql, *(args[k] for k in ("sql", "table", "partition_clause") if k in args)]
    texts += [text for entry in args.get("checks", {}).values() for text in entry.values()]
    return texts


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory):
    """A DuckDB catalog of three minute runs of two systems, the last a minute ago."""
    folder = tmp_path_factory.mktemp("checks-unit")
    pipeline = pipeline_lake(folder, start=time.time() - 240)
    try:
        for _ in range(3):
            pipeline.minute()
    finally:
        pipeline.close()
    refresh_catalog(pipeline.lake, pipeline.settings.catalog_path)
    con = connect(pipeline.settings.catalog_path)
    yield con, pipeline.settings, folder
    con.close()


def test_there_is_one_check_per_operator_entry_each_with_its_operators_arguments() -> None:
    checks = build_checks(_params())
    assert [c.name for c in checks] == list(CHECK_OPERATORS)
    required = {"column": {"table", "column_mapping", "partition_clause"}, "table": {"table", "checks"}, "sql": {"sql"}}
    for check in checks:
        assert required[check.operator] <= set(check.operator_args), check.name


@pytest.mark.parametrize("name", list(CHECK_OPERATORS))
def test_every_sql_text_parses_in_duckdb_and_translates_to_athena(name: str) -> None:
    (duckdb_check,) = [c for c in build_checks(_params()) if c.name == name]
    (athena_check,) = [c for c in build_checks(_params(), dialect="athena", database="citibikes_analytics") if c.name == name]
    for text in _texts(duckdb_check):
        sqlglot.parse_one(text, read="duckdb")
    for text in _texts(athena_check):
        parsed = sqlglot.parse_one(text, read="athena")  # Athena's own dialect reads it back
        assert "TIMESTAMPTZ" not in text and "DATE '" not in text, text
        for table in parsed.find_all(sqlglot.exp.Table):
            if table.name in ("station_status", "station_information", "quarantine", "pipeline_runs"):
                assert table.db == "citibikes_analytics", text
    assert "TIMESTAMP WITH TIME ZONE" in athena_check.results_sql or name == "value_ranges"


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(ChecksError, match="no SQL dialect 'postgres'"):
        build_checks(_params(), dialect="postgres")


def test_every_check_passes_on_a_lake_the_pipeline_made(catalog) -> None:
    con, settings, _ = catalog
    params = CheckParams.from_settings(settings)
    results, offending = run_on_duckdb(con, build_checks(params), params.as_of)
    assert results and all(r.passed for r in results), [r.line() for r in results if not r.passed]
    assert offending == []
    assert {r.system_id for r in results if r.check_name == "freshness"} == {"citibike", "synth-01"}
    # What the operators run says the same (SQLCheckOperator: the first row is true).
    for check in build_checks(params):
        if check.operator == "sql":
            assert con.execute(check.operator_args["sql"]).fetchone() == (True,), check.name


@pytest.mark.parametrize(("overrides", "failing"), [({"max_age_s": 1}, "freshness"),
                                                  ({"max_quarantine_rate": 0.0}, "quarantine_rate")])
def test_thresholds_decide_the_verdict(catalog, overrides: dict, failing: str) -> None:
    con, settings, _ = catalog
    params = CheckParams.from_settings(settings, **overrides)
    results, offending = run_on_duckdb(con, build_checks(params), params.as_of)
    assert {(r.check_name, r.system_id) for r in results if not r.passed} == {(failing, "citibike"), (failing, "synth-01")}
    assert offending[0].startswith(f"{failing}: ") and all(failing in line or line.startswith("  ") for line in offending)


def test_a_window_before_the_data_sees_nothing_and_only_freshness_fails(catalog) -> None:
    con, settings, _ = catalog
    params = CheckParams.from_settings(settings, as_of=datetime.now(UTC) - timedelta(days=3))
    results, _ = run_on_duckdb(con, build_checks(params), params.as_of)
    assert {(r.check_name, r.observed) for r in results if not r.passed} == {("freshness", None)}


def test_settings_give_the_thresholds_and_bad_ones_are_one_line() -> None:
    settings = load_settings({"CITIBIKES_CHECK_WINDOW_HOURS": "6", "CITIBIKES_CHECK_MAX_AGE": "120",
                              "CITIBIKES_CHECK_MAX_QUARANTINE_RATE": "0.2", "CITIBIKES_CHECK_MIN_COMPLETENESS": "0.5",
                              "CITIBIKES_FEED": "replay"})
    params = CheckParams.from_settings(settings, AS_OF, max_age_s=60)
    assert (params.window_h, params.max_age_s, params.max_quarantine_rate, params.min_completeness) == (6, 60, 0.2, 0.5)
    assert params.systems == tuple(s.system_id for s in settings.systems if s.enabled)
    with pytest.raises(ConfigError, match=r"^CITIBIKES_CHECK_MAX_QUARANTINE_RATE='5%' is not a share between 0 and 1"):
        load_settings({"CITIBIKES_CHECK_MAX_QUARANTINE_RATE": "5%"})
    with pytest.raises(ConfigError, match=r"^CITIBIKES_CHECK_MAX_AGE='-1' must be positive"):
        load_settings({"CITIBIKES_CHECK_MAX_AGE": "-1"})


def test_bad_params_are_one_line() -> None:
    with pytest.raises(ChecksError, match="has no time zone"):
        _params(as_of=datetime(2026, 12, 7, 12)).validate()
    with pytest.raises(ChecksError, match="no enabled system to check"):
        _params(systems=()).validate()
    with pytest.raises(ChecksError, match="min_completeness is 1.5"):
        build_checks(_params(min_completeness=1.5))


def test_results_are_rows_of_the_lakes_checks_table(tmp_path: Path) -> None:
    (check,) = [c for c in build_checks(_params()) if c.name == "freshness"]
    results = to_results(check, [("age_s", "synth-01", None, 900.0, False), ("age_s", "citibike", 42, 900.0, True)], AS_OF)
    assert [r.line() for r in results] == ["PASS  freshness citibike: age_s = 42 (threshold 900)",
                                           "FAIL  freshness synth-01: age_s = none (threshold 900)"]
    lake = open_lake(str(tmp_path / "lake"))
    key = lake.write_checks("manual__2026-12-07T12:00:00+00:00", AS_OF.timestamp(), AS_OF.timestamp() + 5, results)
    assert key == "curated/checks/date=2026-12-07/manual__2026-12-07T12_00_00_00_00.parquet"
    rows = lake.read_table("checks").to_pylist()
    assert [(r["check_name"], r["system_id"], r["observed"], r["passed"], r["date"].isoformat()) for r in rows] == [
        ("freshness", "citibike", 42.0, True, "2026-12-07"), ("freshness", "synth-01", None, False, "2026-12-07")]
    assert rows[0]["checked_at"] == AS_OF + timedelta(seconds=5) and rows[0]["as_of"] == AS_OF


def test_the_command_prints_every_result_and_exits_1_when_one_fails(catalog, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from citibikes.cli import main

    _, _, folder = catalog
    for name, value in {"CITIBIKES_STATE_DIR": folder / "state", "CITIBIKES_LAKE_URI": folder / "lake",
                        "CITIBIKES_SYSTEMS_FILE": folder / "systems.yaml",
                        "CITIBIKES_PIPELINE_FILE": folder / "pipeline.yaml"}.items():
        monkeypatch.setenv(name, str(value))
    assert main(["checks"]) == 0
    out = capsys.readouterr().out
    assert "PASS  freshness citibike: age_s = " in out and out.endswith("22 results: 22 passed, 0 failed\n")
    monkeypatch.setenv("CITIBIKES_CHECK_MAX_AGE", "1")
    assert main(["checks", "--window-hours", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  freshness synth-01: age_s = " in out and "freshness: 2 offending row(s):" in out
    assert "  system=synth-01, newest=" in out and out.endswith("22 results: 20 passed, 2 failed\n")
    assert main(["checks", "--as-of", "2026-12-07 12:00"]) == 2
    assert capsys.readouterr().err == "error: as_of 2026-12-07T12:00:00 has no time zone; give it in UTC, e.g. 2026-12-07T12:00:00Z\n"
