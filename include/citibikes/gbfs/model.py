"""The canonical station model every GBFS version is normalized into, as Arrow schemas.

GBFS 1.1, 2.x and 3.x spell the same facts differently (``num_bikes_available`` vs
``num_vehicles_available``, POSIX seconds vs RFC 3339, 0/1 vs booleans, plain vs localized
names). Everything downstream of :mod:`citibikes.gbfs.normalize` (validation, Kafka, the lake, the
live state) sees one Arrow table per feed snapshot with the schemas below, so it never has to
know which version a system speaks. The same table is validated, selected from for Kafka and
written as Parquet: one representation from bytes to messages and files.

Times are ``timestamp[ms, UTC]`` (Parquet has no seconds unit). ``fetched_at`` is when this
pipeline fetched the feed; ``last_updated`` the feed's own time; ``extras`` the feed's vendor
fields as JSON text with sorted keys.
"""

from __future__ import annotations

import msgspec
import pyarrow as pa

SCHEMA_VERSION = 1
"""Version of the records below as published to Kafka and written to the lake."""

STATION_INFORMATION = "station_information"
STATION_STATUS = "station_status"
VEHICLE_TYPES = "vehicle_types"

TIMESTAMP_UTC = pa.timestamp("ms", tz="UTC")
VEHICLE_TYPE_COUNT = pa.struct([pa.field("vehicle_type_id", pa.string()), pa.field("count", pa.int32())])


def required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


STATION_STATUS_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("station_id", pa.string()),
    required("num_bikes_available", pa.int32()),
    optional("num_ebikes_available", pa.int32()),
    optional("num_bikes_disabled", pa.int32()),
    optional("num_docks_available", pa.int32()),
    optional("num_docks_disabled", pa.int32()),
    required("is_installed", pa.bool_()),
    required("is_renting", pa.bool_()),
    required("is_returning", pa.bool_()),
    required("last_reported", TIMESTAMP_UTC),
    optional("vehicle_types_available", pa.list_(VEHICLE_TYPE_COUNT)),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    required("extras", pa.string()),
    required("schema_version", pa.int32()),
])
"""One row per station and snapshot. "bikes" means vehicles in GBFS 3.x."""

STATION_INFORMATION_SCHEMA = pa.schema([
    required("system_id", pa.string()),
    required("station_id", pa.string()),
    required("name", pa.string()),
    required("lat", pa.float64()),
    required("lon", pa.float64()),
    optional("short_name", pa.string()),
    optional("capacity", pa.int32()),
    optional("region_id", pa.string()),
    optional("address", pa.string()),
    optional("is_virtual_station", pa.bool_()),
    optional("rental_methods", pa.list_(pa.string())),
    required("last_updated", TIMESTAMP_UTC),
    required("fetched_at", TIMESTAMP_UTC),
    required("extras", pa.string()),
    required("schema_version", pa.int32()),
])
"""One row per station description; in the lake, one row per version of a description (its
``last_updated`` is when that version took effect)."""

SCHEMAS = {STATION_STATUS: STATION_STATUS_SCHEMA, STATION_INFORMATION: STATION_INFORMATION_SCHEMA}

SNAPSHOT_COLUMNS = ("system_id", "last_updated", "fetched_at", "schema_version")
"""Columns with one value per snapshot (the rest are per station)."""


QUARANTINED_COUNTS = ("num_bikes_available", "num_bikes_disabled", "num_docks_available", "is_renting", "is_returning")
"""The station_status fields a quarantined record keeps, read, beside its raw text."""


class QuarantinedRecord(msgspec.Struct, kw_only=True, gc=False):
    """A record that failed validation, kept whole with the machine-readable reasons."""

    system_id: str
    feed: str
    station_id: str | None
    reasons: list[str]
    raw: str
    """The original record, whole, as JSON text with its keys sorted (one text whatever order the feed
    wrote them in; the body as it came is in the lake's raw archive)."""
    last_updated: int
    fetched_at: float
    num_bikes_available: int | None = None
    num_bikes_disabled: int | None = None
    num_docks_available: int | None = None
    is_renting: bool | None = None
    is_returning: bool | None = None
    """A station_status record's counts and flags as far as they could be read (None: absent or unusable),
    so that what reads the feed as published (the service analytics) can count quarantined records too."""
