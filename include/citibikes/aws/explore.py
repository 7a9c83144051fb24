"""``citibikes aws ls``, ``tables`` and ``query``: the lake's objects, its Glue tables, Athena queries.

``ls`` counts the lake's objects per table (by the layout's prefixes) and per Hive partition;
``tables`` lists what the Glue crawler made; ``query`` runs SQL on Athena in the project's
workgroup (whose enforced settings put the results below ``_athena/``) and fetches the rows.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from citibikes.aws.client import Aws
from citibikes.aws.errors import AwsError
from citibikes.aws.plan import Plan
from citibikes.lake.layout import TABLES

FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass
class Group:
    """The objects of one table (or other folder) of the lake, in total and per partition."""

    name: str
    objects: int = 0
    size: int = 0
    partitions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    """``system=x/date=y/hour=z`` -> [objects, bytes]; ``""`` for objects outside any partition."""

    def add(self, partition: str, size: int) -> None:
        self.objects, self.size = self.objects + 1, self.size + size
        counts = self.partitions[partition]
        counts[0], counts[1] = counts[0] + 1, counts[1] + size


def table_of(key: str) -> tuple[str, str]:
    """The table (or top folder) of a key relative to the lake root, and its partition path."""
    for table in TABLES.values():
        if key.startswith(f"{table.prefix}/"):
            name, rest = table.name, key[len(table.prefix) + 1:]
            break
    else:
        name, _, rest = key.partition("/") if "/" in key else ("(lake root)", "", key)
    return name, "/".join(part for part in rest.split("/")[:-1] if "=" in part)


def lake_objects(aws: Aws, plan: Plan) -> dict[str, Group]:
    """Every object of the lake, grouped by table and partition (one listing of the lake's prefix)."""
    root = f"{plan.prefix}/" if plan.prefix else ""
    groups: dict[str, Group] = {}
    for page in aws.pages("s3", "list_objects_v2", "s3:ListBucket", f"s3://{plan.bucket}/{root}",
                          Bucket=plan.bucket, Prefix=root):
        for item in page.get("Contents", []):
            name, partition = table_of(item["Key"][len(root):])
            groups.setdefault(name, Group(name)).add(partition, item["Size"])
    return groups


def natural(text: str) -> list[Any]:
    """Sort key: digits as numbers (``hour=7`` before ``hour=13``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def ls_lines(groups: dict[str, Group], table: str | None = None) -> list[str]:
    """A line per table (objects, size, partitions, the newest one), or per partition of ``table``."""
    if table is not None:
        if table not in groups:
            raise AwsError(f"the lake has no objects of {table!r}; use one of {', '.join(sorted(groups)) or '(none yet)'}")
        rows = [(part or "(no partition)", str(n), human(size))
                for part, (n, size) in sorted(groups[table].partitions.items(), key=lambda kv: natural(kv[0]))]
        return render(("partition", "objects", "size"), rows)
    rows = []
    for name, group in sorted(groups.items()):
        parts = [part for part in group.partitions if part]
        rows.append((name, str(group.objects), human(group.size), str(len(parts)),
                     max(parts, key=natural) if parts else "-"))
    return render(("table", "objects", "size", "partitions", "newest partition"), rows)


def tables(aws: Aws, plan: Plan) -> list[dict[str, Any]]:
    """The Glue tables of the database (what the crawler made), by name."""
    pages = aws.pages("glue", "get_tables", "glue:GetTables", f"Glue database {plan.database!r}",
                      DatabaseName=plan.database)
    return sorted((t for page in pages for t in page["TableList"]), key=lambda t: t["Name"])


def table_lines(found: list[dict[str, Any]]) -> list[str]:
    rows = [(t["Name"], str(len(t.get("StorageDescriptor", {}).get("Columns", []))),
             ", ".join(k["Name"] for k in t.get("PartitionKeys", [])) or "-",
             t.get("StorageDescriptor", {}).get("Location", "-")) for t in found]
    return render(("table", "columns", "partition keys", "location"), rows)


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    columns: list[str]
    rows: list[list[str | None]]
    scanned_bytes: int
    seconds: float
    truncated: bool


def query(aws: Aws, plan: Plan, sql: str, *, timeout_s: float = 300.0, max_rows: int = 1000) -> QueryResult:
    """Run ``sql`` on Athena in the workgroup, against the database; wait, then fetch up to ``max_rows``."""
    target = f"Athena workgroup {plan.workgroup!r}"
    started = aws.call("athena", "start_query_execution", "athena:StartQueryExecution", target, QueryString=sql,
                       WorkGroup=plan.workgroup, QueryExecutionContext={"Database": plan.database})
    query_id = started["QueryExecutionId"]
    deadline, pause = time.monotonic() + timeout_s, 0.2
    while True:
        execution = aws.call("athena", "get_query_execution", "athena:GetQueryExecution", target,
                             QueryExecutionId=query_id)["QueryExecution"]
        state = execution["Status"]["State"]
        if state in FINISHED:
            break
        if time.monotonic() > deadline:
            aws.call("athena", "stop_query_execution", "athena:StopQueryExecution", target, QueryExecutionId=query_id)
            raise AwsError(f"Athena query {query_id} was still {state} after {timeout_s:.0f} s and is cancelled; "
                           "raise --timeout, or narrow it with WHERE on the partitions (system, date, hour)")
        time.sleep(pause)
        pause = min(pause * 1.5, 2.0)
    if state != "SUCCEEDED":
        reason = execution["Status"].get("StateChangeReason", "no reason given")
        raise AwsError(f"Athena query {query_id} {state.lower()}: {reason}; fix the SQL "
                       f"(`citibikes aws tables` lists the tables of {plan.database})")
    columns, rows = fetch_rows(aws, target, query_id, execution.get("StatementType") == "DML", max_rows)
    stats = execution.get("Statistics", {})
    return QueryResult(query_id, columns, rows[:max_rows], stats.get("DataScannedInBytes", 0),
                       stats.get("TotalExecutionTimeInMillis", 0) / 1000, len(rows) > max_rows)


def fetch_rows(aws: Aws, target: str, query_id: str, header_row: bool,
               max_rows: int) -> tuple[list[str], list[list[str | None]]]:
    """Column names and up to ``max_rows + 1`` rows (one more tells that there were more). Athena
    sends a SELECT's column names as its first row; a missing value is NULL."""
    columns: list[str] = []
    rows: list[list[str | None]] = []
    token: dict[str, str] = {}
    while len(rows) <= max_rows:
        page = aws.call("athena", "get_query_results", "athena:GetQueryResults", target,
                        QueryExecutionId=query_id, MaxResults=1000, **token)
        result = page["ResultSet"]
        columns = columns or [c.get("Label") or c["Name"] for c in result.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
        values = [[d.get("VarCharValue") for d in row.get("Data", [])] for row in result.get("Rows", [])]
        if header_row and not token and values:
            values = values[1:]
        rows.extend(values)
        if not page.get("NextToken"):
            break
        token = {"NextToken": page["NextToken"]}
    return columns, rows


def render(header: tuple[str, ...], rows: list[tuple[str, ...]] | list[list[str]]) -> list[str]:
    """Columns aligned: text left, numbers and sizes right."""
    widths = [max([len(h), *(len(str(row[i])) for row in rows)]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(re.fullmatch(r"-?[\d.]+( [KMGT]?B)?|-|NULL", str(row[i])) for row in rows)
               for i in range(len(header))]

    def line(cells: Any) -> str:
        return "  ".join(str(c).rjust(w) if num else str(c).ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
