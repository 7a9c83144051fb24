"""The alerts DAG's work, without Airflow: the live state -> the rebalancing to-do lists -> the lake.

:func:`plan` reads the live state store the consumer keeps (the open episodes first, then every
station: an episode that closed in between is then visibly closed, see
:mod:`citibikes.live.rebalance`), makes each system's to-do list with its outage threshold and
keeps the lists that *changed* since the last ones sent: a different set of outages (a station
passed its threshold, a long outage ended), not merely longer durations. Those go to the lake's
``rebalancing`` table and are returned as plain data (XCom) for the notifier; once it has sent
them, :func:`mark_sent` records them (``_state/rebalancing/sent.json`` in the lake).

Why only changes: the provider's trigger fires one alert per start, so a burst of alerts becomes
a run every few seconds (measured on the replay feed with a 1-minute threshold: an asset event
every 2.0 s, runs of 5 s), nearly all about outages an earlier run of the burst already listed;
sending every run's list sent 43 lists of 208 to 215 outages in 3 minutes, sending changes sent 3
lists out of 20 runs (the state changes once a minute, with each ingest). A list that could not
be sent is sent by the next run, as nothing recorded it.

:func:`describe` turns the lists into the lines a person reads.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec

from citibikes.config import Settings
from citibikes.lake import Lake
from citibikes.live import rebalance
from citibikes.live.store import LiveStore

SENT_STATE = "rebalancing/sent.json"
"""System -> digest of the outages of the last list sent for it."""


def plan(settings: Settings, lake: Lake, run_id: str, run_after: float) -> dict[str, Any]:
    """The to-do lists that changed since the last ones sent, landed in the lake under ``run_id``.

    Returns ``run_id``, ``run_after`` (POSIX s), ``systems`` (each changed system's clock and its
    outages by kind; empty when nothing changed), ``outages`` (their rows of
    :class:`~citibikes.live.rebalance.Outage` as dicts) and the lake ``files`` written.
    """
    store = LiveStore.open(settings.live_store, readonly=True)
    try:
        episodes = store.open_episodes()
        stations = store.stations()
    finally:
        store.close()
    outages = msgspec.to_builtins(rebalance.todo(stations, episodes,
                                                 {s.system_id: s.outage_threshold_s for s in settings.systems}))
    clocks = rebalance.clocks(stations)
    sent = _sent(lake)
    changed = [system for system in sorted(clocks) if _digest(outages, system) != sent.get(system, _digest([], system))]
    outages = [o for o in outages if o["system_id"] in changed]
    kinds = Counter((o["system_id"], o["kind"]) for o in outages)
    return {
        "run_id": run_id,
        "run_after": run_after,
        "systems": {system: {"as_of": clocks[system], "empty": kinds[system, "empty"], "full": kinds[system, "full"]}
                    for system in changed},
        "outages": outages,
        "files": lake.write_rebalancing(run_id, run_after, outages, systems=changed),
    }


def mark_sent(lake: Lake, todo: dict[str, Any]) -> None:
    """Record the lists of ``todo`` (a :func:`plan` result) as sent: the next run keeps only changes to them."""
    sent = _sent(lake)
    sent.update({system: _digest(todo["outages"], system) for system in todo["systems"]})
    lake.write_state(SENT_STATE, json.dumps(sent, sort_keys=True).encode())


def _sent(lake: Lake) -> dict[str, str]:
    data = lake.read_state(SENT_STATE)
    return json.loads(data) if data else {}


def _digest(outages: list[dict[str, Any]], system: str) -> str:
    """What identifies a system's list: its outages (station, kind, start), not their durations."""
    keys = sorted((o["station_id"], o["kind"], o["started"]) for o in outages if o["system_id"] == system)
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()


def describe(todo: dict[str, Any]) -> list[str]:
    """The to-do lists as lines: one per system, then one per outage with its helpers."""
    if not todo["systems"]:
        return ["no to-do list changed since the last ones sent"]
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
