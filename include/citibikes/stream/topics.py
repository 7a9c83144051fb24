"""Create the project's Kafka topics from configuration, idempotently.

Topics are declared in settings (name, partitions, replication factor, configs such as
``cleanup.policy`` and ``retention.ms``). ``ensure_topics`` creates the missing ones, raises the
partition count where configuration asks for more, and aligns configs that drifted, so running it
on every ``up`` and every deploy is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from citibikes.config import KafkaConnection, TopicConfig


class TopicError(RuntimeError):
    """A topic could not be created or aligned; the message names the topic, the cause and the fix."""


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answers at the configured address."""


def contact_problem(connection: KafkaConnection, errors: list[KafkaError], timeout: float) -> tuple[str, str]:
    """Why a first contact with the cluster failed, and the fix, from the client's errors (``error_cb``)."""
    where = connection.bootstrap
    for error in errors:
        if error.code() == KafkaError._AUTHENTICATION:
            return (f"Kafka at {where} refused the login of {connection.username!r} ({error.str().split(': ', 1)[-1]})",
                    "check CITIBIKES_KAFKA_USERNAME and CITIBIKES_KAFKA_PASSWORD")
        if error.code() == KafkaError._SSL:
            return (f"TLS with Kafka at {where} failed ({error.str().split(': ', 1)[-1].split(':', 1)[0]})",
                    "point CITIBIKES_KAFKA_CA_FILE at the CA certificate that signed the broker's")
    return (f"no Kafka broker answers at {where} over {connection.security_protocol} within {timeout:.0f} s",
            "start it with `make up`, or point CITIBIKES_KAFKA_BOOTSTRAP at a running broker (and "
            "CITIBIKES_KAFKA_SECURITY_PROTOCOL at its listener's protocol)")


def contact(connection: KafkaConnection, timeout: float = 5.0, **config: Any) -> AdminClient:
    """An admin client of a cluster that answered; BrokerUnavailable naming the cause and the fix."""
    errors: list[KafkaError] = []
    admin = AdminClient({**connection.client_config(), "socket.timeout.ms": int(timeout * 1000),
                         "socket.connection.setup.timeout.ms": int(timeout * 1000), "log_level": 0,
                         "error_cb": errors.append, **config})
    try:
        admin.list_topics(timeout=timeout)
        return admin
    except KafkaException:
        admin.poll(0)  # serves the error callbacks
        cause, fix = contact_problem(connection, errors, timeout)
        raise BrokerUnavailable(f"{cause}; {fix}") from None


def require_broker(connection: KafkaConnection, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when the cluster cannot be reached or refuses the login."""
    contact(connection, timeout)


@dataclass(frozen=True)
class TopicChange:
    topic: str
    action: str
    """``created``, ``unchanged``, ``configs updated`` or ``partitions N -> M``."""


def ensure_topics(admin: AdminClient, topics: Iterable[TopicConfig], timeout: float = 15.0) -> list[TopicChange]:
    """Make the broker's topics match ``topics``; returns what was done to each."""
    wanted = {topic.name: topic for topic in topics}
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicError(f"cannot list topics ({exc.args[0]}); is the broker up? run `make up` or check CITIBIKES_KAFKA_BOOTSTRAP") from None
    changes: list[TopicChange] = []
    missing = [t for name, t in wanted.items() if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config)) for t in missing],
            operation_timeout=timeout, request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                changes.append(TopicChange(name, "created"))
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":  # created concurrently: fine
                    changes.append(TopicChange(name, "unchanged"))
                    continue
                raise TopicError(f"cannot create topic {name} ({exc.args[0].str()}); check its settings in config/pipeline.yaml") from None
    for name, topic in wanted.items():
        if name not in existing:
            continue
        changes.append(_align(admin, topic, len(existing[name].partitions), timeout))
    return changes


def _align(admin: AdminClient, topic: TopicConfig, partitions: int, timeout: float) -> TopicChange:
    actions = []
    if topic.partitions > partitions:
        admin.create_partitions([NewPartitions(topic.name, topic.partitions)], request_timeout=timeout)[topic.name].result()
        actions.append(f"partitions {partitions} -> {topic.partitions}")
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic.name)
    current = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
    drifted = {k: v for k, v in topic.config.items() if k not in current or current[k].value != v}
    if drifted:
        resource = ConfigResource(
            ConfigResource.Type.TOPIC, topic.name,
            incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in drifted.items()],
        )
        try:
            admin.incremental_alter_configs([resource], request_timeout=timeout)[resource].result()
        except KafkaException as exc:
            raise TopicError(f"cannot update configs {sorted(drifted)} of topic {topic.name} ({exc.args[0].str()})") from None
        actions.append("configs updated: " + ", ".join(f"{k}={v}" for k, v in sorted(drifted.items())))
    return TopicChange(topic.name, "; ".join(actions) or "unchanged")
