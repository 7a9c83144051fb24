"""Who may do what on a secured cluster: each login gets its own topics and nothing else.

- the pipeline writes the feed topics (status, descriptions, quarantine) and reads the alerts with the
  alerts DAG's consumer group (its AssetWatcher);
- the live consumer reads the status and description topics with its own groups (``citibikes-live``,
  and the test mode's ``citibikes-live-test-*``) and writes alerts and dead letters.

Everything else (creating topics, ACLs, reading any topic from the CLI) is the administrator's, a
super user of the broker. Creating an ACL that exists changes nothing, so :func:`ensure_acls` runs on
every ``up``.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from citibikes.config import TopicConfig
from citibikes.stream.topics import TopicError

PIPELINE_WRITES = ("station_status", "station_information", "quarantine")
CONSUMER_READS = ("station_status", "station_information")
CONSUMER_WRITES = ("alerts", "dead_letter")


def _allow(principal: str, kind: ResourceType, name: str, operation: AclOperation,
           pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(kind, name, pattern, f"User:{principal}", "*", operation, AclPermissionType.ALLOW)


def project_acls(topics: Mapping[str, TopicConfig], *, pipeline: str, consumer: str, consumer_group: str,
                 watcher_group: str) -> list[AclBinding]:
    """The ACLs of the pipeline's and the consumer's logins (a topic's WRITE or READ implies DESCRIBE)."""
    topic = ResourceType.TOPIC
    return [
        *(_allow(pipeline, topic, topics[key].name, AclOperation.WRITE) for key in PIPELINE_WRITES),
        _allow(pipeline, topic, topics["alerts"].name, AclOperation.READ),
        _allow(pipeline, ResourceType.GROUP, watcher_group, AclOperation.READ),
        *(_allow(consumer, topic, topics[key].name, AclOperation.READ) for key in CONSUMER_READS),
        *(_allow(consumer, topic, topics[key].name, AclOperation.WRITE) for key in CONSUMER_WRITES),
        _allow(consumer, ResourceType.GROUP, consumer_group, AclOperation.READ, ResourcePatternType.PREFIXED),
    ]


def ensure_acls(admin: AdminClient, bindings: Iterable[AclBinding], timeout: float = 15.0) -> int:
    """Create ``bindings`` on the broker (an existing one is left as it is) and wait until the broker
    enforces them (creation returns before the authorizer has them); returns how many were asked for."""
    bindings = list(bindings)
    for binding, future in admin.create_acls(bindings, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicError(f"cannot create the ACL {binding.operation.name} on {binding.name} for {binding.principal} "
                             f"({exc.args[0].str()}); the login needs to be a super user of the broker "
                             f"(CITIBIKES_KAFKA_USERNAME)") from None
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ANY)
    deadline = time.monotonic() + timeout
    while not set(bindings) <= set(admin.describe_acls(everything, request_timeout=timeout).result()):
        if time.monotonic() > deadline:
            raise TopicError(f"the broker did not apply the project's ACLs within {timeout:.0f} s; see its log")
        time.sleep(0.1)
    return len(bindings)
