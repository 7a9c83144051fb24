"""The live dashboard's world for its tests: the pipeline's minute runs against the replay feed into a lake and
real Kafka topics, the live consumer into its store (with its Prometheus metrics served), and Airflow's API
server with the project's plugins, behind the Simple auth manager's login; a browser (Debian's Chromium,
driven by Playwright) logs in like a person."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from support.live import LiveTopics, live_consumer
from support.pipeline_lake import PipelineLake, pipeline_lake

from citibikes.config import TopicConfig
from citibikes.live.metrics import ConsumerMetrics
from citibikes.live.service import update_metrics
from citibikes.live.store import LiveStore
from citibikes.stack.airflow import ADMIN_USER, admin_password, airflow_env
from citibikes.stack.process import free_port
from citibikes.stream.publish import Publisher
from citibikes.stream.topics import ensure_topics

CHROMIUM = "/usr/bin/chromium"


@dataclass
class DashboardWorld:
    pipeline: PipelineLake
    topics: LiveTopics
    bootstrap: str
    metrics: ConsumerMetrics
    api: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password(self) -> str:
        return admin_password(self.pipeline.settings.state_dir / "airflow")

    def minute(self) -> None:
        """One more snapshot of every system through the pipeline, Kafka and the live consumer."""
        self.pipeline.minute()
        consumer = live_consumer(self.bootstrap, self.topics, self.pipeline.settings.live_store, group="dashboard")
        try:
            consumer.run(should_stop=lambda: False, until_caught_up=True)
            update_metrics(consumer, self.metrics)
        finally:
            consumer.close()

    def store(self) -> LiveStore:
        return LiveStore.open(self.pipeline.settings.live_store, readonly=True)

    def token(self) -> str:
        answer = requests.post(f"{self.url}/auth/token", json={"username": ADMIN_USER, "password": self.password},
                               timeout=10)
        answer.raise_for_status()
        return answer.json()["access_token"]

    def log_in(self, page) -> None:  # noqa: ANN001 - playwright Page
        """Open the dashboard in the browser: Airflow's login page first, then back to the dashboard."""
        page.goto(f"{self.url}/citibikes/")
        page.wait_for_selector("input[name=username]")
        page.fill("input[name=username]", ADMIN_USER)
        page.fill("input[name=password]", self.password)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{self.url}/citibikes/**", timeout=30_000)

    def stop(self) -> None:
        self.api.terminate()
        try:
            self.api.wait(20)
        except subprocess.TimeoutExpired:
            self.api.kill()
        self.pipeline.close()


def dashboard_world(folder: Path, bootstrap: str, systems: tuple[str, ...] = ("citibike",), minutes: int = 3) -> DashboardWorld:
    """``minutes`` snapshots of ``systems`` landed and consumed, and the API server started on them."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = LiveTopics.create(bootstrap, prefix="dash")
    quarantine = f"{topics.status}-quarantine"
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), [TopicConfig(quarantine, partitions=1)])
    pipeline = pipeline_lake(folder, systems, start=time.time() - 60 * (minutes + 2))
    settings = pipeline.settings = replace(pipeline.settings, live_store=str(folder / "state" / "live" / "live.db"),
                                           consumer_metrics_port=free_port())
    Path(settings.live_store).parent.mkdir(parents=True, exist_ok=True)
    topic_names = {"station_status": topics.status, "station_information": topics.information, "quarantine": quarantine}
    pipeline.publisher = Publisher(Producer({"bootstrap.servers": bootstrap}),
                                   {**settings.topics, **{k: TopicConfig(v) for k, v in topic_names.items()}})
    metrics = ConsumerMetrics()
    metrics.serve(settings.consumer_metrics_port)
    port = free_port()
    env = airflow_env(settings, port=port, base=os.environ)
    env.update({"CITIBIKES_LIVE_STORE": settings.live_store,
                "CITIBIKES_CONSUMER_METRICS_PORT": str(settings.consumer_metrics_port)})
    admin_password(settings.state_dir / "airflow")
    airflow = str(Path(sys.executable).parent / "airflow")
    migrated = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    log = (folder / "api-server.log").open("wb")
    api = subprocess.Popen([airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    world = DashboardWorld(pipeline, topics, bootstrap, metrics, api, port)
    try:
        for _ in range(minutes):
            world.minute()
        deadline = time.monotonic() + 120
        while True:
            assert api.poll() is None, f"the API server exited; see {folder / 'api-server.log'}"
            try:
                if requests.get(f"{world.url}/api/v2/monitor/health", timeout=2).ok:
                    return world
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"the API server did not start in 120 s; see {folder / 'api-server.log'}"
            time.sleep(1)
    except BaseException:
        world.stop()
        raise
