"""The fault matrix's proof: nothing lost, nothing doubled, from the feed through Kafka to the lake and the live state.

- every station_status message the broker holds is in the lake's ``station_status`` once, with the same
  counts; a message sent twice (a retry in a new producer session) carries the same ``message_id`` and
  value, which the consumer drops;
- the lake holds no observation (station, ``last_updated``) twice;
- every station of every document the feed served, newer than any it served before, is in the lake:
  in ``station_status`` or, if it failed validation, in ``quarantine``;
- the live state of each station is its newest message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from citibikes.lake import Lake
from citibikes.live.store import LiveStore


@dataclass(frozen=True)
class Ledger:
    messages: int
    resent: int
    """Messages in Kafka a second time (same ``message_id``)."""
    lake_rows: int
    quarantined: int
    served_observations: int
    live_stations: int


def check(messages: list[dict[str, Any]], lake: Lake, served: list[dict[str, Any]], store: LiveStore,
          system_id: str) -> Ledger:
    status = [m for m in messages if m["value"]["system_id"] == system_id]
    values: dict[str, Any] = {}
    for message in status:
        first = values.setdefault(message["headers"]["message_id"], message["value"])
        assert first == message["value"], f"one message_id, two values: {first} and {message['value']}"

    rows = lake.read_table("station_status").to_pylist() if lake.files("station_status") else []
    rows = [r for r in rows if r["system_id"] == system_id]
    observed = Counter((r["station_id"], int(r["last_updated"].timestamp())) for r in rows)
    doubled = [key for key, n in observed.items() if n > 1]
    assert not doubled, f"{len(doubled)} observations twice in the lake, e.g. {doubled[:3]}"
    by_key = {(r["station_id"], int(r["last_updated"].timestamp())): r for r in rows}
    for message in status:
        value = message["value"]
        row = by_key.get((value["station_id"], value["last_updated"]))
        assert row is not None, f"acknowledged but not in the lake: {value['station_id']} at {value['last_updated']}"
        assert (row["num_bikes_available"], row["num_docks_available"]) == (
            value["num_bikes_available"], value["num_docks_available"]), value

    quarantine = lake.read_table("quarantine").to_pylist() if lake.files("quarantine") else []
    quarantined = {(q["station_id"], int(q["last_updated"].timestamp())) for q in quarantine
                   if q["system_id"] == system_id and q["feed"] == "station_status"}
    newest, expected = None, 0
    for doc in served:
        if newest is not None and doc["last_updated"] <= newest:
            continue  # not new: the pipeline may skip it
        newest = doc["last_updated"]
        for station in doc["data"]["stations"]:
            key = (station["station_id"], doc["last_updated"])
            expected += 1
            assert key in observed or key in quarantined, f"served but lost: {key}"

    latest: dict[str, dict[str, Any]] = {}
    for message in status:
        value = message["value"]
        if value["last_updated"] >= latest.get(value["station_id"], {}).get("last_updated", -1):
            latest[value["station_id"]] = value
    live = {s["station_id"]: s for s in store.stations(system_id)}
    assert set(live) == set(latest), "the live state and Kafka know different stations"
    for station_id, value in latest.items():
        state = live[station_id]
        assert (state["last_updated"], state["num_bikes_available"], state["num_docks_available"]) == (
            value["last_updated"], value["num_bikes_available"], value["num_docks_available"]), station_id
    return Ledger(len(values), len(status) - len(values), len(rows), len(quarantined), expected, len(live))
