"""The station network of the rebalancing standard: stations in feet, links of at most 2,000 ft, nearest neighbours.

The auditors' definition: project each station (its first known position) to a plane in feet, link
stations at most :data:`LINK_FT` apart, keep the largest connected network, and give each of its
stations its single nearest other station within that network (no distance limit). A tie between
two networks of the same size goes to the one holding the smallest ``station_id``; a tie between two
neighbours at the same distance to the smaller ``station_id``.

The plane: New York State Plane Long Island (EPSG:2263, US survey feet) when the system's median
position lies in that zone's area of use (Citi Bike: its New Jersey stations are projected with it
too, as the Comptroller did); elsewhere an azimuthal equidistant projection centred on the median
position, in the same feet, whose distances are true within a few parts per million over a city.

The links and the nearest neighbours are SQL (a band join and an ``arg_min`` over every pair, on
DuckDB); the connected networks are a union-find over the links here.
"""

from __future__ import annotations

from statistics import median
from typing import NamedTuple

import duckdb
import pyarrow as pa
from pyproj import CRS, Transformer

LINK_FT = 2000.0
"""Stations at most this far apart (feet) are linked."""
NYC_CRS = "EPSG:2263"


class Position(NamedTuple):
    station_id: str
    lat: float
    lon: float


class Neighbour(NamedTuple):
    station_id: str
    neighbour_id: str
    distance_ft: float


def crs_for(positions: list[Position]) -> str:
    """EPSG:2263 for a system centred in New York City's Long Island zone, a local equidistant plane elsewhere."""
    lat, lon = median(p.lat for p in positions), median(p.lon for p in positions)
    area = CRS(NYC_CRS).area_of_use
    if area is not None and area.west <= lon <= area.east and area.south <= lat <= area.north:
        return NYC_CRS
    return f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=us-ft +no_defs"


def project(positions: list[Position], crs: str) -> list[tuple[str, float, float]]:
    """Each station's (id, x, y) in feet."""
    transform = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xs, ys = transform.transform([p.lon for p in positions], [p.lat for p in positions])
    return [(p.station_id, float(x), float(y)) for p, x, y in zip(positions, xs, ys)]


def neighbours(positions: list[Position]) -> tuple[str, list[Neighbour]]:
    """The projection used, and each station of the largest network with its nearest other station in it. On an
    in-memory DuckDB, whichever engine read the stations: they are a few thousand rows."""
    if len(positions) < 2:
        return crs_for(positions) if positions else NYC_CRS, []
    crs = crs_for(positions)
    ids, xs, ys = zip(*project(positions, crs))
    with duckdb.connect() as con:
        con.register("plane", pa.table({"station_id": ids, "x": xs, "y": ys}))
        links = con.execute(f"""
            SELECT a.station_id, b.station_id FROM plane a JOIN plane b
              ON b.x BETWEEN a.x - {LINK_FT} AND a.x + {LINK_FT} AND b.y BETWEEN a.y - {LINK_FT} AND a.y + {LINK_FT}
            WHERE a.station_id < b.station_id AND sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2) <= {LINK_FT}""").fetchall()
        con.register("members", pa.table({"station_id": sorted(largest_network(list(ids), links))}))
        rows = con.execute("""
            WITH network AS (SELECT * FROM plane SEMI JOIN members USING (station_id)),
            pairs AS MATERIALIZED (
                SELECT a.station_id AS a, b.station_id AS b, sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2) AS d
                FROM network a JOIN network b ON a.station_id != b.station_id),
            nearest AS (SELECT a, min(d) AS d FROM pairs GROUP BY a)
            SELECT a, min(b), d FROM pairs JOIN nearest USING (a, d) GROUP BY a, d ORDER BY a""").fetchall()
    return crs, [Neighbour(*row) for row in rows]


def largest_network(stations: list[str], links: list[tuple[str, str]]) -> set[str]:
    """The largest set of stations connected by ``links`` (a tie: the one holding the smallest id); empty when no
    two stations are linked."""
    parent = {station: station for station in stations}

    def root(station: str) -> str:
        while parent[station] != station:
            parent[station] = parent[parent[station]]
            station = parent[station]
        return station

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # a network's root is its smallest id
    networks: dict[str, set[str]] = {}
    for station in stations:
        networks.setdefault(root(station), set()).add(station)
    largest = min(networks.values(), key=lambda members: (-len(members), min(members)))
    return largest if len(largest) > 1 else set()

