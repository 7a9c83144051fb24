"""The live state store: the latest status and description of every station, the open episodes,
the consumer's offsets and its outbox, in one SQLite file (WAL) or one PostgreSQL database.

The consumer writes everything a batch of messages changed, and the offsets after that batch, in
one transaction (:meth:`LiveStore.commit`), and resumes from those offsets: a crash at any moment
neither loses nor applies anything twice. Messages the consumer must send (alerts, dead letters)
enter the outbox in the same transaction and leave it once Kafka acknowledged them.

SQLite runs in WAL mode, so the dashboard, the alerts DAG and ``citibikes status`` read the file
while the consumer writes it. The same SQL runs on both engines (placeholders aside).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from citibikes.errors import first_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS station_status (
    key TEXT PRIMARY KEY, system_id TEXT NOT NULL, station_id TEXT NOT NULL, last_updated BIGINT NOT NULL,
    num_bikes_available INTEGER, num_ebikes_available INTEGER, num_docks_available INTEGER,
    is_installed BOOLEAN, is_renting BOOLEAN, is_returning BOOLEAN, kafka_partition INTEGER NOT NULL,
    value TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS station_information (
    key TEXT PRIMARY KEY, system_id TEXT NOT NULL, station_id TEXT NOT NULL, last_updated BIGINT NOT NULL,
    name TEXT, lat DOUBLE PRECISION, lon DOUBLE PRECISION, capacity INTEGER, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    key TEXT NOT NULL, kind TEXT NOT NULL, system_id TEXT NOT NULL, station_id TEXT NOT NULL,
    started BIGINT NOT NULL, threshold_alerted BOOLEAN NOT NULL, PRIMARY KEY (key, kind));
CREATE TABLE IF NOT EXISTS consumer_offsets (
    topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, clock BIGINT NOT NULL,
    PRIMARY KEY (topic, kafka_partition));
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, seq BIGINT NOT NULL, topic TEXT NOT NULL, message_key TEXT, value TEXT NOT NULL);
"""

STATUS_COLUMNS = ("key", "system_id", "station_id", "last_updated", "num_bikes_available", "num_ebikes_available",
                  "num_docks_available", "is_installed", "is_renting", "is_returning", "kafka_partition", "value")
INFORMATION_COLUMNS = ("key", "system_id", "station_id", "last_updated", "name", "lat", "lon", "capacity", "value")
EPISODE_COLUMNS = ("key", "kind", "system_id", "station_id", "started", "threshold_alerted")


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message names the store, the cause and the fix."""


@dataclass
class Changes:
    """What one batch of messages changed, written in one transaction."""

    status: dict[str, tuple] = field(default_factory=dict)
    """key -> a row of :data:`STATUS_COLUMNS` (the newest of the batch); the commit adds ``applied_at``."""
    information: dict[str, tuple | None] = field(default_factory=dict)
    """key -> a row of :data:`INFORMATION_COLUMNS`, or None to delete it (a tombstone)."""
    episodes: dict[str, list[tuple]] = field(default_factory=dict)
    """key -> the station's open episodes now (rows of :data:`EPISODE_COLUMNS`), replacing the stored ones."""
    outbox: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    """(id, topic, key, value) to send."""
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """(topic, partition) -> (next offset, the partition's clock)."""

    def __bool__(self) -> bool:
        return bool(self.offsets or self.outbox)


class LiveStore:
    """One connection to the store; :meth:`open` picks the engine from the URL."""

    def __init__(self, connection: Any, *, url: str, placeholder: str = "?") -> None:
        self._db = connection
        self.url = url
        self._placeholder = placeholder
        self._seq = 0
        self._lock: Any = None

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> LiveStore:
        """``postgresql://...`` for PostgreSQL; anything else is a SQLite file path (``sqlite:///`` optional)
        or ``:memory:``. Unless ``readonly``: takes the writer's lock (one consumer per store: a second
        would apply batches the first does not know of) and creates the tables."""
        if url.startswith(("postgresql://", "postgres://")):
            store = cls(_connect_postgres(url), url=shown_url(url), placeholder="%s")
        else:
            store = cls(_connect_sqlite(url.removeprefix("sqlite://"), readonly), url=url)
        if not readonly:
            store._take_lock(url.removeprefix("sqlite://"))
            store._write(lambda: [store._execute(statement) for statement in SCHEMA.split(";") if statement.strip()])
            store._seq = store._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox")
        return store

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()

    def _take_lock(self, path: str) -> None:
        busy = f"another consumer already writes the live state store {self.url}; stop it first (`make down`)"
        if self._placeholder != "?":  # PostgreSQL: a session lock, released when the connection ends
            if not self._scalar("SELECT pg_try_advisory_lock(7243514611)"):
                self.close()
                raise StoreError(busy)
        elif path != ":memory:":  # SQLite: an exclusive lock on a file beside the store, released when we exit
            self._lock = open(f"{path}.lock", "a+")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.close()
                raise StoreError(busy) from None

    # -- the consumer's side ---------------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        """Write one batch's changes and offsets atomically (or nothing, raising :class:`StoreError`)."""
        def write() -> None:
            now = time.time()
            self._upsert("station_status", (*STATUS_COLUMNS, "applied_at"), [(*row, now) for row in changes.status.values()])
            deleted = [(key,) for key, row in changes.information.items() if row is None]
            self._executemany("DELETE FROM station_information WHERE key = ?", deleted)
            self._upsert("station_information", INFORMATION_COLUMNS, [r for r in changes.information.values() if r])
            self._executemany("DELETE FROM episodes WHERE key = ?", [(key,) for key in changes.episodes])
            self._insert("episodes", EPISODE_COLUMNS, [row for rows in changes.episodes.values() for row in rows])
            outbox = [(id_, self._seq + n, topic, key, value) for n, (id_, topic, key, value) in enumerate(changes.outbox, 1)]
            self._insert("outbox", ("id", "seq", "topic", "message_key", "value"), outbox, on_conflict="DO NOTHING")
            self._upsert("consumer_offsets", ("topic", "kafka_partition", "next_offset", "clock"),
                         [(*tp, *where) for tp, where in changes.offsets.items()], key="topic, kafka_partition")

        self._write(write)
        self._seq += len(changes.outbox)

    def offsets(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (next offset, clock), as last committed."""
        rows = self._query("SELECT topic, kafka_partition, next_offset, clock FROM consumer_offsets")
        return {(topic, partition): (offset, clock) for topic, partition, offset, clock in rows}

    def machines(self) -> list[tuple]:
        """Per station: key, system, station, partition, last_updated; for rebuilding the episode machines."""
        return self._query("SELECT key, system_id, station_id, kafka_partition, last_updated FROM station_status")

    def information_times(self) -> list[tuple[str, int]]:
        """Per described station: key, ``last_updated`` of its description."""
        return self._query("SELECT key, last_updated FROM station_information")

    def episode_rows(self) -> list[tuple[str, str, int, bool]]:
        """The open episodes: key, kind, start, whether their threshold alerted."""
        return [(key, kind, started, bool(alerted))
                for key, kind, started, alerted in self._query("SELECT key, kind, started, threshold_alerted FROM episodes")]

    def outbox(self, limit: int = 10_000) -> list[tuple[str, str, str | None, str]]:
        """The messages still to send, oldest first: (id, topic, key, value)."""
        return self._query("SELECT id, topic, message_key, value FROM outbox ORDER BY seq LIMIT ?", (limit,))

    def sent(self, ids: Sequence[str]) -> None:
        """Forget outbox messages Kafka acknowledged."""
        self._write(lambda: self._executemany("DELETE FROM outbox WHERE id = ?", [(id_,) for id_ in ids]))

    # -- readers (dashboard, alerts DAG, status) -------------------------------------------------

    def open_episodes(self, system_id: str | None = None) -> list[dict[str, Any]]:
        where, params = _system_filter(system_id, "e.")
        return self._dicts(
            "SELECT e.system_id, e.station_id, e.kind, e.started, e.threshold_alerted, s.last_updated AS seen"
            f" FROM episodes e JOIN station_status s ON s.key = e.key {where}"
            " ORDER BY e.started, e.system_id, e.station_id, e.kind", params)

    def stations(self, system_id: str | None = None) -> list[dict[str, Any]]:
        """Every station's latest status with its description (None where not described)."""
        where, params = _system_filter(system_id, "s.")
        return self._dicts(
            "SELECT s.system_id, s.station_id, s.last_updated, s.num_bikes_available, s.num_ebikes_available,"
            " s.num_docks_available, s.is_installed, s.is_renting, s.is_returning, i.name, i.lat, i.lon, i.capacity"
            f" FROM station_status s LEFT JOIN station_information i ON i.key = s.key {where}"
            " ORDER BY s.system_id, s.station_id", params)

    def applied(self) -> dict[str, tuple[int, float]]:
        """key -> (``last_updated`` of its latest status, when the consumer committed it): freshness."""
        return {key: (updated, at) for key, updated, at in self._query("SELECT key, last_updated, applied_at FROM station_status")}

    def summary(self) -> dict[str, Any]:
        """Counts for logs and health checks: stations, and how many are empty or full now."""
        stations, bikes, newest, empty, full = self._query(
            "SELECT COUNT(*), COALESCE(SUM(num_bikes_available), 0), COALESCE(MAX(last_updated), 0),"
            " COALESCE(SUM(CASE WHEN is_installed AND is_renting AND num_bikes_available = 0 THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN is_installed AND is_returning AND num_docks_available = 0 THEN 1 ELSE 0 END), 0)"
            " FROM station_status")[0]
        return {"stations": stations, "described": self._scalar("SELECT COUNT(*) FROM station_information"),
                "empty": int(empty), "full": int(full), "bikes_available": int(bikes),
                "open_episodes": dict(self._query("SELECT kind, COUNT(*) FROM episodes GROUP BY kind")),
                "newest_last_updated": int(newest), "outbox": self._scalar("SELECT COUNT(*) FROM outbox")}

    def status_value(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM station_status WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def information_value(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM station_information WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # -- SQL plumbing ------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self._placeholder == "?" else statement.replace("?", self._placeholder)

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self._db.cursor()
        cursor.execute(self._sql(statement), params)
        return cursor

    def _executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self._db.cursor().executemany(self._sql(statement), rows)

    def _insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, on_conflict: str = "") -> None:
        marks = ", ".join("?" * len(columns))
        conflict = f" ON CONFLICT {on_conflict}" if on_conflict else ""
        self._executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}){conflict}", rows)

    def _upsert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, key: str = "key") -> None:
        keys = {name.strip() for name in key.split(",")}
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        self._insert(table, columns, rows, on_conflict=f"({key}) DO UPDATE SET {updates}")

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._read(statement, params)[1]

    def _scalar(self, statement: str) -> Any:
        return self._query(statement)[0][0]

    def _dicts(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        names, rows = self._read(statement, params)
        return [dict(zip(names, row)) for row in rows]

    def _read(self, statement: str, params: Sequence[Any]) -> tuple[list[str], list[tuple]]:
        try:
            cursor = self._execute(statement, params)
            names, rows = [d[0] for d in cursor.description], cursor.fetchall()
            self._db.commit()  # end the read transaction: a reader must not pin an old snapshot
        except (sqlite3.Error, *_postgres_errors()) as exc:
            self._rollback()
            raise StoreError(f"cannot read the live state store {self.url} ({first_line(exc)})") from None
        return names, [tuple(row) for row in rows]

    def _write(self, work) -> None:
        try:
            work()
            self._db.commit()
        except (sqlite3.Error, *_postgres_errors()) as exc:
            self._rollback()
            raise StoreError(
                f"cannot write the live state store {self.url} ({first_line(exc)}); nothing of this batch was "
                "committed - free disk space or fix the store's permissions, then restart the consumer"
            ) from None

    def _rollback(self) -> None:
        try:
            self._db.rollback()
        except Exception:  # the connection itself is gone; the error that got us here says why
            pass


def _system_filter(system_id: str | None, alias: str) -> tuple[str, tuple]:
    return (f"WHERE {alias}system_id = ?", (system_id,)) if system_id else ("", ())


def _connect_sqlite(path: str, readonly: bool) -> sqlite3.Connection:
    if path != ":memory:":
        if readonly and not Path(path).exists():
            raise StoreError(f"the live state store {path} does not exist; start the consumer (`make up`) first")
        if not readonly:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if not all(os.access(p, os.W_OK) for p in (path, Path(path).parent) if os.path.exists(p)):
                raise StoreError(f"the live state store {path} is read-only (its file or folder cannot be written); "
                                 "give the consumer write access or set CITIBIKES_LIVE_STORE to a writable path")
    target = f"file:{path}?mode=ro" if readonly else path
    try:
        db = sqlite3.connect(target, uri=readonly, timeout=30, check_same_thread=False)
        if not readonly:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, not only a crash
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the live state store {path} ({exc}); check the path and its permissions") from None
    return db


def _connect_postgres(url: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the live state store {shown_url(url)} ({first_line(exc)}); "
                         "check CITIBIKES_LIVE_STORE and that the server runs") from None


def _postgres_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def shown_url(url: str) -> str:
    """The store's URL as it may be printed or logged: a PostgreSQL password becomes ``***``."""
    parts = urlsplit(url)
    if "://" not in url or not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))

