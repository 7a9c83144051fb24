"""What changed since the last step: station descriptions by content, station status by its counts and flags.

Descriptions change a few times a day while most systems re-send station_information every
minute with a new ``last_updated``. A description is therefore published and landed only when
its content changed (:func:`description_fingerprints`, per station), and a whole
station_information whose stations carry the same content as the last one landed is not even
normalized (:func:`information_digest`, of the ``data`` object as sent).

Status: Kafka gets a station's status only when its counts or flags changed, plus every station
at least every ``snapshot_every_s`` (a full snapshot), so that a consumer starting at any full
snapshot sees every station (:func:`~citibikes.ingest.select`). The lake keeps every observation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Optional

import msgspec
import pyarrow as pa

StatusFingerprint = tuple[int, Optional[int], Optional[int], Optional[int], Optional[int], bool, bool, bool,
                          tuple[tuple[str, int], ...]]
"""A station's counts and flags (and its vehicle type counts): what counts as a change of its status
(not the heartbeat ``last_reported``)."""

FINGERPRINT_COLUMNS = ("num_bikes_available", "num_ebikes_available", "num_bikes_disabled", "num_docks_available",
                       "num_docks_disabled", "is_installed", "is_renting", "is_returning")
DESCRIPTION_COLUMNS_SKIPPED = frozenset({"last_updated", "fetched_at", "schema_version"})
"""Not part of a description's content: the feed's times (new every minute)."""


class _Data(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"")


_DATA = msgspec.json.Decoder(_Data)


def information_digest(body: bytes) -> str | None:
    """A digest of a station_information's ``data`` object exactly as sent (None if it cannot be read):
    the same digest means the same descriptions, whatever the header says."""
    try:
        return data_digest(_DATA.decode(body).data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def data_digest(data: bytes) -> str:
    """The digest :func:`information_digest` takes of a document's ``data`` object (its bytes as sent)."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def status_fingerprints(table: pa.Table) -> list[StatusFingerprint]:
    """The fingerprint of every row of a station_status table, in row order."""
    columns = [table[name].to_pylist() for name in FINGERPRINT_COLUMNS]
    vehicle_types = table["vehicle_types_available"]
    if vehicle_types.null_count == len(vehicle_types):
        counts: list[Any] = [()] * table.num_rows
    else:
        counts = [tuple((entry["vehicle_type_id"], entry["count"]) for entry in value) if value else ()
                  for value in vehicle_types.to_pylist()]
    return list(zip(*columns, counts))


_CONTENT = msgspec.json.Encoder()


def description_fingerprints(table: pa.Table) -> list[str]:
    """A digest of every row's description (every column but the feed's times), in row order."""
    names = [name for name in table.column_names if name not in DESCRIPTION_COLUMNS_SKIPPED]
    rows = zip(*(table[name].to_pylist() for name in names))
    return [hashlib.blake2b(_CONTENT.encode(row), digest_size=8).hexdigest() for row in rows]


def changed(station_ids: list[str], fingerprints: list[Any], known: Mapping[str, Any]) -> list[int]:
    """Rows whose fingerprint differs from the one ``known`` for their station (or that have none)."""
    get = known.get
    return [index for index, (station_id, fingerprint) in enumerate(zip(station_ids, fingerprints))
            if get(station_id) != fingerprint]
