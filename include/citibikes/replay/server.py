"""The offline GBFS server: the replayed Citi Bike feed over HTTP, plus synthetic and faulty systems.

Machines running this project often cannot reach the live Citi Bike API, so the pipeline, the
tests and the benchmarks poll this server instead. The documents come from
:mod:`citibikes.replay.evolve`; this module adds what a real GBFS host does on top: discovery with
absolute URLs built from the ``Host`` the client used (so it works on any port and behind
docker-compose service names), ``ETag``/``If-None-Match`` and ``Last-Modified``/``If-Modified-Since``
(304), ``Cache-Control: max-age=<ttl>``, gzip on ``Accept-Encoding: gzip``, JSON 404s and
``/healthz``.

URL scheme (``{base}`` is e.g. ``http://127.0.0.1:8765``)::

    {base}/{system}/gbfs.json                     discovery (also {base}/{system}/{version}/gbfs.json)
    {base}/{system}/2.3/en/{feed}.json            GBFS 2.3 feeds (citibike, synth-NN, fault-*)
    {base}/{system}/3.0/{feed}.json               GBFS 3.0 feeds (citibike-v3)
    {base}/healthz                                liveness
    {base}/                                       the list of systems

Systems: ``citibike``, ``citibike-v3``, ``synth-00`` .. ``synth-99`` (see :mod:`citibikes.replay.evolve`)
and the fault systems in :data:`FAULTS`, which are ``citibike`` with a broken ``station_status``
(discovery, ``system_information`` and ``station_information`` stay valid).

Run it with ``python -m citibikes.replay.server --port 8765`` (or ``citibikes replay``).
"""

from __future__ import annotations

import argparse
import http.server
import logging
import math
import re
import signal
import threading
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec

from citibikes.replay.evolve import (
    DEFAULT_SPEED,
    DEFAULT_TICK_S,
    STATION_STATUS,
    Document,
    ReplayFeed,
    check_timing,
    citibike_spec,
    default_timeline,
    resolve_system,
)

log = logging.getLogger("citibikes.replay.server")  # not "__main__" under python -m

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_SLOW_S = 30.0
"""How long ``fault-slow`` waits before answering (longer than the pipeline's 10 s timeout)."""
MAX_SLOW_S = 600.0
STALE_BY_S = 600
FAULTS = {
    "fault-html": "station_status answers 200 with an HTML error page (text/html)",
    "fault-500": "station_status always answers 500 Internal Server Error",
    "fault-slow": f"station_status answers after a delay (--slow, default {DEFAULT_SLOW_S:.0f} s; ?delay=S overrides)",
    "fault-truncated": "station_status answers 200 with the JSON cut in half",
    "fault-stale": f"station_status is {STALE_BY_S} s behind: last_updated is 10 minutes in the past",
    "fault-404": "discovery lists station_status, but its URL answers 404",
}
SYSTEM_PATTERNS = ("citibike", "citibike-v3", "synth-00 .. synth-99", *FAULTS)
HOST_PATTERN = re.compile(r"^[A-Za-z0-9.\-_]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>\n"
    b"<body><h1>Service Temporarily Unavailable</h1><p>The upstream server is down for maintenance."
    b"</p></body></html>\n"
)


class ReplayServer(http.server.ThreadingHTTPServer):
    """The HTTP server; ``start_in_thread()`` and ``shutdown()`` (or ``with``) for tests."""

    daemon_threads = True
    request_queue_size = 256
    """Listen backlog: 50 systems polled at once must not overflow it."""

    def __init__(self, host: str, port: int, *, tick_s: float, speed: float, seed: int,
                 clock: Callable[[], float], slow_s: float) -> None:
        self.tick_s, self.speed, self.seed = tick_s, speed, seed
        self.clock = clock
        self.slow_s = slow_s
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self._feeds: dict[str, ReplayFeed] = {}
        self._feeds_lock = threading.Lock()
        super().__init__((host, port), ReplayHandler)

    def feed(self, system_id: str) -> ReplayFeed | None:
        """The system's feed, created on first use; None for an unknown system."""
        with self._feeds_lock:
            if system_id not in self._feeds:
                if system_id in FAULTS:
                    spec = citibike_spec(self.seed, system_id=system_id)
                else:
                    spec = resolve_system(system_id, self.seed)
                if spec is None:
                    return None
                self._feeds[system_id] = ReplayFeed(spec, tick_s=self.tick_s, speed=self.speed)
            return self._feeds[system_id]

    def loaded(self) -> list[str]:
        """The systems served so far."""
        with self._feeds_lock:
            return sorted(self._feeds)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (a wildcard bind address becomes 127.0.0.1)."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving.clear()

    def start_in_thread(self) -> ReplayServer:
        """Serve in a daemon thread and return at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="replay-server", daemon=True)
        self._thread.start()
        self._serving.wait(5)
        return self

    def shutdown(self) -> None:
        """Stop serving (also wakes ``fault-slow`` sleepers) and close the socket; safe to call twice."""
        self.stopping.set()
        if self._serving.is_set():
            super().shutdown()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.server_close()

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up are normal for a feed server: log quietly instead of a traceback."""
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


class ReplayHandler(http.server.BaseHTTPRequestHandler):
    """Routes one request; see the module docstring for the URL scheme."""

    server: ReplayServer
    protocol_version = "HTTP/1.1"
    server_version = "citibikes-replay/1.0"
    sys_version = ""
    timeout = 60
    """Idle keep-alive connections are closed after this many seconds."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away: %s", self.path)
        except Exception:  # a bug must not kill the connection silently
            log.exception("replay server failed on %s", self.path)
            self._send_error_json(500, "internal error; see the replay server log")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        log.debug("%s %s", self.address_string(), format % args)

    # ----- routing

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path == "/healthz":
            return self._send_json(200, {"status": "ok", "systems_loaded": self.server.loaded()})
        if path == "/":
            return self._send_json(200, {"systems": list(SYSTEM_PATTERNS), "faults": FAULTS,
                                         "example": f"{self._base_url()}/citibike/gbfs.json"})
        system_id, _, rest = path.lstrip("/").partition("/")
        feed = self.server.feed(system_id)
        if feed is None:
            return self._send_error_json(404, f"unknown system {system_id!r}; known: {', '.join(SYSTEM_PATTERNS)}")
        query = parse_qs(parts.query)
        now = self.server.clock()
        if rest in ("gbfs.json", f"{feed.spec.gbfs_version}/gbfs.json"):
            return self._send_document(feed.discovery(now, self._feed_urls(feed, query)))
        feed_name = next((name for name, p in feed.feed_paths().items() if p == rest), None)
        if feed_name is None:
            return self._send_error_json(404, f"system {system_id!r} has no feed at {path!r}; "
                                              f"see {self._base_url()}/{system_id}/gbfs.json")
        if feed_name == STATION_STATUS and system_id in FAULTS:
            return self._send_fault(system_id, feed, now, query)
        self._send_document(feed.document(feed_name, now))

    def _feed_urls(self, feed: ReplayFeed, query: dict[str, list[str]]) -> dict[str, str]:
        """Absolute feed URLs; ``fault-slow`` passes ``?delay=`` on to station_status."""
        urls = feed.feed_urls(self._base_url())
        if feed.system_id == "fault-slow" and "delay" in query:
            urls[STATION_STATUS] += "?" + urlencode({"delay": query["delay"][0]})
        return urls

    def _base_url(self) -> str:
        """``scheme://host[:port]`` as the client addressed us (X-Forwarded-* when behind a proxy)."""
        host = self.headers.get("X-Forwarded-Host") or self.headers.get("Host") or ""
        host = host.split(",")[0].strip()
        if not HOST_PATTERN.match(host):
            host = self.server.url.removeprefix("http://")
        scheme = (self.headers.get("X-Forwarded-Proto") or "http").split(",")[0].strip().lower()
        return f"{scheme if scheme in ('http', 'https') else 'http'}://{host}"

    # ----- faults

    def _send_fault(self, system_id: str, feed: ReplayFeed, now: float, query: dict[str, list[str]]) -> None:
        if system_id == "fault-html":
            return self._send_bytes(200, HTML_ERROR_PAGE, "text/html; charset=utf-8")
        if system_id == "fault-500":
            return self._send_bytes(500, b"Internal Server Error\n", "text/plain; charset=utf-8")
        if system_id == "fault-404":
            return self._send_error_json(404, f"no such feed: {self.path}")
        if system_id == "fault-truncated":
            body = feed.station_status(now).body
            return self._send_bytes(200, body[: len(body) // 2], "application/json")
        if system_id == "fault-stale":
            return self._send_document(feed.station_status(now - STALE_BY_S))
        if system_id == "fault-slow":
            if self.server.stopping.wait(self._delay(query)):
                return self._send_error_json(503, "replay server is shutting down")
            return self._send_document(feed.station_status(self.server.clock()))
        raise AssertionError(f"fault {system_id!r} has no behaviour")

    def _delay(self, query: dict[str, list[str]]) -> float:
        try:
            delay = float(query["delay"][0])
        except (KeyError, ValueError):
            delay = self.server.slow_s
        return min(max(delay, 0.0), MAX_SLOW_S) if math.isfinite(delay) else self.server.slow_s

    # ----- responses

    def _send_document(self, document: Document) -> None:
        cache_headers = {
            "ETag": document.etag,
            "Last-Modified": formatdate(document.last_updated, usegmt=True),
            "Cache-Control": f"max-age={document.ttl}",
            "Vary": "Accept-Encoding",
        }
        if self._not_modified(document):
            return self._send_bytes(304, b"", None, cache_headers)
        body, headers = document.body, dict(cache_headers)
        if self._accepts_gzip():
            body = document.gzipped
            headers["Content-Encoding"] = "gzip"
        self._send_bytes(200, body, "application/json", headers)

    def _not_modified(self, document: Document) -> bool:
        """RFC 9110: If-None-Match (weak comparison) wins over If-Modified-Since."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return "*" in tags or document.etag.removeprefix("W/") in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since:
            try:
                return document.last_updated <= parsedate_to_datetime(if_modified_since).timestamp()
            except (TypeError, ValueError):
                return False
        return False

    def _accepts_gzip(self) -> bool:
        for item in (self.headers.get("Accept-Encoding") or "").split(","):
            coding, _, params = item.strip().partition(";")
            if coding.strip().lower() in ("gzip", "x-gzip", "*"):
                quality = params.strip().removeprefix("q=")
                return not (params and quality.replace(".", "", 1).isdigit() and float(quality) == 0)
        return False

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, msgspec.json.encode(payload), "application/json", {"Cache-Control": "no-store"})

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message, "status": status})

    def _send_bytes(self, status: int, body: bytes, content_type: str | None,
                    headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status != 304:
            self.wfile.write(body)


def make_server(host: str = DEFAULT_HOST, port: int = 0, *, tick_s: float = DEFAULT_TICK_S,
                speed: float = DEFAULT_SPEED, seed: int = 0, clock: Callable[[], float] = time.time,
                slow_s: float = DEFAULT_SLOW_S) -> ReplayServer:
    """A bound (not yet serving) replay server; ``port=0`` picks a free port (see ``.url``)."""
    check_timing(tick_s, speed)
    default_timeline()  # decode the recordings now, not in the first request
    return ReplayServer(host, port, tick_s=tick_s, speed=speed, seed=seed, clock=clock, slow_s=slow_s)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly; ``options`` go to :func:`make_server`."""
    try:
        server = make_server(host, port, **options)
    except OSError as exc:
        raise SystemExit(f"replay server: cannot listen on {host}:{port}: {exc.strerror}; "
                         "stop the program using that port or pass another --port") from None
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start_in_thread()
    log.info("replay GBFS feed on %s (e.g. %s/citibike/gbfs.json, %s/healthz)", server.url, server.url, server.url)
    try:
        while not stop.wait(0.1):  # short waits: the signal handler runs between them
            pass
    finally:
        log.info("replay server stopping")
        server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m citibikes.replay.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--tick", type=float, default=DEFAULT_TICK_S, help="seconds between feed updates (default 15)")
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                        help=f"recorded seconds per real second (default {DEFAULT_SPEED:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random event timing (default 0)")
    parser.add_argument("--slow", type=float, default=DEFAULT_SLOW_S,
                        help=f"delay of fault-slow in seconds (default {DEFAULT_SLOW_S:g})")
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs one line per request (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.host, args.port, tick_s=args.tick, speed=args.speed, seed=args.seed, slow_s=args.slow)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
