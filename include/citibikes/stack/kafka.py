"""A real Apache Kafka broker without Docker: jars from Maven Central, KRaft single node.

Apache's download site is not reachable from every machine, but Kafka's own jars are on Maven
Central. ``install`` resolves ``org.apache.kafka:kafka_2.13`` and its runtime dependencies with
Maven into the state folder (once); ``KafkaBroker`` writes ``server.properties``, formats the
storage once (the data survives restarts) and runs ``kafka.Kafka`` with ``java`` under a pid file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from citibikes.config import KAFKA_SASL_MECHANISM, KafkaConnection
from citibikes.stack.process import Service, StackError
from citibikes.stack.tls import BrokerTls, write_private

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17
ADMIN_USER = "admin"
PIPELINE_USER = "citibikes-pipeline"
CONSUMER_USER = "citibikes-consumer"
USERS = (ADMIN_USER, PIPELINE_USER, CONSUMER_USER)
"""The local broker's logins: the administrator (a super user: topics, ACLs, the CLI), the pipeline
(writes the feed topics) and the live consumer (reads them, writes alerts); see ``stream.acls``."""
BROKER_NAME = "citibikes-broker"
"""The broker's certificate subject; its controller listener admits only this certificate."""


def _template(name: str) -> str:
    return resources.files("citibikes.stack").joinpath("templates", name).read_text()


def require_java() -> str:
    """Path of a ``java`` of version 17 or later, or a StackError saying how to get one."""
    java_home = os.environ.get("JAVA_HOME")
    java = (java_home and shutil.which("java", path=os.path.join(java_home, "bin"))) or shutil.which("java")
    if java is None:
        raise StackError(
            "java not found: Kafka needs Java 17 or later; install it (e.g. apt-get install openjdk-17-jre-headless) "
            "or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StackError(
            f"{java} is Java {major or 'unknown'}: Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or later; "
            "install a newer JDK or point JAVA_HOME at one"
        )
    return java


def install(lib: Path, version: str = KAFKA_VERSION) -> bool:
    """Resolve the broker's jars into ``lib`` with Maven, once. Returns True when it downloaded."""
    stamp = lib / f".kafka-{version}"
    if stamp.exists():
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "mvn not found: the Kafka broker's jars are fetched from Maven Central with Maven; "
            "install it (e.g. apt-get install maven) and run again"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent, prefix=".install-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_template("kafka-pom.xml").replace("@KAFKA_VERSION@", version))
        staging = Path(tmp) / "lib"
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            lines = [l for l in (result.stdout + result.stderr).splitlines() if "ERROR" in l] or [""]
            raise StackError(
                f"Maven could not fetch Kafka {version} from Maven Central ({lines[0].strip()[:300]}); "
                "check network access to repo.maven.apache.org or your ~/.m2/settings.xml mirror"
            )
        (staging / stamp.name).write_text(version)
        if lib.exists():
            shutil.rmtree(lib)
        staging.rename(lib)  # all jars appear at once: a half-finished download is never used
    return True


@dataclass(frozen=True)
class KafkaBroker:
    """A single-node KRaft broker (broker + controller in one JVM) living in ``kafka_dir``."""

    kafka_dir: Path
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    num_partitions: int = 3
    lib_dir: Path | None = None
    """Where the jars live (default ``kafka_dir/lib``); tests share the jars of the local stack."""
    security: str = "PLAINTEXT"
    """``PLAINTEXT``, or ``SASL_SSL``: clients log in (SCRAM-SHA-512) over TLS and need ACLs to touch a topic."""
    advertised_port: int | None = None
    """The port clients are told to use, when a proxy stands between them and ``port`` (default ``port``)."""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def lib(self) -> Path:
        return self.lib_dir or self.kafka_dir / "lib"

    @property
    def data_dir(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.kafka_dir / "logs"

    @property
    def properties_file(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def tls(self) -> BrokerTls:
        """The CA and the broker's certificate, made on first use."""
        tls = BrokerTls(self.kafka_dir / "tls")
        tls.ensure((self.host, "localhost"), BROKER_NAME)
        return tls

    @property
    def users_file(self) -> Path:
        return self.kafka_dir / "users.json"

    def passwords(self) -> dict[str, str]:
        """The SCRAM password of each of :data:`USERS`: made before the storage's first format, which
        registers them, and kept in a file only the owner reads."""
        if not self.users_file.exists():
            if (self.data_dir / "meta.properties").exists():
                raise StackError(f"the Kafka data in {self.data_dir} was made without logins, so SASL_SSL cannot start "
                                 f"on it; remove {self.data_dir} (the topics' messages go with it) and start again")
            self.kafka_dir.mkdir(parents=True, exist_ok=True)
            write_private(self.users_file, json.dumps({u: secrets.token_urlsafe(24) for u in USERS}, indent=1).encode())
        return json.loads(self.users_file.read_text())

    def connection(self, user: str = ADMIN_USER) -> KafkaConnection:
        """How a client reaches this broker (as ``user`` when it is secured)."""
        if self.security == "PLAINTEXT":
            return KafkaConnection(self.bootstrap)
        return KafkaConnection(self.bootstrap, "SASL_SSL", user, self.passwords()[user], str(self.tls.ca_file))

    def _listener_properties(self) -> dict[str, str]:
        if self.security == "PLAINTEXT":
            return {
                "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.host}:{self.advertised_port or self.port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            }
        login = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" '
                 f'password="{self.passwords()[ADMIN_USER]}";')
        return {
            "listeners": f"SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://{self.host}:{self.advertised_port or self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            # The controller listener speaks TLS and admits only the broker's own certificate.
            "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "listener.name.controller.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": KAFKA_SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": KAFKA_SASL_MECHANISM,
            f"listener.name.sasl_ssl.{KAFKA_SASL_MECHANISM.lower()}.sasl.jaas.config": login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_file),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER};User:CN={BROKER_NAME}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def write_properties(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            **self._listener_properties(),
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.num_partitions),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.check.interval.ms": "60000",
        }
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.properties_file, "".join(f"{k}={v}\n" for k, v in props.items()).encode())  # a password
        (self.kafka_dir / "log4j2.yaml").write_text(_template("kafka-log4j2.yaml"))

    def _java_command(self, java: str, main: str, *args: str, heap: str | None = None) -> list[str]:
        command = [java]
        if heap:
            command += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                        "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent"]
        command += [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp", f"{self.lib}/*", main, *args,
        ]
        return command

    def format_storage(self, java: str) -> bool:
        """Format the KRaft storage once. Returns True when it formatted, False when data existed."""
        if (self.data_dir / "meta.properties").exists():
            return False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tool = "kafka.tools.StorageTool"
        cluster_id = subprocess.run(
            self._java_command(java, tool, "random-uuid"), capture_output=True, text=True, check=True
        ).stdout.strip().splitlines()[-1]
        # The logins are made with the storage, secured or not, so the broker can be secured later.
        scram = [arg for user, password in self.passwords().items()
                 for arg in ("--add-scram", f"{KAFKA_SASL_MECHANISM}=[name={user},password={password}]")]
        result = subprocess.run(
            self._java_command(java, tool, "format", "--standalone", "-t", cluster_id,
                               "-c", str(self.properties_file), *scram),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed ({(result.stderr or result.stdout).strip()[-300:]}); "
                f"remove {self.data_dir} to start from empty"
            )
        return True

    def service(self, command: list[str] | None = None) -> Service:
        """The broker's pid-file service; ``command`` is only needed to start it."""
        return Service(
            name="kafka",
            command=command or [],
            run_dir=self.run_dir,
            log_file=self.log_dir / "stdout.log",
            ports=[(self.host, self.port), (self.host, self.controller_port)],
            ready=self.answers,
            start_timeout_s=90,
            fix_hint="set CITIBIKES_KAFKA_PORT / CITIBIKES_KAFKA_CONTROLLER_PORT to free ports",
        )

    def answers(self, timeout: float = 3.0) -> bool:
        """True when the broker answers a metadata request (not just an open port)."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka import KafkaException

        admin = AdminClient({**self.connection().client_config(), "socket.timeout.ms": int(timeout * 1000)})
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return bool(metadata.brokers)

    def start(self) -> str:
        if self.pid() is not None:
            return "already running"
        self.service().check_ports_free()  # before any download: fail fast on a busy port
        java = require_java()
        install(self.lib)
        self.write_properties()
        self.format_storage(java)
        command = self._java_command(java, "kafka.Kafka", str(self.properties_file), heap=self.heap)
        return self.service(command).start()

    def stop(self) -> str:
        return self.service().stop()

    def pid(self) -> int | None:
        return self.service().pid()
