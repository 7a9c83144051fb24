"""What ``citibikes aws setup`` makes, as data: names, bucket settings and policy documents.

Everything here is a pure function of the lake's location (bucket and prefix), region and account,
so ``setup --dry-run`` prints it without calling AWS and tests check it without an account.

Least privilege, in the documents' own terms:

- the pipeline reads and writes the lake's prefixes (``curated/ quarantine/ raw/ pipeline_runs/ reports/
  _state/``) and Athena's results (``_athena/``), deletes only below ``_state/``, ``curated/`` and
  ``quarantine/`` (compaction deletes the files it replaced), reads the catalog of the one Glue database, moves its partitions
  (``glue:BatchUpdatePartition``: compaction points an hour at its compacted file) and runs queries in
  the one Athena workgroup;
- the crawler (a role only Glue, acting for this account, can assume) reads the tables' prefixes,
  creates and updates tables and partitions of the one database, and writes its own log group;
- no Allow names a wildcard action (``*``, ``s3:*``, ``s3:Get*``); object resources are below the
  lake's prefixes, bucket listing is limited to them by ``s3:prefix``;
- the bucket policy denies every request not sent over TLS. A Deny may be broad (``s3:*``, every
  principal): it only takes permissions away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from citibikes.aws.errors import AwsError
from citibikes.lake.errors import LakeError
from citibikes.lake.filesystem import parse_lake_uri
from citibikes.lake.layout import ATHENA_RESULTS_PREFIX, RAW_PREFIX, REPORTS_PREFIX, STATE_PREFIX, TABLES

DATABASE = "citibikes_analytics"
WORKGROUP = "citibikes"
PIPELINE_POLICY = "citibikes-pipeline"
CRAWLER_POLICY = "citibikes-glue-crawler"
CRAWLER_ROLE = "citibikes-glue-crawler"
TLS_SID = "CitibikesDenyInsecureTransport"
RULE_ID_PREFIX = "citibikes:"
"""Lifecycle rules of this project are known by this ID prefix; other rules of the bucket are kept."""

RAW_RETENTION_DAYS = 365
"""The raw archive expires after a year. Not moved to a colder class instead: its files (~70 KB) are
below S3's 128 KB transition minimum, and per-object transition fees would exceed the saving."""
RESULTS_RETENTION_DAYS = 30
INCOMPLETE_UPLOAD_DAYS = 7
BYTES_SCANNED_CUTOFF = 10 * 1024**3
"""A query scanning more than 10 GiB (about $0.05) is cancelled by Athena."""

LAKE_PREFIXES = tuple(sorted({t.prefix.split("/")[0] for t in TABLES.values()} | {RAW_PREFIX, STATE_PREFIX,
                                                                                  REPORTS_PREFIX}))
"""The folders the pipeline writes: ``_state curated pipeline_runs quarantine raw reports``."""
TABLE_PREFIXES = tuple(t.prefix for t in TABLES.values())
"""The folders the crawler reads, one table each."""
COMPACTED_PREFIXES = ("curated", "quarantine")
"""The folders compaction deletes replaced files in (those of :data:`citibikes.compaction.SORT_KEYS`)."""
CATALOG_READ = ("glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartition", "glue:GetPartitions",
                "glue:BatchGetPartition")
CATALOG_WRITE = ("glue:CreateTable", "glue:UpdateTable", "glue:CreatePartition", "glue:BatchCreatePartition",
                 "glue:UpdatePartition", "glue:BatchUpdatePartition")
QUERY_ACTIONS = ("athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults",
                 "athena:StopQueryExecution", "athena:GetWorkGroup")
CRAWLER_LOG_GROUP = "/aws-glue/crawlers"


@dataclass(frozen=True)
class Plan:
    """The lake's bucket and prefix (``""``: the whole bucket), its region and account, and the names
    of what setup makes."""

    bucket: str
    prefix: str
    region: str
    account_id: str
    database: str = DATABASE
    workgroup: str = WORKGROUP
    pipeline_policy: str = PIPELINE_POLICY
    crawler_policy: str = CRAWLER_POLICY
    crawler_role: str = CRAWLER_ROLE

    @property
    def partition(self) -> str:
        """The ARN partition of the region (``aws``, ``aws-cn``, ``aws-us-gov``)."""
        return "aws-cn" if self.region.startswith("cn-") else "aws-us-gov" if self.region.startswith("us-gov-") else "aws"

    def key(self, *parts: str) -> str:
        """A key below the lake's prefix: ``key("raw")`` is ``<prefix>/raw``."""
        return "/".join(part for part in (self.prefix, *parts) if part)

    @property
    def lake_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def results_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key(ATHENA_RESULTS_PREFIX)}/"

    def s3_arn(self, key: str = "") -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}" + (f"/{key}" if key else "")

    def arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account_id}:{resource}"

    def iam_arn(self, resource: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:{resource}"

    def catalog_arns(self) -> list[str]:
        """The Glue catalog, the one database and its tables (Glue checks all three for table calls)."""
        return [self.arn("glue", "catalog"), self.arn("glue", f"database/{self.database}"),
                self.arn("glue", f"table/{self.database}/*")]


def plan_for(lake_uri: str, region: str, account_id: str) -> Plan:
    """The plan for a lake at ``s3://bucket/prefix``; an AwsError for any other lake URI."""
    try:
        location = parse_lake_uri(lake_uri)
    except LakeError as exc:
        raise AwsError(str(exc)) from None
    if location.scheme != "s3":
        raise AwsError(f"the lake {location.uri} is not on S3; set CITIBIKES_LAKE_URI=s3://bucket/prefix for the AWS commands")
    bucket, _, prefix = location.path.partition("/")
    return Plan(bucket, prefix, region, account_id)


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def list_statement(sid: str, plan: Plan, prefixes: list[str], operator: str) -> dict[str, Any]:
    """``s3:ListBucket`` on the bucket for keys below ``prefixes`` only (none: the lake is the bucket)."""
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": plan.s3_arn()}
    if prefixes:
        statement["Condition"] = {operator: {"s3:prefix": [v for p in prefixes for v in (p, f"{p}/*")]}}
    return statement


def pipeline_policy(plan: Plan) -> dict[str, Any]:
    """What the pipeline (the Airflow workers, ``citibikes run``) needs: see the module doc."""
    lake = [plan.key(prefix) for prefix in (*LAKE_PREFIXES, ATHENA_RESULTS_PREFIX)]
    # IfExists: HeadBucket (pyarrow's check that the bucket exists) is a ListBucket without a prefix
    bucket = list_statement("ListLake", plan, [plan.prefix] if plan.prefix else [], "StringLikeIfExists")
    bucket["Action"] = ["s3:GetBucketLocation", "s3:ListBucket"]  # Athena locates the results bucket
    return document(
        bucket,
        {"Sid": "ReadWriteLake", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
         "Resource": [plan.s3_arn(f"{key}/*") for key in lake]},
        {"Sid": "DeleteStateAndCompacted", "Effect": "Allow", "Action": ["s3:DeleteObject"],
         "Resource": [plan.s3_arn(f"{plan.key(prefix)}/*") for prefix in (STATE_PREFIX, *COMPACTED_PREFIXES)]},
        {"Sid": "ReadCatalog", "Effect": "Allow", "Action": list(CATALOG_READ), "Resource": plan.catalog_arns()},
        {"Sid": "MoveCompactedPartitions", "Effect": "Allow", "Action": ["glue:BatchUpdatePartition"],
         "Resource": plan.catalog_arns()},
        {"Sid": "RunQueries", "Effect": "Allow", "Action": list(QUERY_ACTIONS),
         "Resource": [plan.arn("athena", f"workgroup/{plan.workgroup}")]},
    )


def crawler_policy(plan: Plan) -> dict[str, Any]:
    """What the Glue crawler's role needs: see the module doc."""
    tables = [plan.key(prefix) for prefix in TABLE_PREFIXES]
    logs = plan.arn("logs", f"log-group:{CRAWLER_LOG_GROUP}")
    return document(
        list_statement("ListTables", plan, tables, "StringLike"),
        {"Sid": "LocateBucket", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": plan.s3_arn()},
        {"Sid": "ReadTables", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [plan.s3_arn(f"{key}/*") for key in tables]},
        {"Sid": "WriteCatalog", "Effect": "Allow", "Action": [*CATALOG_READ, *CATALOG_WRITE],
         "Resource": plan.catalog_arns()},
        {"Sid": "WriteLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [logs, f"{logs}:log-stream:*"]},
    )


def crawler_trust_policy(plan: Plan) -> dict[str, Any]:
    """Only Glue may assume the crawler's role, and only for this account (no confused deputy)."""
    return document({"Effect": "Allow", "Principal": {"Service": "glue.amazonaws.com"}, "Action": "sts:AssumeRole",
                     "Condition": {"StringEquals": {"aws:SourceAccount": plan.account_id}}})


def tls_statement(plan: Plan) -> dict[str, Any]:
    return {"Sid": TLS_SID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [plan.s3_arn(), plan.s3_arn("*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def bucket_policy(plan: Plan, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TLS-only bucket policy; the statements of a ``current`` policy other than ours are kept."""
    others = [s for s in (current or {}).get("Statement", []) if s.get("Sid") != TLS_SID]
    return document(*others, tls_statement(plan))


PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
"""SSE-S3; a bucket already encrypting with KMS by default is left as it is (that is stronger)."""


def lifecycle_rules(plan: Plan) -> list[dict[str, Any]]:
    """The raw archive and Athena's results expire; unfinished multipart uploads are cleaned up."""
    def rule(folder: str, what: dict[str, Any]) -> dict[str, Any]:
        prefix = f"{plan.key(folder)}/" if plan.key(folder) else ""
        return {"ID": f"{RULE_ID_PREFIX}{prefix or '/'}", "Filter": {"Prefix": prefix}, "Status": "Enabled", **what}

    return [rule(RAW_PREFIX, {"Expiration": {"Days": RAW_RETENTION_DAYS}}),
            rule(ATHENA_RESULTS_PREFIX, {"Expiration": {"Days": RESULTS_RETENTION_DAYS}}),
            rule("", {"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS}})]


def lifecycle(plan: Plan, current: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The bucket's lifecycle rules by ID: the ``current`` ones for other prefixes kept, ours added or replaced."""
    ours = lifecycle_rules(plan)
    ids = {rule["ID"] for rule in ours}
    return sorted([r for r in current or [] if r.get("ID") not in ids] + ours, key=lambda rule: rule.get("ID", ""))


def workgroup_configuration(plan: Plan) -> dict[str, Any]:
    """Results below ``_athena/``, encrypted; enforced, so a client cannot send them elsewhere."""
    return {"ResultConfiguration": {"OutputLocation": plan.results_uri,
                                    "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"}},
            "EnforceWorkGroupConfiguration": True, "PublishCloudWatchMetricsEnabled": True,
            "BytesScannedCutoffPerQuery": BYTES_SCANNED_CUTOFF}


def database_input(plan: Plan) -> dict[str, Any]:
    return {"Name": plan.database, "Description": f"citibikes lake {plan.lake_uri} (tables made by the Glue crawler)",
            "LocationUri": f"{plan.lake_uri}/"}


def documents(plan: Plan) -> dict[str, dict[str, Any]]:
    """Every document setup applies, by the file name it is written to for review."""
    return {
        "bucket-policy.json": bucket_policy(plan),
        "bucket-settings.json": {"Bucket": plan.bucket, "PublicAccessBlockConfiguration": PUBLIC_ACCESS_BLOCK,
                                 "ServerSideEncryptionConfiguration": ENCRYPTION,
                                 "LifecycleConfiguration": {"Rules": lifecycle_rules(plan)}},
        "glue-database.json": database_input(plan),
        "athena-workgroup.json": {"Name": plan.workgroup, "Configuration": workgroup_configuration(plan)},
        f"{plan.pipeline_policy}-policy.json": pipeline_policy(plan),
        f"{plan.crawler_policy}-policy.json": crawler_policy(plan),
        f"{plan.crawler_role}-trust-policy.json": crawler_trust_policy(plan),
    }
