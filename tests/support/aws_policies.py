"""Checks of IAM and bucket policy documents: least privilege and TLS only (issue 18).

Written from the rules, not from :mod:`citibikes.aws.plan`: the lake's folders are spelled out here,
so a policy that grows past them fails. Each check returns the problems it found (empty: fine),
so a failing test says what is wrong with which statement.
"""

from __future__ import annotations

import re
from typing import Any

LAKE_FOLDERS = ("curated", "quarantine", "raw", "pipeline_runs", "reports", "_state", "_athena")
"""What the pipeline may touch: the lake's folders (``reports``: the analytics reports; ``_athena``: Athena's results)."""
TABLE_FOLDERS = ("curated/station_status", "curated/station_information", "quarantine", "pipeline_runs",
                 "curated/rebalancing", "curated/checks")
"""What the crawler may read: one folder per table."""
BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation"}
ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9]+$")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def least_privilege_problems(doc: dict[str, Any], *, bucket: str, prefix: str, folders: tuple[str, ...],
                             account: str, region: str, database: str = "citibikes_analytics",
                             workgroup: str = "citibikes") -> list[str]:
    """Problems of an identity policy: a wildcard or negated action, a resource outside the lake's
    ``folders`` (below ``prefix``), the one database, the one workgroup or the crawlers' log group,
    or a bucket listing not limited to the lake's prefix."""
    objects = {f"{prefix}/{folder}/*" if prefix else f"{folder}/*" for folder in folders}
    tail = f":{region}:{account}:"
    allowed_other = {
        f"glue{tail}catalog", f"glue{tail}database/{database}", f"glue{tail}table/{database}/*",
        f"athena{tail}workgroup/{workgroup}",
        f"logs{tail}log-group:/aws-glue/crawlers", f"logs{tail}log-group:/aws-glue/crawlers:log-stream:*",
    }
    problems = []
    for index, statement in enumerate(doc.get("Statement", [])):
        name = statement.get("Sid") or f"statement {index + 1}"
        if statement.get("Effect") != "Allow":
            continue
        for negated in ("NotAction", "NotResource", "NotPrincipal"):
            if negated in statement:
                problems.append(f"{name}: an Allow with {negated}")
        actions = as_list(statement.get("Action", []))
        problems += [f"{name}: wildcard action {a!r}" for a in actions if not ACTION.match(a)]
        for resource in as_list(statement.get("Resource", [])):
            match = re.match(r"^arn:aws[a-z-]*:(.*)$", resource)
            rest = match.group(1) if match else ""
            if rest == f"s3:::{bucket}":
                if set(actions) - BUCKET_ACTIONS:
                    problems.append(f"{name}: object actions on the bucket itself: {sorted(set(actions) - BUCKET_ACTIONS)}")
                if "s3:ListBucket" in actions and prefix:
                    values = [v for condition in statement.get("Condition", {}).values()
                              for v in as_list(condition.get("s3:prefix", []))]
                    if not values or any(v != prefix and not v.startswith(f"{prefix}/") for v in values):
                        problems.append(f"{name}: listing not limited to {prefix}/ (s3:prefix {values})")
            elif rest.startswith(f"s3:::{bucket}/"):
                if rest.removeprefix(f"s3:::{bucket}/") not in objects:
                    problems.append(f"{name}: S3 resource {resource} is not one of the lake's folders {sorted(objects)}")
            elif rest not in allowed_other:
                problems.append(f"{name}: resource {resource} is outside the lake, its database and workgroup")
    return problems


def tls_problems(doc: dict[str, Any], *, bucket: str) -> list[str]:
    """Problems of a bucket policy: no Deny of every request without TLS on the bucket and its
    objects, or an Allow to everyone."""
    problems = [f"{s.get('Sid', 'a statement')}: allows everyone" for s in doc.get("Statement", [])
                if s.get("Effect") == "Allow" and s.get("Principal") in ("*", {"AWS": "*"})]
    for statement in doc.get("Statement", []):
        condition = statement.get("Condition", {}).get("Bool", {})
        if (statement.get("Effect") == "Deny" and statement.get("Principal") in ("*", {"AWS": "*"})
                and "s3:*" in as_list(statement.get("Action"))
                and {f"s3:::{bucket}", f"s3:::{bucket}/*"} <= {re.sub(r"^arn:aws[a-z-]*:", "", r)
                                                             for r in as_list(statement.get("Resource"))}
                and str(condition.get("aws:SecureTransport")).lower() == "false"):
            return problems
    return [*problems, "no Deny of s3:* on the bucket and its objects when aws:SecureTransport is false"]
