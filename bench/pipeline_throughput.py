"""Benchmark: replayed feed bytes -> normalize -> validate -> a real Kafka broker -> Parquet, in records/s.

What is timed is what ``citibikes backfill`` does with the recorded snapshots
(:func:`citibikes.replay.backfill.ingest_snapshots`): for each one, archive the raw body in the lake,
parse, normalize, validate, change capture, produce to the broker and wait for its
acknowledgements, write the Parquet snapshot, advance the state and record the run. As in
``citibikes backfill``, a worker process (:class:`citibikes.pipeline.SnapshotWorker`, started once
before the passes, like the producer) prepares the next snapshots - validation, raw archive,
change capture's selection and the encoded messages - while this process sends one snapshot,
writes the lake files and the broker acknowledges earlier ones (one flush per 32 snapshots); ``--no-worker`` prepares in this process instead. Records are
station_status observations (one per station per snapshot); ms per snapshot is the time between
two landed snapshots (snapshots land a flush at a time: the p50 is small, the p95 a flush's wait).

* Input: ``--snapshots`` minute snapshots of Citi Bike (2,208 stations) from the offline replay feed
  (:mod:`citibikes.replay.evolve`), rendered to bytes before timing: by default a replayed day
  (1,440), the unit a backfill of recorded archives runs in, so that a pass measures the steady
  state (filling and draining the chain of snapshots is about 6% of a 120-snapshot pass). station_information comes with
  the first snapshot only (it is validated and landed once; the records counted are status records).
* The broker is started by this script (free ports, data in a temporary folder; jars from
  ``.state/kafka/lib``, fetched from Maven Central when missing) and stopped at the end.
* ``--repeat`` passes over the same snapshots, each into a fresh lake and fresh pipeline state, after
  ``--warmup-passes`` untimed ones (the broker's JVM needs them); records/s is the median pass, ms
  per snapshot p50/p95 over all timed snapshots (full change-capture snapshots and the first one,
  with station_information, included).
* Change capture: one more pass with ``status_snapshot_every_s=0`` (every snapshot published whole);
  messages published with and without change capture are compared.
* Lake size: Parquet bytes per status observation, against the raw JSON bytes of the same snapshots
  and their raw archive in the lake (zstd; gzip -6, the former format, for comparison), over
  the replayed day.
* Baseline, in the same run: what simple streaming scripts do - ``json.loads``, a dict per record,
  a synchronous send (``produce`` + ``flush`` per record) and an INFO log line per record to a log
  file, plus one Parquet file per snapshot - on the first ``--baseline-snapshots`` snapshots, once
  after each timed pass (same machine load, same broker); the ratio is of the two medians. Each
  timed section starts settled: garbage collected and the files written before it on disk (``sync``).

Usage, from the repository root: ``.venv/bin/python bench/pipeline_throughput.py [--snapshots 1440]
[--repeat 3] [--warmup-passes 1] [--baseline-snapshots 2] [--no-worker] [--json out.json]``. The exit status is 1
when a target (200,000 records/s, 50 times the baseline) is missed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench.common import cpu_seconds, kafka_broker, machine_info, median, percentile  # noqa: E402
from citibikes.config import Settings, load_settings  # noqa: E402
from citibikes.gbfs.model import STATION_STATUS  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.pipeline import SnapshotWorker, SystemState  # noqa: E402
from citibikes.replay.backfill import Snapshot, ingest_snapshots, new_change_capture  # noqa: E402
from citibikes.replay.evolve import ReplayFeed, citibike_spec  # noqa: E402
from citibikes.stack.kafka import KAFKA_VERSION  # noqa: E402
from citibikes.stream.publish import Publisher, make_producer  # noqa: E402
from citibikes.stream.topics import ensure_topics  # noqa: E402

SYSTEM_ID = "citibike"
START = 1_767_225_600  # 2026-01-01T00:00:00Z: a fixed start makes every run replay the same data
TARGET_RECORDS_PER_S = 200_000
TARGET_RATIO = 50
NAIVE_TOPIC = "bench-naive-station-status"


def generate(count: int) -> list[Snapshot]:
    """``count`` minute snapshots as bytes; station_information with the first one only."""
    feed = ReplayFeed(citibike_spec(system_id=SYSTEM_ID))
    snapshots = []
    for i in range(count):
        status = feed.station_status(START + 60 * i)
        information = feed.station_information(START) if i == 0 else None
        snapshots.append(Snapshot(
            status_last_updated=status.last_updated, status_body=status.body,
            information_last_updated=information.last_updated if information else None,
            information_body=information.body if information else None,
        ))
    return snapshots


@dataclass
class Pass:
    """One pass of the pipeline over the snapshots, into a fresh lake."""

    seconds: float = 0.0
    records: int = 0
    valid: int = 0
    quarantined: int = 0
    published: int = 0
    snapshot_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    runs: list[Any] = field(default_factory=list)
    cpu_s: float = 0.0
    """CPU time of this process (all threads) during the pass."""
    worker_cpu_s: float | None = None
    """CPU time of the worker process that prepares snapshots (None without one)."""
    broker_cpu_s: float | None = None
    lake: dict[str, Any] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds


def run_pass(snapshots: list[Snapshot], settings: Settings, publisher: Publisher, workdir: Path, *,
             worker: SnapshotWorker | None, snapshot_every_s: int | None = None, measure_lake: bool = False,
             broker_pid: int | None = None) -> Pass:
    root = Path(tempfile.mkdtemp(prefix="lake-", dir=workdir))
    lake = open_lake(str(root))
    captures = new_change_capture(settings.status_snapshot_every_s if snapshot_every_s is None else snapshot_every_s)
    result = Pass()
    settle()
    worker_pid = worker.pid if worker is not None else None
    cpu, broker_cpu = cpu_seconds(), cpu_seconds(broker_pid) if broker_pid else None
    worker_cpu = cpu_seconds(worker_pid) if worker_pid else None
    started = begun = time.perf_counter()
    for _, record, _ in ingest_snapshots(snapshots, SYSTEM_ID, settings=settings, lake=lake, publisher=publisher,
                                         state=SystemState(), captures=captures, worker=worker,
                                         run_id=lambda snapshot: f"bench__{snapshot.status_last_updated}"):
        now = time.perf_counter()  # snapshots overlap with a worker: the time between two landed snapshots
        result.snapshot_ms.append((now - begun) * 1000)
        begun = now
        if record.outcome != "success":
            raise RuntimeError(f"snapshot {record.run_id} failed: {record.error}")
        result.records += record.stations_status or 0
        result.valid += record.stations_valid or 0
        result.quarantined += record.stations_quarantined or 0
        result.published += record.stations_published or 0
        result.runs.append(record)
    result.seconds = time.perf_counter() - started
    result.cpu_s = cpu_seconds() - cpu
    if broker_cpu is not None:
        result.broker_cpu_s = cpu_seconds(broker_pid) - broker_cpu
    if worker_cpu is not None:
        result.worker_cpu_s = cpu_seconds(worker_pid) - worker_cpu
    for record in result.runs:
        for stage in ("validate", "produce", "write"):
            seconds = getattr(record, f"{stage}_s")
            if seconds is not None:
                result.stages_ms.setdefault(stage, []).append(seconds * 1000)
    if measure_lake:
        result.lake = lake_sizes(root, snapshots)
    shutil.rmtree(root, ignore_errors=True)
    return result


def lake_sizes(root: Path, snapshots: list[Snapshot]) -> dict[str, Any]:
    """Bytes on disk per station_status observation: curated Parquet, raw JSON and its archive."""
    def total(pattern: str) -> int:
        return sum(path.stat().st_size for path in root.glob(pattern) if path.is_file())

    status_files = sorted(root.glob("curated/station_status/**/*.parquet"))
    observations = sum(pq.read_metadata(path).num_rows for path in status_files)
    parquet = sum(path.stat().st_size for path in status_files)
    raw_json = sum(len(s.status_body) for s in snapshots)
    archived = total(f"raw/system={SYSTEM_ID}/feed={STATION_STATUS}/**/*")
    gzipped = sum(len(gzip.compress(s.status_body, compresslevel=6, mtime=0)) for s in snapshots)
    whole_lake = total("**/*")
    return {
        "snapshots": len(snapshots),
        "observations": observations,
        "status_parquet_bytes": parquet,
        "status_raw_json_bytes": raw_json,
        "status_raw_archive_bytes": archived,
        "status_raw_gzip6_bytes": gzipped,
        "whole_lake_bytes": whole_lake,
        "parquet_bytes_per_observation": round(parquet / observations, 2),
        "raw_json_bytes_per_observation": round(raw_json / observations, 1),
        "raw_archive_bytes_per_observation": round(archived / observations, 2),
        "raw_gzip6_bytes_per_observation": round(gzipped / observations, 2),
        "raw_json_to_parquet": round(raw_json / parquet, 1),
    }


def settle() -> None:
    """Before each timed section: the previous one's garbage collected and its files on disk, so that
    neither is timed while the kernel writes back what the other wrote (a pass writes ~130 MB)."""
    gc.collect()
    os.sync()


def run_naive(snapshots: list[Snapshot], bootstrap: str, workdir: Path) -> dict[str, Any]:
    """The baseline: json.loads, a dict per record, a synchronous send and an INFO line per record."""
    workdir = Path(tempfile.mkdtemp(prefix="naive-", dir=workdir))
    log_file = workdir / "naive.log"
    logger = logging.getLogger("bench.naive")
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "log_level": 4})
    out = workdir / "naive-lake"
    out.mkdir()
    try:
        settle()
        started = time.perf_counter()
        records = naive_pass(snapshots, producer, logger, out)
        seconds = time.perf_counter() - started
    finally:
        producer.close()
        logger.removeHandler(handler)
        handler.close()
    return {"snapshots": len(snapshots), "records": records, "seconds": round(seconds, 3),
            "records_per_s": round(records / seconds), "log_bytes": log_file.stat().st_size}


def naive_pass(snapshots: list[Snapshot], producer: Producer, logger: logging.Logger, out: Path) -> int:
    records = 0
    for snapshot in snapshots:
        document = json.loads(snapshot.status_body)
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


def create_topics(bootstrap: str, settings: Settings) -> None:
    """The pipeline's topics (as ``citibikes up`` creates them) and the baseline's."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # no info lines at shutdown
    ensure_topics(admin, settings.topics.values())
    admin.create_topics([NewTopic(NAIVE_TOPIC, 3, 1)])[NAIVE_TOPIC].result()


def summarize(passes: list[Pass]) -> dict[str, Any]:
    snapshot_ms = [ms for p in passes for ms in p.snapshot_ms]
    rates = [p.records_per_s for p in passes]
    return {
        "passes": len(passes),
        "records_per_pass": passes[0].records,
        "records_per_s_median": round(median(rates)),
        "records_per_s_each": [round(r) for r in rates],
        "snapshot_ms_p50": round(percentile(snapshot_ms, 0.50), 2),
        "snapshot_ms_p95": round(percentile(snapshot_ms, 0.95), 2),
        "stage_ms_p50": {stage: round(percentile([ms for p in passes for ms in p.stages_ms.get(stage, [])], 0.5), 2)
                         for stage in ("validate", "produce", "write")},
        "cpu_ms_per_snapshot": round(median([p.cpu_s * 1000 / len(p.snapshot_ms) for p in passes]), 2),
        "worker_cpu_ms_per_snapshot": (round(median([p.worker_cpu_s * 1000 / len(p.snapshot_ms) for p in passes]), 2)
                                       if passes[0].worker_cpu_s is not None else None),
        "broker_cpu_ms_per_snapshot": (round(median([p.broker_cpu_s * 1000 / len(p.snapshot_ms) for p in passes]), 2)
                                       if passes[0].broker_cpu_s is not None else None),
        "published_per_pass": passes[0].published,
        "valid_per_pass": passes[0].valid,
        "quarantined_per_pass": passes[0].quarantined,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info(kafka=KAFKA_VERSION)
    workdir = Path(tempfile.mkdtemp(prefix="citibikes-bench-"))
    try:
        with kafka_broker() as broker:
            settings = load_settings({
                "CITIBIKES_FEED": "replay",
                "CITIBIKES_KAFKA_BOOTSTRAP": broker.bootstrap,
                "CITIBIKES_LAKE_URI": str(workdir / "unused-lake"),
                "CITIBIKES_STATE_DIR": str(workdir / "state"),
            })
            create_topics(broker.bootstrap, settings)

            generated = time.perf_counter()
            snapshots = generate(args.snapshots)
            generated = time.perf_counter() - generated
            producer = make_producer(settings.kafka_bootstrap)
            # Started once, like the producer: a long backfill pays its start-up (about a second) once.
            worker = SnapshotWorker().start() if args.worker else None
            try:
                publisher = Publisher(producer, settings.topics)
                for _ in range(args.warmup_passes):  # the broker's JIT, connections, caches - for both
                    run_pass(snapshots, settings, publisher, workdir, worker=worker)
                    run_naive(snapshots[:args.baseline_snapshots], broker.bootstrap, workdir)
                passes, baselines = [], []
                for i in range(args.repeat):  # interleaved, so both see the same machine and broker
                    passes.append(run_pass(snapshots, settings, publisher, workdir, worker=worker,
                                           measure_lake=(i == 0), broker_pid=broker.pid()))
                    baselines.append(run_naive(snapshots[:args.baseline_snapshots], broker.bootstrap, workdir))
                full = run_pass(snapshots, settings, publisher, workdir, worker=worker, snapshot_every_s=0)
            finally:
                if worker is not None:
                    worker.close()
                producer.close()  # before the broker stops, so it does not log the lost connection
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ours = summarize(passes)
    naive = {**baselines[0], "records_per_s": round(median([b["records_per_s"] for b in baselines])),
             "records_per_s_each": [b["records_per_s"] for b in baselines]}
    del naive["seconds"]
    ratio = ours["records_per_s_median"] / naive["records_per_s"]
    with_cc, without_cc = ours["published_per_pass"], full.published
    return {
        "machine": machine,
        "workload": {
            "system": SYSTEM_ID,
            "snapshots": args.snapshots,
            "interval_s": 60,
            "stations_per_snapshot": passes[0].records // args.snapshots,
            "status_bytes_per_snapshot": round(sum(len(s.status_body) for s in snapshots) / len(snapshots)),
            "repeat": args.repeat,
            "warmup_passes": args.warmup_passes,
            "generation_s": round(generated, 2),
            "status_snapshot_every_s": settings.status_snapshot_every_s,
            "worker_process": args.worker,
        },
        "pipeline": ours,
        "baseline": naive,
        "ratio": round(ratio, 1),
        "change_capture": {
            "published_with": with_cc,
            "published_without": without_cc,
            "saved": without_cc - with_cc,
            "saved_percent": round(100 * (without_cc - with_cc) / without_cc, 1),
            "full_snapshot_pass_records_per_s": round(full.records_per_s),
        },
        "lake": passes[0].lake,
        "targets": {
            "records_per_s": TARGET_RECORDS_PER_S,
            "ratio": TARGET_RATIO,
            "meets_records_per_s": ours["records_per_s_median"] >= TARGET_RECORDS_PER_S,
            "meets_ratio": ratio >= TARGET_RATIO,
        },
    }


def print_report(report: dict[str, Any]) -> None:
    m, w, ours, naive = report["machine"], report["workload"], report["pipeline"], report["baseline"]
    cc, lake, targets = report["change_capture"], report["lake"], report["targets"]
    print(f"command   {m['command']}")
    print(f"machine   {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
          f"load {m['load_average_1m']} at start")
    print(f"software  {m['python']}, pyarrow {m['pyarrow']}, msgspec {m['msgspec']}, confluent-kafka "
          f"{m['confluent_kafka']} (librdkafka {m['librdkafka']}), Kafka {m['kafka']} (own broker), {m['platform']}")
    print(f"date      {m['date_utc']}")
    print(f"workload  {w['snapshots']} minute snapshots x {w['stations_per_snapshot']:,} stations "
          f"({w['status_bytes_per_snapshot']:,} bytes of JSON each), {w['repeat']} timed passes after a warm-up")
    print()
    print(f"pipeline  {ours['records_per_s_median']:>9,} records/s (median pass; passes: "
          f"{', '.join(f'{r:,}' for r in ours['records_per_s_each'])})")
    print(f"          {ours['snapshot_ms_p50']:.1f} ms per snapshot p50, {ours['snapshot_ms_p95']:.1f} ms p95; stages p50: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in ours["stage_ms_p50"].items()))
    worker = (f", {ours['worker_cpu_ms_per_snapshot']} ms in the worker process"
              if ours["worker_cpu_ms_per_snapshot"] is not None else " (no worker process)")
    print(f"          CPU per snapshot: {ours['cpu_ms_per_snapshot']:.1f} ms in this process (all threads){worker}, "
          f"{ours['broker_cpu_ms_per_snapshot']} ms in the broker")
    print(f"baseline  {naive['records_per_s']:>9,} records/s (median run; runs: "
          f"{', '.join(f'{r:,}' for r in naive['records_per_s_each'])}; {naive['records']:,} records of "
          f"{naive['snapshots']} snapshots each: sync send + INFO line per record)")
    print(f"ratio     {report['ratio']:>9}x")
    print()
    print(f"change capture  {cc['published_with']:,} messages published vs {cc['published_without']:,} with every "
          f"snapshot whole: {cc['saved']:,} fewer ({cc['saved_percent']}%); full snapshots every "
          f"{w['status_snapshot_every_s']} s")
    print(f"lake            {lake['parquet_bytes_per_observation']} bytes per status observation in Parquet vs "
          f"{lake['raw_json_bytes_per_observation']} raw JSON ({lake['raw_json_to_parquet']}x) and "
          f"{lake['raw_archive_bytes_per_observation']} in the raw archive (zstd; gzip -6 would take "
          f"{lake['raw_gzip6_bytes_per_observation']}); {lake['observations']:,} observations, "
          f"whole lake {lake['whole_lake_bytes'] / 1e6:.1f} MB")
    print()
    for name, ok, goal in (("records/s", targets["meets_records_per_s"], f"{targets['records_per_s']:,}"),
                           ("ratio", targets["meets_ratio"], f"{targets['ratio']}x")):
        print(f"target {name} >= {goal}: {'met' if ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1440, help="minute snapshots per pass (default 1440: a day)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--warmup-passes", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument("--baseline-snapshots", type=int, default=2, help="snapshots for the naive baseline (default 2)")
    parser.add_argument("--no-worker", dest="worker", action="store_false",
                        help="prepare snapshots in this process instead of a worker process")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    args = parser.parse_args(argv)
    if args.snapshots < 2 or args.repeat < 1 or args.baseline_snapshots < 1:
        parser.error("--snapshots must be at least 2, --repeat and --baseline-snapshots at least 1")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("citibikes.kafka").setLevel(logging.ERROR)  # e.g. "coordinator load in progress" at start
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["targets"]["meets_records_per_s"] and report["targets"]["meets_ratio"] else 1


if __name__ == "__main__":
    sys.exit(main())
