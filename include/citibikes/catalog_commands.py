"""``citibikes catalog|compact|checks|analytics``: the catalogued lake from the command line, what the
``citibikes_catalog``, ``citibikes_compaction``, ``citibikes_checks`` and ``citibikes_analytics`` DAGs do on a
DuckDB catalog.
(Beside the ``catalog`` package, not in it: every ``citibikes`` command imports this module, and the
package imports DuckDB, which only these commands need.)"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING

from citibikes.config import Settings, load_settings

if TYPE_CHECKING:
    from citibikes.catalog import S3Access

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def s3_access(settings: Settings) -> S3Access | None:
    """How DuckDB reaches an S3 lake with the command line's settings (None for a folder lake)."""
    from citibikes.catalog import S3Access

    if not settings.lake_uri.startswith("s3://"):
        return None
    return S3Access.from_environment(settings.s3_endpoint_url, settings.s3_region)


def cmd_catalog(args: argparse.Namespace) -> int:
    """Print the embedded catalog's tables (crawl the lake into it first with --refresh)."""
    from citibikes.catalog import describe, refresh_catalog
    from citibikes.cli import setup_logging
    from citibikes.lake import lake_from_settings

    settings = load_settings()
    if args.refresh:
        setup_logging(settings.log_level)
        print(refresh_catalog(lake_from_settings(settings), settings.catalog_path, s3=s3_access(settings),
                              grace_s=settings.compaction_grace_s).line())
    print("\n".join(describe(settings.catalog_path, partitions=args.partitions)))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact the lake's closed days and hours and switch the catalogs to them (what the citibikes_compaction DAG does)."""
    from citibikes.aws.client import aws_from_settings
    from citibikes.catalog.glue import choose_catalog
    from citibikes.cli import setup_logging
    from citibikes.compaction import Glue, compact
    from citibikes.lake import lake_from_settings

    settings = load_settings()
    setup_logging(settings.log_level)
    lake = lake_from_settings(settings)
    s3 = s3_access(settings)
    glue = None
    if choose_catalog(settings.catalog, "aws" if s3 else "fs") == "glue":
        glue = Glue(aws_from_settings(settings), settings.glue_database)
    summary = compact(lake, settings.catalog_path, settle_s=settings.compaction_settle_s,
                      grace_s=settings.compaction_grace_s, dry_run=args.dry_run, s3=s3, glue=glue)
    print("\n".join(summary.lines()))
    return 0


def cmd_checks(args: argparse.Namespace) -> int:
    """Run the data-quality checks on the DuckDB catalog; print each result and the offending rows of those that failed."""
    from citibikes.catalog import connect
    from citibikes.checks import CheckParams, ChecksError, build_checks, run_on_duckdb

    settings = load_settings()
    try:
        as_of = datetime.fromisoformat(args.as_of) if args.as_of else None
    except ValueError:
        raise ChecksError(f"--as-of {args.as_of!r} is not an ISO 8601 time; write e.g. 2026-12-07T12:00:00Z") from None
    params = CheckParams.from_settings(settings, as_of, window_h=args.window_hours)
    con = connect(settings.catalog_path, s3=s3_access(settings))
    try:
        results, offending = run_on_duckdb(con, build_checks(params), params.as_of)
    finally:
        con.close()
    print(f"checks of {', '.join(params.systems)} from {params.start:%Y-%m-%d %H:%M:%S} to {params.as_of:%Y-%m-%d %H:%M:%S %Z}")
    print("\n".join([*(result.line() for result in results), *offending]))
    failed = sum(not result.passed for result in results)
    print(f"{len(results)} results: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_analytics(args: argparse.Namespace) -> int:
    """The service analytics of a system and period: print the figures, write the report into the lake."""
    import msgspec

    from citibikes.analytics.engines import DuckDBEngine
    from citibikes.analytics.errors import AnalyticsError
    from citibikes.analytics.run import choose_system, lines, run
    from citibikes.catalog import connect, refresh_catalog
    from citibikes.cli import setup_logging
    from citibikes.lake import lake_from_settings

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        first, last = (None if text is None else date.fromisoformat(text) for text in (args.first, args.last))
    except ValueError:
        raise AnalyticsError(f"--from {args.first!r} / --to {args.last!r}: write days as YYYY-MM-DD") from None
    system = choose_system(settings, args.system)
    lake = lake_from_settings(settings)
    s3 = s3_access(settings)
    refresh_catalog(lake, settings.catalog_path, s3=s3, grace_s=settings.compaction_grace_s)
    con = connect(settings.catalog_path, s3=s3)
    try:
        analytics, keys = run(DuckDBEngine(con), lake, system, first, last)
    finally:
        con.close()
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(analytics)).decode())
    else:
        print("\n".join(lines(analytics)))
        print(f"report: {lake.storage.uri(keys[-1])} (per-station tables beside it)")
    return 0


def add_catalog_commands(add: Add) -> None:
    """Register ``catalog``, ``compact``, ``checks`` and ``analytics`` with the ``citibikes`` parser's ``add``."""
    p = add("catalog", cmd_catalog, "show the lake's catalog (a DuckDB file in the state folder): tables, partitions, rows")
    p.add_argument("--refresh", action="store_true", help="crawl the lake first (what the citibikes_catalog DAG does)")
    p.add_argument("--partitions", action="store_true", help="list every partition too")
    p = add("compact", cmd_compact, "compact the lake's closed days (and hours) into one sorted file each, switch the catalog "
                                    "to them, delete the files they replaced after the grace period")
    p.add_argument("--dry-run", action="store_true", help="print what would be compacted and deleted; change nothing")
    p = add("checks", cmd_checks, "run the data-quality checks on the DuckDB catalog (what the citibikes_checks DAG "
                                  "runs); exit 1 when one fails")
    p.add_argument("--as-of", default=None, help="end of the window, ISO 8601 with a time zone (default: now)")
    p.add_argument("--window-hours", type=int, default=None, help="hours before --as-of to check (default: "
                                                                  "CITIBIKES_CHECK_WINDOW_HOURS or 24)")
    p = add("analytics", cmd_analytics, "the service measures a city auditor computes (share of time unusable, "
                                        "broken bikes, empty/full durations, rebalancing fines) for a period; "
                                        "writes the report into the lake")
    p.add_argument("--system", default=None, help="system id (default: the only enabled system)")
    p.add_argument("--from", dest="first", default=None,
                   help="first local day, YYYY-MM-DD (default: 30 days before --to, or the first with data if later)")
    p.add_argument("--to", dest="last", default=None, help="last local day, YYYY-MM-DD (default: the last with data)")
    p.add_argument("--json", action="store_true", help="print every figure (system, stations, by hour) as JSON")
