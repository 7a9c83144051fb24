"""The catalog DAG's Glue path, run for real (dag.test) against moto's server: the wiring, not Glue.

moto's crawler completes without making tables, so this checks which calls the DAG makes, with what
(one S3 target per table root, the database and role ``citibikes aws setup`` makes), and when: the
crawler is created once, updated afterwards, and not run again within ``CITIBIKES_GLUE_CRAWL_EVERY``.
moto has no GetCrawlerMetrics, which the provider's (non-deferred) wait calls to log the crawl's
figures after the crawler is READY: the test's wait leaves that call out.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from support.moto_server import moto_server
from support.dags import load_dag

pytestmark = [pytest.mark.airflow, pytest.mark.aws]
BUCKET, REGION = "citibikes-lake", "us-east-1"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        # moto's crawls stay RUNNING until told otherwise: let each complete when it is next looked at
        body = json.dumps({"model_name": "glue::crawl", "transition": {"progression": "immediate"}}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/state-manager/set-transition",
                                                      data=body, method="POST"), timeout=10)
        yield endpoint


@pytest.fixture
def glue(moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: Path):
    """An S3 lake on moto behind an ``aws`` citibikes_lake connection; moto's Glue client."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "CITIBIKES_CATALOG",
                 "CITIBIKES_GLUE_CRAWL_EVERY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(tmp_path / "state"))
    prefix = tmp_path.name.replace("_", "-")[-40:]
    lake_uri = f"s3://{BUCKET}/{prefix}"
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"lake_uri": lake_uri, "region_name": REGION, "endpoint_url": moto}}))
    options = {"endpoint_url": moto, "region_name": REGION, "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}
    s3 = boto3.client("s3", **options)
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    client = boto3.client("glue", **options)
    crawler = f"citibikes-{prefix}"
    monkeypatch.setenv("CITIBIKES_GLUE_CRAWLER", crawler)
    yield client, crawler, lake_uri
    if crawler in client.list_crawlers()["CrawlerNames"]:
        client.delete_crawler(Name=crawler)


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}



def test_an_s3_lake_connection_sends_the_run_to_a_glue_crawler_created_once_then_updated(
        glue, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.amazon.aws.hooks.glue_crawler import GlueCrawlerHook

    def wait_without_metrics(self, crawler_name: str, poll_interval: int = 5) -> str:
        self.get_waiter("crawler_ready").wait(Name=crawler_name, WaiterConfig={"Delay": poll_interval})
        return self.get_crawler(crawler_name)["LastCrawl"]["Status"]

    monkeypatch.setattr(GlueCrawlerHook, "wait_for_crawler_completion", wait_without_metrics)
    client, name, lake_uri = glue
    dag = load_dag("citibikes_catalog")
    assert dag.get_task("run_crawler").crawler_name == name

    run = dag.test()
    states = _states(run)
    assert run.state == "success", states
    assert (states["crawl_duckdb"], states["create_crawler"], states["update_crawler"], states["run_crawler"]) == (
        "skipped", "success", "skipped", "success")
    crawler = client.get_crawler(Name=name)["Crawler"]
    assert [t["Path"] for t in crawler["Targets"]["S3Targets"]] == [
        f"{lake_uri}/curated/checks/", f"{lake_uri}/curated/rebalancing/",
        f"{lake_uri}/curated/station_information/", f"{lake_uri}/curated/station_status/",
        f"{lake_uri}/pipeline_runs/", f"{lake_uri}/quarantine/"]
    assert crawler["DatabaseName"] == "citibikes_analytics" and crawler["Role"] == "citibikes-glue-crawler"
    assert crawler["LastCrawl"]["Status"] == "COMPLETED"

    # At once again: the crawler ran less than CITIBIKES_GLUE_CRAWL_EVERY ago, so nothing is called.
    states = _states(dag.test())
    assert states["glue_crawler_config"] == "success"
    assert {states[t] for t in ("crawler_exists", "create_crawler", "update_crawler", "run_crawler")} == {"skipped"}
    assert len(client.list_crawls(CrawlerName=name)["Crawls"]) == 1

    # Due again: the crawler exists, so it is updated (e.g. a new table root), then run.
    monkeypatch.setenv("CITIBIKES_GLUE_CRAWL_EVERY", "0")
    run = dag.test()
    states = _states(run)
    assert run.state == "success", states
    assert (states["create_crawler"], states["update_crawler"], states["run_crawler"]) == ("skipped", "success", "success")
    assert len(client.list_crawls(CrawlerName=name)["Crawls"]) == 2
