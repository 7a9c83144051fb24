"""A lake for the data-quality checks, made by the pipeline: a backfill of a recorded archive three hours
ago, then minute runs of two systems up to a minute ago; and the ways the tests break it.

Every breakage goes through the lake's own writers (around the validation), and is meant to break
exactly one check.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench.archive import write_archive
from citibikes.config import Settings, load_settings
from citibikes.gbfs.model import QuarantinedRecord
from citibikes.lake import Lake, RunRecord, open_lake
from citibikes.lake.store import quarantine_file, status_file
from citibikes.replay.backfill import backfill
from support.pipeline_lake import pipeline_lake

SYSTEMS = ("citibike", "synth-01")


@dataclass
class ChecksLake:
    root: Path

    @property
    def env(self) -> dict[str, str]:
        """The settings' environment (lake, state, systems) for this lake."""
        return {"CITIBIKES_STATE_DIR": str(self.root / "state"), "CITIBIKES_LAKE_URI": str(self.root / "lake"),
                "CITIBIKES_SYSTEMS_FILE": str(self.root / "systems.yaml"),
                "CITIBIKES_PIPELINE_FILE": str(self.root / "pipeline.yaml")}

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    @property
    def lake(self) -> Lake:
        return open_lake(str(self.root / "lake"))

    def copy(self, folder: Path) -> ChecksLake:
        """The same lake in ``folder`` (to break it there), without a catalog yet."""
        for name in ("lake", "systems.yaml", "pipeline.yaml"):
            source = self.root / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
        return ChecksLake(folder)

    # -- breakages -------------------------------------------------------------------------------

    def newest_status_file(self, system: str) -> str:
        return max(k for k in self.lake.files("station_status", system) if "-" not in k.rsplit("/", 1)[1])

    def duplicate_a_file(self, system: str) -> str:
        """A minute file copied beside itself (a copy by hand, a sync tool's conflict copy)."""
        key = self.newest_status_file(system)
        copy = key.replace(".parquet", " (copy).parquet")
        shutil.copy(self.lake.storage.path(key), self.lake.storage.path(copy))
        return copy

    def rewrite_newest(self, system: str, column: str, row: int, value: object) -> str:
        """The newest minute file of ``system`` written again with one value changed."""
        lake = self.lake
        key = self.newest_status_file(system)
        table = lake.read_file(key, "station_status")
        values = table[column].to_pylist()
        values[row] = value
        table = table.set_column(table.schema.get_field_index(column), table.schema.field(column),
                                 pa.array(values, table.schema.field(column).type))
        last_updated = int(key.rsplit("/", 1)[1].removesuffix(".parquet"))
        lake.write_files([status_file(system, table, last_updated)])
        return key

    def fail_a_run(self, system: str) -> None:
        self.lake.write_runs([RunRecord(run_id="manual__broken-run", system_id=system, started_at=time.time() - 30,
                                        finished_at=time.time() - 29, outcome="failed",
                                        error="fetch failed: station_status: HTTP 503")])

    def quarantine_many(self, system: str, records: int) -> None:
        """``records`` rejected status records of the newest snapshot (a feed gone bad)."""
        key = self.newest_status_file(system)
        last_updated = int(key.rsplit("/", 1)[1].removesuffix(".parquet"))
        rejected = [QuarantinedRecord(system_id=system, feed="station_status", station_id=f"bad-{n}",
                                      reasons=["negative_count:num_docks_available"], raw="{}",
                                      last_updated=last_updated, fetched_at=last_updated + 1.0) for n in range(records)]
        self.lake.write_files([quarantine_file(system, "station_status", rejected, last_updated)])

    def observations(self, system: str) -> int:
        table = self.lake.read_table("station_status", system)
        return pc.count(table["station_id"]).as_py()


def checks_lake(folder: Path, *, minutes: int = 3, stale: str | None = None) -> ChecksLake:
    """Backfill 6 snapshots (5-20 minutes apart) of Citi Bike from three hours ago, then ``minutes``
    minute runs of both systems ending a minute ago; with ``stale``, that system's minute runs stop
    after the first while the other's go on to a minute ago."""
    now = time.time()
    pipeline = pipeline_lake(folder, SYSTEMS, start=now - 60 * (minutes + 1) - (1500 if stale else 0))
    try:
        archive = folder / "archive" / "citibike"
        write_archive(archive, 6, seed=5, start=int(now) - 3 * 3600, information_changes=1)
        report = backfill(archive, "citibike", settings=pipeline.settings, lake=pipeline.lake, workers=1)
        assert report.processed == 6 and not report.failed, report.errors
        pipeline.minute()
        if stale:
            others = [s for s in SYSTEMS if s != stale]
            pipeline.settings = load_settings({**ChecksLake(folder).env, "CITIBIKES_SYSTEMS_FILE": str(
                _systems_file(folder / "others.yaml", folder / "systems.yaml", others))})
            pipeline.clock.now += 1500
        for _ in range(minutes - 1):
            pipeline.minute()
    finally:
        pipeline.close()
    return ChecksLake(folder)


def _systems_file(path: Path, source: Path, systems: list[str]) -> Path:
    """``source``'s systems file with only ``systems``."""
    import yaml

    doc = yaml.safe_load(source.read_text())
    doc["systems"] = [s for s in doc["systems"] if s["id"] in systems]
    path.write_text(yaml.safe_dump(doc))
    return path
