"""The checks DAG's Athena path, run for real (dag.test) against moto's server: the wiring, not Athena.

moto's Athena runs no SQL (every query succeeds with no rows), so every check fails here with the
operators' "returned zero rows"; what this shows is that an ``aws`` lake connection sends the checks
to Athena through the Amazon provider's ``AthenaSQLHook`` (connection ``citibikes_athena``,
credentials of ``citibikes_lake``), in the ``citibikes`` workgroup, in Athena's dialect, on the
tables of the Glue database; and that the results land in the S3 lake's ``checks`` table.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from citibikes.checks import CHECK_OPERATORS
from citibikes.lake import open_lake
from test_catalog_glue_dag import BUCKET, REGION, glue, moto  # noqa: F401 - moto's server, an S3 lake on it

pytestmark = [pytest.mark.airflow, pytest.mark.aws]
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "checks.py"


def test_the_checks_go_to_athena_in_its_dialect_and_the_results_to_the_s3_lake(
        moto: str, glue, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _, _, lake_uri = glue  # an S3 lake on moto behind an aws citibikes_lake connection
    monkeypatch.setenv("CITIBIKES_FEED", "replay")
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_ATHENA", json.dumps({
        "conn_type": "athena", "login": "testing", "password": "testing",
        "extra": {"work_group": "citibikes", "region_name": REGION}}))
    options = {"endpoint_url": moto, "region_name": REGION, "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}
    athena = boto3.client("athena", **options)
    if "citibikes" not in {w["Name"] for w in athena.list_work_groups()["WorkGroups"]}:
        athena.create_work_group(Name="citibikes", Configuration={
            "ResultConfiguration": {"OutputLocation": f"s3://{BUCKET}/_athena/"}})
    before = set(athena.list_query_executions(WorkGroup="citibikes").get("QueryExecutionIds", []))

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    run = bag.dags["citibikes_checks"].test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan"] == "success" and {states[name] for name in CHECK_OPERATORS} == {"failed"}, states
    assert run.state == "failed"

    ids = set(athena.list_query_executions(WorkGroup="citibikes")["QueryExecutionIds"]) - before
    queries = [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]
    assert len(queries) >= 2 * len(CHECK_OPERATORS)  # each check's operator, then its results query
    for table in ("station_status", "station_information", "quarantine", "pipeline_runs"):
        assert any(f'"citibikes_analytics".{table}' in q for q in queries), table
    assert all("TIMESTAMPTZ" not in q for q in queries)
    assert any("CAST(" in q and "AS TIMESTAMP WITH TIME ZONE)" in q for q in queries)
    assert any(q.startswith("SELECT col_name, check_type, check_result FROM") for q in queries)  # SQLColumnCheckOperator
    assert any(q.startswith("SELECT check_name, check_result FROM") for q in queries)  # SQLTableCheckOperator

    lake = open_lake(lake_uri, endpoint_url=moto, region=REGION, access_key="testing", secret_key="testing")
    rows = [r for r in lake.read_table("checks").to_pylist() if r["run_id"] == run.run_id]
    assert {(r["check_name"], r["metric"], r["passed"]) for r in rows} == {
        (name, "not_run", False) for name in CHECK_OPERATORS}
