"""A lake made by the pipeline itself: minute runs (``tasks.run_all``: fetch, validate, produce, write)
against the offline replay feed, Kafka replaced by a producer that acknowledges everything.

The feed's clock is frozen and moved by the caller, so a run lands a known snapshot: start it hours
in the past and step it to land minute files in several hour (and date) partitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from citibikes import tasks
from citibikes.config import Settings, load_settings
from citibikes.lake import Lake, open_lake
from citibikes.replay.server import ReplayServer, make_server
from citibikes.stream.publish import Publisher


class AcknowledgingProducer:
    """A confluent_kafka.Producer stand-in: every record is acknowledged."""

    def produce(self, topic, value, key, headers, on_delivery) -> None:  # noqa: ANN001 - the Producer's signature
        pass

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class PipelineLake:
    settings: Settings
    lake: Lake
    server: ReplayServer
    clock: Clock
    publisher: Publisher
    runs: int = 0

    def minute(self, advance_s: float = 60.0) -> tasks.RunSummary:
        """Move the feed's clock and run the pipeline once for every system (past the feed's 1 s ttl)."""
        self.clock.now += advance_s
        time.sleep(1.05)
        self.runs += 1
        summary = tasks.run_all(self.settings, self.lake, self.publisher, f"manual__catalog-test-{self.runs}")
        assert not summary.failed, summary.failed
        return summary

    def close(self) -> None:
        self.server.shutdown()


def pipeline_lake(folder: Path, systems: tuple[str, ...] = ("citibike", "synth-01"), *,
                  start: float | None = None) -> PipelineLake:
    """A lake in ``folder/lake`` and the feed to fill it; ``start`` is the feed's first time (default: 3 hours ago)."""
    clock = Clock(time.time() - 3 * 3600 if start is None else start)
    server = make_server(tick_s=1.0, clock=clock).start_in_thread()
    (folder / "systems.yaml").write_text("systems:\n" + "".join(
        f"  - id: {system}\n    discovery_url: {server.url}/{system}/gbfs.json\n" for system in systems))
    (folder / "pipeline.yaml").write_text("quality: {max_feed_age_s: 100000000}\n")  # the feed's clock is in the past
    settings = load_settings({
        "CITIBIKES_SYSTEMS_FILE": str(folder / "systems.yaml"),
        "CITIBIKES_PIPELINE_FILE": str(folder / "pipeline.yaml"),
        "CITIBIKES_LAKE_URI": str(folder / "lake"),
        "CITIBIKES_STATE_DIR": str(folder / "state"),
    })
    lake = open_lake(settings.lake_uri)
    return PipelineLake(settings, lake, server, clock, Publisher(AcknowledgingProducer(), settings.topics))


def minute_runs(folder: Path, runs: int, every_s: float, *, hours_ago: int) -> tuple[PipelineLake, float]:
    """``runs`` minute runs ``every_s`` apart, the first one minute plus ``every_s`` into the hour that began
    ``hours_ago`` hours ago (H0), or earlier so that they all fall in one UTC day (compaction treats a
    closed day differently from closed hours); returns the pipeline (its feed stopped) and H0 as a POSIX time."""
    first_hour = (time.time() - hours_ago * 3600) // 3600 * 3600
    hours = -(-(60 + runs * every_s) // 3600)
    if (first_hour + hours * 3600 - 1) // 86400 != first_hour // 86400:  # would cross midnight
        first_hour = (first_hour + hours * 3600) // 86400 * 86400 - hours * 3600
    pipeline = pipeline_lake(folder, start=first_hour + 60)
    try:
        for _ in range(runs):
            pipeline.minute(every_s)
    finally:
        pipeline.close()
    return pipeline, first_hour



def yesterday_evening(folder: Path) -> float:
    """12 minute runs 15 minutes apart over the last four hours of yesterday (UTC), a closed day: from
    20:16 to 23:01, 3 in H0 (20:00), 4 in H1 and H2, 1 in H3. Returns H0."""
    return minute_runs(folder, 12, 15 * 60, hours_ago=int(time.time() % 86400 // 3600) + 4)[1]

FINGERPRINT = ("SELECT system, date::VARCHAR AS date, hour, count(*) AS rows, sum(hash(t)::HUGEINT)::VARCHAR AS rows_hash "
               "FROM {table} t GROUP BY ALL ORDER BY ALL")
"""Per hour partition of a table: its rows and a hash of all their values."""


def fingerprints(con, tables: tuple[str, ...] = ("station_status", "quarantine")) -> dict[str, list[tuple]]:  # noqa: ANN001
    """:data:`FINGERPRINT` of each table through a catalog connection (``citibikes.catalog.connect``)."""
    return {table: con.sql(FINGERPRINT.format(table=table)).fetchall() for table in tables}

