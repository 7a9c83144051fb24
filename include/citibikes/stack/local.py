"""``up``, ``down`` and ``status`` of the whole local stack, without Docker.

``up`` starts, in order and each only if not already running: the Kafka broker (jars fetched from
Maven Central on first use), the project's topics, the live consumer (``citibikes consume``), the
offline replay feed (when the live feed is not used) and Airflow standalone; then it unpauses the
project's DAGs and prints where everything is. ``down`` stops what ``up`` started, in reverse
order, by pid file (the consumer before the broker: it commits the batch in hand, then exits).
``status`` is the health check of :mod:`citibikes.stack.health`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import requests

from citibikes.config import LIVE_CITIBIKE_DISCOVERY_URL, PROJECT_ROOT, Settings, feed_mode, load_settings, load_systems
from citibikes.live.store import shown_url
from citibikes.stack import health
from citibikes.stack.airflow import ADMIN_USER, ALERTS_WATCHER_GROUP, AirflowStandalone, admin_password, known_password
from citibikes.stack.kafka import CONSUMER_USER, PIPELINE_USER, KafkaBroker
from citibikes.stack.process import Service, StackError
from citibikes.stream.consume import CONSUMER_DEFAULTS

Print = Callable[[str], None]
PROJECT_GROUPS = (CONSUMER_DEFAULTS["group.id"],)
"""Consumer groups whose lag ``status`` reports: the live consumer's."""
LAKE_STALE_INTERVALS = 5
"""The lake is stale when nothing was written for this many pipeline intervals."""


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    replay: int
    airflow: int
    airflow_worker_log: int
    airflow_trigger_log: int
    consumer_metrics: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        def port(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{name}={raw!r} is not a TCP port; set it to a number between 1 and 65535")
            return int(raw)

        return cls(
            kafka=port("CITIBIKES_KAFKA_PORT", 9092),
            kafka_controller=port("CITIBIKES_KAFKA_CONTROLLER_PORT", 9093),
            replay=port("CITIBIKES_REPLAY_PORT", 8765),
            airflow=port("CITIBIKES_AIRFLOW_PORT", 8080),
            airflow_worker_log=port("CITIBIKES_AIRFLOW_WORKER_LOG_PORT", 8793),
            airflow_trigger_log=port("CITIBIKES_AIRFLOW_TRIGGER_LOG_PORT", 8794),
            consumer_metrics=port("CITIBIKES_CONSUMER_METRICS_PORT", 9464),
        )


def broker(settings: Settings, ports: Ports) -> KafkaBroker:
    return KafkaBroker(settings.state_dir / "kafka", settings.state_dir / "run", port=ports.kafka,
                       controller_port=ports.kafka_controller, security=settings.kafka.security_protocol)


def local_login(env: dict[str, str], ports: Ports) -> KafkaBroker:
    """The local broker; when it is secured (``CITIBIKES_KAFKA_SECURITY_PROTOCOL=SASL_SSL``) and the environment
    names no login, this process's clients log in as its administrator (with its CA), from the state folder."""
    secured = (env.get("CITIBIKES_KAFKA_SECURITY_PROTOCOL") or "").upper() == "SASL_SSL"
    settings = load_settings({**env, "CITIBIKES_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    kafka = replace(broker(settings, ports), security="SASL_SSL" if secured else "PLAINTEXT")
    if secured and not env.get("CITIBIKES_KAFKA_USERNAME"):
        env.update(kafka.connection().environment())
    return kafka


def airflow(settings: Settings, ports: Ports) -> AirflowStandalone:
    return AirflowStandalone(settings, port=ports.airflow, worker_log_port=ports.airflow_worker_log,
                             trigger_log_port=ports.airflow_trigger_log)


def replay_service(settings: Settings, port: int) -> Service:
    def healthy() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    return Service(
        name="replay",
        command=[sys.executable, "-m", "citibikes.cli", "replay", "--host", "127.0.0.1", "--port", str(port)],
        run_dir=settings.state_dir / "run",
        log_file=settings.state_dir / "logs" / "replay.log",
        ports=[("127.0.0.1", port)],
        ready=healthy,
        start_timeout_s=30,
        fix_hint="set CITIBIKES_REPLAY_PORT to a free port",
    )


def consumer_service(settings: Settings, port: int, kafka: KafkaBroker | None = None) -> Service:
    """The live consumer; its metrics port (``CITIBIKES_CONSUMER_METRICS_PORT``, read by the
    consumer's own settings too) answering means it is ready. SIGTERM: it commits the batch in hand
    and closes cleanly. On a secured local ``kafka`` it logs in as the consumer."""
    login = kafka.connection(CONSUMER_USER).environment() if kafka and kafka.security == "SASL_SSL" else {}
    return Service(
        env={**os.environ, **login} if login else None,
        name="consumer",
        command=[sys.executable, "-m", "citibikes.cli", "consume", "--log-file", ""],  # the log is the service's
        run_dir=settings.state_dir / "run",
        log_file=settings.state_dir / "logs" / "consumer.log",
        ports=[("127.0.0.1", port)],
        start_timeout_s=60,
        stop_timeout_s=30,
        fix_hint="set CITIBIKES_CONSUMER_METRICS_PORT to a free port",
    )


FEED_CHOICE = ("CITIBIKES_FEED", "CITIBIKES_REPLAY_URL", "CITIBIKES_SYSTEMS_FILE")
"""What ``up`` resolved about the feed; ``status`` checks the same feed in a later shell."""


def remember_feed(settings: Settings, env: Mapping[str, str]) -> None:
    run_dir = settings.state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "feed.json").write_text(json.dumps({k: env[k] for k in FEED_CHOICE if env.get(k)}) + "\n")


def stack_settings(env: dict[str, str]) -> Settings:
    """The settings of the running stack: the feed the last ``up`` chose, unless the environment names
    one (the replay feed on ``CITIBIKES_REPLAY_PORT``, as ``up`` serves it)."""
    if not any(env.get(k) for k in FEED_CHOICE):
        try:
            saved = json.loads((load_settings(env).state_dir / "run" / "feed.json").read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        env.update({k: str(v) for k, v in saved.items() if k in FEED_CHOICE})
    if feed_mode(env) == "replay":
        env.setdefault("CITIBIKES_REPLAY_URL", f"http://127.0.0.1:{Ports.from_env(env).replay}")
    return load_settings(env)


def resolve_feed(env: dict[str, str], out: Print) -> str:
    """Decide live or replay (``CITIBIKES_FEED``; ``auto`` probes the live URL) and export the choice."""
    if env.get("CITIBIKES_SYSTEMS_FILE"):
        out(f"Feed: systems from CITIBIKES_SYSTEMS_FILE={env['CITIBIKES_SYSTEMS_FILE']}")
        return "custom"
    mode = feed_mode(env)
    if mode == "auto":
        systems = load_systems(PROJECT_ROOT / "config" / "systems.yaml", env)
        url = systems[0].discovery_url if systems else LIVE_CITIBIKE_DISCOVERY_URL
        reason = health.feed_problem(url)
        if reason is None:
            mode = "live"
            out(f"Feed: live ({url})")
        else:
            mode = "replay"
            out(f"Feed: live feed {url} is unreachable ({reason}); using the offline replay feed "
                "(set CITIBIKES_FEED=live to insist on the live feed, CITIBIKES_FEED=replay to skip this check)")
    env["CITIBIKES_FEED"] = mode
    if mode == "replay":
        env.setdefault("CITIBIKES_REPLAY_URL", f"http://127.0.0.1:{Ports.from_env(env).replay}")
    return mode


def up(env: Mapping[str, str] | None = None, out: Print = print) -> int:
    started = time.monotonic()
    env = dict(os.environ if env is None else env)
    ports = Ports.from_env(env)
    env.setdefault("CITIBIKES_KAFKA_BOOTSTRAP", f"127.0.0.1:{ports.kafka}")
    mode = resolve_feed(env, out)
    kafka = local_login(env, ports)
    os.environ.update(env)  # services inherit the resolved choice
    settings = load_settings(env)
    remember_feed(settings, env)

    out(f"Kafka: {kafka.start()} on {kafka.bootstrap} over {kafka.security} (data in {kafka.data_dir})")
    from citibikes.stream.topics import contact, ensure_topics

    admin = contact(settings.kafka, timeout=10, log_level=3)
    for change in ensure_topics(admin, settings.topics.values()):
        out(f"  topic {change.topic}: {change.action}")
    if kafka.security == "SASL_SSL":
        from citibikes.stream.acls import ensure_acls, project_acls

        acls = project_acls(settings.topics, pipeline=PIPELINE_USER, consumer=CONSUMER_USER,
                            consumer_group=CONSUMER_DEFAULTS["group.id"], watcher_group=ALERTS_WATCHER_GROUP)
        out(f"  ACLs: {ensure_acls(admin, acls)} for {PIPELINE_USER} and {CONSUMER_USER} "
            f"(logins in {kafka.users_file}, CA {kafka.tls.ca_file})")

    consumer = consumer_service(settings, ports.consumer_metrics, kafka)
    metrics_url = f"http://127.0.0.1:{ports.consumer_metrics}/metrics"
    store = shown_url(settings.live_store)
    out(f"Consumer: {consumer.start()} (metrics {metrics_url}, store {store}, log: {consumer.log_file})")

    if mode == "replay":
        out(f"Replay feed: {replay_service(settings, ports.replay).start()} on http://127.0.0.1:{ports.replay}/citibike/gbfs.json")

    standalone = airflow(replace(settings, kafka=kafka.connection(PIPELINE_USER)), ports)
    out(f"Airflow: {standalone.start()} (log: {settings.state_dir / 'logs' / 'airflow.log'})")
    dag_ids, errors = standalone.unpause_project_dags()
    for name, error in errors.items():
        out(f"  DAG file {name} failed to import: {error}")
    out(f"  DAGs unpaused: {', '.join(dag_ids) or 'none'}")
    out("")
    out(f"Ready in {time.monotonic() - started:.0f} s.")
    out(f"  Airflow UI:  {standalone.url}   login: {ADMIN_USER} / {admin_password(standalone.home)}")
    out(f"  Dashboard:   {standalone.url}/citibikes/   (live map, pipeline health, audit figures; same login)")
    out(f"  Trigger:     AIRFLOW_HOME={standalone.home} .venv/bin/airflow dags trigger citibikes_ingest")
    out("               (or the play button in the UI; it also runs by itself every minute)")
    out(f"  Lake:        {settings.lake_uri}")
    out(f"  Consumer:    metrics {metrics_url}   live state: {store}")
    login = "   (as admin: README, Security)" if kafka.security == "SASL_SSL" else ""
    out(f"  Topics:      .venv/bin/citibikes tail {settings.topics['station_status'].name}{login}")
    out("  Health:      make status")
    out("  Stop:        make down")
    return 0 if not errors else 1


def down(env: Mapping[str, str] | None = None, out: Print = print) -> int:
    env = dict(os.environ if env is None else env)
    ports = Ports.from_env(env)
    local_login(env, ports)
    settings = load_settings(env)
    out(f"Airflow: {airflow(settings, ports).stop()}")
    out(f"Consumer: {consumer_service(settings, ports.consumer_metrics).stop()}")
    out(f"Replay feed: {replay_service(settings, ports.replay).stop()}")
    out(f"Kafka: {broker(settings, ports).stop()}")
    return 0


def status(env: Mapping[str, str] | None = None, out: Print = print) -> int:
    """Print the health of every part; 0 when all is well, 1 when something is down, 3 when nothing runs."""
    from citibikes.lake import lake_from_settings

    env = dict(os.environ if env is None else env)
    ports = Ports.from_env(env)
    local_login(env, ports)
    settings = stack_settings(env)
    mode = feed_mode(env)
    kafka, standalone = broker(settings, ports), airflow(settings, ports)
    consumer = consumer_service(settings, ports.consumer_metrics)
    pids = {"kafka": kafka.pid(), "consumer": consumer.pid(), "replay": replay_service(settings, ports.replay).pid(),
            "airflow": standalone.service().pid()}
    if mode == "replay":
        feed_fix = f"start the offline replay feed with `make up` (log: {settings.state_dir / 'logs' / 'replay.log'})"
    else:
        feed_fix = f"check the network and the system's discovery_url in {settings.systems_file}, or use CITIBIKES_FEED=replay"
    probes: list[tuple[str, health.Probe]] = [
        ("broker", lambda: health.check_broker(
            settings.kafka, [t.name for t in settings.topics.values()], PROJECT_GROUPS,
            pid=pids["kafka"], log_file=kafka.log_dir / "stdout.log")),
        ("consumer", lambda: health.check_consumer(
            f"http://127.0.0.1:{ports.consumer_metrics}/metrics", settings.live_store,
            pid=pids["consumer"], log_file=consumer.log_file)),
        ("scheduler", lambda: health.check_scheduler(standalone.url, pid=pids["airflow"],
                                                     log_file=settings.state_dir / "logs" / "airflow.log")),
        ("dags", lambda: health.check_dags(standalone.url, known_password(standalone.home, env), PROJECT_ROOT / "dags",
                                           user=ADMIN_USER)),
        *((f"feed {s.system_id}", lambda s=s: health.check_feed(s.system_id, s.discovery_url, fix=feed_fix,
                                                                  replay_pid=pids["replay"] if mode == "replay" else None))
          for s in settings.systems if s.enabled),
        ("lake", lambda: health.check_lake(settings.lake_uri, lambda: lake_from_settings(settings),
                                           stale_after_s=LAKE_STALE_INTERVALS * settings.interval_s)),
    ]
    checks = health.run_all(probes)
    for check in checks:
        for line in check.lines():
            out(line)
    broken = [c.name for c in checks if not c.ok]
    services = [c for c in checks if c.name in ("broker", "consumer", "scheduler")]
    if not any(pids.values()) and not any(c.ok for c in services):
        out("Nothing runs: start the stack with `make up`.")
        return 3
    out(f"DOWN: {', '.join(broken)} (causes and fixes above)" if broken else f"All {len(checks)} checks OK.")
    return 1 if broken else 0
