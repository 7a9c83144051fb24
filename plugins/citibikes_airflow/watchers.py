"""The ``citibikes.station_alerts`` Asset, watched on the alerts topic by the Kafka provider's trigger.

An :class:`~airflow.sdk.AssetWatcher` runs a ``KafkaMessageQueueTrigger`` in the triggerer; each
alert that :func:`worth_a_run` lets through becomes an asset event (the alert is its payload) and
the DAGs scheduled on the Asset run. The trigger reads the topic through the dedicated connection
:data:`ALERTS_WATCHER_CONN_ID` (``AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER``, made by
:func:`citibikes.stack.airflow.alerts_watcher_connection`): its own consumer group, so its offsets
are its own, starting at the end of the topic (``auto.offset.reset=latest``) when new: a run lists
the current state anyway, and replaying a month of old alerts would only queue runs.

``poll_interval=0``: the provider's trigger sleeps ``poll_interval`` after *every* message its
function lets pass, not only at the end of the log (apache-kafka 2.1.0,
``AwaitMessageTrigger.run``), so the default 5 s would read 12 alerts a minute and fall behind a
busy system; waiting for messages is the consumer's ``poll(poll_timeout)`` already.
"""

from __future__ import annotations

from typing import Any

import msgspec
from airflow.providers.apache.kafka.triggers.msg_queue import KafkaMessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher

from citibikes.config import Settings, load_settings
from citibikes.live import alerts

ALERTS_WATCHER_CONN_ID = "citibikes_alerts_watcher"


def worth_a_run(message: Any) -> dict[str, Any] | None:
    """The alert, as the asset event's payload, when it changes the to-do list: an outage passed
    its threshold, or a long outage (one past its threshold) closed. None for the rest (episodes
    opening, short ones closing, anything unreadable): the trigger commits it and reads on."""
    value = message.value()
    if value is None:
        return None
    try:
        alert = alerts.decode(value)
    except msgspec.DecodeError:
        return None
    if alert.event == "threshold" or (alert.event == "closed" and alert.duration_s >= alert.threshold_s):
        return msgspec.to_builtins(alert)
    return None


def station_alerts(settings: Settings | None = None) -> Asset:
    """``citibikes.station_alerts`` at ``kafka://<bootstrap>/<alerts topic>``, with its watcher."""
    settings = settings or load_settings()
    topic = settings.topics["alerts"].name
    trigger = KafkaMessageQueueTrigger(
        topics=[topic],
        kafka_config_id=ALERTS_WATCHER_CONN_ID,
        apply_function=f"{__name__}.worth_a_run",
        poll_timeout=1,
        poll_interval=0,
    )
    return Asset(name="citibikes.station_alerts", uri=f"kafka://{settings.kafka.bootstrap}/{topic}", group="citibikes",
                 watchers=[AssetWatcher(name="station_alerts", trigger=trigger)])
