"""A reader process of the catalog for the compaction tests: it queries the rows per hour of
``station_status`` in a loop, each query in a new connection, plus one connection opened at the start
and kept until the test writes ``release``; every query's result (or error) and times go to a JSON
lines file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
    import json, select, sys, time
    from citibikes.catalog import connect
    path, out = sys.argv[1], open(sys.argv[2], "w")
    SQL = "SELECT system, date::VARCHAR, hour, count(*), sum(num_bikes_available) FROM station_status GROUP BY ALL"

    def query(kind, con):
        began = time.time()
        try:
            rows, error = con.sql(SQL).fetchall(), None
        except Exception as exc:  # a file of the view gone: recorded, the test fails on it
            rows, error = [], str(exc).splitlines()[0]
        out.write(json.dumps({"kind": kind, "start": began, "end": time.time(), "rows": rows, "error": error}) + "\\n")

    held = connect(path)  # one connection kept open, released before the grace period ends
    print("ready", flush=True)
    while True:
        if select.select([sys.stdin], [], [], 0)[0]:
            if sys.stdin.readline().strip() != "release":
                break
            held.close()
            held = None
            print("released", flush=True)
        con = connect(path)  # a new connection per query
        query("new", con)
        con.close()
        if held is not None:
            query("held", held)
        out.flush()
"""


def start_reader(catalog: Path, results: Path) -> subprocess.Popen:
    """The reader, started: it prints ``ready`` once it holds its first connection, ``released`` after
    ``release``, and stops on any other line."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), str(catalog), str(results)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
