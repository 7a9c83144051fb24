"""``citibikes aws setup`` and ``status``: make the plan so, step by step, and tell what exists.

Each step reads what is there, compares it with the plan (:mod:`citibikes.aws.plan`) and writes only
when it differs, so setup can run any number of times: a step reports ``created``, ``updated`` or
``unchanged``. ``status`` runs the same reads and comparisons without writing. A comparison asks
only that what the plan sets is there: values AWS adds (defaults, timestamps) do not count as a
difference. Bucket policy statements and lifecycle rules of others are kept.

The IAM steps are skipped, not failed, when these credentials may not touch IAM (a data engineer
often may not): the documents are written to a folder for an administrator to create.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citibikes.aws import plan as p
from citibikes.aws.client import Aws
from citibikes.aws.errors import AwsError
from citibikes.aws.plan import Plan


@dataclass(frozen=True)
class Step:
    """One thing setup makes: how to read it (None: absent), the state the plan wants given the
    current one, how to write that, and a short description of a state for ``status``."""

    name: str
    target: str
    read: Callable[[], Any]
    wanted: Callable[[Any], Any]
    write: Callable[[Any, Any], None]
    describe: Callable[[Any], str]
    iam: bool = False


@dataclass(frozen=True)
class Outcome:
    step: Step
    action: str
    """``created``, ``updated``, ``unchanged``, ``skipped``; for status ``ok``, ``missing``, ``differs``, ``unknown``."""
    detail: str = ""

    @property
    def line(self) -> str:
        return f"{self.step.name:<21} {self.step.target:<28} {self.action}{': ' + self.detail if self.detail else ''}"


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` has every value of ``wanted`` (dicts: the keys of ``wanted``; lists: pairwise)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(actual) == len(wanted) and all(map(contains, actual, wanted))
    return actual == wanted


def steps(aws: Aws, plan: Plan) -> list[Step]:
    """The steps of the plan, in order: the bucket and its settings, Glue, Athena, IAM."""
    b, bucket = plan.bucket, f"s3://{plan.bucket}"

    def s3(operation: str, action: str, absent: tuple[str, ...] = (), **params: Any) -> dict[str, Any] | None:
        return aws.call("s3", operation, action, f"bucket {b!r}", absent=absent, Bucket=b, **params)

    def create_bucket(_: Any, __: Any) -> None:
        config = {} if plan.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": plan.region}}
        try:
            s3("create_bucket", "s3:CreateBucket", **config)
        except AwsError as exc:
            if exc.code == "BucketAlreadyExists":
                raise AwsError(f"bucket name {b!r} is taken by another AWS account; choose another bucket in "
                               "CITIBIKES_LAKE_URI") from None
            raise

    def read_bucket() -> bool | None:
        try:
            answer = s3("head_bucket", "s3:ListBucket", absent=("404", "NoSuchBucket"))
        except AwsError as exc:
            if exc.denied:
                raise AwsError(f"{exc} (or bucket {b!r} belongs to another AWS account: then choose another bucket "
                               "in CITIBIKES_LAKE_URI)", code=exc.code) from None
            raise
        if answer is None:
            return None
        region = answer.get("BucketRegion") or plan.region
        if region != plan.region:
            raise AwsError(f"bucket {b!r} is in {region}, not in {plan.region}; set CITIBIKES_S3_REGION={region}")
        return True

    def read_encryption() -> dict[str, Any] | None:
        answer = s3("get_bucket_encryption", "s3:GetEncryptionConfiguration",
                    absent=("ServerSideEncryptionConfigurationNotFoundError",))
        return answer and answer["ServerSideEncryptionConfiguration"]

    def wanted_encryption(current: dict[str, Any] | None) -> dict[str, Any]:
        return current if algorithms(current) & {"aws:kms", "aws:kms:dsse"} else p.ENCRYPTION

    def read_policy() -> dict[str, Any] | None:
        answer = s3("get_bucket_policy", "s3:GetBucketPolicy", absent=("NoSuchBucketPolicy",))
        return answer and json.loads(answer["Policy"])

    def read_lifecycle() -> list[dict[str, Any]] | None:
        answer = s3("get_bucket_lifecycle_configuration", "s3:GetLifecycleConfiguration",
                    absent=("NoSuchLifecycleConfiguration",))
        return answer and sorted(answer["Rules"], key=lambda rule: rule.get("ID", ""))

    def glue(operation: str, action: str, absent: tuple[str, ...] = (), **params: Any) -> dict[str, Any] | None:
        return aws.call("glue", operation, action, f"Glue database {plan.database!r}", absent=absent, **params)

    def read_database() -> dict[str, Any] | None:
        answer = glue("get_database", "glue:GetDatabase", ("EntityNotFoundException",), Name=plan.database)
        return answer and answer["Database"]

    def write_database(current: Any, wanted: dict[str, Any]) -> None:
        if current is None:
            glue("create_database", "glue:CreateDatabase", DatabaseInput=wanted)
        else:
            glue("update_database", "glue:UpdateDatabase", Name=plan.database, DatabaseInput=wanted)

    def athena(operation: str, action: str, absent: tuple[str, ...] = (), **params: Any) -> dict[str, Any] | None:
        return aws.call("athena", operation, action, f"Athena workgroup {plan.workgroup!r}", absent=absent, **params)

    def read_workgroup() -> dict[str, Any] | None:
        try:
            answer = athena("get_work_group", "athena:GetWorkGroup", WorkGroup=plan.workgroup)
        except AwsError as exc:  # Athena answers InvalidRequestException for a missing workgroup
            if exc.code == "InvalidRequestException" and "not found" in str(exc).lower():
                return None
            raise
        workgroup = (answer or {}).get("WorkGroup")  # moto answers a missing one with nothing
        return None if workgroup is None else workgroup.get("Configuration", {})

    def write_workgroup(current: Any, wanted: dict[str, Any]) -> None:
        if current is None:
            athena("create_work_group", "athena:CreateWorkGroup", Name=plan.workgroup, Configuration=wanted,
                   Description=f"citibikes queries on {plan.lake_uri}")
        else:
            updates = {k: v for k, v in wanted.items() if k != "ResultConfiguration"}
            athena("update_work_group", "athena:UpdateWorkGroup", WorkGroup=plan.workgroup,
                   ConfigurationUpdates={**updates, "ResultConfigurationUpdates": wanted["ResultConfiguration"]})

    return [
        Step("bucket", bucket, read_bucket, lambda _: True, create_bucket, lambda _: "exists"),
        Step("public access block", bucket,
             lambda: (s3("get_public_access_block", "s3:GetBucketPublicAccessBlock",
                         absent=("NoSuchPublicAccessBlockConfiguration",)) or {}).get("PublicAccessBlockConfiguration"),
             lambda _: p.PUBLIC_ACCESS_BLOCK,
             lambda _, w: s3("put_public_access_block", "s3:PutBucketPublicAccessBlock", PublicAccessBlockConfiguration=w),
             lambda c: "all blocked" if contains(c, p.PUBLIC_ACCESS_BLOCK) else f"not all blocked: {c}"),
        Step("default encryption", bucket, read_encryption, wanted_encryption,
             lambda _, w: s3("put_bucket_encryption", "s3:PutEncryptionConfiguration", ServerSideEncryptionConfiguration=w),
             lambda c: ", ".join(sorted(algorithms(c))) or "none"),
        Step("bucket policy", bucket, read_policy, lambda c: p.bucket_policy(plan, c),
             lambda _, w: s3("put_bucket_policy", "s3:PutBucketPolicy", Policy=json.dumps(w)),
             lambda c: statements(c) + (
                 ", TLS required" if p.tls_statement(plan) in c.get("Statement", []) else ", TLS not required")),
        Step("lifecycle rules", bucket, read_lifecycle, lambda c: p.lifecycle(plan, c),
             lambda _, w: s3("put_bucket_lifecycle_configuration", "s3:PutLifecycleConfiguration",
                             LifecycleConfiguration={"Rules": w}),
             lambda c: "; ".join(rule_text(r) for r in c)),
        Step("Glue database", plan.database, read_database, lambda _: p.database_input(plan), write_database,
             lambda c: c.get("LocationUri", "no location")),
        Step("Athena workgroup", plan.workgroup, read_workgroup, lambda _: p.workgroup_configuration(plan),
             write_workgroup, lambda c: f"results in {c.get('ResultConfiguration', {}).get('OutputLocation', 'none')}"),
        *iam_steps(aws, plan),
    ]


def iam_steps(aws: Aws, plan: Plan) -> list[Step]:
    """The two managed policies, the crawler's role (trusting Glue) and the role's policy attachment."""
    def iam(operation: str, action: str, target: str, absent: tuple[str, ...] = (), **params: Any) -> Any:
        return aws.call("iam", operation, action, target, absent=absent, **params)

    def policy_step(name: str, document: dict[str, Any]) -> Step:
        arn = plan.iam_arn(f"policy/{name}")

        def read() -> dict[str, Any] | None:
            policy = iam("get_policy", "iam:GetPolicy", f"IAM policy {name!r}", ("NoSuchEntity",), PolicyArn=arn)
            if policy is None:
                return None
            version = iam("get_policy_version", "iam:GetPolicyVersion", f"IAM policy {name!r}", PolicyArn=arn,
                          VersionId=policy["Policy"]["DefaultVersionId"])
            return version["PolicyVersion"]["Document"]

        def write(current: Any, wanted: dict[str, Any]) -> None:
            text = json.dumps(wanted)
            if current is None:
                iam("create_policy", "iam:CreatePolicy", f"IAM policy {name!r}", PolicyName=name, PolicyDocument=text,
                    Description=f"citibikes: {plan.lake_uri}")
                return
            versions = iam("list_policy_versions", "iam:ListPolicyVersions", f"IAM policy {name!r}", PolicyArn=arn)
            old = [v for v in versions["Versions"] if not v["IsDefaultVersion"]]
            if len(versions["Versions"]) >= 5:  # IAM keeps five versions: drop the oldest spare one
                oldest = min(old, key=lambda v: v["CreateDate"])
                iam("delete_policy_version", "iam:DeletePolicyVersion", f"IAM policy {name!r}", PolicyArn=arn,
                    VersionId=oldest["VersionId"])
            iam("create_policy_version", "iam:CreatePolicyVersion", f"IAM policy {name!r}", PolicyArn=arn,
                PolicyDocument=text, SetAsDefault=True)

        return Step("IAM policy", name, read, lambda _: document, write,
                    statements, iam=True)

    role, target = plan.crawler_role, f"IAM role {plan.crawler_role!r}"
    crawler_arn = plan.iam_arn(f"policy/{plan.crawler_policy}")

    def read_role() -> dict[str, Any] | None:
        answer = iam("get_role", "iam:GetRole", target, ("NoSuchEntity",), RoleName=role)
        return answer and answer["Role"]["AssumeRolePolicyDocument"]

    def write_role(current: Any, wanted: dict[str, Any]) -> None:
        if current is None:
            iam("create_role", "iam:CreateRole", target, RoleName=role, AssumeRolePolicyDocument=json.dumps(wanted),
                Description=f"the Glue crawler of the citibikes lake {plan.lake_uri}")
        else:
            iam("update_assume_role_policy", "iam:UpdateAssumeRolePolicy", target, RoleName=role,
                PolicyDocument=json.dumps(wanted))

    def read_attached() -> list[str] | None:
        answer = iam("list_attached_role_policies", "iam:ListAttachedRolePolicies", target, ("NoSuchEntity",),
                     RoleName=role, MaxItems=1000)
        arns = [a["PolicyArn"] for a in (answer or {}).get("AttachedPolicies", [])]
        return [crawler_arn] if crawler_arn in arns else None

    return [
        policy_step(plan.pipeline_policy, p.pipeline_policy(plan)),
        policy_step(plan.crawler_policy, p.crawler_policy(plan)),
        Step("crawler role", role, read_role, lambda _: p.crawler_trust_policy(plan), write_role,
             lambda c: "assumed by " + ", ".join(principals(c)), iam=True),
        Step("crawler role policy", role, read_attached, lambda _: [crawler_arn],
             lambda _, __: iam("attach_role_policy", "iam:AttachRolePolicy", target, RoleName=role, PolicyArn=crawler_arn),
             lambda c: f"{plan.crawler_policy} attached", iam=True),
    ]


def algorithms(encryption: dict[str, Any] | None) -> set[str]:
    rules = (encryption or {}).get("Rules", [])
    return {r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "") for r in rules} - {""}


def statements(policy: dict[str, Any]) -> str:
    count = len(policy.get("Statement", []))
    return f"{count} statement{'' if count == 1 else 's'}"


def principals(trust: dict[str, Any]) -> list[str]:
    found = []
    for statement in trust.get("Statement", []):
        service = statement.get("Principal", {}).get("Service", [])
        found.extend([service] if isinstance(service, str) else service)
    return found or ["nobody"]


def rule_text(rule: dict[str, Any]) -> str:
    """``raw/ expires after 365 days`` and the like, for status."""
    prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix", "")) or "(whole bucket)"
    if "Expiration" in rule:
        what = f"expires after {rule['Expiration'].get('Days', '?')} days"
    elif "AbortIncompleteMultipartUpload" in rule:
        what = f"unfinished uploads aborted after {rule['AbortIncompleteMultipartUpload']['DaysAfterInitiation']} days"
    else:
        what = "other rule"
    return f"{prefix} {what}" + ("" if rule.get("Status") == "Enabled" else " (disabled)")


def apply(aws: Aws, plan: Plan) -> Iterator[Outcome]:
    """Make each step so, in order, yielding its outcome; IAM steps refused by AWS are skipped."""
    for step in steps(aws, plan):
        try:
            current = step.read()
            wanted = step.wanted(current)
            if current is not None and contains(current, wanted):
                yield Outcome(step, "unchanged")
                continue
            step.write(current, wanted)
        except AwsError as exc:
            if step.iam and exc.denied:
                yield Outcome(step, "skipped", str(exc))
                continue
            raise
        yield Outcome(step, "created" if current is None else "updated")


def status(aws: Aws, plan: Plan) -> Iterator[Outcome]:
    """What exists and whether it matches the plan: ``ok``, ``missing``, ``differs``, or ``unknown``
    (these credentials may not read it)."""
    for step in steps(aws, plan):
        try:
            current = step.read()
        except AwsError as exc:
            if exc.denied:
                yield Outcome(step, "unknown", str(exc))
                continue
            raise
        if current is None:
            yield Outcome(step, "missing")
            if step.name == "bucket":  # nothing else of the bucket can be read
                return
            continue
        yield Outcome(step, "ok" if contains(current, step.wanted(current)) else "differs", step.describe(current))


def write_documents(plan: Plan, folder: Path) -> list[Path]:
    """Write every document of the plan as JSON into ``folder`` for review; returns the files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, doc in p.documents(plan).items():
            path = folder / name
            path.write_text(json.dumps(doc, indent=2) + "\n")
            paths.append(path)
    except OSError as exc:
        raise AwsError(f"cannot write the policy documents to {folder}: {exc.strerror}; pass --documents "
                       "with a writable folder") from None
    return paths
