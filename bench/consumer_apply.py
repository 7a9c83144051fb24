"""How fast the live consumer applies a backlog with durable commits, and whether its memory stays flat.

Usage (from the repository root):

    .venv/bin/python bench/consumer_apply.py [--days 2] [--repeat 3] [--soak-minutes 10]

1. A real broker (throwaway) gets ``--days`` of the replayed Citi Bike feed, minute by minute,
   published by ``citibikes backfill --publish`` (the messages production sends: change capture
   plus a full snapshot every 15 minutes, and the descriptions).
2. Catch-up: the consumer the service runs (``LiveConsumer``: tracker, SQLite store in WAL with
   ``synchronous=FULL``, one transaction per batch) applies the whole backlog from a fresh store;
   messages/s over wall time and over the process's CPU time (it is single-threaded Python plus
   librdkafka's fetch thread). In the same run, two baselines over the same messages: reading and
   decoding them only (the floor any consumer pays), and the same consumer with an in-memory store
   (what durability costs).
3. Soak (``--soak-minutes``): ``citibikes consume`` runs as the service does while the bench keeps
   publishing the same days again with later times; its resident memory is sampled every 10 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, cpu_seconds, kafka_broker, machine_info, median  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from citibikes.config import load_settings  # noqa: E402
from citibikes.lake import open_lake  # noqa: E402
from citibikes.live import service  # noqa: E402
from citibikes.replay.backfill import backfill  # noqa: E402
from citibikes.stream.publish import Publisher, make_producer  # noqa: E402
from citibikes.stream.topics import ensure_topics  # noqa: E402

SYSTEM_ID = "citibike"
TARGET = 50_000


def publish_days(days: int, settings, workdir: Path) -> int:
    from bench.pipeline_throughput import write_day

    folder = workdir / "days"
    write_day(folder, days * 1440)
    publisher = Publisher(make_producer(**settings.kafka.client_config()), settings.topics)
    report = backfill(folder, SYSTEM_ID, settings=settings, lake=open_lake(str(workdir / "lake")), publisher=publisher)
    return report.published


def total_messages(bootstrap: str, topics: list[str]) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count"})
    total = 0
    for topic in topics:
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
    consumer.close()
    return total


def catch_up(settings, store: str) -> dict[str, Any]:
    """The service's consumer from a fresh store to the end of both topics."""
    live = service.build(dataclasses.replace(settings, live_store=store))
    live.producer = None  # alerts stay in the outbox: the bench times applying, not Kafka's round trip
    cpu, started = cpu_seconds(), time.perf_counter()
    live.run(should_stop=lambda: False, until_caught_up=True)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    messages = sum(live.counts.values())
    summary = live.store.summary()
    live.close()
    return {"messages": messages, "seconds": round(seconds, 2), "messages_per_s": round(messages / seconds),
            "messages_per_cpu_s": round(messages / cpu), "stations": summary["stations"],
            "alerts": summary["outbox"]}


def read_only(bootstrap: str, topics: list[str]) -> dict[str, Any]:
    """Baseline: consume and decode every message, nothing else."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{time.time()}",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    parts = [TopicPartition(t, p, 0) for t in topics for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
    consumer.assign(parts)
    eof: set = set()
    messages = 0
    cpu, started = cpu_seconds(), time.perf_counter()
    while len(eof) < len(parts):
        for message in consumer.consume(5000, timeout=1):
            if message.error():
                eof.add((message.topic(), message.partition()))
                continue
            if message.value() is not None:
                json.loads(message.value())
            messages += 1
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    consumer.close()
    return {"messages": messages, "seconds": round(seconds, 2), "messages_per_s": round(messages / seconds),
            "messages_per_cpu_s": round(messages / cpu)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(settings, workdir: Path, minutes: float) -> dict[str, Any]:
    """``citibikes consume`` as a service while the topics keep growing; its RSS over time."""
    env = {**os.environ, "CITIBIKES_KAFKA_BOOTSTRAP": settings.kafka.bootstrap, "CITIBIKES_STATE_DIR": str(workdir / "soak"),
           "CITIBIKES_FEED": "replay", "CITIBIKES_CONSUMER_METRICS_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "citibikes.cli", "consume", "--log-file", ""], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    status = settings.topics["station_status"].name
    # Later copies of the published status messages: same stations, new times, so each is applied.
    source = Consumer({**settings.kafka.client_config(), "group.id": "bench-soak-source",
                       "auto.offset.reset": "earliest", "enable.partition.eof": True})
    source.subscribe([status])
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 50})
    shift, samples, started = 0, [], time.monotonic()
    next_sample = started
    try:
        while time.monotonic() - started < minutes * 60:
            batch = source.consume(2000, timeout=0.5)
            for message in batch:
                if message.error():
                    if message.error().code() == -191:  # end of partition: the next loop starts
                        shift += 1
                        source.seek(TopicPartition(status, message.partition(), 0))
                    continue
                value = json.loads(message.value())
                value["last_updated"] += shift * 400 * 86400
                producer.produce(status, key=message.key(), value=json.dumps(value).encode(),
                                 headers=message.headers())
            producer.poll(0)
            time.sleep(0.05)  # a steady stream, not a flood: the soak is about memory, not speed
            if time.monotonic() >= next_sample:
                samples.append((round(time.monotonic() - started), round(rss_mb(process.pid), 1)))
                next_sample += 10
    finally:
        producer.flush(30)
        process.terminate()
        process.wait(timeout=60)
        source.close()
    return {"minutes": minutes, "rss_mb": samples, "first_minute_mb": max(s[1] for s in samples if s[0] <= 60),
            "last_minute_mb": max(s[1] for s in samples if s[0] >= samples[-1][0] - 60)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--soak-minutes", type=float, default=0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="citibikes-bench-consumer-"))
    report: dict[str, Any] = {"machine": machine_info()}
    try:
        with kafka_broker() as broker:
            settings = load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "CITIBIKES_STATE_DIR": str(workdir / "state")})
            ensure_topics(AdminClient({"bootstrap.servers": broker.bootstrap}), settings.topics.values())
            topics = [settings.topics["station_status"].name, settings.topics["station_information"].name]
            report["published"] = publish_days(args.days, settings, workdir)
            report["messages"] = total_messages(broker.bootstrap, topics)
            runs: dict[str, list] = {"durable": [], "in_memory": [], "read_only": []}
            for n in range(args.repeat):
                store = workdir / f"live-{n}.db"
                runs["durable"].append(catch_up(settings, str(store)))
                runs["in_memory"].append(catch_up(settings, ":memory:"))
                runs["read_only"].append(read_only(broker.bootstrap, topics))
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{store}{suffix}").unlink(missing_ok=True)
            report["runs"] = runs
            report["median_messages_per_s"] = {k: median([r["messages_per_s"] for r in v]) for k, v in runs.items()}
            report["median_messages_per_cpu_s"] = {k: median([r["messages_per_cpu_s"] for r in v]) for k, v in runs.items()}
            report["target_messages_per_s"] = TARGET
            if args.soak_minutes:
                report["soak"] = soak(settings, workdir, args.soak_minutes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report["median_messages_per_s"]["durable"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
