"""The alerts DAG's work, without Airflow: the live state -> the rebalancing to-do list -> the lake.

:func:`plan` reads the live state store the consumer keeps (the open episodes first, then every
station: an episode that closed in between is then visibly closed, see
:mod:`citibikes.live.rebalance`), makes the to-do list with each system's outage threshold, writes
it to the lake's ``rebalancing`` table and returns it as plain data (XCom) for the notifier;
:func:`describe` turns it into the lines a person reads. The list is made from the state, not from
the alerts that woke the run, so a run that missed, merged or repeated alerts still lists every
current long outage.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec

from citibikes.config import Settings
from citibikes.lake import Lake
from citibikes.live import rebalance
from citibikes.live.store import LiveStore


def plan(settings: Settings, lake: Lake, run_id: str, run_after: float) -> dict[str, Any]:
    """The to-do list of every system in the live store, landed in the lake under ``run_id``.

    Returns ``run_id``, ``run_after`` (POSIX s), ``systems`` (each system's clock and its outages
    by kind), ``outages`` (the rows of :class:`~citibikes.live.rebalance.Outage` as dicts) and the
    lake ``files`` written.
    """
    store = LiveStore.open(settings.live_store, readonly=True)
    try:
        episodes = store.open_episodes()
        stations = store.stations()
    finally:
        store.close()
    outages = rebalance.todo(stations, episodes, {s.system_id: s.outage_threshold_s for s in settings.systems})
    clocks = rebalance.clocks(stations)
    files = lake.write_rebalancing(run_id, run_after, outages, systems=clocks)
    kinds = Counter((o.system_id, o.kind) for o in outages)
    return {
        "run_id": run_id,
        "run_after": run_after,
        "systems": {system: {"as_of": clock, "empty": kinds[system, "empty"], "full": kinds[system, "full"]}
                    for system, clock in sorted(clocks.items())},
        "outages": msgspec.to_builtins(outages),
        "files": files,
    }


def describe(todo: dict[str, Any]) -> list[str]:
    """The to-do list as lines: one per system, then one per outage with its helpers."""
    lines = []
    for system, summary in todo["systems"].items():
        lines.append(f"{system}: {summary['empty']} empty and {summary['full']} full stations past their outage "
                     f"threshold as of {_utc(summary['as_of'])}")
        for row in (r for r in todo["outages"] if r["system_id"] == system):
            verb, unit = ("bikes from", "bikes") if row["kind"] == "empty" else ("room at", "docks")
            helpers = ", ".join(f"{h['station_id']} {h['name'] or '?'} ({h['distance_m']} m, {h['available']} {unit})"
                                for h in row["helpers"]) or "no station nearby can help"
            lines.append(f"  {row['kind']} {row['station_id']} {row['name'] or '?'} for {row['duration_s'] // 60} min: "
                         f"{verb} {helpers}")
    return lines


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
