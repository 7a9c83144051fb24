"""The live consumer's health as Prometheus metrics (text format on a local port).

Updated every few seconds from the consumer: messages by topic and outcome, lag per partition,
the rate of the last interval, the age of the newest event (now minus the newest ``last_updated``
applied), the outbox backlog, open episodes and the time of the last store commit.
"""

from __future__ import annotations

import time
from collections import Counter as Counts

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PREFIX = "citibikes_consumer_"


class ConsumerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(PREFIX + "messages", "Messages consumed, by topic and outcome", ["topic", "outcome"], registry=r)
        self.lag = Gauge(PREFIX + "lag_messages", "Messages not yet applied, per partition", ["topic", "partition"], registry=r)
        self.rate = Gauge(PREFIX + "messages_per_second", "Messages consumed per second over the last update", registry=r)
        self.newest_age = Gauge(PREFIX + "newest_event_age_seconds", "Now minus the newest last_updated applied", registry=r)
        self.outbox = Gauge(PREFIX + "outbox_messages", "Alerts and dead letters waiting for Kafka", registry=r)
        self.episodes = Gauge(PREFIX + "open_episodes", "Stations empty or full now", ["kind"], registry=r)
        self.last_commit = Gauge(PREFIX + "last_commit_timestamp_seconds", "When the store last committed a batch", registry=r)
        self._counted: Counts[tuple[str, str]] = Counts()
        self._updated = time.monotonic()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def update(self, counts: Counts[tuple[str, str]], lags: dict[tuple[str, int], int], newest: int,
               outbox: int, open_episodes: dict[str, int], committed_at: float) -> None:
        now = time.monotonic()
        new = counts - self._counted
        for (topic, outcome), n in new.items():
            self.messages.labels(topic, outcome).inc(n)
        self.rate.set(sum(new.values()) / max(now - self._updated, 1e-3))
        self._counted, self._updated = Counts(counts), now
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)
        if newest:
            self.newest_age.set(time.time() - newest)
        self.outbox.set(outbox)
        for kind in ("empty", "full"):
            self.episodes.labels(kind).set(open_episodes.get(kind, 0))
        if committed_at:
            self.last_commit.set(committed_at)
