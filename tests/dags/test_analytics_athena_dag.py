"""The analytics DAG's Athena path, run for real (dag.test) against moto's server: the wiring, not Athena.

The SQL itself runs on Trino, the engine Athena's SQL is, in ``tests/integration/test_analytics.py``. moto's
Athena runs no SQL (every query answers no rows), so the run fails at the first query whose answer must have
a row (the system's count of snapshots); what this shows is that an ``aws`` lake connection sends the
analytics to Athena (connection ``citibikes_athena``, credentials of ``citibikes_lake``, results read by
pyathena's ``ArrowCursor``) in the ``citibikes`` workgroup, in Athena's dialect, on the Glue database's
tables with the work tables inlined, without refreshing a DuckDB catalog.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from support.dags import load_dag
from test_catalog_glue_dag import BUCKET, REGION, glue, moto  # noqa: F401 - moto's server, an S3 lake on it

pytestmark = [pytest.mark.airflow, pytest.mark.aws]


def test_the_analytics_go_to_athena_in_its_dialect(moto: str, glue, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "systems.yaml").write_text("systems:\n  - id: test\n    discovery_url: http://127.0.0.1:9/gbfs.json\n"
                                           "    timezone: America/New_York\n")
    monkeypatch.setenv("CITIBIKES_SYSTEMS_FILE", str(tmp_path / "systems.yaml"))
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_ATHENA", json.dumps({
        "conn_type": "athena", "login": "testing", "password": "testing",
        "extra": {"work_group": "citibikes", "region_name": REGION}}))
    athena = boto3.client("athena", endpoint_url=moto, region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    if "citibikes" not in {w["Name"] for w in athena.list_work_groups()["WorkGroups"]}:
        athena.create_work_group(Name="citibikes", Configuration={
            "ResultConfiguration": {"OutputLocation": f"s3://{BUCKET}/_athena/"}})
    before = set(athena.list_query_executions(WorkGroup="citibikes").get("QueryExecutionIds", []))

    dag = load_dag("citibikes_analytics")
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf={"system": "test", "first_day": "2026-03-02", "last_day": ""})
    instances = {ti.task_id: ti for ti in run.get_task_instances()}
    assert {name: ti.state for name, ti in instances.items()} == {
        "plan": "success", "refresh_catalog": "success", "measure": "failed"}
    assert not (tmp_path / "state" / "catalog").exists()  # no DuckDB catalog was made

    ids = set(athena.list_query_executions(WorkGroup="citibikes")["QueryExecutionIds"]) - before
    queries = [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]
    assert ("SELECT column_name FROM information_schema.columns WHERE table_schema = 'citibikes_analytics' "
            "AND table_name = 'quarantine'") in queries  # the quarantine's columns (moto: none, so no such table)
    inlined = [q for q in queries if q.startswith("WITH analytics_stations AS (")]
    assert len(inlined) == 2  # the stations described, then the count of snapshots, which had to have a row
    assert any(q.endswith(" SELECT station_id, name, lat, lon FROM analytics_stations ORDER BY sid") for q in inlined)
    for query in inlined:
        for part in ('"citibikes_analytics".station_status', '"citibikes_analytics".station_information',
                     "analytics_records AS (", "MAX_BY(", "AT_TIMEZONE(last_updated, 'America/New_York')",
                     "\"date\" BETWEEN '2026-03-02' AND '2026-03-03'"):
            assert part in query, part
        assert "$" not in query and "TIMESTAMPTZ" not in query and "list_contains" not in query
