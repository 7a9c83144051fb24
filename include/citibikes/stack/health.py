"""The health check behind ``citibikes status``: is each part of the pipeline working, and if not,
why and what to do.

One small function per part returns a :class:`Check` (OK or DOWN, what was seen or the cause, the
fix, and the numbers behind it). :func:`run_all` runs them side by side in daemon threads, each
bounded by its own timeouts and all by one deadline, so a broker or API that does not answer
costs seconds and never hangs the command. Nothing here starts, stops or writes anything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit

import requests

from citibikes.config import KafkaConnection
from citibikes.errors import first_line
from citibikes.live.store import shown_url
from citibikes.stack.process import tail

if TYPE_CHECKING:
    from citibikes.lake import Lake, RunRecord

CHECK_DEADLINE_S = 6.0
"""The whole check ends after this; a part still waiting for an answer is reported DOWN."""
CONSUMER_STUCK_AFTER_S = 120.0
"""A consumer with lag that has not committed a batch for this long is stuck."""

Probe = Callable[[], "Check | list[Check]"]


@dataclass(frozen=True)
class Check:
    """The health of one part: one line, plus detail lines and the numbers behind it."""

    name: str
    ok: bool
    summary: str
    """What was seen (OK) or the cause (DOWN)."""
    fix: str = ""
    details: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)
    """The numbers behind the summary (offsets, lag, age), for tests and scripts."""

    def lines(self) -> list[str]:
        head = f"{self.name:<24} {'OK' if self.ok else 'DOWN':<5} {self.summary}"
        if not self.ok and self.fix:
            head += f" -> fix: {self.fix}"
        return [head, *(f"{'':<31}{line}" for line in self.details)]


def healthy(name: str, summary: str, **extra: Any) -> Check:
    return Check(name, True, summary, **extra)


def down(name: str, cause: str, fix: str, **extra: Any) -> Check:
    return Check(name, False, cause, fix, **extra)


def run_all(probes: Sequence[tuple[str, Probe]], deadline_s: float = CHECK_DEADLINE_S) -> list[Check]:
    """Run every probe at once; return their checks in the order given. A probe that has not
    answered by the deadline is DOWN (its daemon thread is left behind and never delays the exit)."""
    results: dict[int, list[Check]] = {}

    def work(index: int, name: str, probe: Probe) -> None:
        try:
            found = probe()
        except Exception as exc:  # a health check reports every failure, it never crashes
            found = down(name, f"the check failed ({type(exc).__name__}: {first_line(exc)})",
                         "run `citibikes status` again; if it persists, report it with this line")
        results[index] = found if isinstance(found, list) else [found]

    threads = [threading.Thread(target=work, args=(i, name, probe), daemon=True, name=f"health-{name}")
               for i, (name, probe) in enumerate(probes)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    late = "no answer within {:.0f} s".format(deadline_s)
    return [check for i, (name, _) in enumerate(probes)
            for check in results.get(i, [down(name, late, "see its log; it may be overloaded or hung")])]


# -- Kafka ---------------------------------------------------------------------------------------

def check_broker(connection: KafkaConnection, topics: Sequence[str], groups: Sequence[str], *, timeout_s: float = 3.0,
                 pid: int | None = None, log_file: Path | None = None) -> Check:
    """The broker answers (and takes the login); the project's topics exist (partitions, end offsets); each group's lag."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from citibikes.stream.topics import contact_problem

    ms = int(timeout_s * 1000)
    errors: list[KafkaError] = []
    admin = AdminClient({**connection.client_config(), "socket.timeout.ms": ms,
                         "socket.connection.setup.timeout.ms": ms, "log_level": 0, "error_cb": errors.append})
    bootstrap = connection.bootstrap
    where = bootstrap + (f" (pid {pid})" if pid else "")
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)
        cause, fix = contact_problem(connection, errors, timeout_s)
        if pid and cause.startswith("no Kafka broker answers"):
            cause = f"no answer at {where} over {connection.security_protocol} within {timeout_s:.0f} s though its process runs"
            fix = f"see {log_file}; restart it (make down && make up), or set CITIBIKES_KAFKA_SECURITY_PROTOCOL to its listener's"
        return down("broker", cause, fix)
    present = [t for t in topics if t in metadata.topics]
    missing = [t for t in topics if t not in metadata.topics]
    partitions = [(t, p) for t in present for p in sorted(metadata.topics[t].partitions)]
    try:
        starts = _offsets(admin, partitions, "earliest", timeout_s)
        ends = _offsets(admin, partitions, "latest", timeout_s)
    except KafkaException as exc:
        return down("broker", f"{where} answers, but reading the end offsets failed ({_kafka_text(exc)})",
                    f"see {log_file or 'the broker log'}")
    lags: dict[str, dict[tuple[str, int], int]] = {}
    lag_texts = {}
    for group in groups:
        try:  # a group's coordinator may still be loading: that group's lag is unknown, the broker is fine
            lags[group] = group_lag(admin, group, starts, ends, timeout_s)
            lag_texts[group] = _lag_text(lags[group])
        except KafkaException as exc:
            lag_texts[group] = f"unknown ({_kafka_text(exc)})"
    details = [f"topic {t}: {plural(len(metadata.topics[t].partitions), 'partition')}, end offsets "
               + ", ".join(f"{ends[(t, p)]:,}" for p in sorted(metadata.topics[t].partitions)) for t in present]
    details += [f"group {g}: lag {text}" for g, text in lag_texts.items()]
    facts = {"end_offsets": ends, "lag": lags}
    if missing:
        return down("broker", f"{where} answers, but topics are missing: {', '.join(missing)}",
                    "create them with `citibikes topics` (`make up` does it)", details=tuple(details), facts=facts)
    groups_text = "".join(f"; group {g} lag {sum(lags[g].values()) if lags.get(g) else 'unknown'}" for g in groups)
    counts = f"{plural(len(present), 'topic')}, {plural(sum(ends.values()), 'message')}"
    return healthy("broker", f"{where} answers: {counts}{groups_text}", details=tuple(details), facts=facts)


def _offsets(admin: Any, partitions: Sequence[tuple[str, int]], which: str, timeout_s: float) -> dict[tuple[str, int], int]:
    """Each partition's earliest or latest offset (its low or high watermark)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    if not partitions:
        return {}
    spec = OffsetSpec.earliest() if which == "earliest" else OffsetSpec.latest()
    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions}, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def group_lag(admin: Any, group: str, starts: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int],
              timeout_s: float) -> dict[tuple[str, int], int]:
    """Messages the group has not committed yet, per partition of each topic it committed in (a
    partition without a commit counts from its earliest offset); empty when it never committed."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                               request_timeout=timeout_s)[group].result()
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or () if tp.offset >= 0}
    topics = {topic for topic, _ in committed}
    return {tp: max(0, end - max(committed.get(tp, starts[tp]), starts[tp]))
            for tp, end in ends.items() if tp[0] in topics}


def _kafka_text(exc: Exception) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if hasattr(error, "str") else first_line(exc)


def _lag_text(lag: Mapping[tuple[str, int], int]) -> str:
    if not lag:
        return "unknown (no committed offsets: it has not consumed yet)"
    per_topic: dict[str, int] = {}
    for (topic, _), n in lag.items():
        per_topic[topic] = per_topic.get(topic, 0) + n
    return f"{sum(lag.values()):,} (" + ", ".join(f"{t} {n:,}" for t, n in sorted(per_topic.items())) + ")"


# -- the live consumer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsumerReading:
    """What the consumer's Prometheus endpoint says (None: not measured yet)."""

    lag: int | None
    newest_age_s: float | None
    rate: float
    messages: int
    last_commit: float | None


def read_metrics(text: str) -> ConsumerReading:
    """Parse the consumer's metrics (see :mod:`citibikes.live.metrics`)."""
    from prometheus_client.parser import text_string_to_metric_families

    from citibikes.live.metrics import PREFIX

    samples: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name.removeprefix(PREFIX), []).append(sample.value)
    age = samples.get("newest_event_age_seconds", [0.0])[0]
    commit = samples.get("last_commit_timestamp_seconds", [0.0])[0]
    return ConsumerReading(
        lag=int(sum(samples["lag_messages"])) if "lag_messages" in samples else None,
        newest_age_s=age or None,  # 0: nothing applied yet
        rate=samples.get("messages_per_second", [0.0])[0],
        messages=int(sum(samples.get("messages_total", []))),
        last_commit=commit or None,
    )


def check_consumer(metrics_url: str, store_url: str, *, pid: int | None, log_file: Path,
                   timeout_s: float = 2.0) -> Check:
    """The consumer process answers on its metrics endpoint: its lag, the age of its newest event;
    when it does not answer, the store says how old its state is."""
    try:
        response = requests.get(metrics_url, timeout=timeout_s)
        response.raise_for_status()
        reading = read_metrics(response.text)
    except (requests.RequestException, ValueError):
        reading = None
    where = f"pid {pid}, " if pid else ""
    if reading is None:
        stored = _store_age(store_url)
        if pid:
            return down("consumer", f"its process runs (pid {pid}) but {metrics_url} does not answer{stored}",
                        f"see {log_file}; restart it: make down && make up")
        last = tail(log_file, 1)
        return down("consumer", f"not running ({metrics_url} does not answer){stored}"
                    + (f"; its last log line: {last}" if last else ""),
                    "start it with `make up` (or `citibikes consume`)")
    lag = "not measured yet" if reading.lag is None else f"{reading.lag:,}"
    age = "no event applied yet" if reading.newest_age_s is None else f"newest event {ago(reading.newest_age_s)} old"
    seen = (f"{where}lag {lag}, {age}, {reading.rate:.1f} msg/s, "
            f"{reading.messages:,} messages since start (metrics {metrics_url}, store {shown_url(store_url)})")
    facts = {"lag": reading.lag, "newest_age_s": reading.newest_age_s, "messages": reading.messages}
    idle = time.time() - reading.last_commit if reading.last_commit else None
    if reading.lag and idle is not None and idle > CONSUMER_STUCK_AFTER_S:
        return down("consumer", f"stuck: {seen}; no batch committed for {ago(idle)}",
                    f"see {log_file}; restart it: make down && make up", facts=facts)
    return healthy("consumer", seen, facts=facts)


def _store_age(store_url: str) -> str:
    """``; the store's newest event is 3 h old`` from the store's summary, or why it cannot be read."""
    from citibikes.live.store import LiveStore, StoreError

    if "://" not in store_url and not Path(store_url).exists():
        return f"; no live state yet ({store_url})"
    try:
        store = LiveStore.open(store_url, readonly=True)
        try:
            newest = store.summary()["newest_last_updated"]
        finally:
            store.close()
    except StoreError as exc:
        return f"; store: {exc}"
    if not newest:
        return f"; the store {shown_url(store_url)} holds no event yet"
    return f"; the store's newest event is {ago(time.time() - newest)} old ({shown_url(store_url)})"


# -- Airflow -------------------------------------------------------------------------------------

AIRFLOW_PARTS = ("scheduler", "metadatabase", "dag_processor", "triggerer")


def check_scheduler(api_url: str, *, pid: int | None, log_file: Path, timeout_s: float = 4.0) -> Check:
    """``GET /api/v2/monitor/health``: the scheduler's heartbeat and the other components' state."""
    try:
        health = requests.get(f"{api_url}/api/v2/monitor/health", timeout=timeout_s).json()
    except (requests.RequestException, ValueError) as exc:
        state = f"its process runs (pid {pid}) but " if pid else ""
        how = f"within {timeout_s:.0f} s (busy or starting?)" if isinstance(exc, requests.Timeout) else ""
        return down("scheduler", f"{state}the Airflow API at {api_url} does not answer {how}".rstrip(),
                    f"see {log_file}; restart: make down && make up" if pid else "start Airflow with `make up`")
    return scheduler_health(health, pid=pid, log_file=log_file)


def scheduler_health(health: Mapping[str, Any], *, pid: int | None = None, log_file: Path | None = None) -> Check:
    """Read the monitor/health answer: DOWN when any component is not healthy."""
    states = {part: (health.get(part) or {}).get("status") or "unknown" for part in AIRFLOW_PARTS}
    beat = (health.get("scheduler") or {}).get("latest_scheduler_heartbeat")
    beat_text = f"heartbeat {ago(time.time() - datetime.fromisoformat(beat).timestamp())} ago" if beat else "no heartbeat"
    sick = [f"{part.replace('_', ' ')} {state}" for part, state in states.items() if state != "healthy"]
    where = f" (pid {pid})" if pid else ""
    if sick:
        return down("scheduler", f"{', '.join(sick)}; scheduler {beat_text}{where}",
                    f"see {log_file or 'the Airflow log'}; restart: make down && make up", facts={"states": states})
    return healthy("scheduler", f"{beat_text}; dag processor, triggerer, metadatabase healthy{where}",
                   facts={"states": states})


def check_dags(api_url: str, password: str | None, dag_folder: Path, *, user: str = "admin",
               timeout_s: float = 4.0) -> list[Check]:
    """The last finished run of each DAG loaded from ``dag_folder``, through the REST API (JWT from
    ``POST /auth/token``)."""
    session = requests.Session()
    try:
        login = session.post(f"{api_url}/auth/token", json={"username": user, "password": password or ""},
                             timeout=timeout_s)
        if login.status_code >= 300:
            cause = ("no admin password is known (none set, none stored)" if password is None
                     else f"Airflow refused the admin login ({login.status_code})")
            return [down("dags", cause, "set CITIBIKES_AIRFLOW_PASSWORD to the admin password (`make up` prints it)")]
        session.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        dags = session.get(f"{api_url}/api/v2/dags", params={"limit": 1000}, timeout=timeout_s).json()["dags"]
        ours = sorted((d for d in dags if Path(d["fileloc"]).parent == dag_folder), key=lambda d: d["dag_id"])
        runs = {d["dag_id"]: session.get(f"{api_url}/api/v2/dags/{d['dag_id']}/dagRuns", timeout=timeout_s,
                                         params={"order_by": "-run_after", "limit": 5}).json()["dag_runs"]
                for d in ours}
    except (requests.RequestException, ValueError, KeyError) as exc:
        return [down("dags", f"the Airflow API at {api_url} does not answer ({type(exc).__name__})",
                     "start Airflow with `make up`")]
    if not ours:
        return [down("dags", f"no DAG of {dag_folder} is loaded", f"see the import errors in the UI ({api_url})")]
    return [dag_health(dag, runs[dag["dag_id"]], api_url) for dag in ours]


def dag_health(dag: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], api_url: str) -> Check:
    """One DAG from its newest runs (newest first): DOWN when paused or its last finished run failed."""
    name = f"dag {dag['dag_id']}"
    if dag.get("is_paused"):
        return down(name, "paused", f"unpause it in the UI ({api_url}) or run `make up`")
    busy = [r for r in runs if r["state"] in ("queued", "running")]
    now = f"; {plural(len(busy), 'run')} in progress" if busy else ""
    finished = [r for r in runs if r["state"] in ("success", "failed")]
    if not finished:
        return healthy(name, f"no finished run yet{now}")
    last = finished[0]
    when = ago(time.time() - datetime.fromisoformat(last["end_date"]).timestamp()) if last.get("end_date") else "?"
    if last["state"] == "failed":
        return down(name, f"last run {last['dag_run_id']} failed {when} ago{now}",
                    f"read its task logs: {api_url}/dags/{dag['dag_id']}/runs/{quote(last['dag_run_id'], safe='')}",
                    facts={"state": "failed"})
    return healthy(name, f"last run {last['dag_run_id']} succeeded {when} ago{now}", facts={"state": "success"})


# -- the feed and the lake -----------------------------------------------------------------------

def feed_problem(url: str, timeout_s: float = 4.0) -> str | None:
    """None when the discovery URL answers with JSON, else the reason it does not, in a few words."""
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
        response.json()
        return None
    except requests.Timeout:
        return f"no answer within {timeout_s:.0f} s"
    except requests.HTTPError as exc:
        return f"HTTP {exc.response.status_code}"
    except ValueError:  # requests' JSONDecodeError is one too
        return "the answer is not JSON"
    except requests.RequestException as exc:
        text = str(exc)
        if "Failed to resolve" in text or "NameResolutionError" in text:
            return f"cannot resolve {urlsplit(url).hostname} (no network or DNS?)"
        if "Connection refused" in text:
            return "connection refused: nothing listens there"
        return first_line(exc)[:160]


def check_feed(system_id: str, url: str, *, fix: str, replay_pid: int | None = None, timeout_s: float = 3.0) -> Check:
    """The system's discovery URL answers with JSON (``replay_pid``: the local replay feed serves it)."""
    started = time.monotonic()
    problem = feed_problem(url, timeout_s)
    served = f", replay feed pid {replay_pid}" if replay_pid else ""
    if problem:
        return down(f"feed {system_id}", f"{url} does not answer ({problem}){served}", fix)
    return healthy(f"feed {system_id}", f"{url} answers ({time.monotonic() - started:.2f} s{served})")


def check_lake(lake_uri: str, open_lake: Callable[[], Lake], *, stale_after_s: float) -> Check:
    """The newest ``pipeline_runs`` file: when it was written (DOWN when longer ago than
    ``stale_after_s``) and which run it records."""
    from citibikes.lake import LakeError
    from citibikes.lake.filesystem import parse_lake_uri

    fix = "the pipeline writes every minute: check the scheduler and DAG lines, or run `citibikes run`"
    location = parse_lake_uri(lake_uri)
    if location.scheme == "file" and not Path(location.path).is_dir():
        return down("lake", f"nothing written yet ({location.path} does not exist)", fix)
    try:
        lake = open_lake()
        newest = newest_run(lake)
    except LakeError as exc:  # its message names the fix
        return down("lake", str(exc), "")
    if newest is None:
        return down("lake", f"no pipeline run recorded in {lake.uri}", fix)
    written, run = newest
    age = time.time() - written
    seen = f"last write {ago(age)} ago: run {run.run_id} of {run.system_id}, {run.outcome}"
    facts = {"age_s": age, "run_id": run.run_id, "outcome": run.outcome}
    if age > stale_after_s:
        return down("lake", seen, fix, facts=facts)
    return healthy("lake", seen, facts=facts)


def newest_run(lake: Lake) -> tuple[float, RunRecord] | None:
    """(when it was written, the run) of the newest file in the newest ``pipeline_runs`` date
    partition; lists one day, not the whole table."""
    import pyarrow.fs as pafs

    from citibikes.lake.tables import runs_from_table

    root = lake.storage.path()
    runs = f"{root}/pipeline_runs"
    try:
        days = [info.base_name for info in lake.filesystem.get_file_info(pafs.FileSelector(runs, allow_not_found=True))
                if info.type == pafs.FileType.Directory and info.base_name.startswith("date=")]
        files = [info for info in lake.filesystem.get_file_info(pafs.FileSelector(f"{runs}/{max(days)}"))
                 if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                 and not info.base_name.startswith(".")] if days else []
    except OSError as exc:
        raise lake.storage.error(exc, f"cannot list {lake.uri}/pipeline_runs") from None
    if not files:
        return None
    newest = max(files, key=lambda info: info.mtime)
    table = lake.read_file(newest.path.removeprefix(root + "/"), "pipeline_runs")
    return newest.mtime.timestamp(), runs_from_table(table)[-1]


# -- words ---------------------------------------------------------------------------------------

def ago(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"

