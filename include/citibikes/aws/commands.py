"""``citibikes aws setup|status|ls|tables|query``: thin commands over :mod:`citibikes.aws`.

boto3 is imported only when an AWS command runs, so the other commands start as fast as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from citibikes.config import load_settings


def cmd_aws_setup(args: argparse.Namespace) -> int:
    """Make the lake's AWS resources so (idempotent), or with --dry-run print the plan without calling AWS."""
    from citibikes.aws.client import connect
    from citibikes.aws.plan import documents, plan_for
    from citibikes.aws.setup import apply, write_documents

    settings = load_settings()
    if args.dry_run:
        plan = plan_for(settings.lake_uri, settings.s3_region, args.account_id)
        print(plan_summary(plan))
        for name, doc in documents(plan).items():
            print(f"\n--- {name}\n{json.dumps(doc, indent=2)}")
        return 0
    aws, plan = connect(settings)
    print(f"AWS account {aws.account_id} as {aws.principal} at {aws.where}")
    folder = Path(args.documents) if args.documents else settings.state_dir / "aws"
    print(f"documents for review: {len(write_documents(plan, folder))} files in {folder}")
    skipped = 0
    for outcome in apply(aws, plan):
        print(outcome.line, flush=True)
        skipped += outcome.action == "skipped"
    if skipped:
        print(f"note: {skipped} IAM steps skipped; an administrator can create them from {folder} "
              "(README, On AWS)", file=sys.stderr)
    return 0


def plan_summary(plan: Any) -> str:
    """The plan in a few lines: what setup makes, with which settings."""
    from citibikes.aws.plan import lifecycle_rules
    from citibikes.aws.setup import rule_text

    return "\n".join([
        f"lake                   {plan.lake_uri} (region {plan.region}, account {plan.account_id})",
        f"bucket                 s3://{plan.bucket}: public access blocked, TLS only, SSE-S3 by default",
        *(f"lifecycle rule         {rule_text(rule)}" for rule in lifecycle_rules(plan)),
        f"Glue database          {plan.database}",
        f"Athena workgroup       {plan.workgroup}: results in {plan.results_uri}",
        f"IAM policies           {plan.pipeline_policy} (the pipeline), {plan.crawler_policy} (the crawler)",
        f"IAM role               {plan.crawler_role} (assumed by Glue, with {plan.crawler_policy})",
    ])


def cmd_aws_status(args: argparse.Namespace) -> int:
    """What of the plan exists on AWS; exit 1 unless all of it does and matches."""
    from citibikes.aws.client import connect
    from citibikes.aws.setup import status

    aws, plan = connect(load_settings())
    print(f"AWS account {aws.account_id} as {aws.principal} at {aws.where}")
    outcomes = []
    for outcome in status(aws, plan):
        print(outcome.line, flush=True)
        outcomes.append(outcome)
    return 0 if all(o.action == "ok" for o in outcomes) else 1


def cmd_aws_ls(args: argparse.Namespace) -> int:
    """Objects, size and partitions per table of the lake, or per partition of one table."""
    from citibikes.aws.client import connect
    from citibikes.aws.explore import lake_objects, ls_lines

    aws, plan = connect(load_settings())
    print("\n".join(ls_lines(lake_objects(aws, plan), args.table)))
    return 0


def cmd_aws_tables(args: argparse.Namespace) -> int:
    """The Glue tables of the database; none is not an error (the crawler has not run yet)."""
    from citibikes.aws.client import connect
    from citibikes.aws.explore import table_lines, tables

    aws, plan = connect(load_settings())
    found = tables(aws, plan)
    if not found:
        print(f"no tables in the Glue database {plan.database} yet; run the Glue crawler over the lake", file=sys.stderr)
        return 0
    print("\n".join(table_lines(found)))
    return 0


def cmd_aws_query(args: argparse.Namespace) -> int:
    """Rows to stdout (aligned, or JSON lines), the count and the cost to stderr."""
    from citibikes.aws.client import connect
    from citibikes.aws.explore import human, query, render

    aws, plan = connect(load_settings())
    result = query(aws, plan, args.sql, timeout_s=args.timeout, max_rows=args.max_rows)
    if args.json:
        for row in result.rows:
            print(json.dumps(dict(zip(result.columns, row))))
    else:
        print("\n".join(render(tuple(result.columns), [["NULL" if v is None else v for v in row] for row in result.rows])))
    more = f", only the first {args.max_rows} shown (--max-rows)" if result.truncated else ""
    print(f"{len(result.rows)} rows{more}; {human(result.scanned_bytes)} scanned in {result.seconds:.1f} s "
          f"(query {result.query_id})", file=sys.stderr)
    return 0


def add_aws_commands(sub: Any) -> None:
    """``citibikes aws setup|status|ls|tables|query``: the lake's AWS resources (CITIBIKES_LAKE_URI=s3://...)."""
    aws = sub.add_parser("aws", help="the lake on AWS: set it up, check it, list it, query it with Athena",
                         description="The lake on AWS (CITIBIKES_LAKE_URI=s3://bucket/prefix). Credentials the usual "
                                     "AWS way (AWS_PROFILE, AWS_ACCESS_KEY_ID...); region CITIBIKES_S3_REGION; "
                                     "CITIBIKES_S3_ENDPOINT_URL sends every call to an emulator.")
    commands = aws.add_subparsers(dest="aws_command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("setup", cmd_aws_setup, "create or align the bucket (public access blocked, TLS only, default encryption, "
                                    "lifecycle), the Glue database, the Athena workgroup and the IAM policies and "
                                    "crawler role; idempotent")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its documents; call no AWS API")
    p.add_argument("--account-id", default="ACCOUNT_ID", help="the account to name in --dry-run's documents")
    p.add_argument("--documents", default=None, metavar="DIR",
                   help="where to write the documents for review (default: $CITIBIKES_STATE_DIR/aws)")
    add("status", cmd_aws_status, "what of the set-up exists and matches (exit 0: all, 1: not all)")
    p = add("ls", cmd_aws_ls, "the lake's objects: per table, or per partition of one table")
    p.add_argument("table", nargs="?", default=None, help="e.g. station_status, raw, _state")
    add("tables", cmd_aws_tables, "the Glue tables of the database (made by the crawler)")
    p = add("query", cmd_aws_query, "run SQL on Athena in the project's workgroup and print the rows")
    p.add_argument("sql")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before the query is cancelled (default 300)")
    p.add_argument("--max-rows", type=int, default=1000, help="rows to print at most (default 1000)")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
