"""Build the project's live consumer on a test's own topics and store."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from citibikes.config import TopicConfig
from citibikes.live.store import LiveStore
from citibikes.live.tracker import Tracker
from citibikes.stream.consume import OUTBOX_PRODUCER_DEFAULTS, LiveConsumer, consumer_config
from citibikes.stream.publish import message_id
from citibikes.stream.topics import ensure_topics


@dataclass(frozen=True)
class LiveTopics:
    status: str
    information: str
    alerts: str
    dead_letter: str

    @classmethod
    def create(cls, bootstrap: str, prefix: str = "live", partitions: int = 2) -> LiveTopics:
        suffix = uuid.uuid4().hex[:6]
        topics = cls(*(f"{prefix}-{kind}-{suffix}" for kind in ("status", "info", "alerts", "dead")))
        ensure_topics(AdminClient({"bootstrap.servers": bootstrap}),
                      [TopicConfig(topics.status, partitions=partitions), TopicConfig(topics.information, partitions=1),
                       TopicConfig(topics.alerts, partitions=1), TopicConfig(topics.dead_letter, partitions=1)])
        return topics


def live_consumer(bootstrap: str, topics: LiveTopics, store: str | LiveStore = ":memory:", group: str | None = None,
                  threshold_s: int = 1800) -> LiveConsumer:
    tracker = Tracker(status_topic=topics.status, information_topic=topics.information, alerts_topic=topics.alerts,
                      dead_letter_topic=topics.dead_letter, default_threshold_s=threshold_s)
    store = LiveStore.open(store) if isinstance(store, str) else store
    consumer = Consumer(consumer_config(bootstrap, **{"group.id": group or f"live-{uuid.uuid4().hex[:6]}"}))
    producer = Producer({**OUTBOX_PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap})
    return LiveConsumer(consumer, store, tracker, producer)


def status_value(station: str, last_updated: int, bikes: int, docks: int = 5, system: str = "s") -> dict:
    return {"system_id": system, "station_id": station, "num_bikes_available": bikes, "num_docks_available": docks,
            "is_installed": True, "is_renting": True, "is_returning": True, "last_updated": last_updated}


def send_status(producer: Producer, topic: str, value: dict) -> None:
    """As the pipeline publishes it: keyed by station, with the observation's message id."""
    mid = message_id("station_status", value["system_id"], value["station_id"], value["last_updated"])
    producer.produce(topic, key=f"{value['system_id']}:{value['station_id']}".encode(), value=json.dumps(value).encode(),
                     headers=[("message_id", mid.encode())])
