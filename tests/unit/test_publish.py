"""The publisher without a broker: message ids, headers and keys as consumers see them, delivery failures."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from citibikes.config import TopicConfig
import msgspec

from citibikes.gbfs.model import STATION_INFORMATION, StationInformation, StationStatus, VehicleTypeCount
from citibikes.stream.publish import (
    _NAMESPACE,
    CaptureChange,
    ChangeCapture,
    DeliveryError,
    ProducerConfigError,
    Publisher,
    message_id,
    producer_config,
)


class FakeProducer:
    """Records what is produced; ``flush`` reports the failures it was told to."""

    def __init__(self, failures: int = 0, remaining: int = 0) -> None:
        self.produced: list[dict[str, Any]] = []
        self.failures, self.remaining, self.purged = failures, remaining, False

    def produce(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]], on_delivery: Any) -> None:
        self.produced.append({"topic": topic, "value": value, "key": key, "headers": headers, "on_delivery": on_delivery})

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for message in self.produced[: self.failures]:
            message["on_delivery"](FakeError(), FakeMessage(message["topic"]))
        return self.remaining

    def purge(self) -> None:
        self.purged = True


class FakeError:
    def str(self) -> str:
        return "Local: Message timed out"


class FakeMessage:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


TOPICS = {key: TopicConfig(f"t-{key}") for key in ("station_information", "station_status", "quarantine")}


def status(station_id: str, last_updated: int = 1710335271, fetched_at: float = 1710335272.5) -> StationStatus:
    return StationStatus(system_id="citibike", station_id=station_id, num_bikes_available=1, is_installed=True,
                         is_renting=True, is_returning=True, last_updated=last_updated, fetched_at=fetched_at)


def test_message_ids_are_the_uuid5_of_the_observation() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        feed = rng.choice(["station_status", "station_information", "quarantine"])
        station = rng.choice([None, str(uuid.UUID(int=rng.getrandbits(128))), "é-42"])
        last_updated = rng.randrange(2**40)
        expected = str(uuid.uuid5(_NAMESPACE, f"{feed}|citibike|{station}|{last_updated}"))
        assert message_id(feed, "citibike", station, last_updated) == expected


def test_every_record_carries_its_key_and_headers() -> None:
    producer = FakeProducer()
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    records = [status("a"), status("b"), status("c", last_updated=1710335331, fetched_at=1710335332.25)]
    publisher.publish_status(records)
    report = publisher.flush()
    assert report.sent == {"t-station_status": 3}
    for record, message in zip(records, producer.produced, strict=True):
        assert message["topic"] == "t-station_status"
        assert message["key"] == f"citibike:{record.station_id}".encode()
        assert message["headers"] == [
            ("message_id", message_id("station_status", "citibike", record.station_id, record.last_updated).encode()),
            ("schema_version", b"1"),
            ("system_id", b"citibike"),
            ("feed", b"station_status"),
            ("last_updated", str(record.last_updated).encode()),
            ("fetched_at", repr(record.fetched_at).encode()),
        ]


@pytest.mark.parametrize(("failures", "remaining", "cause"), [(1, 0, "Message timed out"), (0, 2, "2 records still queued")])
def test_an_unacknowledged_record_fails_the_flush(failures: int, remaining: int, cause: str) -> None:
    producer = FakeProducer(failures=failures, remaining=remaining)
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    publisher.publish_status([status("a"), status("b")])
    with pytest.raises(DeliveryError, match=cause):
        publisher.flush()
    assert producer.purged


def test_producer_settings_may_tune_but_not_weaken_the_guarantees() -> None:
    config = producer_config("broker:9092", **{"acks": -1, "enable.idempotence": "true", "compression.type": "zstd",
                                               "linger.ms": 5})
    assert config["linger.ms"] == 5 and config["acks"] == -1
    for setting, value in [("acks", 1), ("request.required.acks", "0"), ("enable.idempotence", "false"),
                           ("compression.codec", "lz4")]:
        with pytest.raises(ProducerConfigError, match=rf"^Kafka producer setting {setting}={value} is not allowed: "
                                                      rf".*; remove {setting} from the producer settings"):
            producer_config("broker:9092", **{setting: value})


def test_a_capture_change_sent_to_another_process_commits_the_same_fingerprints() -> None:
    """The worker process selects and sends what to commit; decoded, the status fingerprints are the
    tuples it made (a list would never equal the next snapshot's tuple: every station would look changed)."""
    records = [msgspec.structs.replace(status(f"s{i}"), num_ebikes_available=i % 2 or None,
                                       vehicle_types_available=[VehicleTypeCount("classic", i), VehicleTypeCount("ebike", 1)])
               for i in range(5)]
    information = [StationInformation(system_id="citibike", station_id="s1", name="A & 1st", lat=40.7, lon=-74.0,
                                      capacity=10, last_updated=1710335000, fetched_at=1710335001.0)]
    for feed, batch in (("station_status", records), (STATION_INFORMATION, information)):
        change = ChangeCapture(snapshot_every_s=900, feed=feed).select(batch, 1710335271).change
        received = msgspec.msgpack.decode(msgspec.msgpack.encode(change), type=CaptureChange)
        assert received == change
        assert [type(fingerprint) for fingerprint in received.fingerprints] == [type(f) for f in change.fingerprints]
        capture = ChangeCapture(snapshot_every_s=900, feed=feed)
        capture.commit(received)
        again = capture.select(batch, 1710335331)
        assert again.records == [] and again.skipped == len(batch) and not again.full
