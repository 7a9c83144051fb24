"""The canonical station model every GBFS version is normalized into.

GBFS 1.1, 2.x and 3.x spell the same facts differently (``num_bikes_available`` vs
``num_vehicles_available``, POSIX seconds vs RFC 3339, 0/1 vs booleans, plain vs localized
names). Everything downstream of :mod:`citibikes.gbfs.normalize` (validation, Kafka, the lake,
the live state) sees only these structs, so it never has to know which version a system speaks.

Times are POSIX seconds (UTC). ``fetched_at`` is when this pipeline fetched the feed (float, for
sub-second precision); ``last_updated`` is the feed's own timestamp.
"""

from __future__ import annotations

from itertools import compress
from typing import Any, Collection, Iterable, Sequence

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
    """The original record, whole, as JSON text with its keys sorted (one text whatever order the feed
    wrote them in; the body as it came is in the lake's raw archive)."""
    last_updated: int
    fetched_at: float


_SORTED_JSON = msgspec.json.Encoder(order="sorted")
_EXTRAS = msgspec.json.Decoder(dict[str, Any])


def extras_text(extras: dict[str, Any]) -> bytes:
    """A record's ``extras`` as JSON text with sorted keys: stable bytes, what the lake stores."""
    return _SORTED_JSON.encode(extras)


STATUS_COLUMNS = tuple(name for name in StationStatus.__struct_fields__
                       if name not in ("system_id", "last_updated", "fetched_at"))
"""The per-station fields of :class:`StationStatus`, in its field order (the columns of
:class:`StationStatusColumns`)."""


class StationStatusColumns(msgspec.Struct, kw_only=True, gc=False):
    """The station_status records of one snapshot, column by column.

    Record ``i`` is :meth:`record` ``(i)``: the :class:`StationStatus` with the ``i``-th value of
    every column and the snapshot's ``system_id``, ``last_updated`` and ``fetched_at``. The pipeline
    keeps a snapshot in this form from parsing to Parquet (validation rules, Arrow arrays and change
    capture all work on columns) and makes :class:`StationStatus` structs only for the records it
    publishes. Column values have the types of the struct's fields, but ``extras``: each record's
    as JSON text (:func:`extras_text`), the form the lake stores and the cheapest to pass between
    processes; a record made from the columns has it back as a dict.
    """

    system_id: str
    last_updated: int
    fetched_at: float
    station_id: list[str] = []
    num_bikes_available: list[int] = []
    num_ebikes_available: list[int | None] = []
    num_bikes_disabled: list[int | None] = []
    num_docks_available: list[int | None] = []
    num_docks_disabled: list[int | None] = []
    is_installed: list[bool] = []
    is_renting: list[bool] = []
    is_returning: list[bool] = []
    last_reported: list[int | None] = []
    vehicle_types_available: list[list[VehicleTypeCount] | None] = []
    extras: list[bytes] = []

    def __len__(self) -> int:
        return len(self.station_id)

    def columns(self) -> dict[str, list[Any]]:
        """Every per-station column by name, in :data:`STATUS_COLUMNS` order."""
        return {name: getattr(self, name) for name in STATUS_COLUMNS}

    def record(self, index: int) -> StationStatus:
        return self.records((index,))[0]

    def records(self, indices: Iterable[int] | None = None, *, raw_extras: bool = False) -> list[StationStatus]:
        """The records (all, or those at ``indices``) as structs, in that order. With ``raw_extras``,
        ``extras`` stays JSON text, as a :class:`msgspec.Raw` (a JSON encoder writes it as it is):
        for records that are only to be encoded (Kafka messages)."""
        system_id, last_updated, fetched_at = self.system_id, self.last_updated, self.fetched_at
        decode_extras = msgspec.Raw if raw_extras else _EXTRAS.decode
        columns = self.columns().values()
        if indices is not None:
            indices = list(indices)
            columns = [list(map(column.__getitem__, indices)) for column in columns]  # type: ignore[assignment]
        return [
            StationStatus(system_id=system_id, station_id=station_id, num_bikes_available=bikes,
                          num_ebikes_available=ebikes, num_bikes_disabled=bikes_disabled,
                          num_docks_available=docks, num_docks_disabled=docks_disabled, is_installed=installed,
                          is_renting=renting, is_returning=returning, last_reported=reported,
                          vehicle_types_available=vehicle_types, last_updated=last_updated,
                          fetched_at=fetched_at, extras=decode_extras(extras))
            for (station_id, bikes, ebikes, bikes_disabled, docks, docks_disabled, installed, renting, returning,
                 reported, vehicle_types, extras) in zip(*columns)
        ]

    def take(self, indices: Sequence[int]) -> StationStatusColumns:
        """The records at ``indices`` (in that order) as columns."""
        return StationStatusColumns(system_id=self.system_id, last_updated=self.last_updated,
                                    fetched_at=self.fetched_at,
                                    **{name: list(map(column.__getitem__, indices)) for name, column in self.columns().items()})

    def without(self, indices: Collection[int]) -> StationStatusColumns:
        """All records but those at ``indices``, in order."""
        keep = [True] * len(self)
        for index in indices:
            keep[index] = False
        return StationStatusColumns(system_id=self.system_id, last_updated=self.last_updated,
                                    fetched_at=self.fetched_at,
                                    **{name: list(compress(column, keep)) for name, column in self.columns().items()})

    @classmethod
    def from_records(cls, records: Sequence[StationStatus], *, system_id: str, last_updated: int,
                     fetched_at: float) -> StationStatusColumns:
        """Records of one snapshot (they must all carry these ``system_id``, ``last_updated``, ``fetched_at``)."""
        if any((r.system_id, r.last_updated, r.fetched_at) != (system_id, last_updated, fetched_at) for r in records):
            raise ValueError("the records are not all of one snapshot (system_id, last_updated, fetched_at)")
        columns = {name: [getattr(r, name) for r in records] for name in STATUS_COLUMNS}
        columns["extras"] = list(map(extras_text, columns["extras"]))
        return cls(system_id=system_id, last_updated=last_updated, fetched_at=fetched_at, **columns)
