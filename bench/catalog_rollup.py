"""The hourly availability rollup on a month of Citi Bike: crawls that keep it, and the query it is for.

Usage (from the repository root):

    .venv/bin/python bench/catalog_rollup.py --lake /work/month/lake [--workdir /tmp/rollup-bench] [--repeat 5]

``--lake`` is a lake of replayed days, e.g. ``<DIR>/lake`` of ``bench/lake_month.py --days 30 --lake DIR``
(30 days, 95 million station_status rows in backfilled hour files); it is only read. The catalog goes
to ``<workdir>/catalog.duckdb``, its rollup day files to ``<workdir>/catalog.rollup/``. Each crawl
reports its time and bytes written: the catalog file plus the rollup day files it wrote.

1. Crawls of the lake: the first (every partition aggregated into ``station_status_hourly``), one
   with nothing new (no day file written), three times.
2. A crawl after one new minute file: on a copy of the lake made of hard links (``<workdir>/lake``,
   the files shared, so the month's lake is untouched), its first crawl, then a minute file (the
   last snapshot of the lake's last hour file in key order, 30 s later) added to its hour, then a crawl.
3. "Hourly availability per station and hour of day over the whole period" on the rollup (weighted
   means) and on ``station_status`` (the plain GROUP BY), each in a fresh read-only connection,
   median of ``--repeat``; the answers are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.common import machine_info  # noqa: E402
from citibikes.catalog import refresh_catalog  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.lake.store import status_file  # noqa: E402
from citibikes.lake.tables import TABLE_SCHEMAS  # noqa: E402

QUERIES = {
    "station_status_hourly": "SELECT system, station_id, hour, sum(bikes_mean * observations) / sum(observations) AS bikes "
                             "FROM station_status_hourly GROUP BY ALL",
    "station_status": "SELECT system, station_id, hour, avg(num_bikes_available) AS bikes FROM station_status GROUP BY ALL",
}


def crawl(lake_path: Path, catalog: Path) -> dict[str, Any]:
    began = time.perf_counter()
    summary = refresh_catalog(open_lake(str(lake_path)), catalog)
    seconds = time.perf_counter() - began
    return {"seconds": round(seconds, 2), "footers_read": summary.footers_read,
            "partitions_aggregated": summary.rollup_partitions_aggregated, "catalog_bytes": catalog.stat().st_size,
            "rollup_files_written": summary.rollup_files_written, "rollup_bytes_written": summary.rollup_bytes_written,
            "bytes_written": catalog.stat().st_size + summary.rollup_bytes_written}


def add_minute_file(lake_path: Path) -> str:
    """A minute file in the hour of the lake's last station_status file (key order): its last snapshot, 30 s later."""
    lake = open_lake(str(lake_path))
    last = max(lake.files("station_status"))
    table = pq.read_table(lake.storage.path(last))
    newest = pc.max(table["last_updated"])
    table = table.filter(pc.equal(table["last_updated"], newest))
    shifted = pc.cast(pc.add(pc.cast(table["last_updated"], "int64"), 30_000), table.schema.field("last_updated").type)
    table = table.set_column(table.schema.get_field_index("last_updated"), "last_updated", shifted)
    moment = int(newest.as_py().timestamp()) + 30
    key, data = status_file(table["system_id"][0].as_py(), table.cast(TABLE_SCHEMAS["station_status"]), moment)
    assert key.rsplit("/", 1)[0] == last.rsplit("/", 1)[0], (key, last)
    lake.write_files([(key, data)])
    return key


def query_times(catalog: Path, repeat: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    answers: dict[str, dict] = {}
    for _ in range(repeat):
        for name, sql in QUERIES.items():
            con = duckdb.connect(str(catalog), read_only=True)
            began = time.perf_counter()
            rows = con.sql(sql).fetchall()
            times[name].append(time.perf_counter() - began)
            con.close()
            answers[name] = {row[:3]: row[3] for row in rows}
    first, second = answers.values()
    worst = max(abs(first[key] - second[key]) for key in second)
    assert first.keys() == second.keys() and worst < 1e-9, worst
    return {"result_rows": len(first), "largest_difference": worst,
            **{name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3)}
               for name, t in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, required=True, help="a lake of replayed days (only read)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rollup-bench"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if not (args.lake / "curated" / "station_status").is_dir():
        parser.error(f"{args.lake} holds no station_status table; pass a lake of replayed days with --lake")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    catalog = args.workdir / "catalog.duckdb"
    report: dict[str, Any] = {"machine": machine_info(duckdb=duckdb.__version__), "lake": str(args.lake)}
    report["first_crawl"] = crawl(args.lake, catalog)
    report["nothing_new"] = [crawl(args.lake, catalog) for _ in range(3)]
    con = duckdb.connect(str(catalog), read_only=True)
    report["rows"] = dict(zip(("station_status", "station_status_hourly"), con.sql(
        "SELECT (SELECT sum(rows) FROM _rollups), (SELECT count(*) FROM station_status_hourly)").fetchone()))
    con.close()
    report["query"] = query_times(catalog, args.repeat)

    copy = args.workdir / "lake"
    shutil.copytree(args.lake, copy, copy_function=os.link)  # hard links: the month's files are never written
    copy_catalog = args.workdir / "copy.duckdb"
    report["copy_first_crawl"] = crawl(copy, copy_catalog)
    report["minute_file"] = add_minute_file(copy)
    report["after_one_minute_file"] = crawl(copy, copy_catalog)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
