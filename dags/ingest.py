"""
### citibikes_ingest: every GBFS system, every minute

**fetch -> validate -> produce -> write -> report**, for every system listed in the systems file
(`CITIBIKES_SYSTEMS_FILE`, default `config/systems.yaml`, or `config/systems.replay.yaml` with
`CITIBIKES_FEED=replay`).

| task | what it does |
|---|---|
| `fetch` | discovery + `station_information` + `station_status` (+ `vehicle_types` when listed) of each system, concurrently (timeouts, retries with backoff, 429, conditional GET, ttl); new bodies are archived in the lake under `raw/` |
| `validate` | normalizes every GBFS version to one model and applies the quality rules (rejected records are quarantined with reason codes); selects what changed since the last run; stages the result in the lake |
| `produce` | publishes changed stations (and a full snapshot every 15 min) to `bikes-station-status`, station descriptions whose content changed to the compacted `bikes-station-information`, rejects to `bikes-quarantine`; one flush for all systems, after the steps Kafka did not acknowledge in earlier runs; any delivery failure fails (and retries) the task |
| `write` | curated Parquet (`curated/<table>/system=/date=/hour=`: every status observation, each new version of a station description), quarantine, and a row per system in `pipeline_runs`; runs after `produce` whatever its end: a step Kafka did not acknowledge (after the last retry) lands all the same, its run is recorded failed, and the next run sends it again first; a step an earlier run could not land (its lake write failed) lands first; an asset event for each of `citibikes.station_status`, `citibikes.station_information`, `citibikes.pipeline_runs` that got files this run (through the alias `citibikes.lake_writes`; `extra`: `rows`, rows per system) |
| `report` | one line per system; **fails when a system failed or is stale** (its station_status stopped advancing, or arrived older than 5 minutes), naming it and why, after the others landed |

A broken or slow system is isolated in every task: one whose feed, records, messages or lake
files fail is marked failed in that task and left out of the later ones, the others go on. A
task itself fails (and is retried) when the broker does not acknowledge the flush, or when
every system failed in `fetch`, `produce` or `write` (more likely an outage than broken data). A
downstream DAG scheduled on `citibikes.station_status` runs only when new status data landed.
Connections: `kafka_default` (Kafka), `citibikes_lake` (a folder or S3). Logic lives in
`include/citibikes/tasks.py` (one step of a system: `include/citibikes/ingest.py`); this file only wires it.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk import dag, get_current_context, task

from citibikes import tasks
from citibikes.config import load_settings
from citibikes.stream.publish import Publisher
from citibikes_airflow.assets import LAKE_WRITES, TABLE_ASSETS
from citibikes_airflow.hooks.kafka import PipelineProducerHook
from citibikes_airflow.hooks.lake import LakeHook

DEFAULT_ARGS = {
    "owner": "citibikes",
    "retries": 3,
    "retry_delay": timedelta(seconds=5),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=1),
    "execution_timeout": timedelta(minutes=3),
}


def _run_id() -> str:
    return get_current_context()["run_id"]


def _unless_all_failed(results: dict) -> dict:
    """A task's results, or an error (the task is retried) when every system failed in it: an outage."""
    if error := tasks.all_failed(results):
        raise RuntimeError(error)
    return results


@dag(
    dag_id="citibikes_ingest",
    schedule="* * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    default_args=DEFAULT_ARGS,
    tags=["citibikes", "ingest", "gbfs", "kafka"],
    doc_md=__doc__,
)
def citibikes_ingest():
    @task
    def fetch() -> dict:
        """Fetch every system; fail (and retry) only when no system could be fetched."""
        return _unless_all_failed(tasks.fetch(load_settings(), LakeHook().get_lake()))

    @task
    def validate(fetched: dict) -> dict:
        """Check each fetched system's new data against its state; stage the step in the lake."""
        return tasks.validate(load_settings(), LakeHook().get_lake(), _run_id(), fetched)

    @task
    def produce(validated: dict) -> dict:
        """Publish every system's changes with one flush; fail (and retry) if the broker did not acknowledge."""
        settings = load_settings()
        publisher = Publisher(PipelineProducerHook(kafka_config_id="kafka_default").get_producer(), settings.topics)
        return _unless_all_failed(tasks.produce(settings, LakeHook().get_lake(), publisher, validated))

    @task(outlets=[LAKE_WRITES], trigger_rule="all_done")
    def write(fetched: dict | None, validated: dict | None, produced: dict | None, *, outlet_events=None) -> dict:
        """Land each system's step in the lake, published or not (after produce's last retry, an unacknowledged
        step lands and waits to be sent by the next run); an asset event for each table that got files."""
        written = _unless_all_failed(
            tasks.write(load_settings(), LakeHook().get_lake(), _run_id(), fetched, validated, produced))
        for table, extra in tasks.landed(written).items():
            if table in TABLE_ASSETS:
                outlet_events[LAKE_WRITES].add(TABLE_ASSETS[table], extra=extra)
        return written

    @task(trigger_rule="all_done", retries=0)
    def report(fetched: dict | None, validated: dict | None, produced: dict | None, written: dict | None) -> list[str]:
        """One line per system; fail, naming them, when systems failed or are stale (after the others landed)."""
        lines, failed = tasks.report(
            load_settings(), LakeHook().get_lake(), _run_id(),
            {"fetch": fetched, "validate": validated, "produce": produced, "write": written},
        )
        for line in lines:
            print(line)
        if failed:
            raise AirflowFailException("systems failed this run: " + "; ".join(f"{s}: {r}" for s, r in failed.items()))
        return lines

    fetched = fetch()
    validated = validate(fetched)
    produced = produce(validated)
    written = write(fetched, validated, produced)
    report(fetched, validated, produced, written)


citibikes_ingest()
