"""The AWS commands without AWS: ``setup --dry-run`` (calls no API), the comparison that makes setup
idempotent, ``ls``'s grouping and layout, and the workgroup update moto cannot do (checked against
Athena's API model by botocore's Stubber)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from citibikes.aws import plan as p
from citibikes.aws.client import Aws
from citibikes.aws.errors import AwsError
from citibikes.aws.explore import Group, ls_lines, natural, render, table_of
from citibikes.aws.setup import contains, steps
from citibikes.cli import main

ACCOUNT = "111122223333"


def test_contains_ignores_what_aws_adds_but_not_what_differs() -> None:
    wanted = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
    assert contains({"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                                "BucketKeyEnabled": False}]}, wanted)
    assert not contains({"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]}, wanted)
    assert not contains({"Rules": []}, wanted)
    assert not contains(None, wanted)


def test_dry_run_prints_the_plan_and_documents_without_aws(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CITIBIKES_LAKE_URI", "s3://citibikes-lake/lake")
    monkeypatch.setenv("CITIBIKES_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: a call would fail
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["aws", "setup", "--dry-run", "--account-id", ACCOUNT]) == 0
    out = capsys.readouterr().out
    assert "lifecycle rule         lake/raw/ expires after 365 days" in out
    docs = {}
    for chunk in out.split("\n--- ")[1:]:
        name, _, text = chunk.partition("\n")
        docs[name] = json.loads(text)
    assert set(docs) == set(p.documents(p.plan_for("s3://citibikes-lake/lake", "us-east-1", ACCOUNT)))
    assert f"arn:aws:glue:us-east-1:{ACCOUNT}:catalog" in json.dumps(docs["citibikes-pipeline-policy.json"])


def test_ls_groups_by_table_and_orders_partitions_naturally() -> None:
    assert table_of("curated/station_status/system=a/date=2024-03-13/hour=7/1.parquet") == (
        "station_status", "system=a/date=2024-03-13/hour=7")
    assert table_of("raw/system=a/feed=station_status/date=2024-03-13/hour=7/1.json.zst") == (
        "raw", "system=a/feed=station_status/date=2024-03-13/hour=7")
    assert table_of("_state/a/http.json") == ("_state", "")
    assert table_of("stray.txt") == ("(lake root)", "")
    group = Group("station_status")
    for hour, size in ((13, 2048), (7, 1024), (7, 1024)):
        group.add(f"system=a/date=2024-03-13/hour={hour}", size)
    assert ls_lines({"station_status": group}) == [
        "table           objects    size  partitions  newest partition",
        "station_status        3  4.0 KB           2  system=a/date=2024-03-13/hour=13"]
    assert [line.split()[0] for line in ls_lines({"station_status": group}, "station_status")[1:]] == [
        "system=a/date=2024-03-13/hour=7", "system=a/date=2024-03-13/hour=13"]
    assert sorted(["hour=13", "hour=7"], key=natural) == ["hour=7", "hour=13"]
    with pytest.raises(AwsError, match="the lake has no objects of 'nope'; use one of station_status"):
        ls_lines({"station_status": group}, "nope")
    assert render(("a", "n"), [("x", "1"), ("yy", "10")]) == ["a    n", "x    1", "yy  10"]


def test_a_drifted_workgroup_is_updated_in_the_shape_athena_takes() -> None:
    """moto cannot update a workgroup; botocore's Stubber checks the call against Athena's API model."""
    plan = p.plan_for("s3://citibikes-lake/lake", "us-east-1", ACCOUNT)
    aws = Aws(boto3.Session(aws_access_key_id="x", aws_secret_access_key="y"), "us-east-1")
    athena = aws.client("athena")
    drifted = {**p.workgroup_configuration(plan), "ResultConfiguration": {"OutputLocation": "s3://elsewhere/"}}
    wanted = p.workgroup_configuration(plan)
    with Stubber(athena) as stub:
        stub.add_response("get_work_group", {"WorkGroup": {"Name": "citibikes", "Configuration": drifted}},
                          {"WorkGroup": "citibikes"})
        stub.add_response("update_work_group", {}, {"WorkGroup": "citibikes", "ConfigurationUpdates": {
            "EnforceWorkGroupConfiguration": True, "PublishCloudWatchMetricsEnabled": True,
            "BytesScannedCutoffPerQuery": wanted["BytesScannedCutoffPerQuery"],
            "ResultConfigurationUpdates": wanted["ResultConfiguration"]}})
        [step] = [s for s in steps(aws, plan) if s.name == "Athena workgroup"]
        current = step.read()
        assert not contains(current, step.wanted(current))
        step.write(current, step.wanted(current))
        stub.assert_no_pending_responses()
