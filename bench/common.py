"""Helpers shared by the benchmarks: machine description, summary statistics, a throwaway Kafka broker.

Benchmarks run from the repository root with the virtualenv (``.venv/bin/python bench/<name>.py``);
they import this module as ``bench.common`` after putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KAFKA_LIB = ROOT / ".state" / "kafka" / "lib"
"""The broker's jars, shared with ``make up`` and the tests; fetched from Maven Central when missing."""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU, cores, load, Python and library versions, date: what a reader needs to compare figures."""
    from importlib.metadata import version

    import confluent_kafka

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "pyarrow": version("pyarrow"),
        "msgspec": version("msgspec"),
        "confluent_kafka": version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(part) for part in [os.path.relpath(sys.executable, ROOT), *sys.argv]),
    }
    info.update(extra)
    return info


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) of a process so far: this one, or ``pid`` from /proc."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def kafka_broker(prefix: str = "citibikes-bench-kafka-") -> Iterator[Any]:
    """A real single-node Kafka broker on free ports, with its data in a temporary folder; stopped
    and removed on exit, whatever happens. Jars come from ``.state/kafka/lib`` (fetched once)."""
    import shutil

    from citibikes.stack.kafka import KafkaBroker
    from citibikes.stack.process import free_port

    home = Path(tempfile.mkdtemp(prefix=prefix))
    broker = KafkaBroker(home, home / "run", port=free_port(), controller_port=free_port(), lib_dir=KAFKA_LIB)
    try:
        broker.start()
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
