"""What the consumer logs at DEBUG for each message it receives."""

from __future__ import annotations

import json

from citibikes.stream.consume import describe


def test_debug_lines_name_a_description_and_count_a_status() -> None:
    information = {"system_id": "s", "station_id": "A", "name": "W 52 St & 11 Ave", "capacity": 39}
    status = {"system_id": "s", "station_id": "A", "num_bikes_available": 3, "num_docks_available": 36}
    assert describe(json.dumps(information).encode()) == "s:A 'W 52 St & 11 Ave', capacity 39"
    assert describe(json.dumps(status).encode()) == "s:A bikes 3, docks 36"
    assert describe(None) == "null"
    assert describe(b"{oops") == "unreadable"
