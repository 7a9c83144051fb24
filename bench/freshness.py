"""Freshness on the running stack: feed ``last_updated`` -> Kafka -> live state committed -> alert.

Usage, with the stack up (``make up``), from the repository root:

    .venv/bin/python bench/freshness.py [--runs 30]

It follows the status and alerts topics from their end while the minute DAG runs, and matches each
status message with the live store's row for the same station and ``last_updated`` (the store
keeps when the consumer committed it: ``applied_at``), and each opened/closed alert with the status
message that caused it. Per message:

- feed -> Kafka: the message's timestamp (CreateTime, set when the ``produce`` task sends it; the
  flush that acknowledges it follows within the run) minus the feed's ``last_updated``;
- Kafka -> live state: ``applied_at`` minus the message's timestamp (target: p95 under 2 s);
- live state -> alert: the alert message's timestamp minus ``applied_at`` of its status.

A station changed again before the store was read cannot be matched (counted as ``overtaken``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, percentile  # noqa: E402
from confluent_kafka import OFFSET_END, Consumer, TopicPartition  # noqa: E402

from citibikes.config import load_settings  # noqa: E402
from citibikes.live.store import LiveStore  # noqa: E402

TARGET_S = 2.0


def follow(bootstrap: str, topics: list[str]) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-freshness", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, OFFSET_END) for t in topics
                     for p in consumer.list_topics(t, timeout=10).topics[t].partitions])
    return consumer


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(percentile(values, 0.5), 3), "p95_s": round(percentile(values, 0.95), 3),
            "max_s": round(max(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="minute-runs to observe (default 30)")
    args = parser.parse_args(argv)
    settings = load_settings()
    status_topic, alerts_topic = settings.topics["station_status"].name, settings.topics["alerts"].name
    store = LiveStore.open(settings.live_store, readonly=True)
    consumer = follow(settings.kafka.bootstrap, [status_topic, alerts_topic])
    pending: dict[tuple[str, int], float] = {}   # (key, last_updated) -> Kafka timestamp of the status
    applied: dict[tuple[str, int], float] = {}   # (key, last_updated) -> applied_at
    alerts: list[tuple[tuple[str, int], float]] = []
    to_kafka, to_state, to_alert, overtaken, runs = [], [], [], 0, set()
    print(f"following {status_topic} and {alerts_topic} until {args.runs} minute-runs were seen...", file=sys.stderr)
    last_read = time.monotonic()
    while len(runs) <= args.runs:  # the first run may be seen in part: one more
        for message in consumer.consume(1000, timeout=1):
            if message.error():
                continue
            stamp = message.timestamp()[1] / 1000
            value = json.loads(message.value())
            if message.topic() == status_topic:
                key = (f"{value['system_id']}:{value['station_id']}", value["last_updated"])
                pending[key] = stamp
                to_kafka.append(stamp - value["last_updated"])
                runs.add(value["last_updated"])
            elif value["event"] in ("opened", "closed"):
                alerts.append(((f"{value['system_id']}:{value['station_id']}", value["at"]), stamp))
        if time.monotonic() - last_read >= 5:
            last_read = time.monotonic()
            rows = store.applied()
            for (key, updated), stamp in list(pending.items()):
                row = rows.get(key)
                if row and row[0] == updated:
                    to_state.append(row[1] - stamp)
                    applied[(key, updated)] = row[1]
                    del pending[(key, updated)]
                elif row and row[0] > updated:
                    overtaken += 1
                    del pending[(key, updated)]
            for cause, stamp in list(alerts):
                if cause in applied:
                    to_alert.append(stamp - applied[cause])
                    alerts.remove((cause, stamp))
    consumer.close()
    report = {
        "machine": machine_info(),
        "minute_runs": len(runs),
        "feed_to_kafka": stats(to_kafka),
        "kafka_to_live_state": stats(to_state),
        "live_state_to_alert": stats(to_alert),
        "overtaken": overtaken,
        "target_kafka_to_live_state_p95_s": TARGET_S,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["kafka_to_live_state"].get("p95_s", 99) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
