"""Kafka producer hook: the provider's connection handling plus the pipeline's delivery guarantees."""

from __future__ import annotations

from typing import Any

from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook
from airflow.sdk.exceptions import AirflowFailException
from confluent_kafka import Producer

from citibikes.stream.publish import ProducerConfigError, make_producer


class PipelineProducerHook(KafkaProducerHook):
    """A ``KafkaProducerHook`` whose producer is idempotent, acks=all, compressed and time-bounded.

    Settings in the connection's extra (``bootstrap.servers``, security, ``linger.ms``, ...) win over
    the pipeline's defaults, so operators can tune a deployment without code changes; the guarantees
    (``enable.idempotence``, ``acks``, ``compression.type``) cannot be weakened: such an extra fails
    the task at once, without retries, naming the setting (a retry cannot fix a connection).
    """

    def _get_client(self, config: dict[str, Any]) -> Producer:
        try:
            return make_producer(**config)
        except ProducerConfigError as exc:
            raise AirflowFailException(f"connection {self.kafka_config_id}: {exc}") from None
