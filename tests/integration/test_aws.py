"""``citibikes aws`` against a local AWS API emulator: moto's server mode over HTTP, started here.

moto serves S3, Glue, Athena, IAM and STS on one port, which tests the wiring: which calls are
made, in which order, with what, and what comes back. Not the semantics: its Glue crawler makes no
tables (a test makes one as a crawler would) and its Athena runs no SQL (a test queues the rows it
returns through moto's own API). Two more of its limits shape these tests: it ignores the condition
of a bucket policy's Deny, so after setup the TLS-only policy refuses every object request over
HTTP (a test that writes objects removes the policy first, and setup puts it back); and it cannot
update a workgroup (UpdateWorkGroup fails), so that step's update is not tested here.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from citibikes.aws import plan as p
from citibikes.cli import main
from citibikes.stack.process import free_port
from support.moto_server import moto_server
from support.aws_policies import LAKE_FOLDERS, TABLE_FOLDERS, least_privilege_problems, tls_problems

pytestmark = pytest.mark.aws
BUCKET, PREFIX, REGION, ACCOUNT = "citibikes-lake", "lake", "us-east-1", "123456789012"
STEPS = ["bucket", "public access block", "default encryption", "bucket policy", "lifecycle rules",
         "Glue database", "Athena workgroup", "IAM policy", "IAM policy", "crawler role", "crawler role policy"]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server on a free port for this module; yields its endpoint URL."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def moto_api(endpoint: str, path: str, body: bytes = b"") -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # a form would hide the body
    urllib.request.urlopen(request, timeout=10)


@pytest.fixture
def endpoint(moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh emulator (state reset) and an environment pointing every AWS call at it."""
    moto_api(moto, "reset")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    use_keys(monkeypatch, "testing", "testing")
    monkeypatch.setenv("CITIBIKES_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CITIBIKES_LAKE_URI", f"s3://{BUCKET}/{PREFIX}")
    monkeypatch.setenv("CITIBIKES_S3_REGION", REGION)
    monkeypatch.setenv("CITIBIKES_S3_ENDPOINT_URL", moto)
    return moto


def use_keys(monkeypatch: pytest.MonkeyPatch, key: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["aws", *args])
    out, err = capsys.readouterr()
    return code, out, err


def outcomes(out: str) -> list[tuple[str, str]]:
    """(step, outcome) of each step line of setup's or status's output."""
    found = []
    for line in out.splitlines():
        step = next((s for s in sorted(set(STEPS), key=len, reverse=True) if line.startswith(s + " ")), None)
        if step:
            found.append((step, line[len(step):].split()[1].rstrip(":")))
    return found


def test_setup_creates_everything_then_changes_nothing(endpoint: str, capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "setup")
    assert code == 0, err
    assert outcomes(out) == [(step, "created") for step in STEPS]
    assert f"AWS account {ACCOUNT} as arn:aws:sts::{ACCOUNT}:user/moto at the AWS endpoint {endpoint}" in out
    code, out, err = cli(capsys, "setup")
    assert code == 0, err
    assert outcomes(out) == [(step, "unchanged") for step in STEPS]
    code, out, err = cli(capsys, "status")
    assert code == 0, out
    assert outcomes(out) == [(step, "ok") for step in STEPS]
    assert "lake/raw/ expires after 365 days" in out and "TLS required" in out

    s3, iam = client(endpoint, "s3"), client(endpoint, "iam")
    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == p.PUBLIC_ACCESS_BLOCK
    assert tls_problems(json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"]), bucket=BUCKET) == []
    scope = {"bucket": BUCKET, "prefix": PREFIX, "account": ACCOUNT, "region": REGION}
    for name, folders in (("citibikes-pipeline", LAKE_FOLDERS), ("citibikes-glue-crawler", TABLE_FOLDERS)):
        arn = f"arn:aws:iam::{ACCOUNT}:policy/{name}"
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        applied = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
        written = json.loads((tmp_path / "state" / "aws" / f"{name}-policy.json").read_text())
        assert applied == written
        assert least_privilege_problems(applied, folders=folders, **scope) == []
    attached = iam.list_attached_role_policies(RoleName="citibikes-glue-crawler")["AttachedPolicies"]
    assert [a["PolicyName"] for a in attached] == ["citibikes-glue-crawler"]
    workgroup = client(endpoint, "athena").get_work_group(WorkGroup="citibikes")["WorkGroup"]
    assert workgroup["Configuration"]["ResultConfiguration"]["OutputLocation"] == f"s3://{BUCKET}/{PREFIX}/_athena/"


def test_setup_puts_back_what_drifted_and_keeps_what_others_added(endpoint: str, capsys) -> None:
    assert cli(capsys, "setup")[0] == 0
    s3, iam = client(endpoint, "s3"), client(endpoint, "iam")
    s3.delete_bucket_policy(Bucket=BUCKET)
    theirs = {"ID": "logs-expiry", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [theirs]})
    pipeline = f"arn:aws:iam::{ACCOUNT}:policy/citibikes-pipeline"
    for number in range(4):  # IAM keeps five versions: setup must make room for its own
        iam.create_policy_version(PolicyArn=pipeline, SetAsDefault=number == 3, PolicyDocument=json.dumps(
            p.document({"Sid": f"Drift{number}", "Effect": "Allow", "Action": "s3:*", "Resource": "*"})))
    code, out, _ = cli(capsys, "status")
    assert code == 1
    drifted = {"bucket policy": "missing", "lifecycle rules": "differs", "IAM policy": "differs"}
    assert [(s, o) for s, o in outcomes(out) if o != "ok"] == list(drifted.items())
    code, out, err = cli(capsys, "setup")
    assert code == 0, err
    assert [(s, o) for s, o in outcomes(out) if o != "unchanged"] == [
        ("bucket policy", "created"), ("lifecycle rules", "updated"), ("IAM policy", "updated")]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert theirs in rules and len(rules) == 4
    versions = iam.list_policy_versions(PolicyArn=pipeline)["Versions"]
    assert sorted(v["VersionId"] for v in versions) == ["v2", "v3", "v4", "v5", "v6"]  # v1, the oldest spare, went
    assert cli(capsys, "status")[0] == 0


def test_ls_tables_and_query_are_wired_to_the_lake_glue_and_athena(endpoint: str, capsys) -> None:
    assert cli(capsys, "setup")[0] == 0
    s3 = client(endpoint, "s3")
    s3.delete_bucket_policy(Bucket=BUCKET)  # moto would refuse these writes over HTTP (see the module doc)
    for key in ("curated/station_status/system=citibike/date=2024-03-13/hour=13/1710335271.parquet",
                "curated/station_status/system=citibike/date=2024-03-13/hour=7/1710313200.parquet",
                "raw/system=citibike/feed=station_status/date=2024-03-13/hour=13/1710335271.json.zst",
                "_state/citibike/http.json"):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"x" * 2048)
    s3.put_object(Bucket=BUCKET, Key="elsewhere/not-the-lake.txt", Body=b"x")
    code, out, _ = cli(capsys, "ls")
    assert code == 0
    assert out.splitlines() == [
        "table           objects    size  partitions  newest partition",
        "_state                1  2.0 KB           0  -",
        "raw                   1  2.0 KB           1  system=citibike/feed=station_status/date=2024-03-13/hour=13",
        "station_status        2  4.0 KB           2  system=citibike/date=2024-03-13/hour=13"]
    code, out, _ = cli(capsys, "ls", "station_status")
    assert [line.split()[0] for line in out.splitlines()] == [
        "partition", "system=citibike/date=2024-03-13/hour=7", "system=citibike/date=2024-03-13/hour=13"]

    code, out, err = cli(capsys, "tables")
    assert (code, out) == (0, "") and "no tables in the Glue database citibikes_analytics yet" in err
    client(endpoint, "glue").create_table(DatabaseName="citibikes_analytics", TableInput={  # as the crawler would
        "Name": "station_status",
        "StorageDescriptor": {"Columns": [{"Name": "station_id", "Type": "string"}, {"Name": "bikes", "Type": "int"}],
                              "Location": f"s3://{BUCKET}/{PREFIX}/curated/station_status/"},
        "PartitionKeys": [{"Name": k, "Type": "string"} for k in ("system", "date", "hour")]})
    code, out, _ = cli(capsys, "tables")
    assert out.splitlines()[1].split() == ["station_status", "2", "system,", "date,", "hour",
                                           f"s3://{BUCKET}/{PREFIX}/curated/station_status/"]

    athena = client(endpoint, "athena")
    rows = [["system", "n"], ["citibike", "2208"], ["lyft", None]]  # Athena sends a SELECT's header as its first row
    moto_api(endpoint, "static/athena/query-results", json.dumps({"results": [{
        "rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in rows],
        "column_info": [{"Name": "system", "Type": "varchar"}, {"Name": "n", "Type": "bigint"}]}]}).encode())
    sql = 'SELECT system, count(*) AS n FROM station_status GROUP BY system'
    code, out, err = cli(capsys, "query", sql)
    assert code == 0, err
    assert out.splitlines() == ["system       n", "citibike  2208", "lyft      NULL"]
    assert err.startswith("2 rows; 0 B scanned in")
    [query_id] = athena.list_query_executions(WorkGroup="citibikes")["QueryExecutionIds"]
    execution = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
    assert (execution["Query"], execution["WorkGroup"]) == (sql, "citibikes")
    assert execution["QueryExecutionContext"]["Database"] == "citibikes_analytics"
    assert f"(query {query_id})" in err
    code, out, _ = cli(capsys, "query", sql, "--json")
    assert out == ""  # the queued rows went to the first query; moto's Athena has none of its own


def test_errors_are_one_line_naming_the_object_and_the_fix(endpoint: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CITIBIKES_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code, out, err = cli(capsys, "status")
    assert code == 2 and out == ""
    assert err.startswith("error: cannot reach the AWS endpoint http://127.0.0.1:") and len(err.splitlines()) == 1
    assert "CITIBIKES_S3_ENDPOINT_URL" in err
    monkeypatch.setenv("CITIBIKES_S3_ENDPOINT_URL", endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert cli(capsys, "setup")[2] == (f"error: bucket {BUCKET!r} is in eu-west-1, not in {REGION}; "
                                       "set CITIBIKES_S3_REGION=eu-west-1\n")
    monkeypatch.setenv("CITIBIKES_LAKE_URI", "/tmp/a-local-lake")
    assert cli(capsys, "setup") == (2, "", "error: the lake /tmp/a-local-lake is not on S3; set "
                                           "CITIBIKES_LAKE_URI=s3://bucket/prefix for the AWS commands\n")


def iam_user(endpoint: str, name: str, actions: list[str]) -> tuple[str, str]:
    """An IAM user allowed only ``actions``; returns its access key and secret."""
    iam = client(endpoint, "iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(
        p.document({"Effect": "Allow", "Action": actions, "Resource": "*"})))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_a_missing_permission_names_the_action_the_object_and_who(endpoint: str, capsys, monkeypatch) -> None:
    key = iam_user(endpoint, "bucket-only", ["s3:HeadBucket", "s3:CreateBucket"])  # moto's name of HeadBucket
    use_keys(monkeypatch, *key)
    moto_api(endpoint, "reset-auth", b"0")
    try:
        code, out, err = cli(capsys, "setup")
    finally:
        moto_api(endpoint, "reset-auth", b"inf")
    assert code == 2, (out, err)
    assert outcomes(out) == [("bucket", "created")]
    assert err == (f"error: the AWS endpoint {endpoint} denied s3:GetBucketPublicAccessBlock on bucket {BUCKET!r} "
                   f"to arn:aws:iam::{ACCOUNT}:user/bucket-only; grant it that permission or run the command with an "
                   "administrator's credentials (README, On AWS)\n")


def test_without_iam_rights_setup_skips_the_iam_steps(endpoint: str, capsys, monkeypatch) -> None:
    key = iam_user(endpoint, "no-iam", ["s3:*", "glue:*", "athena:*"])
    use_keys(monkeypatch, *key)
    moto_api(endpoint, "reset-auth", b"0")
    try:
        code, out, err = cli(capsys, "setup")
        status_code, status_out, _ = cli(capsys, "status")
    finally:
        moto_api(endpoint, "reset-auth", b"inf")
    assert code == 0
    assert [o for _, o in outcomes(out)] == ["created"] * 7 + ["skipped"] * 4
    assert "denied iam:GetPolicy on IAM policy 'citibikes-pipeline'" in out
    assert "IAM steps skipped; an administrator can create them from" in err
    assert status_code == 1 and [o for _, o in outcomes(status_out)] == ["ok"] * 7 + ["unknown"] * 4
