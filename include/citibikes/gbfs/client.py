"""Fetch GBFS feeds robustly and politely: one :class:`GbfsClient` per system.

Feeds are public endpoints polled every minute by many clients, so fetching has to survive flaky
servers without hammering them and without hanging a scheduled task:

* transient failures (connection errors, read timeouts, HTTP 5xx, 429) are retried by urllib3's
  ``Retry`` with exponential backoff and jitter; ``Retry-After`` is honoured up to a cap;
* every request has connect and read timeouts, and a body is streamed and abandoned past
  ``max_bytes`` or ``max_download_s``;
* each feed's ``ETag``/``Last-Modified`` is sent back (``If-None-Match``/``If-Modified-Since``)
  and a feed is not requested again before its ``ttl`` has passed;
* a body whose ``last_updated`` did not move is reported ``unchanged`` so nothing is re-emitted.

Whether a body is valid GBFS is not decided here: :func:`citibikes.gbfs.parse.parse_feed` does
that. ``file://`` URLs (a ``gbfs.json`` file, or a folder of feed files) are read from disk
with the same size limit, for offline validation and backfills.

Persist :attr:`GbfsClient.state` only after the new bodies were handled (published): the state
says what has been seen, so saving it first would turn a failed publish into an ``unchanged``.

Every failure is a :class:`~citibikes.gbfs.errors.FeedError` whose ``reason`` is one of
``unreachable``, ``timeout``, ``http_error``, ``payload_too_large``, ``incomplete``,
``decode_error``, ``bad_url``, ``not_json``, ``no_feeds`` or ``feed_missing``.

One client is used by one thread at a time (like the ``requests.Session`` it holds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlsplit
from urllib.request import url2pathname

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from citibikes import __version__
from citibikes.config import SystemConfig
from citibikes.gbfs.discovery import (
    DEFAULT_MAX_BYTES,
    DISCOVERY_FEED,
    Discovery,
    gunzip_if_gzip,
    parse_discovery,
    read_header,
    read_local_file,
    too_large_error,
)
from citibikes.gbfs.errors import FeedError

log = logging.getLogger(__name__)

USER_AGENT = f"citibikes/{__version__} (GBFS ingestion pipeline; python-requests/{requests.__version__})"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
STATE_FORMAT = 1
TTL_SLACK_S = 2.0
"""A feed is fetched again this long before its ttl runs out (the minute schedule is not exact)."""
MIN_DISCOVERY_TTL_S = 60.0
"""gbfs.json is fetched again at most this often, whatever its ttl."""
CHUNK_BYTES = 64 * 1024
"""Most bytes taken per read; a read returns what has arrived, so limits are checked as data comes."""

Outcome = Literal["new", "unchanged", "not_modified", "skipped_ttl"]


def build_retry(
    *,
    retries: int = 3,
    backoff_factor: float = 0.5,
    backoff_jitter: float = 0.5,
    retry_after_max_s: float = 30.0,
) -> Retry:
    """urllib3 retry policy for GBFS GETs.

    At most ``retries`` retries in total (the budget), on connection errors, HTTP 429/5xx and one
    read timeout. The first retry is immediate, the n-th waits ``backoff_factor * 2**(n-1)`` plus
    up to ``backoff_jitter`` (at most 10 s), or the server's ``Retry-After`` capped at
    ``retry_after_max_s``. After the last retry the final response is returned (not raised), so
    callers see its status.
    """
    return Retry(
        total=retries,
        connect=retries,
        read=min(retries, 1),
        status=retries,
        allowed_methods=frozenset({"GET", "HEAD"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_jitter,
        backoff_max=10.0,
        respect_retry_after_header=True,
        retry_after_max=retry_after_max_s,  # type: ignore[arg-type]  # urllib3 types it int; floats work
        raise_on_status=False,
    )


@dataclass
class FeedState:
    """What was last seen of one feed; enough for conditional requests and ttl."""

    last_updated: int | None = None
    ttl: int | None = None
    fetched_at: float | None = None
    etag: str | None = None
    last_modified: str | None = None

    def is_fresh(self, now: float, *, slack_s: float, min_ttl_s: float = 0.0) -> bool:
        """True while ``now`` is before ``fetched_at + ttl - slack_s`` (a clock that went back is not fresh)."""
        if self.fetched_at is None or now < self.fetched_at:
            return False
        return now < self.fetched_at + max(self.ttl or 0, min_ttl_s) - slack_s


@dataclass
class ClientState:
    """Per-feed :class:`FeedState` (key ``gbfs`` is the discovery document) and the cached discovery."""

    feeds: dict[str, FeedState] = field(default_factory=dict)
    discovery: Discovery | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; :meth:`from_dict` reads it back."""
        return {"format": STATE_FORMAT, **msgspec.to_builtins(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientState:
        """The state saved by :meth:`to_dict`; ValueError if it is not one."""
        if not isinstance(data, Mapping) or data.get("format") != STATE_FORMAT:
            raise ValueError(
                f"client state is not format {STATE_FORMAT} as saved by ClientState.to_dict; "
                "delete the state file to start afresh"
            )
        try:
            return msgspec.convert(dict(data), cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"client state is invalid ({exc}); delete the state file to start afresh") from None


@dataclass(frozen=True)
class FetchResult:
    """One :meth:`GbfsClient.fetch`. ``body`` is set only when ``outcome`` is ``new``."""

    feed: str
    url: str
    outcome: Outcome
    body: bytes | None
    last_updated: int | None
    """The feed's ``last_updated`` in POSIX seconds; ``None`` if the body has no readable one."""
    fetched_at: float
    """When the data was fetched (for ``skipped_ttl``: the earlier fetch it still stands for)."""


@dataclass(frozen=True)
class _Response:
    status: int | None
    body: bytes
    etag: str | None
    last_modified: str | None
    elapsed_s: float
    attempts: int = 1
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is None or 200 <= self.status < 300


class GbfsClient:
    """Discovers and fetches the feeds of one system; see the module docstring for the rules."""

    def __init__(
        self,
        system: SystemConfig,
        *,
        state: ClientState | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_download_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.system = system
        self.state = state if state is not None else ClientState()
        self._session = requests.Session()  # Accept-Encoding: gzip, deflate (decoded by requests)
        adapter = HTTPAdapter(max_retries=retry if retry is not None else build_retry())
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._timeout = float(system.timeout_s if timeout is None else timeout)  # to connect, and per read
        self._max_bytes = max_bytes
        self._max_download_s = max_download_s
        self._clock = clock

    @classmethod
    def for_folder(cls, folder: str | Path, system_id: str | None = None, **options: Any) -> GbfsClient:
        """A client reading the feed files in ``folder`` (see :meth:`Discovery.from_folder`)."""
        path = Path(folder).expanduser().resolve()
        return cls(SystemConfig(system_id=system_id or path.name, discovery_url=path.as_uri()), **options)

    def __enter__(self) -> GbfsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def discover(self, *, force: bool = False) -> Discovery:
        """The system's feeds, from cache while fresh, else from ``discovery_url``."""
        url = self.system.discovery_url
        cached = self.state.discovery if self.state.discovery and self.state.discovery.url == url else None
        seen = self.state.feeds.get(DISCOVERY_FEED, FeedState()) if cached else FeedState()
        now = self._clock()
        if cached and not force and seen.is_fresh(now, slack_s=0.0, min_ttl_s=MIN_DISCOVERY_TTL_S):
            return cached
        folder = _local_path(url)
        if folder is not None and folder.is_dir():
            discovery = Discovery.from_folder(folder, self.system.system_id)
            return self._remember_discovery(replace(discovery, url=url), FeedState(fetched_at=now))
        response, final_url = self._get(DISCOVERY_FEED, url, seen if not force else FeedState())
        if response.status == 304 and cached:
            return self._remember_discovery(cached, replace(seen, fetched_at=now, **_validators(response, seen)))
        if not response.ok:
            raise self._http_error(DISCOVERY_FEED, url, response)
        discovery = parse_discovery(
            response.body, url, self.system.system_id, self.system.language, base_url=final_url
        )
        log.debug("%s: discovered %d feeds (GBFS %s) at %s",
                  self.system.system_id, len(discovery.feeds), discovery.version, url)
        return self._remember_discovery(discovery, _state_after(response, now))

    def fetch(self, feed: str, *, force: bool = False) -> FetchResult:
        """Fetch feed ``feed`` unless its ttl has not passed; ``force`` always downloads and reports ``new``."""
        discovery = self.discover()
        url = discovery.feed_url(feed)
        seen = self.state.feeds.get(feed, FeedState())
        now = self._clock()
        if not force and seen.is_fresh(now, slack_s=TTL_SLACK_S):
            return FetchResult(feed, url, "skipped_ttl", None, seen.last_updated, seen.fetched_at or 0.0)
        response, _ = self._get(feed, url, FeedState() if force else seen)
        if response.status == 304:
            self.state.feeds[feed] = replace(seen, fetched_at=now, **_validators(response, seen))
            return self._result(feed, url, "not_modified", None, self.state.feeds[feed], response)
        if not response.ok:
            if response.status in (404, 410):
                self.state.discovery = None  # the feed moved: discover again next time
            raise self._http_error(feed, url, response)
        entry = _state_after(response, now)
        unchanged = not force and entry.last_updated is not None and entry.last_updated == seen.last_updated
        outcome: Outcome = "unchanged" if unchanged else "new"
        if entry.last_updated is not None and seen.last_updated is not None and entry.last_updated < seen.last_updated:
            log.warning("%s %s: last_updated went back from %d to %d (a stale cache?)",
                        self.system.system_id, feed, seen.last_updated, entry.last_updated)
        self.state.feeds[feed] = entry
        body = response.body if outcome == "new" else None
        return self._result(feed, url, outcome, body, entry, response)

    def _remember_discovery(self, discovery: Discovery, entry: FeedState) -> Discovery:
        self.state.discovery = discovery
        self.state.feeds[DISCOVERY_FEED] = entry
        return discovery

    def _result(self, feed: str, url: str, outcome: Outcome, body: bytes | None,
                entry: FeedState, response: _Response) -> FetchResult:
        log.debug("%s %s: %s (%d bytes in %.2f s)", self.system.system_id, feed, outcome,
                  len(response.body), response.elapsed_s)
        return FetchResult(feed, url, outcome, body, entry.last_updated, entry.fetched_at or 0.0)

    def _get(self, feed: str, url: str, seen: FeedState) -> tuple[_Response, str]:
        """The response for ``url`` (conditional on ``seen``) and the URL it finally came from."""
        started = time.monotonic()
        try:
            path = _local_path(url)
            if path is not None:
                body = read_local_file(path, self._max_bytes)
                return _Response(None, body, None, None, time.monotonic() - started), url
            return self._http_get(url, seen, started)
        except FeedError as error:
            error.system_id, error.feed = self.system.system_id, feed
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            reason, message = _describe_transport_error(exc, url, self._timeout)
            raise FeedError(message, reason=reason, system_id=self.system.system_id, feed=feed, url=url) from None

    def _http_get(self, url: str, seen: FeedState, started: float) -> tuple[_Response, str]:
        headers = {}
        if seen.etag:
            headers["If-None-Match"] = seen.etag
        if seen.last_modified:
            headers["If-Modified-Since"] = seen.last_modified
        with self._session.get(url, headers=headers, timeout=self._timeout, stream=True) as response:
            ok = 200 <= response.status_code < 300
            body = self._read_body(response, url, started) if ok else b""
            history = getattr(getattr(response.raw, "retries", None), "history", ())
            return _Response(
                status=response.status_code,
                body=body,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
                elapsed_s=time.monotonic() - started,
                attempts=len(history) + 1,
                retry_after=response.headers.get("Retry-After"),
            ), response.url

    def _read_body(self, response: requests.Response, url: str, started: float) -> bytes:
        """The decoded body, read as it arrives; FeedError past ``max_bytes`` or ``max_download_s``."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large_error(url, self._max_bytes)
        chunks: list[bytes] = []
        size = 0
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
            size += len(chunk)
            if size > self._max_bytes:
                raise too_large_error(url, self._max_bytes)
            if time.monotonic() - started > self._max_download_s:
                raise FeedError(
                    f"{url} took over {self._max_download_s:g} s to send its body; the server is too slow, retry later",
                    reason="timeout", url=url,
                )
            chunks.append(chunk)
        return gunzip_if_gzip(b"".join(chunks), url, self._max_bytes)

    def _http_error(self, feed: str, url: str, response: _Response) -> FeedError:
        attempts = f" after {response.attempts} attempts" if response.attempts > 1 else ""
        return FeedError(
            f"HTTP {response.status} from {url}{attempts}; {_status_advice(response)}",
            reason="http_error", system_id=self.system.system_id, feed=feed, url=url,
        )


def _state_after(response: _Response, now: float) -> FeedState:
    """What a 2xx response tells about its feed: its header and the validators to send next time."""
    header = read_header(response.body)
    return FeedState(
        last_updated=header.last_updated if header else None,
        ttl=header.ttl if header else None,
        fetched_at=now,
        etag=response.etag,
        last_modified=response.last_modified,
    )


def _validators(response: _Response, seen: FeedState) -> dict[str, str | None]:
    """ETag/Last-Modified after a 304: the new ones if the server repeated them, else the known ones."""
    return {"etag": response.etag or seen.etag, "last_modified": response.last_modified or seen.last_modified}


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(url2pathname(parts.path))


def _status_advice(response: _Response) -> str:
    status = response.status or 0
    if status == 429:
        wait = f" (it asked to wait {response.retry_after} s)" if response.retry_after else ""
        return f"the server is rate limiting{wait}: fetch less often (PIPELINE_INTERVAL) or retry later"
    if status >= 500:
        return "the server is failing: retry later"
    if status in (404, 410):
        return "the feed moved or is gone: check discovery_url in config/systems.yaml"
    if status in (401, 403):
        return "access denied: check the URL in config/systems.yaml (some systems need a key)"
    return "check the URL in config/systems.yaml"


def _describe_transport_error(exc: Exception, url: str, timeout: float) -> tuple[str, str]:
    """Reason code and one-line message for a requests or urllib3 (body read) exception."""
    causes = _causes(exc)

    def caused_by(*kinds: type[BaseException]) -> bool:
        return any(isinstance(cause, kinds) for cause in causes)

    check_url = "check the URL in config/systems.yaml or your network"
    refused = caused_by(urllib3.exceptions.NewConnectionError)  # subclasses ConnectTimeoutError, is no timeout
    if not refused and caused_by(requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return "unreachable", f"cannot reach {url} (no connection within {timeout:g} s); {check_url}"
    if caused_by(requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        return "timeout", (f"{url} did not answer within {timeout:g} s; the server is slow or down: "
                           "retry later or raise timeout_s in config/systems.yaml")
    if caused_by(requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError):
        return "decode_error", f"{url} sent a body that cannot be decoded ({_short(causes)}); retry later"
    if caused_by(requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError):
        return "incomplete", f"{url} closed the connection before the body was complete ({_short(causes)}); retry later"
    if caused_by(requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                 requests.exceptions.MissingSchema, urllib3.exceptions.LocationParseError):
        return "bad_url", f"{url} is not a usable http(s) URL ({_short(causes)}); fix it in config/systems.yaml"
    if caused_by(requests.TooManyRedirects, requests.exceptions.RetryError):
        return "http_error", f"{url} failed ({_short(causes)}); check the URL in config/systems.yaml"
    return "unreachable", f"cannot reach {url} ({_short(causes)}); {check_url}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (requests -> MaxRetryError.reason -> urllib3 -> OSError)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        if isinstance(current, urllib3.exceptions.MaxRetryError) and current.reason is not None:
            current = current.reason
        elif current.__cause__ is not None:
            current = current.__cause__
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
        else:
            current = current.__context__
    return chain


def _short(causes: list[BaseException]) -> str:
    """The most specific one-line cause, e.g. ``Connection refused``."""
    for cause in reversed(causes):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    text = str(causes[-1]) or type(causes[-1]).__name__
    return " ".join(text.split())[:200]
