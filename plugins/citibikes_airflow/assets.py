"""The lake's tables as Airflow Assets, so downstream DAGs run when the ingest DAG lands data.

The ingest DAG's ``write`` task declares the alias :data:`LAKE_WRITES` as its outlet and adds an
event, through it, only for the tables that got files in that run (:data:`TABLE_ASSETS`): a
downstream DAG scheduled on :data:`STATION_STATUS` runs when new status data landed, not every minute.
The catalog DAG, scheduled on any of them, emits :data:`CATALOG` once the catalog knows the new data.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

from citibikes.config import load_settings


def lake_asset(table: str, lake_uri: str | None = None) -> Asset:
    """``citibikes.<table>``, located at the table's folder in the configured lake."""
    root = (lake_uri or load_settings().lake_uri).rstrip("/")
    if "://" not in root:
        root = f"file://{root}"
    folder = "pipeline_runs" if table == "pipeline_runs" else f"curated/{table}"
    return Asset(name=f"citibikes.{table}", uri=f"{root}/{folder}", group="citibikes")


STATION_STATUS = lake_asset("station_status")
STATION_INFORMATION = lake_asset("station_information")
PIPELINE_RUNS = lake_asset("pipeline_runs")

LAKE_WRITES = AssetAlias("citibikes.lake_writes", group="citibikes")
"""The ``write`` task's outlet: each run adds events to the tables it wrote (``outlet_events[LAKE_WRITES].add``)."""
TABLE_ASSETS = {"station_status": STATION_STATUS, "station_information": STATION_INFORMATION,
                "pipeline_runs": PIPELINE_RUNS}
"""Lake table name -> Asset (the quarantine table has none)."""

CATALOG = Asset(name="citibikes.catalog", uri="citibikes://catalog", group="citibikes")
"""The lake's catalog (DuckDB file or Glue database) is up to date: what the checks DAG is scheduled on."""
