"""Benchmark: recorded GBFS files -> ``citibikes backfill`` -> (Kafka) -> Parquet, in records/s, against a naive baseline.

What is timed is :func:`citibikes.replay.backfill.backfill`, the function ``citibikes backfill`` runs,
whole: the scan of the folder, the pool of worker processes that check the snapshots, change
capture, producing and waiting for the broker's acknowledgements (with ``--publish``), the Parquet
files, the run records. Records are station_status observations (one per station per snapshot).
Two workloads, each written to a folder before timing:

* ``archive``: a recorded archive the way scrapers keep them (``bench/archive.py``): a status and an
  information file side by side every 5-20 minutes, the information content changing a few times
  (one change per 100 snapshots) while its ``last_updated`` is new every time. 819 snapshots by default,
  the size of the real archive the issue measured. Backfilled into the lake only (the default) and
  with ``--publish``. Also measured: station_information rows landed against the description
  versions in the files (the first snapshot's stations plus those each change touched).
* ``day``: a replayed synthetic day of minute snapshots (1,440, the replay feed's Citi Bike), the
  information once, backfilled with ``--publish`` (the whole path: bytes -> Kafka -> Parquet).

The broker is started by this script (free ports, data in a temporary folder; jars from
``.state/kafka/lib``, fetched from Maven Central when missing) and stopped at the end. ``--repeat``
rounds, each timing every pass once into a fresh lake after the same settling (garbage collected,
files synced), after one untimed warm-up round; figures are the median pass. CPU per snapshot is
measured for this process, the worker processes and the broker.

Baseline, in the same run: what simple streaming scripts do - ``json.loads``, a dict per record, a
synchronous send (``produce`` + ``flush`` per record), an INFO log line per record, a Parquet file per
snapshot - on the first ``--baseline-snapshots`` snapshots of the day, once per round. The ratio is
of the day pass's median to the baseline's median.

Usage, from the repository root: ``.venv/bin/python bench/pipeline_throughput.py [--archive-snapshots 819]
[--day-snapshots 1440] [--repeat 3] [--baseline-snapshots 2] [--json out.json]``. Exit status 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench.archive import write_archive  # noqa: E402
from bench.common import cpu_seconds, kafka_broker, machine_info, median  # noqa: E402
from citibikes.config import Settings, load_settings  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.replay.backfill import backfill  # noqa: E402
from citibikes.replay.evolve import ReplayFeed, citibike_spec  # noqa: E402
from citibikes.stack.kafka import KAFKA_VERSION  # noqa: E402
from citibikes.stream.publish import Publisher, make_producer  # noqa: E402
from citibikes.stream.topics import ensure_topics  # noqa: E402

SYSTEM_ID = "citibike"
START = 1_767_225_600  # 2026-01-01T00:00:00Z: a fixed start makes every run replay the same data
TARGETS = {"archive": 250_000, "archive_publish": 100_000, "day_publish": 200_000}
TARGET_RATIO = 50
NAIVE_TOPIC = "bench-naive-station-status"


def write_day(folder: Path, count: int) -> None:
    """``count`` minute snapshots of the replayed Citi Bike, the information once."""
    feed = ReplayFeed(citibike_spec(system_id=SYSTEM_ID))
    folder.mkdir(parents=True)
    (folder / "station_information.json").write_bytes(feed.station_information(START).body)
    for i in range(count):
        status = feed.station_status(START + 60 * i)
        (folder / f"station_status-{status.last_updated}.json").write_bytes(status.body)


def settle() -> None:
    """Before each timed section: the previous one's garbage collected and its files on disk."""
    gc.collect()
    os.sync()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's workers, once they ended
    return usage.ru_utime + usage.ru_stime


def run_pass(folder: Path, settings: Settings, workdir: Path, publisher: Publisher | None,
             broker_pid: int | None) -> dict[str, Any]:
    """One backfill of ``folder`` into a fresh lake."""
    root = Path(tempfile.mkdtemp(prefix="lake-", dir=workdir))
    lake = open_lake(str(root))
    settle()
    cpu, workers, broker = cpu_seconds(), children_cpu(), cpu_seconds(broker_pid) if broker_pid else None
    started = time.perf_counter()
    report = backfill(folder, SYSTEM_ID, settings=settings, lake=lake, publisher=publisher)
    seconds = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(f"{report.failed} snapshots failed: {report.errors[:3]}")
    snapshots = report.processed
    result = {
        "seconds": round(seconds, 3),
        "snapshots": snapshots,
        "records": report.records,
        "records_per_s": round(report.records / seconds),
        "published": report.published,
        "cpu_ms_per_snapshot": round((cpu_seconds() - cpu) * 1000 / snapshots, 2),
        "workers_cpu_ms_per_snapshot": round((children_cpu() - workers) * 1000 / snapshots, 2),
        "broker_cpu_ms_per_snapshot": (round((cpu_seconds(broker_pid) - broker) * 1000 / snapshots, 2)
                                       if broker is not None else None),
        "lake": lake_sizes(root),
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def lake_sizes(root: Path) -> dict[str, Any]:
    def files(table: str) -> list[Path]:
        return sorted(root.glob(f"curated/{table}/**/*.parquet"))

    status = files("station_status")
    observations = sum(pq.read_metadata(path).num_rows for path in status)
    information = files("station_information")
    return {
        "status_bytes_per_observation": round(sum(path.stat().st_size for path in status) / observations, 2),
        "station_information_rows": sum(pq.read_metadata(path).num_rows for path in information),
        "station_information_bytes": sum(path.stat().st_size for path in information),
    }


def description_versions(folder: Path) -> int:
    """The descriptions that changed in the archive's information files: every station of the first,
    then each station whose description differs from the file before."""
    before: dict[str, Any] = {}
    versions = 0
    for path in sorted(folder.glob("*/station_information.json")):
        stations = {s["station_id"]: s for s in json.loads(path.read_bytes())["data"]["stations"]}
        versions += sum(before.get(station_id) != station for station_id, station in stations.items())
        before = stations
    return versions


def run_naive(folder: Path, count: int, bootstrap: str, workdir: Path) -> dict[str, Any]:
    """The baseline: json.loads, a dict per record, a synchronous send and an INFO line per record."""
    workdir = Path(tempfile.mkdtemp(prefix="naive-", dir=workdir))
    logger = logging.getLogger("bench.naive")
    handler = logging.FileHandler(workdir / "naive.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "log_level": 4})
    bodies = [path.read_bytes() for path in sorted(folder.glob("station_status-*.json"))[:count]]
    try:
        settle()
        started = time.perf_counter()
        records = naive_pass(bodies, producer, logger, workdir)
        seconds = time.perf_counter() - started
    finally:
        producer.close()
        logger.removeHandler(handler)
        handler.close()
    return {"snapshots": len(bodies), "records": records, "records_per_s": round(records / seconds)}


def naive_pass(bodies: list[bytes], producer: Producer, logger: logging.Logger, out: Path) -> int:
    records = 0
    for body in bodies:
        document = json.loads(body)
        last_updated = int(document["last_updated"])
        rows = []
        for station in document["data"]["stations"]:
            record = {
                "system_id": SYSTEM_ID,
                "station_id": str(station["station_id"]),
                "num_bikes_available": int(station["num_bikes_available"]),
                "num_ebikes_available": station.get("num_ebikes_available"),
                "num_docks_available": station.get("num_docks_available"),
                "is_installed": bool(station["is_installed"]),
                "is_renting": bool(station["is_renting"]),
                "is_returning": bool(station["is_returning"]),
                "last_reported": station.get("last_reported"),
                "last_updated": last_updated,
                "fetched_at": time.time(),
            }
            if record["num_bikes_available"] < 0:
                logger.warning("station %s: negative bike count, skipped", record["station_id"])
                continue
            producer.produce(NAIVE_TOPIC, key=record["station_id"].encode(), value=json.dumps(record).encode())
            producer.flush()  # synchronous send: wait for this record's acknowledgement
            logger.info("sent station %s: %s bikes, %s docks", record["station_id"],
                        record["num_bikes_available"], record["num_docks_available"])
            rows.append(record)
            records += 1
        pq.write_table(pa.Table.from_pylist(rows), out / f"{last_updated}.parquet")
    return records


def summarize(passes: list[dict[str, Any]]) -> dict[str, Any]:
    best = sorted(passes, key=lambda p: p["records_per_s"])[len(passes) // 2]
    return {**best, "records_per_s": round(median([p["records_per_s"] for p in passes])),
            "records_per_s_each": [p["records_per_s"] for p in passes]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info(kafka=KAFKA_VERSION)
    workdir = Path(tempfile.mkdtemp(prefix="citibikes-bench-"))
    try:
        began = time.perf_counter()
        archive = workdir / "archive"
        written = write_archive(archive, args.archive_snapshots)
        expected_versions = description_versions(archive)
        day = workdir / "day"
        write_day(day, args.day_snapshots)
        generation_s = time.perf_counter() - began
        with kafka_broker() as broker:
            settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "CITIBIKES_STATE_DIR": str(workdir / "state")})
            admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 4})
            ensure_topics(admin, settings.topics.values())
            admin.create_topics([NewTopic(NAIVE_TOPIC, 3, 1)])[NAIVE_TOPIC].result()
            producer = make_producer(broker.bootstrap)
            publisher = Publisher(producer, settings.topics)
            passes: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
            baselines = []
            try:
                for round_ in range(args.repeat + 1):  # round 0 warms the broker's JIT, connections, caches
                    results = {
                        "archive": run_pass(archive, settings, workdir, None, broker.pid()),
                        "archive_publish": run_pass(archive, settings, workdir, publisher, broker.pid()),
                        "day_publish": run_pass(day, settings, workdir, publisher, broker.pid()),
                    }
                    baseline = run_naive(day, args.baseline_snapshots, broker.bootstrap, workdir)
                    if round_:
                        for name, result in results.items():
                            passes[name].append(result)
                        baselines.append(baseline)
                    print(f"round {round_}: " + ", ".join(f"{name} {r['records_per_s']:,}" for name, r in results.items())
                          + f", baseline {baseline['records_per_s']:,} records/s", file=sys.stderr, flush=True)
            finally:
                producer.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {name: summarize(runs) for name, runs in passes.items()}
    baseline_rate = round(median([b["records_per_s"] for b in baselines]))
    ratio = figures["day_publish"]["records_per_s"] / baseline_rate
    versions = written.information_versions  # distinct contents; the rows are below
    return {
        "machine": machine,
        "workload": {"archive_snapshots": written.snapshots, "archive_status_records": written.status_records,
                     "archive_information_contents": versions, "day_snapshots": args.day_snapshots,
                     "repeat": args.repeat, "generation_s": round(generation_s, 1),
                     "status_snapshot_every_s": settings.status_snapshot_every_s},
        "passes": figures,
        "baseline": {"records_per_s": baseline_rate, "records_per_s_each": [b["records_per_s"] for b in baselines],
                     "snapshots": args.baseline_snapshots},
        "ratio": round(ratio, 1),
        "targets": {**{name: {"records_per_s": target, "met": figures[name]["records_per_s"] >= target}
                       for name, target in TARGETS.items()},
                    "ratio": {"target": TARGET_RATIO, "met": ratio >= TARGET_RATIO},
                    "station_information": {"rows": figures["archive"]["lake"]["station_information_rows"],
                                            "description_versions": expected_versions,
                                            "met": figures["archive"]["lake"]["station_information_rows"]
                                            <= expected_versions}},
    }


def print_report(report: dict[str, Any]) -> None:
    m, w = report["machine"], report["workload"]
    print(f"command   {m['command']}")
    print(f"machine   {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
          f"load {m['load_average_1m']} at start")
    print(f"software  {m['python']}, pyarrow {m['pyarrow']}, msgspec {m['msgspec']}, confluent-kafka "
          f"{m['confluent_kafka']} (librdkafka {m['librdkafka']}), Kafka {m['kafka']} (own broker), {m['platform']}")
    print(f"date      {m['date_utc']}")
    print(f"workload  archive: {w['archive_snapshots']} snapshots, {w['archive_status_records']:,} status records, "
          f"{w['archive_information_contents']} information contents; day: {w['day_snapshots']} minute snapshots; "
          f"{w['repeat']} timed rounds after a warm-up")
    print()
    for name, figures in report["passes"].items():
        target = report["targets"][name]
        print(f"{name:<16} {figures['records_per_s']:>9,} records/s (passes: "
              f"{', '.join(f'{r:,}' for r in figures['records_per_s_each'])}; target {target['records_per_s']:,}: "
              f"{'met' if target['met'] else 'NOT met'})")
        broker = figures["broker_cpu_ms_per_snapshot"]
        print(f"{'':<16} CPU per snapshot: {figures['cpu_ms_per_snapshot']} ms in this process, "
              f"{figures['workers_cpu_ms_per_snapshot']} ms in the workers, {broker} ms in the broker; "
              f"{figures['published']:,} messages; {figures['lake']['status_bytes_per_observation']} bytes per "
              f"status observation in Parquet")
    baseline = report["baseline"]
    print(f"baseline         {baseline['records_per_s']:>9,} records/s (runs: "
          f"{', '.join(f'{r:,}' for r in baseline['records_per_s_each'])}; sync send + INFO line per record)")
    ratio = report["targets"]["ratio"]
    print(f"ratio            {report['ratio']:>9}x day_publish / baseline (target {ratio['target']}x: "
          f"{'met' if ratio['met'] else 'NOT met'})")
    info = report["targets"]["station_information"]
    print(f"descriptions     {info['rows']:,} station_information rows landed from the archive, "
          f"{info['description_versions']:,} description versions in its files ({'met' if info['met'] else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive-snapshots", type=int, default=819)
    parser.add_argument("--day-snapshots", type=int, default=1440)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--baseline-snapshots", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("citibikes.kafka").setLevel(logging.ERROR)  # e.g. "coordinator load in progress" at start
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(target["met"] for target in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
