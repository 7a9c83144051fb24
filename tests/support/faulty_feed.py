"""A GBFS feed that breaks on demand: an HTTP proxy in front of the replay server whose station_status answers
carry the fault set for the moment (timeouts, 5xx, 429, cut or foreign bodies, bad times, bad stations).

It records every station_status document it answered whole, as the pipeline received it, so a test can
check that each observation the feed gave lands (``served``). Every document says ``ttl: 0``, so a test's
next minute fetches at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

FEED_FAULTS = {
    "timeout": "no answer before the client's timeout",
    "500": "500 Internal Server Error",
    "503": "503 Service Unavailable",
    "429": "429 Too Many Requests with Retry-After: 1, once",
    "reset": "the connection is cut in the middle of the body",
    "truncated": "200 with the JSON cut in half",
    "not_json": "200 with an HTML error page",
    "huge": "200 with a body over the client's 20 MiB limit",
    "stale": "last_updated 10 minutes in the past",
    "backwards": "last_updated before the previous document's",
    "duplicate_stations": "20 stations listed twice, the copy with other counts",
    "orphan_stations": "5 stations that station_information does not describe",
}
"""Each fault of station_status, as the fault matrix names it."""


class FaultyFeed(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, timeout_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.timeout_s = timeout_s
        self.fault: str | None = None
        self.times = 0
        """How many more answers get the fault (the 429 comes once)."""
        self.served: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def set_fault(self, fault: str | None) -> None:
        with self.lock:
            self.fault, self.times = fault, (1 if fault == "429" else 10**9)

    def take_fault(self) -> str | None:
        with self.lock:
            if self.fault is None or self.times <= 0:
                return None
            self.times -= 1
            return self.fault

    def start(self) -> FaultyFeed:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FaultyFeed

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        upstream = requests.get(self.server.upstream + self.path, timeout=10)
        body = upstream.content.replace(self.server.upstream.encode(), self.server.url.encode())
        fault = self.server.take_fault() if self.path.endswith("/station_status.json") else None
        if fault in ("500", "503"):
            return self._send(int(fault), b"server error", "text/plain")
        if fault == "429":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
        if fault == "timeout":
            time.sleep(self.server.timeout_s + 1)
        elif fault == "reset":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return None
        elif fault == "truncated":
            return self._send(200, body[: len(body) // 2], "application/json")
        elif fault == "not_json":
            return self._send(200, b"<html><body>We'll be back soon</body></html>", "text/html")
        elif fault == "huge":
            return self._send(200, b'{"padding": "' + b"x" * (21 * 1024 * 1024) + b'"}', "application/json")
        elif upstream.ok and self.path.endswith(".json"):
            doc = json.loads(body)
            doc["ttl"] = 0
            if self.path.endswith("/station_status.json"):
                _break(doc, fault, self.server.served)
                self.server.served.append(doc)
            body = json.dumps(doc).encode()
        return self._send(upstream.status_code, body, upstream.headers.get("Content-Type", "application/json"))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _break(doc: dict[str, Any], fault: str | None, served: list[dict[str, Any]]) -> None:
    stations = doc["data"]["stations"]
    if fault == "stale":
        doc["last_updated"] -= 600
    elif fault == "backwards":
        doc["last_updated"] = min(d["last_updated"] for d in served) - 60
    elif fault == "duplicate_stations":
        stations += [{**s, "num_bikes_available": s["num_bikes_available"] + 1} for s in stations[:20]]
    elif fault == "orphan_stations":
        stations += [{**stations[0], "station_id": f"orphan-{n}"} for n in range(5)]
