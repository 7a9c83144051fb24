"""The AWS set-up as data (issue 15 item 4, issue 18): least-privilege policies, TLS only, public
access blocked, default encryption, lifecycle on raw/, merging with what a bucket already has.

The policy checks live in ``support.aws_policies`` and are spelled from the rules, not from the code
that writes the documents; their own tests below show they catch what they are for.
"""

from __future__ import annotations

import pytest

from citibikes.aws import plan as p
from citibikes.aws.errors import AwsError
from support.aws_policies import LAKE_FOLDERS, TABLE_FOLDERS, least_privilege_problems, tls_problems

ACCOUNT = "111122223333"
LAKES = [("s3://citibikes-lake/lake", "eu-west-1"), ("s3://citibikes-lake", "us-east-1"),
         ("s3://team-data/bikes/lake", "cn-north-1")]


@pytest.fixture(params=LAKES, ids=["prefix", "whole-bucket", "nested-prefix-china"])
def plan(request: pytest.FixtureRequest) -> p.Plan:
    uri, region = request.param
    return p.plan_for(uri, region, ACCOUNT)


def lake_scope(plan: p.Plan) -> dict[str, str]:
    return {"bucket": plan.bucket, "prefix": plan.prefix, "account": ACCOUNT, "region": plan.region}


def test_pipeline_policy_is_least_privilege(plan: p.Plan) -> None:
    assert least_privilege_problems(p.pipeline_policy(plan), folders=LAKE_FOLDERS, **lake_scope(plan)) == []


def test_crawler_policy_is_least_privilege_and_reads_only_the_tables(plan: p.Plan) -> None:
    doc = p.crawler_policy(plan)
    assert least_privilege_problems(doc, folders=TABLE_FOLDERS, **lake_scope(plan)) == []
    s3_actions = {a for s in doc["Statement"] for a in s["Action"] if a.startswith("s3:")}
    assert s3_actions == {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}


def test_pipeline_deletes_only_its_state_and_what_compaction_replaced(plan: p.Plan) -> None:
    deletes = [r for s in p.pipeline_policy(plan)["Statement"] if "s3:DeleteObject" in s["Action"] for r in s["Resource"]]
    assert deletes == [plan.s3_arn(f"{plan.key(folder)}/*") for folder in
                       ("_state", "curated", "quarantine")]
    moves = [s for s in p.pipeline_policy(plan)["Statement"] if "glue:BatchUpdatePartition" in s["Action"]]
    assert [(s["Action"], s["Resource"]) for s in moves] == [(["glue:BatchUpdatePartition"], plan.catalog_arns())]


def test_crawler_role_is_assumed_by_glue_for_this_account_only(plan: p.Plan) -> None:
    [statement] = p.crawler_trust_policy(plan)["Statement"]
    assert statement["Principal"] == {"Service": "glue.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_bucket_policy_requires_tls(plan: p.Plan) -> None:
    assert tls_problems(p.bucket_policy(plan), bucket=plan.bucket) == []


def test_bucket_blocks_public_access_and_encrypts_by_default() -> None:
    assert p.PUBLIC_ACCESS_BLOCK == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                                     "RestrictPublicBuckets": True}
    assert p.ENCRYPTION["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_lifecycle_expires_raw_and_results_and_stays_in_the_lake(plan: p.Plan) -> None:
    rules = {r["Filter"]["Prefix"]: r for r in p.lifecycle_rules(plan)}
    lake = f"{plan.prefix}/" if plan.prefix else ""
    assert rules[f"{lake}raw/"]["Expiration"] == {"Days": 365}
    assert rules[f"{lake}_athena/"]["Expiration"] == {"Days": 30}
    assert rules[lake]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert all(r["Status"] == "Enabled" for r in rules.values())


def test_workgroup_enforces_results_below_the_lake(plan: p.Plan) -> None:
    config = p.workgroup_configuration(plan)
    assert config["ResultConfiguration"]["OutputLocation"] == f"{plan.lake_uri}/_athena/"
    assert config["EnforceWorkGroupConfiguration"] is True


def test_the_checks_catch_what_they_are_for() -> None:
    plan = p.plan_for("s3://citibikes-lake/lake", "us-east-1", ACCOUNT)
    scope = lake_scope(plan)
    bad = p.document(
        {"Sid": "Everything", "Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::citibikes-lake/*"},
        {"Sid": "Reads", "Effect": "Allow", "Action": ["s3:Get*"], "Resource": "arn:aws:s3:::other-bucket/lake/raw/*"},
        {"Sid": "Outside", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": "arn:aws:s3:::citibikes-lake/lake/x/*"},
        {"Sid": "AnyList", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::citibikes-lake"},
        {"Sid": "AnyTable", "Effect": "Allow", "Action": ["glue:GetTable"], "Resource": "*"},
        {"Sid": "Negated", "Effect": "Allow", "NotAction": ["iam:CreateUser"], "Resource": "arn:aws:s3:::citibikes-lake"},
    )
    found = "\n".join(least_privilege_problems(bad, folders=LAKE_FOLDERS, **scope))
    for expected in ("Everything: wildcard action 's3:*'", "Everything: S3 resource arn:aws:s3:::citibikes-lake/*",
                     "Reads: wildcard action 's3:Get*'", "Reads: resource arn:aws:s3:::other-bucket/lake/raw/*",
                     "Outside: S3 resource", "AnyList: listing not limited", "AnyTable: resource *",
                     "Negated: an Allow with NotAction"):
        assert expected in found
    assert tls_problems(p.document({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                    "Resource": "arn:aws:s3:::citibikes-lake/*"}), bucket="citibikes-lake") == [
        "a statement: allows everyone",
        "no Deny of s3:* on the bucket and its objects when aws:SecureTransport is false"]


def test_bucket_policy_and_lifecycle_keep_what_others_put_there(plan: p.Plan) -> None:
    theirs = {"Sid": "TheirAuditRead", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999:root"},
              "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/audit/*"}
    once = p.bucket_policy(plan, p.document(theirs))
    assert once["Statement"] == [theirs, p.tls_statement(plan)]
    assert p.bucket_policy(plan, once) == once
    other_rule = {"ID": "logs-expiry", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 7}}
    rules = p.lifecycle(plan, [other_rule])
    assert other_rule in rules and len(rules) == 4
    assert p.lifecycle(plan, rules) == rules


def test_only_an_s3_lake_has_a_plan(tmp_path) -> None:
    with pytest.raises(AwsError, match=r"is not on S3; set CITIBIKES_LAKE_URI=s3://bucket/prefix"):
        p.plan_for(str(tmp_path), "us-east-1", ACCOUNT)
    with pytest.raises(AwsError, match="not a valid S3 bucket name"):
        p.plan_for("s3://Bad_Bucket/lake", "us-east-1", ACCOUNT)
