"""Settings: which systems to ingest, Kafka topics, the lake location and quality thresholds.

Two sources, nothing else: the environment (``CITIBIKES_*``, ``PIPELINE_INTERVAL``, ``LOG_LEVEL``)
for where things are, and YAML files for what to do (``config/systems.yaml`` lists the GBFS systems,
``config/pipeline.yaml`` the topics and thresholds). The Airflow DAGs, the command-line tool and the
tests all call :func:`load_settings`, so they cannot disagree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The repository checkout (``include/citibikes/config.py`` -> two levels up)."""

LIVE_CITIBIKE_DISCOVERY_URL = "https://gbfs.citibikenyc.com/gbfs/2.3/gbfs.json"
SYSTEM_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the setting and how to fix it."""


@dataclass(frozen=True)
class SystemConfig:
    """One GBFS system to ingest."""

    system_id: str
    discovery_url: str
    language: str = "en"
    timeout_s: float = 10.0
    """Connect and read timeout of each HTTP request."""
    enabled: bool = True
    outage_threshold_s: int = 30 * 60
    """An empty or full episode this long is an outage: the live consumer alerts ``threshold``."""
    timezone: str | None = None
    """The system's IANA time zone (its ``system_information.timezone``), which the service analytics' windows
    are local to; None: read from the feed's system_information when the analytics needs it."""


@dataclass(frozen=True)
class TopicConfig:
    name: str
    partitions: int = 3
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    """Kafka topic configs, e.g. ``cleanup.policy``, ``retention.ms``."""


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the validation rules (see :mod:`citibikes.quality`)."""

    capacity_tolerance: int = 2
    """Allowed excess of bikes + docks + disabled over capacity before a record is inconsistent."""
    max_report_age_s: int = 7 * 86400
    """``last_reported`` older than this (relative to the feed's ``last_updated``) is implausible."""
    max_future_skew_s: int = 10
    """``last_reported`` further than this ahead of the fetch time is in the future."""
    max_feed_age_s: int = 300
    """A feed whose ``last_updated`` is older than this when fetched is stale."""
    last_reported_sentinels: tuple[int, ...] = (0, 86400)
    """Values some vendors send for "never reported" (Citi Bike sends 86400)."""


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaConnection:
    """How every Kafka client of the project reaches the cluster: its address and, on a secured one, a
    SCRAM-SHA-512 login over TLS. From ``CITIBIKES_KAFKA_*``; in Airflow the connections carry the same
    settings in their extra (:meth:`client_config`)."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    """The CA certificate (PEM) the brokers' certificates are checked against; None: the system's CAs."""

    def client_config(self) -> dict[str, str]:
        """librdkafka's settings for this connection (``bootstrap.servers`` and the security ones)."""
        config = {"bootstrap.servers": self.bootstrap}
        if self.security_protocol == "SASL_SSL":
            config.update({"security.protocol": "SASL_SSL", "sasl.mechanism": KAFKA_SASL_MECHANISM,
                           "sasl.username": self.username, "sasl.password": self.password})
            if self.ca_file:
                config["ssl.ca.location"] = self.ca_file
        return config

    def environment(self) -> dict[str, str]:
        """The ``CITIBIKES_KAFKA_*`` variables that give this connection (for a process started with it)."""
        names = {"CITIBIKES_KAFKA_BOOTSTRAP": self.bootstrap, "CITIBIKES_KAFKA_SECURITY_PROTOCOL": self.security_protocol,
                 "CITIBIKES_KAFKA_USERNAME": self.username, "CITIBIKES_KAFKA_PASSWORD": self.password,
                 "CITIBIKES_KAFKA_CA_FILE": self.ca_file}
        return {name: value for name, value in names.items() if value}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaConnection:
        bootstrap = _env(env, "CITIBIKES_KAFKA_BOOTSTRAP", f"127.0.0.1:{_int_env(env, 'CITIBIKES_KAFKA_PORT', 9092)}")
        protocol = (_env(env, "CITIBIKES_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") or "").upper()
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError(f"CITIBIKES_KAFKA_SECURITY_PROTOCOL={protocol!r} is not supported; use PLAINTEXT or "
                              "SASL_SSL (a password is only ever sent over TLS)")
        if protocol == "PLAINTEXT":
            return cls(bootstrap)
        username, password = _env(env, "CITIBIKES_KAFKA_USERNAME"), _env(env, "CITIBIKES_KAFKA_PASSWORD")
        if not (username and password):
            raise ConfigError("CITIBIKES_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs a login; set CITIBIKES_KAFKA_USERNAME "
                              "and CITIBIKES_KAFKA_PASSWORD")
        ca_file = _env(env, "CITIBIKES_KAFKA_CA_FILE")
        if ca_file and not Path(ca_file).is_file():
            raise ConfigError(f"CITIBIKES_KAFKA_CA_FILE={ca_file} is not a file; point it at the brokers' CA "
                              "certificate (PEM), or unset it to trust the system's CAs")
        return cls(bootstrap, protocol, username, password, ca_file and str(Path(ca_file).resolve()))


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    systems_file: Path
    pipeline_file: Path
    systems: tuple[SystemConfig, ...]
    topics: Mapping[str, TopicConfig]
    quality: QualityConfig
    kafka: KafkaConnection
    lake_uri: str
    s3_endpoint_url: str | None
    s3_region: str
    interval_s: int
    log_level: str
    status_snapshot_every_s: int
    """Every station's status is published again at least this often, changed or not (a full snapshot)."""
    live_store: str
    """The live consumer's state store: a SQLite file path, or a ``postgresql://`` URL."""
    consumer_metrics_port: int
    """Where the live consumer serves its Prometheus metrics (0: nowhere)."""
    consumer_metrics_url: str | None
    """Where the dashboard reads them: ``CITIBIKES_CONSUMER_METRICS_URL``, else the port on this host (None with
    port 0); the consumer in a container of its own is ``http://consumer:9464/metrics``."""
    alerts_webhook_conn: str | None = None
    """The Airflow HTTP connection the alerts DAG posts its to-do lists to; None: the task log and
    a JSON-lines file under ``<state_dir>/alerts/``."""
    catalog: str = "auto"
    """Which catalog the catalog DAG keeps: ``duckdb`` (a file in the state folder), ``glue`` (AWS Glue)
    or ``auto``: Glue for an S3 lake connection, DuckDB for a folder."""
    glue_database: str = "citibikes_analytics"
    glue_crawler: str = "citibikes-lake"
    glue_crawler_role: str | None = None
    """The IAM role (name or ARN) the Glue crawler runs as; None: ``citibikes-glue-crawler``, which
    ``citibikes aws setup`` creates."""
    glue_crawl_every_s: int = 1800
    """The Glue crawler runs at most this often (each run is billed; it crawls only new folders)."""
    compaction_settle_s: int = 7200
    """Compaction takes a day, or an hour of an open day, once it ended this long ago (late minute runs have landed)."""
    compaction_grace_s: int = 3600
    """Compaction deletes the files it replaced once the catalog has read their compacted file this long:
    a reader that keeps a catalog connection open longer may miss rows."""
    check_window_h: int = 24
    """The data-quality checks read the last this many hours of data (of the feeds' clock)."""
    check_max_age_s: int = 900
    """A system whose newest observation is older than this fails the freshness check."""
    check_max_quarantine_rate: float = 0.05
    """A system whose quarantined share of status records in the window exceeds this fails."""
    check_min_completeness: float = 0.9
    """A snapshot with fewer than this share of the stations seen in its hour fails rows_per_hour."""

    @property
    def catalog_path(self) -> Path:
        """The embedded catalog (a DuckDB file): ``<state_dir>/catalog/citibikes.duckdb``."""
        return self.state_dir / "catalog" / "citibikes.duckdb"


DEFAULT_TOPICS = {
    "station_information": TopicConfig(
        "bikes-station-information",
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    ),
    "station_status": TopicConfig(
        "bikes-station-status",
        config={"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)},
    ),
    "quarantine": TopicConfig(
        "bikes-quarantine",
        partitions=1,
        config={"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
    ),
    "alerts": TopicConfig(
        "bikes-station-alerts",
        config={"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
    ),
    "dead_letter": TopicConfig(
        "bikes-dead-letter",
        partitions=1,
        config={"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
    ),
}


def _env(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else default


def _int_env(env: Mapping[str, str], name: str, default: int, *, allow_zero: bool = False) -> int:
    raw = _env(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to seconds, e.g. {name}=60") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={raw!r} must be positive; set it to seconds, e.g. {name}=60")
    return value


def _share_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _env(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={raw!r} is not a share between 0 and 1; set it like {name}={default}")
    return value


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist; create it or point to another") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} file {path} is not valid YAML{where}; fix its syntax") from None


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in strings, so files can defer to the environment."""
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, _, default = match.group(1).partition(":-")
        return env.get(name) or default

    return re.sub(r"\$\{([^}]+)\}", sub, value)


def load_systems(path: Path, env: Mapping[str, str] | None = None) -> tuple[SystemConfig, ...]:
    """Read the systems file: ``systems: [{id, discovery_url, language?, timeout_s?, enabled?, outage_threshold_min?,
    timezone?}]``."""
    env = os.environ if env is None else env
    doc = _read_yaml(path, "systems")
    entries = doc.get("systems") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"systems file {path} has no 'systems:' list; add at least one system with id and discovery_url")
    systems: list[SystemConfig] = []
    for index, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"systems file {path}: entry {index} is not a mapping; write 'id: ...' and 'discovery_url: ...'")
        system_id = str(entry.get("id", "")).strip()
        url = _expand(entry.get("discovery_url"), env)
        if not SYSTEM_ID_PATTERN.match(system_id):
            raise ConfigError(
                f"systems file {path}: entry {index} has id {system_id!r}; use lowercase letters, digits, '-' or '_'"
            )
        if not isinstance(url, str) or not re.match(r"^(https?|file)://", url):
            raise ConfigError(
                f"systems file {path}: system {system_id!r} needs discovery_url as an http(s):// or file:// URL of gbfs.json"
            )
        if any(s.system_id == system_id for s in systems):
            raise ConfigError(f"systems file {path}: system id {system_id!r} appears twice; ids must be unique")
        try:
            timeout = float(entry.get("timeout_s", 10.0))
            threshold_min = float(entry.get("outage_threshold_min", 30))
        except (TypeError, ValueError):
            raise ConfigError(f"systems file {path}: system {system_id!r} timeout_s and outage_threshold_min "
                              "must be numbers (seconds, minutes)") from None
        timezone = entry.get("timezone")
        if timezone is not None:
            timezone = str(timezone)
            try:
                ZoneInfo(timezone)
            except (ValueError, ZoneInfoNotFoundError):
                raise ConfigError(f"systems file {path}: system {system_id!r} timezone {timezone!r} is not an IANA "
                                  "time zone; write e.g. timezone: America/New_York") from None
        systems.append(
            SystemConfig(
                system_id=system_id,
                discovery_url=url,
                language=str(entry.get("language", "en")),
                timeout_s=timeout,
                enabled=bool(entry.get("enabled", True)),
                outage_threshold_s=round(threshold_min * 60),
                timezone=timezone,
            )
        )
    return tuple(systems)


def _load_pipeline(path: Path) -> tuple[dict[str, TopicConfig], QualityConfig]:
    doc = _read_yaml(path, "pipeline") if path.exists() else {}
    topics = dict(DEFAULT_TOPICS)
    for key, spec in (doc.get("topics") or {}).items():
        if key not in DEFAULT_TOPICS:
            raise ConfigError(f"pipeline file {path}: unknown topic key {key!r}; use one of {sorted(DEFAULT_TOPICS)}")
        base = DEFAULT_TOPICS[key]
        topics[key] = TopicConfig(
            name=str(spec.get("name", base.name)),
            partitions=int(spec.get("partitions", base.partitions)),
            replication_factor=int(spec.get("replication_factor", base.replication_factor)),
            config={str(k): str(v) for k, v in (spec.get("config") or base.config).items()},
        )
    quality_doc = doc.get("quality") or {}
    known = set(QualityConfig.__dataclass_fields__)
    unknown = set(quality_doc) - known
    if unknown:
        raise ConfigError(f"pipeline file {path}: unknown quality settings {sorted(unknown)}; known: {sorted(known)}")
    if "last_reported_sentinels" in quality_doc:
        quality_doc["last_reported_sentinels"] = tuple(quality_doc["last_reported_sentinels"])
    return topics, QualityConfig(**quality_doc)


FEED_MODES = ("live", "replay", "auto")


def feed_mode(env: Mapping[str, str]) -> str:
    """``CITIBIKES_FEED``: ``live`` (the systems' own URLs), ``replay`` (the offline feed) or ``auto``."""
    mode = (_env(env, "CITIBIKES_FEED", "auto") or "auto").lower()
    if mode not in FEED_MODES:
        raise ConfigError(f"CITIBIKES_FEED={mode!r} is not a feed mode; use live, replay or auto")
    return mode


def default_systems_file(mode: str) -> Path:
    """``config/systems.replay.yaml`` for the offline replay feed, ``config/systems.yaml`` otherwise."""
    return PROJECT_ROOT / "config" / ("systems.replay.yaml" if mode == "replay" else "systems.yaml")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment and the YAML files it points to."""
    env = os.environ if env is None else env
    state_dir = Path(_env(env, "CITIBIKES_STATE_DIR", str(PROJECT_ROOT / ".state"))).resolve()
    systems_file = Path(_env(env, "CITIBIKES_SYSTEMS_FILE") or default_systems_file(feed_mode(env)))
    pipeline_file = Path(_env(env, "CITIBIKES_PIPELINE_FILE", str(PROJECT_ROOT / "config" / "pipeline.yaml")))
    topics, quality = _load_pipeline(pipeline_file)
    log_level = (_env(env, "LOG_LEVEL", "INFO") or "INFO").upper()
    metrics_port = _int_env(env, "CITIBIKES_CONSUMER_METRICS_PORT", 9464, allow_zero=True)
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL={log_level!r} is not a log level; use DEBUG, INFO, WARNING or ERROR")
    return Settings(
        state_dir=state_dir,
        systems_file=systems_file,
        pipeline_file=pipeline_file,
        systems=load_systems(systems_file, env),
        topics=topics,
        quality=quality,
        kafka=KafkaConnection.from_env(env),
        lake_uri=_env(env, "CITIBIKES_LAKE_URI", str(state_dir / "lake")),
        s3_endpoint_url=_env(env, "CITIBIKES_S3_ENDPOINT_URL"),
        s3_region=_env(env, "CITIBIKES_S3_REGION", _env(env, "AWS_DEFAULT_REGION", "us-east-1")),
        interval_s=_int_env(env, "PIPELINE_INTERVAL", 60),
        log_level=log_level,
        status_snapshot_every_s=_int_env(env, "CITIBIKES_STATUS_SNAPSHOT_EVERY", 900),
        live_store=_env(env, "CITIBIKES_LIVE_STORE", str(state_dir / "live" / "live.db")),
        consumer_metrics_port=metrics_port,
        consumer_metrics_url=_env(env, "CITIBIKES_CONSUMER_METRICS_URL",
                                  f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None),
        alerts_webhook_conn=_env(env, "CITIBIKES_ALERTS_WEBHOOK_CONN"),
        catalog=_catalog_env(env),
        glue_database=_env(env, "CITIBIKES_GLUE_DATABASE", "citibikes_analytics"),
        glue_crawler=_env(env, "CITIBIKES_GLUE_CRAWLER", "citibikes-lake"),
        glue_crawler_role=_env(env, "CITIBIKES_GLUE_CRAWLER_ROLE"),
        glue_crawl_every_s=_int_env(env, "CITIBIKES_GLUE_CRAWL_EVERY", 1800, allow_zero=True),
        compaction_settle_s=_int_env(env, "CITIBIKES_COMPACTION_SETTLE", 7200, allow_zero=True),
        compaction_grace_s=_int_env(env, "CITIBIKES_COMPACTION_GRACE", 3600, allow_zero=True),
        check_window_h=_int_env(env, "CITIBIKES_CHECK_WINDOW_HOURS", 24),
        check_max_age_s=_int_env(env, "CITIBIKES_CHECK_MAX_AGE", 900),
        check_max_quarantine_rate=_share_env(env, "CITIBIKES_CHECK_MAX_QUARANTINE_RATE", 0.05),
        check_min_completeness=_share_env(env, "CITIBIKES_CHECK_MIN_COMPLETENESS", 0.9),
    )


CATALOGS = ("auto", "duckdb", "glue")


def _catalog_env(env: Mapping[str, str]) -> str:
    value = (_env(env, "CITIBIKES_CATALOG", "auto") or "auto").lower()
    if value not in CATALOGS:
        raise ConfigError(f"CITIBIKES_CATALOG={value!r} is not a catalog; use auto (Glue for an S3 lake, DuckDB "
                          "for a folder), duckdb or glue")
    return value
