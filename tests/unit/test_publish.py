"""The publisher without a broker: message ids, keys, headers and values as consumers see them, delivery
failures. (Against the real broker: tests/integration/test_producer_guarantees.py, test_cli.py.)"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from typing import Any

import pytest

from citibikes.config import QualityConfig, TopicConfig
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.ingest import check_information, check_status
from citibikes.quality import Described
from citibikes.replay.recordings import recorded
from citibikes.stream.publish import (
    _NAMESPACE,
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
FETCHED_AT = 1710335276.25


def real_feeds():
    """The recorded Citi Bike snapshot, checked, and the raw records by station id."""
    information_body, status_body = recorded(STATION_INFORMATION)[0].read_bytes(), recorded(STATION_STATUS)[0].read_bytes()
    information = check_information(information_body, "citibike", FETCHED_AT)
    status = check_status(status_body, "citibike", FETCHED_AT, QualityConfig(), known=Described.of(information))
    raw = {record["station_id"]: record for record in json.loads(status_body)["data"]["stations"]}
    return information, status, raw, json.loads(status_body)["last_updated"]


def test_message_ids_are_the_uuid5_of_the_observation() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        feed = rng.choice(["station_status", "station_information", "quarantine"])
        station = rng.choice([None, str(uuid.UUID(int=rng.getrandbits(128))), "é-42"])
        last_updated = rng.randrange(2**40)
        expected = str(uuid.uuid5(_NAMESPACE, f"{feed}|citibike|{station}|{last_updated}"))
        assert message_id(feed, "citibike", station, last_updated) == expected


def test_status_messages_carry_key_headers_and_the_row_as_the_feed_said() -> None:
    _, status, raw, last_updated = real_feeds()
    producer = FakeProducer()
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    rows = [0, 5, 17, 2000]
    assert publisher.send_table(STATION_STATUS, status.table, rows) == 4
    assert publisher.flush() == 4
    for row, message in zip(rows, producer.produced, strict=True):
        value = json.loads(message["value"])
        feed_record = raw[value["station_id"]]
        assert value["station_id"] == status.table["station_id"][row].as_py()
        assert message["topic"] == "t-station_status"
        assert message["key"] == f"citibike:{value['station_id']}".encode()
        assert message["headers"] == [
            ("message_id", message_id("station_status", "citibike", value["station_id"], last_updated).encode()),
            ("schema_version", b"1"),
            ("system_id", b"citibike"),
            ("feed", b"station_status"),
            ("last_updated", str(last_updated).encode()),
            ("fetched_at", repr(FETCHED_AT).encode()),
        ]
        # the value is the canonical record: counts as sent, 0/1 flags as booleans, times in POSIX seconds,
        # the vendor's fields under extras
        for key in ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                    "num_docks_disabled", "last_reported"):
            assert value[key] == feed_record[key]
        for key in ("is_installed", "is_renting", "is_returning"):
            assert value[key] is (feed_record[key] == 1)
        assert (value["system_id"], value["last_updated"], value["fetched_at"]) == ("citibike", last_updated, FETCHED_AT)
        assert value["extras"] == {key: v for key, v in feed_record.items() if key not in value}
        assert "schema_version" not in value


def test_description_and_quarantine_messages() -> None:
    information, status, _, last_updated = real_feeds()
    producer = FakeProducer()
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    assert publisher.send_table(STATION_INFORMATION, information.table.slice(0, 2)) == 2
    assert publisher.send_quarantine(status.quarantined) == len(status.quarantined) > 0
    descriptions, rejected = producer.produced[:2], producer.produced[2:]
    assert [json.loads(m["value"])["name"] for m in descriptions] == information.table["name"].to_pylist()[:2]
    assert {m["topic"] for m in descriptions} == {"t-station_information"}
    assert {m["topic"] for m in rejected} == {"t-quarantine"}
    for record, message in zip(status.quarantined, rejected, strict=True):
        value = json.loads(message["value"])
        assert (value["station_id"], value["reasons"], value["raw"]) == (record.station_id, record.reasons, record.raw)
        digest = hashlib.blake2b(record.raw.encode(), digest_size=8).hexdigest()
        assert dict(message["headers"])["message_id"] == message_id(
            "quarantine", "citibike", f"{record.feed}/{record.station_id}/{digest}", last_updated).encode()
        assert message["key"] == f"citibike:{record.station_id or ''}".encode()
    ids = [dict(m["headers"])["message_id"] for m in rejected]
    assert len(set(ids)) == len(ids), "every rejected record has its own id"


def test_a_tiny_system_fills_the_local_queue_and_goes_on() -> None:
    class Full(FakeProducer):
        calls = 0

        def produce(self, *args: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls % 3 == 1:
                raise BufferError("Local: Queue full")
            super().produce(*args, **kwargs)

    _, status, _, _ = real_feeds()
    producer = Full()
    assert Publisher(producer, TOPICS).send_table(STATION_STATUS, status.table, [0, 1, 2]) == 3  # type: ignore[arg-type]
    assert [json.loads(m["value"])["station_id"] for m in producer.produced] == status.table["station_id"].to_pylist()[:3]


@pytest.mark.parametrize(("failures", "remaining", "cause"), [(1, 0, "Message timed out"), (0, 2, "2 records still queued")])
def test_an_unacknowledged_record_fails_the_flush(failures: int, remaining: int, cause: str) -> None:
    _, status, _, _ = real_feeds()
    producer = FakeProducer(failures=failures, remaining=remaining)
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
    publisher.send_table(STATION_STATUS, status.table, [0, 1])
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
