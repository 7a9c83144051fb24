"""
### citibikes_alerts: a rebalancing to-do list whenever an outage passes its threshold

**Event-driven.** Scheduled on the Asset `citibikes.station_alerts`, which an `AssetWatcher`
watches with the Kafka provider's `KafkaMessageQueueTrigger` on `bikes-station-alerts` (the live
consumer's alerts). The trigger runs in the triggerer, reads the topic as its own consumer group
(connection `citibikes_alerts_watcher`) and turns into an asset event only the alerts that change
the to-do list: `threshold` (an empty or full episode passed its system's `outage_threshold_min`)
and `closed` of an episode that had passed it. `opened` and short `closed` alerts are read and
skipped (`citibikes_airflow.watchers.worth_a_run`).

| task | what it does |
|---|---|
| `plan` | reads the live state store (`CITIBIKES_LIVE_STORE`) and makes each system's list: every open episode at least its threshold long with the 3 nearest stations that could help (for an empty station: renting, 3+ bikes; for a full one: returning, 3+ free docks; never one in the same kind of episode), with haversine distances. Keeps the lists whose set of outages changed since the last ones sent (a burst of alerts about outages already listed sends nothing new) and writes them to the lake table `curated/rebalancing/system=/date=/<run id>.parquet` (a rerun replaces its file) |
| `notify` | sends the changed lists: the task log plus one JSON line in `<state_dir>/alerts/rebalancing-<date>.jsonl`, or, with `CITIBIKES_ALERTS_WEBHOOK_CONN=<http connection id>`, a JSON POST to that connection's URL (HTTP provider's `HttpNotifier`); then records them as sent. Skipped when no list changed |

**Why the watcher is reliable enough here** (read before changing the schedule). The alerts only
wake the DAG: each run lists the *current* state of the live store, which the consumer commits
before it sends an alert (outbox), so any run started after an alert sees what the alert said.
Then the known weak spots of event-driven scheduling cost at most a delay, never a lost or wrong list:

- apache/airflow#56050 (open, its cause still in 3.3.2): with `max_active_runs=1`, an alert that
  arrives while a run is going may get no run until a later alert does; any run started after it
  lists its outage. One run at a time keeps the lists (and webhook calls) in order, so
  `max_active_runs=1` is kept and the delay accepted.
- apache/airflow#64205: the trigger commits a message's offset before the triggerer has saved its
  event, so a crash in between loses one wake-up (asset events and offsets can drift apart); the
  next threshold alert brings the whole list. An alert delivered twice wakes a run that finds no
  list changed and sends nothing. (2.1.0's `KafkaSharedStreamTrigger` commits only after the event is saved,
  but fires on every message unless subclassed: not needed while a lost wake-up is only a delay.)
- apache/airflow#49857: Airflow registers a watcher only while a DAG scheduled on its asset is
  unpaused, so a paused DAG's alerts stay in Kafka (30 days) and, the group's offsets not having
  moved, are read after unpausing. An event created just before a pause may wait for the next one.
- The provider's trigger fires one event and ends; the triggerer starts it again (a new consumer
  joins the group), so a burst of alerts becomes a run every few seconds, each woken by one or two
  alerts. `plan` sends only lists whose outages changed, so those runs repeat nothing.
- A new consumer group starts at the end of the topic (`auto.offset.reset=latest`): old alerts are
  not replayed as a burst of runs. The provider's trigger sleeps `poll_interval` after every
  skipped message, so it is 0 (waiting is `poll(poll_timeout=1)`).

A deferrable sensor would need a run already waiting, i.e. a schedule, and gains nothing here.
Logic: `include/citibikes/rebalancing.py` (the step), `include/citibikes/live/rebalance.py` (the
list), `plugins/citibikes_airflow/notifications/rebalancing.py` (the notifier).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from citibikes import rebalancing
from citibikes.config import load_settings
from citibikes_airflow.hooks.lake import LakeHook
from citibikes_airflow.notifications.rebalancing import rebalancing_notifier
from citibikes_airflow.watchers import station_alerts

STATION_ALERTS = station_alerts()

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(minutes=5),
}


@dag(
    dag_id="citibikes_alerts",
    schedule=[STATION_ALERTS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=15),
    default_args=DEFAULT_ARGS,
    tags=["citibikes", "alerts", "kafka", "event-driven"],
    doc_md=__doc__,
)
def citibikes_alerts():
    @task
    def plan() -> dict:
        """List the current long outages and their nearest helpers; land the lists that changed in the lake."""
        context = get_current_context()
        todo = rebalancing.plan(load_settings(), LakeHook().get_lake(), context["run_id"],
                                context["dag_run"].run_after.timestamp())
        events = context["triggering_asset_events"].get(STATION_ALERTS, [])
        todo["triggered_by"] = [event.extra["payload"] for event in events if "payload" in event.extra]
        return todo

    @task
    def notify(todo: dict) -> None:
        """Send the lists that changed (task log plus a file, or the webhook configured); record them as sent."""
        if not todo["systems"]:
            raise AirflowSkipException("no to-do list changed since the last ones sent")
        rebalancing_notifier(todo, load_settings()).notify(get_current_context())
        rebalancing.mark_sent(LakeHook().get_lake(), todo)

    notify(plan())


citibikes_alerts()
