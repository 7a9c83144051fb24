"""The Parquet lake: curated tables, quarantine, raw feeds, pipeline runs and the pipeline's state."""

from citibikes.lake.errors import LakeError
from citibikes.lake.store import Lake, lake_from_settings, open_lake
from citibikes.lake.tables import RunRecord

__all__ = ["Lake", "LakeError", "RunRecord", "lake_from_settings", "open_lake"]
