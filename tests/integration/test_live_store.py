"""The live state store on both engines: SQLite (WAL, read by another process while written) and a
real PostgreSQL server; one transaction per batch, and a clear error that commits nothing when the
store cannot be written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from citibikes.live.store import LiveStore, StoreError
from citibikes.live.tracker import Tracker
from support.postgres import fresh_database

M = 60


def _tracker() -> Tracker:
    return Tracker(status_topic="status", information_topic="info", alerts_topic="alerts", dead_letter_topic="dead")


def _status(station: str, at: int, bikes: int) -> bytes:
    return json.dumps({"system_id": "s", "station_id": station, "last_updated": at, "num_bikes_available": bikes,
                       "num_docks_available": 4, "is_installed": True, "is_renting": True, "is_returning": True}).encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "live.db")
    return fresh_database(request.getfixturevalue("postgres_url"))


def test_a_batch_commits_state_episodes_offsets_and_outbox_together(store_url: str) -> None:
    store, live = LiveStore.open(store_url), _tracker()
    for offset, value in enumerate([_status("A", 0, 3), _status("A", M, 0), _status("B", M, 2)]):
        live.apply("status", offset % 2, offset, None, value)
    store.commit(live.take())
    again = LiveStore.open(store_url, readonly=True)
    assert again.offsets() == {("status", 0): (3, M), ("status", 1): (2, M)}
    assert [(e["station_id"], e["kind"], e["started"]) for e in again.open_episodes()] == [("A", "empty", M)]
    assert [json.loads(v)["event"] for _, _, _, v in again.outbox()] == ["opened"]
    restored = _tracker()
    assert restored.restore(again) == {("status", 0): 3, ("status", 1): 2}
    assert restored.stations["s:A"].machine.empty == M
    store.close(), again.close()


def test_sqlite_is_readable_by_another_process_while_the_consumer_writes(tmp_path) -> None:
    path = str(tmp_path / "live.db")
    store, live = LiveStore.open(path), _tracker()
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom citibikes.live.store import LiveStore\n"
         "s = LiveStore.open(sys.argv[1], readonly=True)\nseen = set()\nend = time.time() + 3\n"
         "while time.time() < end: seen.add(s.summary()['stations'])\nprint(max(seen))", path],
        stdout=subprocess.PIPE, text=True)
    for n in range(400):
        live.apply("status", 0, n, None, _status(f"S{n}", 100 + n, 1))
        store.commit(live.take())
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0 and 0 < int(out) <= 400


def test_a_store_that_refuses_a_write_fails_with_the_fix_and_commits_nothing(tmp_path) -> None:
    """SQLite refusing the write (here a read-only connection; the consumer on a read-only file system
    is in test_consumer_faults) rolls the whole batch back."""
    path = tmp_path / "live.db"
    store, live = LiveStore.open(str(path)), _tracker()
    live.apply("status", 0, 0, None, _status("A", 0, 3))
    store.commit(live.take())
    store.close()
    store = LiveStore.open(str(path), readonly=True)
    live.apply("status", 0, 1, None, _status("A", M, 0))
    with pytest.raises(StoreError, match=r"cannot write the live state store .*readonly.*nothing of this batch"):
        store.commit(live.take())
    assert store.offsets() == {("status", 0): (1, 0)}


def test_a_full_disk_fails_with_the_fix_and_commits_nothing(tmp_path) -> None:
    path = str(tmp_path / "live.db")
    store, live = LiveStore.open(path), _tracker()
    live.apply("status", 0, 0, None, _status("A", 0, 3))
    store.commit(live.take())
    store._db.execute("PRAGMA max_page_count = %d" % store._db.execute("PRAGMA page_count").fetchone()[0])
    for n in range(1, 2000):
        live.apply("status", 0, n, None, _status(f"S{n}", n, 1))
    with pytest.raises(StoreError, match=r"\(database or disk is full\); nothing of this batch was committed"):
        store.commit(live.take())
    assert store.offsets() == {("status", 0): (1, 0)}
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM station_status").fetchone() == (1,)


def test_one_consumer_per_store(store_url: str) -> None:
    """A second writer would apply batches the first does not know of: it is refused, with the fix."""
    first = LiveStore.open(store_url)
    with pytest.raises(StoreError, match=r"another consumer already writes the live state store .*; stop it first"):
        LiveStore.open(store_url)
    LiveStore.open(store_url, readonly=True).close()  # readers are welcome
    first.close()
    LiveStore.open(store_url).close()
