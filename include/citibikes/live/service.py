"""``citibikes consume``: the live consumer as a service (what ``make up`` starts beside Airflow).

Builds the consumer from the settings (store, topics, thresholds per system, metrics port), runs
it until asked to stop (SIGTERM or Ctrl-C: the batch in hand is committed, the outbox sent), logs a
summary per interval and keeps the Prometheus metrics fresh. ``test_mode`` reads both topics from
the start into a throwaway in-memory store under a throwaway group, reports the counts per topic
and returns.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

from confluent_kafka import Consumer, Producer

from citibikes.config import Settings
from citibikes.live.metrics import ConsumerMetrics
from citibikes.live.store import LiveStore
from citibikes.live.tracker import Tracker
from citibikes.stream.consume import OUTBOX_PRODUCER_DEFAULTS, LiveConsumer, consumer_config

log = logging.getLogger("citibikes.consumer")
METRICS_EVERY_S = 5.0


def build(settings: Settings, *, test_mode: bool = False, **consumer_overrides) -> LiveConsumer:
    topics = settings.topics
    tracker = Tracker(
        status_topic=topics["station_status"].name, information_topic=topics["station_information"].name,
        alerts_topic=topics["alerts"].name, dead_letter_topic=None if test_mode else topics["dead_letter"].name,
        thresholds={system.system_id: system.outage_threshold_s for system in settings.systems},
    )
    overrides = {"logger": logging.getLogger("citibikes.kafka"), **consumer_overrides}
    if test_mode:  # read everything from the start without touching the real group's offsets
        overrides["group.id"] = f"citibikes-live-test-{int(time.time())}"
    store = LiveStore.open(":memory:" if test_mode else settings.live_store)
    producer = None if test_mode else Producer({**OUTBOX_PRODUCER_DEFAULTS, **settings.kafka.client_config(),
                                                "logger": logging.getLogger("citibikes.kafka")})
    return LiveConsumer(Consumer(consumer_config(**settings.kafka.client_config(), **overrides)), store, tracker, producer)


def serve(settings: Settings, *, should_stop: Callable[[], bool], test_mode: bool = False,
          interval_s: float | None = None) -> dict:
    """Run the consumer until ``should_stop()`` (``test_mode``: until caught up); returns its final
    :func:`summary`."""
    live = build(settings, test_mode=test_mode)
    metrics = ConsumerMetrics()
    if settings.consumer_metrics_port and not test_mode:
        metrics.serve(settings.consumer_metrics_port)
    interval_s = interval_s or settings.interval_s
    log.info("Consumer started: store %s, topics %s, %s", live.store.url, live.topics,
             "until caught up" if test_mode else "until stopped")
    last = {"metrics": time.monotonic(), "report": time.monotonic()}

    def after_batch(consumer: LiveConsumer) -> None:
        now = time.monotonic()
        if now - last["metrics"] >= METRICS_EVERY_S:
            update_metrics(consumer, metrics)
            last["metrics"] = now
        if now - last["report"] >= interval_s:
            log_summary(consumer)
            last["report"] = now

    try:
        live.run(should_stop=should_stop, until_caught_up=test_mode, after_batch=after_batch)
        final = summary(live)
        log_summary(live, final)
    finally:
        live.close()
    log.info("Consumer stopped")
    return final


def update_metrics(live: LiveConsumer, metrics: ConsumerMetrics) -> None:
    s = live.store.summary()
    metrics.update(live.counts, live.lag(), max(live.tracker.clocks.values(), default=0), s["outbox"],
                   s["open_episodes"], live.committed_at)


def summary(live: LiveConsumer) -> dict:
    """Messages per topic and outcome, the store's counts, the lag."""
    per_topic: dict[str, dict[str, int]] = {}
    for (topic, outcome), n in sorted(live.counts.items()):
        per_topic.setdefault(topic, {})[outcome] = n
    return {"messages": per_topic, **live.store.summary(), "lag": sum(live.lag().values())}


def log_summary(live: LiveConsumer, s: dict | None = None) -> None:
    s = s or summary(live)
    outcomes: Counter[str] = Counter()
    for per_outcome in s["messages"].values():
        outcomes.update(per_outcome)
    log.info("%d messages consumed (%d applied, %d duplicates, %d unreadable); %d stations live, %d described, "
             "%d empty, %d full, %d bikes; lag %d", sum(outcomes.values()), outcomes["applied"], outcomes["duplicate"],
             outcomes["invalid"], s["stations"], s["described"], s["empty"], s["full"], s["bikes_available"], s["lag"])
