"""What one system's next step needs to know about the previous ones, kept in the lake.

One JSON document per system under ``_state/<system>/state.json``, written once the data it
describes landed, and read by whichever worker runs the next step. A step Kafka did not acknowledge
lands all the same and is listed in ``unpublished``: the next run sends it again before its own. It holds the HTTP client's validators and ttl (so
unchanged feeds are not refetched), the stations the latest description lists (to validate a
status feed when station_information did not change), the fingerprints of what was landed and
published (:mod:`citibikes.changes`), and the versions the feeds declared.
"""

from __future__ import annotations

from typing import Any

import msgspec

from citibikes.changes import StatusFingerprint
from citibikes.lake import Lake
from citibikes.quality import Described

STATE_FILE = "state.json"


class SystemState(msgspec.Struct, kw_only=True):
    """The state of one system after its last landed step."""

    client: dict[str, Any] = {}
    """:class:`~citibikes.gbfs.client.ClientState` as a dict: ETag / Last-Modified / ttl per feed."""
    last_updated: dict[str, int] = {}
    """The newest ``last_updated`` landed per feed."""
    versions: dict[str, str] = {}
    """The GBFS version each feed declared last."""
    described: Described = msgspec.field(default_factory=Described)
    """The stations of the latest valid station_information."""
    information_digest: str | None = None
    """:func:`~citibikes.changes.information_digest` of the latest station_information landed."""
    descriptions: dict[str, str] = {}
    """Per station, the fingerprint of its description last landed."""
    vehicle_types: list[str] | None = None
    """The vehicle type ids vehicle_types.json defined last (None: the system publishes none)."""
    published: dict[str, StatusFingerprint] = {}
    """Per station, the fingerprint of the status last published to Kafka."""
    snapshot_at: int = 0
    """``last_updated`` of the last full status snapshot published."""
    unpublished: list[str] = []
    """Steps landed whose messages Kafka did not acknowledge (keys in the state store), oldest first: the
    next ``produce`` sends them again, with the same message ids, before the new step."""


def load_state(lake: Lake, system_id: str) -> SystemState:
    data = lake.read_state(f"{system_id}/{STATE_FILE}")
    return msgspec.json.decode(data, type=SystemState, dec_hook=decode_hook) if data else SystemState()


def save_state(lake: Lake, system_id: str, state: SystemState) -> None:
    lake.write_state(f"{system_id}/{STATE_FILE}", msgspec.json.encode(state, enc_hook=encode_hook))


def encode_hook(value: Any) -> Any:
    """msgspec's ``enc_hook`` for the state's own types."""
    if isinstance(value, Described):
        return value.to_builtins()
    raise NotImplementedError(f"cannot store {type(value).__name__} in the state")


def decode_hook(kind: type, value: Any) -> Any:
    """msgspec's ``dec_hook`` for the state's own types."""
    if kind is Described:
        return Described.from_builtins(value)
    raise NotImplementedError(f"cannot read {kind} from the state")
