"""Kafka producer hook: the provider's connection handling plus the pipeline's delivery guarantees."""

from __future__ import annotations

from typing import Any

from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook
from confluent_kafka import Producer

from citibikes.stream.publish import make_producer


class PipelineProducerHook(KafkaProducerHook):
    """A ``KafkaProducerHook`` whose producer is idempotent, acks=all, compressed and time-bounded.

    Settings in the connection's extra (``bootstrap.servers``, security, ...) win over the
    pipeline's defaults, so operators can tune a deployment without code changes.
    """

    def _get_client(self, config: dict[str, Any]) -> Producer:
        return make_producer(**config)
