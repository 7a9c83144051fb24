"""The consumer service under faults, against the real broker and the real store: SIGKILL at random
moments, a broker restart, a store that fills up. After each, the state, the episodes and the alerts
equal those of an uninterrupted run over the same messages, with none lost or counted twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from citibikes.live.store import LiveStore
from citibikes.stack.kafka import KafkaBroker
from citibikes.stack.process import free_port
from support.kafka_read import read_topic
from support.live import LiveTopics, live_consumer, send_status, status_value
from support.postgres import fresh_database

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
M = 60


def stream(seed: int, stations: int, steps: int) -> list[dict]:
    """A random walk of stations' bikes and docks, minute by minute, that empties and fills stations
    (some for long, past the outage threshold) and lets a few fall silent for over 40 minutes."""
    rng = random.Random(seed)
    capacity = {f"S{n}": rng.randint(2, 8) for n in range(stations)}
    bikes = {s: rng.randint(0, c) for s, c in capacity.items()}
    silent_until: dict[str, int] = {}
    values = []
    for step in range(steps):
        at = 1_700_000_000 + step * M
        for station, cap in capacity.items():
            if silent_until.get(station, 0) > step:
                continue
            if rng.random() < 0.004:
                silent_until[station] = step + rng.randint(41, 60)
            if rng.random() < 0.3:
                bikes[station] = max(0, min(cap, bikes[station] + rng.choice((-2, -1, 1, 2))))
            values.append(status_value(station, at, bikes[station], docks=cap - bikes[station]))
    return values


def produce(bootstrap: str, topics: LiveTopics, values: list[dict], *, extras: bool = True) -> int:
    """Send the values (and descriptions); returns how many unreadable messages went with them."""
    bad = 0
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for n, value in enumerate(values):
        send_status(producer, topics.status, value)
        if extras and n % 997 == 0:  # a producer retry's copy and an unreadable message now and then
            send_status(producer, topics.status, value)
            producer.produce(topics.status, key=b"s:bad", value=b"{not json")
            bad += 1
        if n % 5000 == 0:
            producer.poll(0)
    for station in sorted({v["station_id"] for v in values}):
        producer.produce(topics.information, key=f"s:{station}".encode(), value=json.dumps(
            {"system_id": "s", "station_id": station, "last_updated": 1, "name": f"Station {station}", "capacity": 8}).encode())
    assert producer.flush(30) == 0
    return bad


def end_offsets(bootstrap: str, topics: LiveTopics) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    ends = {}
    for topic in (topics.status, topics.information):
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            ends[(topic, partition)] = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    consumer.close()
    return ends


def reference(bootstrap: str, topics: LiveTopics) -> tuple:
    """One uninterrupted in-process run over everything in the topics; alerts left in its outbox."""
    live = live_consumer(bootstrap, topics)
    live.producer = None
    live.run(should_stop=lambda: False, until_caught_up=True)
    result = outcome(live.store, [], topics.alerts)
    live.close()
    return result


def outcome(store: LiveStore, alerts: list[dict], alerts_topic: str) -> tuple:
    """What must not depend on faults: stations, open episodes, offsets, and every alert once (sent,
    or still in the outbox)."""
    sent = {a["headers"]["message_id"]: json.dumps(a["value"], sort_keys=True) for a in alerts}
    for id_, topic, _, value in store.outbox():
        if topic == alerts_topic:
            sent.setdefault(id_, json.dumps(json.loads(value), sort_keys=True))
    return store.stations(), store.open_episodes(), store.offsets(), sorted(sent.items())


def service_env(bootstrap: str, topics: LiveTopics, tmp_path: Path, store: str) -> dict[str, str]:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(json.dumps({"topics": {
        "station_status": {"name": topics.status, "partitions": 3}, "station_information": {"name": topics.information, "partitions": 1},
        "alerts": {"name": topics.alerts, "partitions": 1}, "dead_letter": {"name": topics.dead_letter, "partitions": 1}}}))
    return {**os.environ, "CITIBIKES_KAFKA_BOOTSTRAP": bootstrap, "CITIBIKES_STATE_DIR": str(tmp_path),
            "CITIBIKES_PIPELINE_FILE": str(pipeline), "CITIBIKES_LIVE_STORE": store, "CITIBIKES_FEED": "replay",
            "CITIBIKES_CONSUMER_METRICS_PORT": "0"}


def start_service(env: dict[str, str], log: Path, *, ready: bool = True) -> subprocess.Popen:
    """``citibikes consume`` as the service runs; with ``ready``, once it has logged its start."""
    started = log.read_text().count("Consumer started") if log.exists() else 0
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "citibikes.cli", "consume", "--log-file", ""],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while ready and log.read_text().count("Consumer started") == started:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    return process


def wait_applied(store_path: str, ends: dict[tuple[str, int], int], process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the consumer exited with {process.returncode}"
        try:
            store = LiveStore.open(store_path, readonly=True)
            done = {tp: offset for tp, (offset, _) in store.offsets().items()}
            pending = store.summary()["outbox"]
            store.close()
        except Exception:  # the file may not exist yet
            done, pending = {}, 1
        if all(done.get(tp, 0) >= end for tp, end in ends.items() if end) and not pending:
            return
        time.sleep(0.2)
    raise AssertionError(f"the consumer did not catch up in {timeout_s} s: {done} of {ends}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("engine, trials", [("sqlite", 20), ("postgresql", 5)])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(engine: str, trials: int, kafka_bootstrap: str,
                                                            tmp_path: Path, request) -> None:
    topics = LiveTopics.create(kafka_bootstrap, prefix="kill", partitions=3)
    values = stream(seed=14, stations=120, steps=400 if engine == "sqlite" else 100)
    store_path = str(tmp_path / "live.db") if engine == "sqlite" else fresh_database(request.getfixturevalue("postgres_url"))
    log = tmp_path / "consumer.log"
    env = service_env(kafka_bootstrap, topics, tmp_path, store_path)
    rng = random.Random(2026)
    kills = bad = 0
    process = start_service(env, log)
    # Produce in slices while the consumer runs, killing it at random moments, ``trials`` times.
    size = -(-len(values) // trials)
    slices = [values[n:n + size] for n in range(0, len(values), size)]
    for number, piece in enumerate(slices, 1):
        bad += produce(kafka_bootstrap, topics, piece)
        time.sleep(rng.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        process = start_service(env, log, ready=number == len(slices))  # a kill may come while it starts
    ends = end_offsets(kafka_bootstrap, topics)
    wait_applied(store_path, ends, process)
    stop(process)
    assert kills == trials
    expected = reference(kafka_bootstrap, topics)
    alerts = read_topic(kafka_bootstrap, topics.alerts)
    store = LiveStore.open(store_path, readonly=True)
    got = outcome(store, alerts, topics.alerts)
    by_id: dict[str, set[str]] = {}
    for alert in alerts:
        by_id.setdefault(alert["headers"]["message_id"], set()).add(json.dumps(alert["value"], sort_keys=True))
    assert all(len(v) == 1 for v in by_id.values()), "an alert id was reused for another event"
    assert len(expected[3]) > 20 and any('"threshold"' in v for _, v in expected[3]), "the stream must exercise alerts"
    assert got[2] == expected[2] and {tp: o for tp, (o, _) in got[2].items()} == {tp: e for tp, e in ends.items() if e}
    assert got[0] == expected[0] and got[1] == expected[1]
    assert got[3] == expected[3]
    assert store.summary()["outbox"] == 0
    letters = read_topic(kafka_bootstrap, topics.dead_letter)
    assert len({(letter["value"]["partition"], letter["value"]["offset"]) for letter in letters}) == bad > 0


def test_a_broker_restart_mid_stream_loses_nothing_and_the_consumer_carries_on(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    broker = KafkaBroker(home, home / "run", port=free_port(), controller_port=free_port(),
                         lib_dir=ROOT / ".state" / "kafka" / "lib")
    broker.start()
    try:
        topics = LiveTopics.create(broker.bootstrap, prefix="restart", partitions=3)
        values = stream(seed=7, stations=60, steps=200)
        half = len(values) // 2
        store_path, log = str(tmp_path / "live.db"), tmp_path / "consumer.log"
        process = start_service(service_env(broker.bootstrap, topics, tmp_path, store_path), log)
        produce(broker.bootstrap, topics, values[:half])
        wait_applied(store_path, end_offsets(broker.bootstrap, topics), process)
        broker.stop()
        time.sleep(3)
        assert process.poll() is None, "the consumer must wait for the broker, not exit"
        broker.start()
        produce(broker.bootstrap, topics, values[half:])
        ends = end_offsets(broker.bootstrap, topics)
        wait_applied(store_path, ends, process, timeout_s=120)
        stop(process)
        assert "Kafka unavailable" in log.read_text()
        store = LiveStore.open(store_path, readonly=True)
        expected = reference(broker.bootstrap, topics)
        assert outcome(store, read_topic(broker.bootstrap, topics.alerts), topics.alerts) == expected
    finally:
        broker.stop()


def applied_up_to(bootstrap: str, topics: LiveTopics, offsets: dict[tuple[str, int], tuple[int, int]]) -> tuple:
    """The state an uninterrupted run reaches after exactly the messages before ``offsets``."""
    from citibikes.live.tracker import Tracker

    tracker = Tracker(status_topic=topics.status, information_topic=topics.information, alerts_topic=topics.alerts)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "upto", "enable.partition.eof": True})
    wanted = {tp: offset for tp, (offset, _) in offsets.items() if offset}
    consumer.assign([TopicPartition(t, p, 0) for t, p in wanted])
    done: set = set()
    while len(done) < len(wanted):
        for message in consumer.consume(1000, timeout=1):
            tp = (message.topic(), message.partition())
            if message.error() or tp in done:
                continue
            if message.offset() < wanted[tp]:
                tracker.apply(*tp, message.offset(), message.key(), message.value())
            if message.offset() + 1 >= wanted[tp]:
                done.add(tp)
    consumer.close()
    store = LiveStore.open(":memory:")
    store.commit(tracker.take())
    return store.stations(), store.open_episodes()


def test_a_store_that_fills_up_stops_the_consumer_with_the_fix_and_nothing_unapplied_is_committed(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the store-full path is covered by test_live_store")
    try:
        topics = LiveTopics.create(kafka_bootstrap, prefix="full", partitions=3)
        produce(kafka_bootstrap, topics, stream(seed=3, stations=400, steps=120), extras=False)
        store_path, log = str(small / "live.db"), tmp_path / "consumer.log"
        env = service_env(kafka_bootstrap, topics, tmp_path, store_path)
        result = subprocess.run([sys.executable, "-m", "citibikes.cli", "consume", "--log-file", str(log)],
                                env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot write the live state store {store_path} "
                                                                 "(database or disk is full); nothing of this batch was committed")
        kept = tmp_path / "kept.db"
        for suffix in ("", "-wal"):  # the committed batches not yet checkpointed are in the WAL
            if Path(store_path + suffix).exists():
                subprocess.run(["cp", store_path + suffix, f"{kept}{suffix}"], check=True)
        store = LiveStore.open(str(kept))
        offsets = store.offsets()
        assert 0 < sum(o for o, _ in offsets.values()) < sum(end_offsets(kafka_bootstrap, topics).values())
        assert (store.stations(), store.open_episodes()) == applied_up_to(kafka_bootstrap, topics, offsets)
        store.close()
    finally:
        subprocess.run(["umount", str(small)], check=False)
    # With room again, the same store carries on to the end and equals an uninterrupted run.
    env = service_env(kafka_bootstrap, topics, tmp_path, str(kept))
    process = start_service(env, log)
    wait_applied(str(kept), end_offsets(kafka_bootstrap, topics), process)
    stop(process)
    store = LiveStore.open(str(kept), readonly=True)
    assert outcome(store, read_topic(kafka_bootstrap, topics.alerts), topics.alerts) == reference(kafka_bootstrap, topics)


def test_a_store_on_a_read_only_file_system_stops_the_consumer_at_once_with_the_fix(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the read-only path is covered by test_live_store")
    try:
        store_path = folder / "live.db"
        LiveStore.open(str(store_path)).close()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        topics = LiveTopics.create(kafka_bootstrap, prefix="ro")
        env = service_env(kafka_bootstrap, topics, tmp_path, str(store_path))
        result = subprocess.run([sys.executable, "-m", "citibikes.cli", "consume", "--log-file", ""],
                                env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    assert result.returncode == 2, result.stderr[-1000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the live state store {store_path} is read-only (its file or folder cannot be written); "
        "give the consumer write access or set CITIBIKES_LIVE_STORE to a writable path")
