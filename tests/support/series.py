"""Hand-built GBFS series for the analytics tests: feed files written to a folder, landed by ``citibikes
backfill``'s code path, catalogued, and measured through the catalog."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from support.trino import TrinoServer

from citibikes.analytics.engines import DuckDBEngine, SqlEngine
from citibikes.analytics.measures import Analytics, Period, measure
from citibikes.catalog import connect, refresh_catalog
from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.replay.backfill import backfill

NEW_YORK = ZoneInfo("America/New_York")
FT_PER_DEG_LAT = 364_000.0
"""About: a degree of latitude in feet (enough to place hand-built stations a known distance apart)."""


def local(text: str) -> int:
    """POSIX seconds of a New York local time written ``2026-03-02 09:00:00``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=NEW_YORK).timestamp())


@dataclass
class Series:
    """A system's stations and snapshots; each snapshot maps station ids to their record (fields over the defaults)."""

    stations: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    information: dict[int, list[str]] = field(default_factory=dict)
    """station_information files: time -> the stations described (default: all, at the first snapshot)."""

    def station(self, station_id: str, north_ft: float = 0.0, east_ft: float = 0.0, **fields: Any) -> None:
        lat = 40.75 + north_ft / FT_PER_DEG_LAT
        lon = -73.98 + east_ft / (FT_PER_DEG_LAT * 0.7576)  # cos(40.75 degrees)
        self.stations[station_id] = {"station_id": station_id, "name": station_id.upper(), "lat": lat, "lon": lon,
                                     "capacity": 20, **fields}

    def at(self, when: str | int, **records: dict[str, Any] | int) -> None:
        """A snapshot at ``when`` (local text or POSIX): each station its fields, or just its bikes as an int (a
        second record of a station in the feed: another key whose fields give its ``station_id``)."""
        at = local(when) if isinstance(when, str) else when
        self.snapshots.setdefault(at, {}).update(
            {station: {"num_bikes_available": r} if isinstance(r, int) else r for station, r in records.items()})

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for at, described in (self.information or {min(self.snapshots): list(self.stations)}).items():
            _dump(folder / f"station_information_{at}.json", at, [self.stations[s] for s in described])
        for at, records in self.snapshots.items():
            stations = []
            for station_id, fields in records.items():
                capacity = self.stations[fields.get("station_id", station_id)]["capacity"]  # a copy: "id " -> "id"
                record = {"station_id": station_id, "num_bikes_available": 5, "num_bikes_disabled": 0,
                          "num_docks_disabled": 0, "is_installed": True, "is_renting": True, "is_returning": True,
                          "last_reported": at, **fields}
                if "num_docks_available" not in fields and isinstance(record["num_bikes_available"], int):
                    record["num_docks_available"] = max(capacity - record["num_bikes_available"] -
                                                        record["num_bikes_disabled"], 0)
                stations.append(record)
            _dump(folder / f"station_status_{at}.json", at, stations)
        return folder


def _dump(path: Path, at: int, stations: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"last_updated": at, "ttl": 60, "version": "2.3", "data": {"stations": stations}}))


def measured(folder: Path, work: Path, first: date, last: date, system_id: str = "test",
             trino: TrinoServer | None = None) -> Analytics:
    """The folder's snapshots backfilled into a new lake under ``work``, catalogued, and measured for the period:
    through the DuckDB catalog, or on ``trino`` (Athena's engine) over the lake's tables as Glue has them."""
    settings = load_settings({"CITIBIKES_LAKE_URI": str(work / "lake"), "CITIBIKES_STATE_DIR": str(work / "state")})
    lake = open_lake(settings.lake_uri)
    report = backfill(folder, system_id, settings=settings, lake=lake, workers=1)
    assert not report.failed, report.errors
    period = Period(system_id, "America/New_York", first, last)
    if trino is not None:
        schema = f"lake_{uuid.uuid4().hex[:12]}"
        trino.register(work / "lake", schema)
        return measure(SqlEngine(trino.connect(), "trino", schema), period)
    refresh_catalog(lake, settings.catalog_path)
    con = connect(settings.catalog_path)
    try:
        return measure(DuckDBEngine(con), period)
    finally:
        con.close()
