"""The alerts DAG's watcher trigger, exactly as the DAG configures it, against the real broker.

The trigger is rebuilt from its serialized form, as the triggerer does, and run: alerts that do not
change the to-do list are read and committed without firing; a threshold alert fires with the alert
as the event's payload. After a fire the triggerer starts the trigger again; the new one resumes
after the committed offset, so alerts sent in between are not lost and the fired one is not repeated.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from citibikes.config import TopicConfig, load_settings
from citibikes.live import alerts
from citibikes.stack.airflow import ALERTS_WATCHER_GROUP, alerts_watcher_connection
from citibikes.stream.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str):
    """Settings whose alerts topic is this test's own, and the watcher's connection to the test broker."""
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"topics:\n  alerts: {{name: {topic}, partitions: 1}}\n")
    systems = tmp_path / "systems.yaml"
    systems.write_text("systems:\n  - id: citibike\n    discovery_url: http://127.0.0.1:1/gbfs.json\n")
    settings = load_settings({"CITIBIKES_PIPELINE_FILE": str(pipeline), "CITIBIKES_SYSTEMS_FILE": str(systems),
                              "CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap})
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicConfig(topic, partitions=1)])
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER", json.dumps(alerts_watcher_connection(settings)))
    return settings, topic


def _trigger(settings):
    """The DAG's trigger as the triggerer builds it: from its serialized classpath and kwargs."""
    from airflow.providers.common.compat.module_loading import import_string

    from citibikes_airflow.watchers import station_alerts

    (watcher,) = station_alerts(settings).watchers
    classpath, kwargs = watcher.trigger.serialize()
    return import_string(classpath)(**kwargs)


def _alert(event: str, duration_min: int) -> alerts.Alert:
    started = 1_800_000_000
    return alerts.alert(event, "empty", "citibike", "72", started, started + duration_min * 60, 1800)


def _send(bootstrap: str, topic: str, *values: bytes | None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, key=b"citibike:72", value=value)
    assert producer.flush(10) == 0


def _wait_for_the_watcher(admin: AdminClient, topic: str, timeout_s: float = 30) -> None:
    """Until the watcher's group is stable with the topic assigned (a new group starts at the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([ALERTS_WATCHER_GROUP])[ALERTS_WATCHER_GROUP].result()
        except KafkaException:  # no coordinator for the group yet
            time.sleep(0.5)
            continue
        assigned = [tp.topic for m in group.members for tp in (m.assignment.topic_partitions if m.assignment else [])]
        if group.state == ConsumerGroupState.STABLE and topic in assigned:
            time.sleep(2)  # and it has looked up the end offset it starts from
            return
        time.sleep(0.5)
    raise AssertionError(f"the watcher never joined group {ALERTS_WATCHER_GROUP} on {topic}")


def _committed(admin: AdminClient, topic: str) -> int:
    request = ConsumerGroupTopicPartitions(ALERTS_WATCHER_GROUP)
    result = admin.list_consumer_group_offsets([request])[ALERTS_WATCHER_GROUP].result()
    return max((tp.offset for tp in result.topic_partitions if tp.topic == topic), default=-1)


def test_the_watcher_fires_on_threshold_and_long_closed_alerts_only(watched, kafka_bootstrap: str) -> None:
    settings, topic = watched
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    threshold, closed_long = _alert("threshold", 30), _alert("closed", 52)

    async def scenario() -> tuple[dict, dict, float]:
        trigger = _trigger(settings)
        events = trigger.run()
        first = asyncio.ensure_future(anext(events))
        await asyncio.to_thread(_wait_for_the_watcher, admin, topic)
        _send(kafka_bootstrap, topic, alerts.encode(_alert("opened", 0)), alerts.encode(_alert("closed", 12)),
              b"not an alert", b"", None)
        await asyncio.sleep(3)
        assert not first.done(), "fired on an alert that does not change the to-do list"
        assert await asyncio.to_thread(_committed, admin, topic) == 5, "the skipped alerts were read and committed"

        sent = time.monotonic()
        _send(kafka_bootstrap, topic, alerts.encode(threshold))
        fired = await asyncio.wait_for(first, 20)
        latency = time.monotonic() - sent
        await events.aclose()
        await trigger.cleanup()

        # Sent while no trigger runs (the triggerer restarts it after each event): read by the next one.
        _send(kafka_bootstrap, topic, alerts.encode(_alert("opened", 0)), alerts.encode(closed_long))
        again = _trigger(settings)
        events = again.run()
        refired = await asyncio.wait_for(anext(events), 30)
        await events.aclose()
        await again.cleanup()
        return fired.payload, refired.payload, latency

    fired, refired, latency = asyncio.run(scenario())
    assert fired == msgspec.to_builtins(threshold)
    assert refired == msgspec.to_builtins(closed_long), "the restarted trigger resumes after the fired alert"
    assert latency < 5, f"{latency:.1f} s from the alert to the event"
