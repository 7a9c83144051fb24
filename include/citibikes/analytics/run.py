"""One analytics run, as ``citibikes analytics`` and the ``citibikes_analytics`` DAG do it: which system and
period, its time zone, the measures from the catalog, the report into the lake, the lines a person reads."""

from __future__ import annotations

import json
from datetime import date, timedelta

from citibikes.analytics.engines import Engine
from citibikes.analytics.errors import AnalyticsError, NoData
from citibikes.analytics.measures import Analytics, Period, measure
from citibikes.analytics.report import percent, report_files
from citibikes.config import Settings, SystemConfig
from citibikes.errors import first_line
from citibikes.gbfs.errors import FeedError
from citibikes.lake import Lake

REPORT = "analytics"
DEFAULT_DAYS = 30
"""Without a first day, the period is at most this many days, to the last (a month of Citi Bike takes about 28 s
and 5.4 GB: memory grows with the period)."""


def choose_system(settings: Settings, system_id: str | None) -> SystemConfig:
    """The system asked for, or the only enabled one."""
    enabled = [s for s in settings.systems if s.enabled]
    if system_id is None:
        if len(enabled) == 1:
            return enabled[0]
        raise AnalyticsError(f"{len(enabled)} systems are enabled; choose one with --system "
                             f"({', '.join(s.system_id for s in enabled)})")
    for system in settings.systems:
        if system.system_id == system_id:
            return system
    raise AnalyticsError(f"system {system_id!r} is not in the systems file {settings.systems_file}; "
                         f"use one of {', '.join(s.system_id for s in settings.systems)}")


def system_timezone(system: SystemConfig) -> str:
    """The system's time zone: the systems file's ``timezone``, else its feed's system_information."""
    if system.timezone:
        return system.timezone
    from citibikes.gbfs.client import GbfsClient

    fix = f"set timezone: for {system.system_id} in the systems file (e.g. America/New_York)"
    try:
        with GbfsClient(system) as client:
            body = client.fetch("system_information", force=True).body or b"{}"
        timezone = json.loads(body).get("data", {}).get("timezone")
    except (FeedError, ValueError, AttributeError) as exc:
        raise AnalyticsError(f"{system.system_id}: no timezone in the systems file and its system_information could "
                             f"not be read ({first_line(exc)}); {fix}") from exc
    if not isinstance(timezone, str) or not timezone:
        raise AnalyticsError(f"{system.system_id}: no timezone in the systems file nor in its system_information; {fix}")
    return timezone


def data_period(engine: Engine, system_id: str, timezone: str) -> tuple[date, date]:
    """The local days of the system's first and last station_status snapshot in the catalog."""
    first, last = engine.rows("SELECT CAST(min(last_updated) AT TIME ZONE $tz AS DATE), "
                              "CAST(max(last_updated) AT TIME ZONE $tz AS DATE) FROM station_status WHERE system = $s",
                              {"tz": timezone, "s": system_id})[0]
    if first is None:
        raise NoData(f"the catalog has no station_status of {system_id}; ingest or backfill it, then refresh "
                             "the catalog (citibikes catalog --refresh)")
    return first, last


def run(engine: Engine, lake: Lake, system: SystemConfig, first: date | None = None,
        last: date | None = None) -> tuple[Analytics, list[str]]:
    """Measure the period and write its report; returns the figures and the report's lake keys. Without ``last``, the
    period ends on the last day the catalog holds; without ``first``, it starts :data:`DEFAULT_DAYS` days before its
    end, or on the first day the catalog holds if later."""
    timezone = system_timezone(system)
    if first is None or last is None:
        known = data_period(engine, system.system_id, timezone)
        last = last or known[1]
        first = first or max(known[0], last - timedelta(days=DEFAULT_DAYS - 1))
    if first > last:
        raise AnalyticsError(f"the period starts ({first}) after it ends ({last}); choose a first day on or before "
                             "the last")
    analytics = measure(engine, Period(system.system_id, timezone, first, last))
    if not analytics.system.snapshots:
        raise NoData(f"the catalog has no station_status of {system.system_id} from {first} to {last} "
                             f"({timezone}); choose days it holds")
    keys = lake.write_report(REPORT, system.system_id, f"{first}_{last}", report_files(analytics))
    return analytics, keys


def lines(analytics: Analytics) -> list[str]:
    """The system-wide figures as a person reads them."""
    s = analytics.system
    return [
        f"{s.system_id} from {s.first} to {s.last} ({s.timezone}): {s.snapshots:,} snapshots, {s.stations:,} stations, "
        f"{s.records:,} station records counted ({s.quarantined_counted:,} quarantined by the pipeline, "
        f"{s.skipped:,} skipped: counts unreadable)",
        f"share of time unusable: mean {percent(s.unusable_share_mean)}, median {percent(s.unusable_share_median)} "
        f"({s.window_snapshots:,} snapshots in 07:00-10:59 and 16:00-21:59)",
        f"broken-bike share: median {percent(s.broken_median)}, mean {percent(s.broken_mean)}",
        f"empty/full episodes (06:00-23:59): {s.episodes:,}, the longest {s.longest_h:.2f} h",
        f"rebalancing standard ({s.network_stations:,} stations in the network, {s.projection}): peak "
        f"{s.peak_instances:,} violations ${s.peak_fines:,}, off-peak {s.off_peak_instances:,} violations "
        f"${s.off_peak_fines:,}, total ${s.fines:,}",
    ]
