"""The lake's tables as Airflow Assets, so downstream DAGs run when the ingest DAG lands data."""

from __future__ import annotations

from airflow.sdk import Asset

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
