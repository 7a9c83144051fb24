"""The canonical station model every GBFS version is normalized into.

GBFS 1.1, 2.x and 3.x spell the same facts differently (``num_bikes_available`` vs
``num_vehicles_available``, POSIX seconds vs RFC 3339, 0/1 vs booleans, plain vs localized
names). Everything downstream of :mod:`citibikes.gbfs.normalize` (validation, Kafka, the lake,
the live state) sees only these structs, so it never has to know which version a system speaks.

Times are POSIX seconds (UTC). ``fetched_at`` is when this pipeline fetched the feed (float, for
sub-second precision); ``last_updated`` is the feed's own timestamp.
"""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 1
"""Version of the records below as published to Kafka and written to the lake."""

STATION_INFORMATION = "station_information"
STATION_STATUS = "station_status"


class VehicleTypeCount(msgspec.Struct, frozen=True, gc=False):
    vehicle_type_id: str
    count: int


class StationInformation(msgspec.Struct, kw_only=True, gc=False):
    """One station's static description (``station_information``)."""

    system_id: str
    station_id: str
    name: str
    lat: float
    lon: float
    short_name: str | None = None
    capacity: int | None = None
    region_id: str | None = None
    address: str | None = None
    is_virtual_station: bool | None = None
    rental_methods: list[str] | None = None
    last_updated: int
    fetched_at: float
    extras: dict[str, Any] = {}


class StationStatus(msgspec.Struct, kw_only=True, gc=False):
    """One station's live state (``station_status``). "bikes" means vehicles in GBFS 3.x."""

    system_id: str
    station_id: str
    num_bikes_available: int
    num_ebikes_available: int | None = None
    num_bikes_disabled: int | None = None
    num_docks_available: int | None = None
    num_docks_disabled: int | None = None
    is_installed: bool
    is_renting: bool
    is_returning: bool
    last_reported: int | None = None
    vehicle_types_available: list[VehicleTypeCount] | None = None
    last_updated: int
    fetched_at: float
    extras: dict[str, Any] = {}


class QuarantinedRecord(msgspec.Struct, kw_only=True, gc=False):
    """A record that failed validation, kept whole with the machine-readable reasons."""

    system_id: str
    feed: str
    station_id: str | None
    reasons: list[str]
    raw: str
    """The original record as JSON text, exactly as the feed sent it (after decoding)."""
    last_updated: int
    fetched_at: float
