"""The fault matrix (RELIABILITY.md): each fault against the real pipeline, broker, lake and live consumer, then
the proof that nothing was lost or doubled (``support.no_loss``).

Each case runs four minutes of the pipeline (``tasks.run_all``, what the minute DAG and ``citibikes run`` do):
healthy, the fault, healthy, healthy; then the live consumer catches up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from citibikes import tasks
from citibikes.config import Settings, load_settings
from citibikes.lake import Lake, LakeError, open_lake
from citibikes.live.store import LiveStore
from citibikes.replay.server import ReplayServer, make_server
from citibikes.state import load_state
from citibikes.stream.publish import Publisher, make_producer
from citibikes.stack.kafka import KafkaBroker
from citibikes.stack.process import free_port
from citibikes.stream.topics import ensure_topics
from support import no_loss
from support.faulty_feed import FEED_FAULTS, FaultyFeed
from support.kafka_read import read_topic
from support.live import LiveTopics, live_consumer
from support.pipeline_lake import Clock
from support.toxiproxy import Proxy, Toxiproxy

pytestmark = pytest.mark.kafka
TIMEOUT_S = 2.0
"""The system's fetch timeout in these tests (the default is 10 s)."""


@dataclass
class World:
    settings: Settings
    lake: Lake
    feed: FaultyFeed
    replay: ReplayServer
    clock: Clock
    bootstrap: str

    def minute(self, run_id: str, publisher: Publisher) -> tasks.RunSummary:
        """One pipeline run a minute of feed time later."""
        self.clock.now += 60
        return tasks.run_all(self.settings, self.lake, publisher, run_id)

    def close(self) -> None:
        self.feed.stop()
        self.replay.shutdown()

    def live_state(self) -> LiveStore:
        topics = self.settings.topics
        live = live_consumer(self.bootstrap, LiveTopics(topics["station_status"].name, topics["station_information"].name,
                                                        topics["alerts"].name, topics["dead_letter"].name))
        live.run(should_stop=lambda: False, until_caught_up=True)
        return live.store


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str):
    world = _world(tmp_path, monkeypatch, kafka_bootstrap)
    yield world
    world.close()


def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bootstrap: str) -> World:
    """The replay feed behind a faulty proxy, topics of its own on ``bootstrap``, a lake folder."""
    clock = Clock(time.time() - 270)  # four minutes later it is now: never stale, never ahead
    replay = make_server(tick_s=1.0, clock=clock).start_in_thread()
    feed = FaultyFeed(replay.url, TIMEOUT_S).start()
    (tmp_path / "systems.yaml").write_text(
        f"systems:\n  - id: citibike\n    discovery_url: {feed.url}/citibike/gbfs.json\n    timeout_s: {TIMEOUT_S}\n")
    prefix = f"matrix{time.time_ns()}"
    (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n"
        for key in ("station_information", "station_status", "quarantine", "alerts", "dead_letter")))
    for name, value in {"CITIBIKES_SYSTEMS_FILE": tmp_path / "systems.yaml", "CITIBIKES_LAKE_URI": tmp_path / "lake",
                        "CITIBIKES_PIPELINE_FILE": tmp_path / "pipeline.yaml",
                        "CITIBIKES_KAFKA_BOOTSTRAP": bootstrap}.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), settings.topics.values())
    return World(settings, open_lake(settings.lake_uri), feed, replay, clock, bootstrap)


EXPECTED = {
    "timeout": ("failed", "did not answer within 2 s"),
    "500": ("failed", "HTTP 500"),
    "503": ("failed", "HTTP 503"),
    "reset": ("failed", "closed the connection before the body was complete"),
    "truncated": ("failed", "the JSON ends before the document is complete"),
    "not_json": ("failed", "got an HTML/XML page instead of JSON"),
    "huge": ("failed", "byte limit"),
    "stale": ("stale", "station_status arrived"),
    "429": ("success", None),  # the client waited for Retry-After and fetched again
    "backwards": ("success", None),  # landed as the feed dated it, with a warning; the live state keeps the newest
    "duplicate_stations": ("success", None),  # the later copies quarantined: duplicate_station_id
    "orphan_stations": ("success", None),  # landed, counted as status without information
}
"""The outcome of the minute a fault hits, and a phrase of the one-line error its run record keeps."""


@pytest.mark.parametrize("fault", sorted(FEED_FAULTS))
def test_a_feed_fault_loses_and_doubles_nothing(fault: str, world: World) -> None:
    publisher = Publisher(make_producer(world.bootstrap), world.settings.topics)
    summaries = []
    for minute, current in enumerate((None, fault, None, None)):
        world.feed.set_fault(current)
        summaries.append(world.minute(f"{fault}-{minute}", publisher))
    outcome, phrase = EXPECTED[fault]
    hit = summaries[1]
    assert hit.outcomes == {outcome: 1}, hit.lines
    if phrase:
        assert phrase in hit.failed["citibike"] and "\n" not in hit.failed["citibike"], hit.failed
    if fault == "duplicate_stations":
        (run,) = [r for r in world.lake.read_runs() if r.run_id == f"{fault}-1"]
        assert run.quarantine_reasons.get("duplicate_station_id") == 20, run.quarantine_reasons
    assert [s.outcomes for s in summaries[2:]] == [{"success": 1}] * 2, summaries[2].lines  # healed

    ledger = no_loss.check(read_topic(world.bootstrap, world.settings.topics["station_status"].name),
                           world.lake, world.feed.served, world.live_state(), "citibike")
    assert ledger.messages > 2000 and ledger.served_observations >= 3 * 2000


@pytest.fixture(scope="module")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory, kafka_broker: KafkaBroker):
    """A broker of its own that clients reach only through Toxiproxy (its advertised port is the proxy's)."""
    home = tmp_path_factory.mktemp("proxied-kafka")
    toxiproxy = Toxiproxy(home / "toxiproxy.log")
    port, proxy_port = free_port(), free_port()
    broker = KafkaBroker(home, home / "run", port=port, controller_port=free_port(), lib_dir=kafka_broker.lib,
                         advertised_port=proxy_port)
    proxy = toxiproxy.proxy("kafka", f"127.0.0.1:{port}", listen_port=proxy_port)
    broker.start()
    yield proxy
    broker.stop()
    toxiproxy.stop()


NETWORK_FAULTS = {
    "latency": "300 ms more each way for a minute",
    "partition": "no packet passes for a minute, then it heals",
}


@pytest.mark.parametrize("fault", sorted(NETWORK_FAULTS))
def test_a_network_fault_between_the_pipeline_and_the_broker_loses_and_doubles_nothing(
        fault: str, proxied_broker: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes, ledger = _through_the_proxy(proxied_broker, tmp_path, monkeypatch, fault)
    assert outcomes == [{"success": 1}, {"success" if fault == "latency" else "failed": 1}, {"success": 1}]
    assert ledger.messages > 2000


def test_a_link_cut_in_the_middle_of_a_flush_loses_and_doubles_nothing(
        proxied_broker: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenth of the minute's messages acknowledged, then the link goes down: the minute lands all the same
    (so do the acknowledged messages' observations) and the next run sends its messages again first."""
    real_flush = Publisher.flush

    def flush_then_cut(publisher: Publisher) -> None:
        producer = publisher._producer
        queued, deadline = len(producer), time.monotonic() + 8
        while queued - len(producer) < queued // 10 and time.monotonic() < deadline:
            producer.poll(0.001)  # until the broker acknowledged a tenth
        proxied_broker.enable(False)
        real_flush(publisher)

    outcomes, ledger = _through_the_proxy(proxied_broker, tmp_path, monkeypatch, None,
                                          cut=lambda: monkeypatch.setattr(Publisher, "flush", flush_then_cut),
                                          mend=lambda: monkeypatch.setattr(Publisher, "flush", real_flush))
    assert outcomes == [{"success": 1}, {"failed": 1}, {"success": 1}]
    assert ledger.resent > 0  # the acknowledged tenth, sent again with the same message ids and values
    lake = open_lake(str(tmp_path / "lake"))
    runs = {r.run_id: r for r in lake.read_runs()}
    assert "landed in the lake, the next run sends it to Kafka again" in runs["net-1"].error
    assert load_state(lake, "citibike").unpublished == [] and lake.read_state("citibike/unpublished/net-1/step.msgpack") is None


def _through_the_proxy(proxy: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str | None, *,
                       cut=None, mend=None) -> tuple[list[dict], no_loss.Ledger]:
    """Three minutes through the proxied broker, the fault (or ``cut``) in the second, then the ledger of
    the minutes that landed."""
    world = _world(tmp_path, monkeypatch, proxy.listen)
    publisher = Publisher(make_producer(proxy.listen, **{"message.timeout.ms": 8000}), world.settings.topics)
    outcomes, landed = [], []
    try:
        for minute in range(3):
            before = len(world.feed.served)
            if minute == 1:
                (cut or (lambda: _inject(proxy, fault)))()
            summary = world.minute(f"net-{minute}", publisher)
            proxy.heal()
            if minute == 1 and mend:
                mend()
            outcomes.append(summary.outcomes)
            if summary.outcomes == {"success": 1}:
                landed += world.feed.served[before:]
            else:
                assert "\n" not in summary.failed["citibike"], summary.failed
        ledger = no_loss.check(read_topic(proxy.listen, world.settings.topics["station_status"].name),
                               world.lake, landed, world.live_state(), "citibike")
    finally:
        proxy.heal()
        world.close()
    return outcomes, ledger


def _inject(proxy: Proxy, fault: str) -> None:
    if fault == "latency":
        proxy.toxic("latency", "downstream", latency=300)
        proxy.toxic("latency", "upstream", latency=300)
    elif fault == "partition":
        proxy.enable(False)


def test_the_lake_failing_between_produce_and_write_loses_and_doubles_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lake takes the fetch's raw archive and the staged step, then fails the curated write (as S3 going
    away between ``produce`` and ``write`` would): the step stays staged, and the next run lands it first
    and sends it again."""
    publisher = Publisher(make_producer(world.bootstrap), world.settings.topics)
    real_write = Lake.write_files

    def curated_unavailable(lake: Lake, files) -> list[str]:  # noqa: ANN001
        files = list(files)
        if any(key.startswith("curated/") for key, _ in files):
            raise LakeError("cannot write the lake: S3 endpoint is unreachable")
        return real_write(lake, files)

    outcomes = []
    for minute in range(4):
        monkeypatch.setattr(Lake, "write_files", curated_unavailable if minute == 1 else real_write)
        outcomes.append(world.minute(f"lake-{minute}", publisher).outcomes)
    assert outcomes == [{"success": 1}, {"failed": 1}, {"success": 1}, {"success": 1}]
    ledger = no_loss.check(read_topic(world.bootstrap, world.settings.topics["station_status"].name),
                           world.lake, world.feed.served, world.live_state(), "citibike")
    assert ledger.resent > 0  # the failed minute's messages, sent again by the run that landed it
    assert world.lake.list_state("staging") == [] and load_state(world.lake, "citibike").unpublished == []
