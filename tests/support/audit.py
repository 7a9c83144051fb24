"""An independent computation of the service analytics from the raw snapshot files, in plain Python.

Written from the issue's definitions, apart from :mod:`citibikes.analytics` (no SQL, no shared code but the
projection library): every status file paired with the latest information file at or before it, every
record counted whatever its quality verdict unless its counts or flags cannot be read or it repeats a
station of its feed, and the whole of each series walked by its own episode machine (no row left out).
The tests compare its figures with :func:`citibikes.analytics.measures.measure` on the same files replayed
through ``citibikes backfill``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, time, timedelta, date
from pathlib import Path
from statistics import median
from typing import Any
from zoneinfo import ZoneInfo

from pyproj import CRS, Transformer

GAP_S = 2400


def _flag(value: Any) -> bool | None:
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    return None


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**31 else None


def read_folder(folder: Path) -> tuple[list[tuple[int, list[dict]]], list[tuple[int, list[dict]]]]:
    """(last_updated, stations) of every status file and every information file, oldest first."""
    status, information = [], []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        stations = doc["data"]["stations"]
        (information if "station_information" in path.name else status).append((doc["last_updated"], stations))
    return sorted(status, key=lambda s: s[0]), sorted(information, key=lambda s: s[0])


def walk(rows: list[tuple[int, int | None, int | None, bool, bool]]) -> list[int]:
    """Durations of the closed episodes of one time-ordered series of (time, bikes, docks, renting, returning)."""
    durations = []
    empty = full = None
    for index, (at, bikes, docks, renting, returning) in enumerate(rows):
        if index == 0:
            continue
        opened = False
        if full is None and docks == 0 and returning:
            full, opened = at, True
        if empty is None and bikes == 0 and renting:
            empty, opened = at, True
        if opened:
            continue
        before = rows[index - 1][0]
        if at - before > GAP_S:
            durations += [before - start for start in (empty, full) if start is not None]
            empty = full = None
            continue
        if full is not None and docks != 0:
            durations.append(at - full)
            full = None
        if empty is not None and bikes != 0:
            durations.append(at - empty)
            empty = None
    return durations


def audit(folder: Path, system_id: str, timezone: str, first: date, last: date) -> dict[str, Any]:
    """Every figure of the period: ``{"system": {...}, "stations": {station_id: {...}}}``."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(first, time(), zone).timestamp()
    end = datetime.combine(last + timedelta(days=1), time(), zone).timestamp()
    status_files, information_files = read_folder(folder)
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    feeds = set()
    first_position: dict[str, tuple[float, float]] = {}
    names: dict[str, str] = {}
    for information_time, stations in information_files:
        if information_time < end:
            for s in stations:
                first_position.setdefault(s["station_id"], (s["lat"], s["lon"]))
                names[s["station_id"]] = s["name"]
    for at, stations in status_files:
        if not start <= at < end:
            continue
        current = [info for t, info in information_files if t <= at]
        if not current:
            continue
        described = {s["station_id"]: s for s in current[-1]}
        seen = set()
        for record in stations:
            station_id = record.get("station_id")
            if station_id not in described:
                continue
            feeds.add(at)
            info = described[station_id]
            bikes, docks = _count(record.get("num_bikes_available")), _count(record.get("num_docks_available"))
            renting, returning = _flag(record.get("is_renting")), _flag(record.get("is_returning"))
            virtual = info.get("is_virtual_station") is True
            if (station_id in seen or bikes is None or renting is None or returning is None
                    or (docks is None and not (virtual and record.get("num_docks_available") is None))):
                skipped[station_id] += 1
                seen.add(station_id)
                continue
            seen.add(station_id)
            local = datetime.fromtimestamp(at, zone)
            records[station_id].append({"at": at, "local": local, "bikes": bikes, "docks": docks, "renting": renting,
                                        "returning": returning, "capacity": info.get("capacity"),
                                        "disabled": _count(record.get("num_bikes_disabled"))})

    def clock(local: datetime) -> time:
        return local.time().replace(microsecond=0)

    def in_unusable(local: datetime) -> bool:
        t = clock(local)
        return time(7) <= t <= time(10, 59) or time(16) <= t <= time(21, 59)

    window_feeds = sum(in_unusable(datetime.fromtimestamp(at, zone)) for at in feeds)
    neighbours, network = _network(first_position, sorted(records))
    result: dict[str, Any] = {}
    for station_id in sorted(set(records) | set(skipped)):
        rows = sorted(records.get(station_id, []), key=lambda r: r["at"])
        unusable = sum(1 for r in rows if (r["bikes"] == 0 or r["docks"] == 0) and in_unusable(r["local"]))
        broken = [r["disabled"] / r["capacity"] for r in rows if r["capacity"] and r["capacity"] > 0
                  and r["disabled"] is not None and r["bikes"] + r["disabled"] <= r["capacity"]]
        day = walk([(r["at"], r["bikes"], r["docks"], r["renting"], r["returning"]) for r in rows
                    if time(6) <= clock(r["local"]) <= time(23, 59)])
        figures = {"snapshots": len(rows), "skipped": skipped.get(station_id, 0), "unusable": unusable,
                   "unusable_share": unusable / window_feeds if window_feeds else None,
                   "broken_snapshots": len(broken), "broken_median": median(broken) if broken else None,
                   "broken_mean": sum(broken) / len(broken) if broken else None, "episodes": len(day),
                   "longest_h": max(day, default=0) / 3600, "median_h": median(day) / 3600 if day else 0.0,
                   "mean_h": sum(day) / len(day) / 3600 if day else 0.0, "in_network": station_id in network,
                   "neighbour_id": neighbours.get(station_id)}
        for window, grace, inside in (("peak", 3600, _peak), ("off_peak", 7200, _off_peak)):
            partner = neighbours.get(station_id)
            durations = walk(_combined(rows, records.get(partner, []), inside)) if partner else []
            long = [d for d in durations if d >= grace]
            figures[f"{window}_instances"] = len(long)
            figures[f"{window}_fines"] = sum(50 * ((d - grace) // 3600) for d in long)
        figures["fines"] = figures["peak_fines"] + figures["off_peak_fines"]
        result[station_id] = figures
    system = {"snapshots": len(feeds), "window_snapshots": window_feeds,
              "stations": sum(1 for f in result.values() if f["snapshots"]),
              "records": sum(f["snapshots"] for f in result.values()),
              "skipped": sum(f["skipped"] for f in result.values()),
              "fines": sum(f["fines"] for f in result.values()),
              "peak_instances": sum(f["peak_instances"] for f in result.values()),
              "off_peak_instances": sum(f["off_peak_instances"] for f in result.values())}
    return {"system": system, "stations": result}


def _peak(local: datetime) -> bool:
    return local.isoweekday() <= 5 and 8 <= local.hour <= 19


def _off_peak(local: datetime) -> bool:
    return local.hour < 8 or local.hour >= 20


def _combined(own: list[dict], other: list[dict], inside) -> list[tuple]:
    """The station and its neighbour per time inside the window: counts summed, the station's flags first."""
    by_time: dict[int, list[dict | None]] = defaultdict(lambda: [None, None])
    for slot, rows in ((0, own), (1, other)):
        for r in rows:
            if inside(r["local"]):
                by_time[r["at"]][slot] = r
    series = []
    for at in sorted(by_time):
        mine, theirs = by_time[at]
        present = [r for r in (mine, theirs) if r is not None]
        docks = [r["docks"] for r in present if r["docks"] is not None]
        flags = mine or theirs
        series.append((at, sum(r["bikes"] for r in present), sum(docks) if docks else None, flags["renting"],
                       flags["returning"]))
    return series


def _network(positions: dict[str, tuple[float, float]], stations: list[str]) -> tuple[dict[str, str], set[str]]:
    """Each station of the largest network (links of at most 2,000 ft) and its nearest other station in it."""
    lats = sorted(positions[s][0] for s in stations)
    lons = sorted(positions[s][1] for s in stations)
    if not stations:
        return {}, set()
    lat, lon = median(lats), median(lons)
    area = CRS("EPSG:2263").area_of_use
    crs = ("EPSG:2263" if area.west <= lon <= area.east and area.south <= lat <= area.north
           else f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=us-ft +no_defs")
    transform = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xy = {s: transform.transform(positions[s][1], positions[s][0]) for s in stations}

    def distance(a: str, b: str) -> float:
        return ((xy[a][0] - xy[b][0]) ** 2 + (xy[a][1] - xy[b][1]) ** 2) ** 0.5

    component: dict[str, int] = {}
    groups: list[list[str]] = []
    for s in stations:  # breadth-first over links
        if s in component:
            continue
        group, todo = [s], [s]
        component[s] = len(groups)
        while todo:
            a = todo.pop()
            for b in stations:
                if b not in component and distance(a, b) <= 2000.0:
                    component[b] = len(groups)
                    group.append(b)
                    todo.append(b)
        groups.append(group)
    network = set(sorted(groups, key=lambda g: (-len(g), min(g)))[0]) if groups else set()
    network = network if len(network) > 1 else set()
    neighbours = {}
    if len(network) > 1:
        for s in network:
            neighbours[s] = min((b for b in network if b != s), key=lambda b: (distance(s, b), b))
    return neighbours, network
