"""Benchmark: a full Citi Bike station_status snapshot from bytes to validated records, on one core.

What is timed, per snapshot (2,208 stations): :func:`citibikes.ingest.check_status` -- ``parse_feed``
(decode + feed checks), ``normalize_status`` (the Arrow table) and the quality rules against the
stations station_information describes: the function the minute DAG's validate task and every
backfill worker run for each status snapshot. The recorded snapshots ship in the package, so the
figures are reproducible anywhere.

Compared in the same run, on the same bytes:

* ``naive``: ``json.loads`` + a straightforward per-record normalization and validation into
  dicts (the same rules, written the obvious way: field by field, ``try``/``except``, a dict per
  record). This is the baseline the speed-up is quoted against.
* ``json_loads`` and ``msgspec_decode``: decoding alone, the floor any Python implementation pays.

Usage (from the repository root, with the virtualenv): ``python bench/normalize_validate.py
[--repeat 300] [--warmup 30] [--json]``. The process pins itself to one CPU when the OS allows it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import msgspec

from citibikes.config import QualityConfig
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.ingest import check_information, check_status
from citibikes.quality import Described
from citibikes.replay.recordings import recorded

TARGET_RECORDS_PER_S = 300_000
FETCH_DELAY_S = 5.0


# --------------------------------------------------------------------------- the workloads


def production(body: bytes, known: Described, config: QualityConfig) -> tuple[int, int]:
    moment = _FETCHED_AT[body]
    status = check_status(body, "citibike", moment, config, known=known, reference_time=moment)
    return status.table.num_rows, len(status.quarantined)


_FETCHED_AT: dict[bytes, float] = {}
"""Each recorded snapshot's own time plus the fetch delay: "now" for it (filled by :func:`run`)."""


_NAIVE_KNOWN = {"station_id", "num_bikes_available", "num_ebikes_available", "num_bikes_disabled",
                "num_docks_available", "num_docks_disabled", "is_installed", "is_renting", "is_returning",
                "last_reported"}


def naive(body: bytes, known: Described, config: QualityConfig) -> tuple[int, int]:
    """The obvious implementation: json.loads, then one dict per record, field by field."""
    document = json.loads(body)
    last_updated = int(document["last_updated"])
    fetched_at = last_updated + FETCH_DELAY_S
    valid, quarantined, seen = [], [], set()
    known_station_ids = set(known.ids.to_pylist())
    for raw in document["data"]["stations"]:
        record: dict[str, Any] = {"system_id": "citibike", "last_updated": last_updated, "fetched_at": fetched_at}
        reasons = []
        for name in ("station_id", "num_bikes_available", "is_installed", "is_renting", "is_returning"):
            if raw.get(name) is None:
                reasons.append(f"missing_field:{name}")
        for name in ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                     "num_docks_disabled", "last_reported"):
            try:
                record[name] = int(raw[name]) if raw.get(name) is not None else None
            except (TypeError, ValueError):
                reasons.append(f"invalid_type:{name}")
        for name in ("is_installed", "is_renting", "is_returning"):
            if raw.get(name) in (0, 1, True, False):
                record[name] = bool(raw[name])
            else:
                reasons.append(f"invalid_type:{name}")
        record["station_id"] = raw.get("station_id")
        record["extras"] = {key: value for key, value in raw.items() if key not in _NAIVE_KNOWN}
        for name in ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                     "num_docks_disabled"):
            if record.get(name) is not None and record[name] < 0:
                reasons.append(f"negative_count:{name}")
        reported = record.get("last_reported")
        if reported in config.last_reported_sentinels:
            reasons.append("last_reported_sentinel")
        elif reported is not None and reported < last_updated - config.max_report_age_s:
            reasons.append("last_reported_too_old")
        elif reported is not None and reported > fetched_at + config.max_future_skew_s:
            reasons.append("last_reported_in_future")
        if record["station_id"] in seen:
            reasons.append("duplicate_station_id")
        seen.add(record["station_id"])
        if record["station_id"] not in known_station_ids:
            reasons.append("unknown_station")
        if reasons:
            quarantined.append({"reasons": reasons, "raw": json.dumps(raw)})
        else:
            valid.append(record)
    return len(valid), len(quarantined)


def json_loads_only(body: bytes, known: Described, config: QualityConfig) -> tuple[int, int]:
    return len(json.loads(body)["data"]["stations"]), 0


def msgspec_decode_only(body: bytes, known: Described, config: QualityConfig) -> tuple[int, int]:
    return len(msgspec.json.decode(body)["data"]["stations"]), 0


WORKLOADS: dict[str, Callable[[bytes, Described, QualityConfig], tuple[int, int]]] = {
    "production": production,
    "naive": naive,
    "json_loads": json_loads_only,
    "msgspec_decode": msgspec_decode_only,
}


# --------------------------------------------------------------------------- measuring


def time_workload(workload: Callable[..., tuple[int, int]], bodies: list[bytes], known: Described,
                  config: QualityConfig, *, warmup: int, repeat: int) -> list[float]:
    """Seconds per snapshot, cycling through the recorded snapshots."""
    for index in range(warmup):
        workload(bodies[index % len(bodies)], known, config)
    timings = []
    for index in range(repeat):
        body = bodies[index % len(bodies)]
        start = time.perf_counter()
        workload(body, known, config)
        timings.append(time.perf_counter() - start)
    return timings


def summarize(timings: list[float], records: int) -> dict[str, float]:
    ordered = sorted(timings)
    median = statistics.median(ordered)
    return {
        "median_ms": round(median * 1000, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
        "records_per_s": round(records / median),
    }


def pin_to_one_core() -> int | None:
    """Run on one CPU (the lowest allowed) so the figures are single-core; None if not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def machine_info(cpu: int | None) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "pinned_cpu": cpu,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run(repeat: int, warmup: int) -> dict[str, Any]:
    cpu = pin_to_one_core()
    bodies = [recording.read_bytes() for recording in recorded(STATION_STATUS)]
    _FETCHED_AT.update((body, recording.last_updated + FETCH_DELAY_S) for body, recording in
                       zip(bodies, recorded(STATION_STATUS)))
    known = Described.of(check_information(recorded(STATION_INFORMATION)[0].read_bytes(), "citibike", time.time()))
    config = QualityConfig()
    records = len(msgspec.json.decode(bodies[0])["data"]["stations"])
    valid, quarantined = production(bodies[0], known, config)
    gc.collect()
    results = {name: summarize(time_workload(workload, bodies, known, config, warmup=warmup, repeat=repeat), records)
               for name, workload in WORKLOADS.items()}
    return {
        "machine": machine_info(cpu),
        "workload": {
            "feed": "citibike station_status (recorded, GBFS 1.1)",
            "snapshots": len(bodies),
            "records_per_snapshot": records,
            "bytes_per_snapshot": len(bodies[0]),
            "valid_first_snapshot": valid,
            "quarantined_first_snapshot": quarantined,
            "repeat": repeat,
            "warmup": warmup,
            "timed": "citibikes.ingest.check_status: parse_feed + normalize_status + the quality rules, from bytes",
        },
        "results": results,
        "speedup_vs_naive": round(results["naive"]["median_ms"] / results["production"]["median_ms"], 2),
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "meets_target": results["production"]["records_per_s"] >= TARGET_RECORDS_PER_S,
    }


def print_report(report: dict[str, Any]) -> None:
    machine, workload = report["machine"], report["workload"]
    print(f"CPU     {machine['cpu_model']} ({machine['logical_cpus']} logical, pinned to "
          f"{machine['pinned_cpu']}, load {machine['load_average_1m']})")
    print(f"Python  {machine['implementation']} {machine['python']}, msgspec {machine['msgspec']}, "
          f"{machine['platform']}")
    print(f"Date    {machine['date_utc']}")
    print(f"Input   {workload['snapshots']} snapshots x {workload['records_per_snapshot']} stations "
          f"({workload['bytes_per_snapshot']:,} bytes), {workload['repeat']} timed runs after {workload['warmup']} "
          f"warm-up; first snapshot: {workload['valid_first_snapshot']} valid, "
          f"{workload['quarantined_first_snapshot']} quarantined")
    print()
    print(f"{'workload':<16}{'median ms':>11}{'p95 ms':>10}{'min ms':>10}{'records/s':>13}")
    for name, figures in report["results"].items():
        print(f"{name:<16}{figures['median_ms']:>11.3f}{figures['p95_ms']:>10.3f}{figures['min_ms']:>10.3f}"
              f"{figures['records_per_s']:>13,}")
    print()
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"production is {report['speedup_vs_naive']}x faster than naive and {verdict} the target of "
          f"{report['target_records_per_s']:,} records/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed snapshots per workload (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed snapshots first (default 30)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.repeat, args.warmup)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
