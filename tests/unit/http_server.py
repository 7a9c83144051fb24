"""A real local HTTP server for tests, scripted per path with a sequence of replies.

Tests of HTTP code must go through real sockets (timeouts, gzip, retries, partial bodies), not a
mocked client. :class:`ScriptedServer` runs ``http.server.ThreadingHTTPServer`` on a free port in
a thread; each path gets a list of :class:`Reply` served in order (the last one repeats), and every
request is recorded so tests can count attempts and inspect the headers a client sent.

Usage::

    with ScriptedServer() as server:
        server.script("/gbfs.json", Reply(500), Reply(200, {"data": ...}))
        requests.get(server.url("/gbfs.json"))
        assert server.count("/gbfs.json") == 1
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted response."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    """Bytes as they are, str as UTF-8, dict/list as JSON."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering (to provoke read timeouts)."""
    gzip: bool = False
    """Send the body gzip-compressed with ``Content-Encoding: gzip``."""
    content_length: bool = True
    """False: no Content-Length, the body ends when the connection closes."""
    drip_s: float = 0.0
    """Send the body in 10 pieces, this long apart (a slow server)."""

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            raw = self.body
        elif isinstance(self.body, str):
            raw = self.body.encode()
        else:
            raw = json.dumps(self.body).encode()
        return gzip.compress(raw) if self.gzip else raw


@dataclass(frozen=True)
class SeenRequest:
    path: str
    """Path including the query string, as the client sent it."""
    headers: dict[str, str]
    at: float
    """``time.monotonic()`` when the request arrived."""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


class ScriptedServer:
    """Serves scripted replies on ``127.0.0.1:<free port>`` to GET and POST alike; unknown paths get 404."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[SeenRequest] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-http", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *replies: Reply) -> None:
        """Serve ``replies`` in order on ``path`` (query strings ignored); the last repeats."""
        with self._lock:
            self._scripts[path] = list(replies)

    def seen(self, path: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if urlsplit(r.path).path == path]

    def count(self, path: str) -> int:
        return len(self.seen(path))

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, request_path: str, headers: dict[str, str]) -> Reply:
        path = urlsplit(request_path).path
        with self._lock:
            self.requests.append(SeenRequest(request_path, headers, time.monotonic()))
            replies = self._scripts.get(path)
            if not replies:
                return Reply(404, {"error": f"no script for {path}"})
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                reply = server._next_reply(self.path, dict(self.headers.items()))
                if reply.delay_s and server._stopping.wait(reply.delay_s):
                    return
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (timeouts, size limits): expected in tests

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the body is not scripted
                self.do_GET()

            def _send(self, reply: Reply) -> None:
                body = reply.encoded_body()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.gzip:
                    self.send_header("Content-Encoding", "gzip")
                if reply.content_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if reply.status == 304 or not body:
                    return
                if not reply.drip_s:
                    self.wfile.write(body)
                    return
                step = max(1, len(body) // 10)
                for start in range(0, len(body), step):
                    if server._stopping.wait(reply.drip_s):
                        return
                    self.wfile.write(body[start:start + step])
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                pass

        return Handler
