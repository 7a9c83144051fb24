"""Which feeds a GBFS system publishes and where: the ``gbfs.json`` discovery document.

GBFS 1.x/2.x list feeds per language (``data.<language>.feeds``), GBFS 3.x lists them once
(``data.feeds``). :func:`parse_discovery` reads both into one :class:`Discovery` that maps each
feed's ``name`` to an absolute URL, so callers never guess URLs from names (vendors serve e.g.
``station_status_v2.json?key=...`` for ``station_status``). :meth:`Discovery.from_folder` builds
the same object from a folder of saved feed files, for validating or backfilling offline, and
:func:`read_local_file` reads such files (plain or gzip) with the same size limit as HTTP.

:func:`read_header` reads just ``last_updated``, ``ttl`` and ``version`` of any GBFS document; it
never judges whether the rest of the body is valid, that is :mod:`citibikes.gbfs.parse`'s job.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import msgspec

from citibikes.gbfs.errors import FeedError
from citibikes.gbfs.fields import Invalid, as_posix

log = logging.getLogger(__name__)

DISCOVERY_FEED = "gbfs"
"""The discovery document's own feed name (also its file name, ``gbfs.json``)."""
DEFAULT_VERSION = "1.0"
"""GBFS 1.0 had no ``version`` field; a document without one is 1.0 by the spec."""
FEED_FILE_SUFFIXES = (".json", ".json.gz")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
"""Largest feed body accepted (after decompression); Citi Bike's station_information is about 1 MB."""
GZIP_MAGIC = b"\x1f\x8b"
POINT_AT_GBFS_JSON = "check discovery_url in config/systems.yaml points at gbfs.json"


@dataclass
class Discovery:
    """The feeds of one system: feed name -> absolute URL (``http(s)://`` or ``file://``)."""

    system_id: str
    url: str
    version: str
    language: str | None
    """The language whose feed list was chosen (1.x/2.x); ``None`` for 3.x and folders without one."""
    feeds: dict[str, str] = field(default_factory=dict)

    def feed_url(self, name: str) -> str:
        """The URL of feed ``name``; FeedError ``feed_missing`` when the system does not publish it."""
        try:
            return self.feeds[name]
        except KeyError:
            available = ", ".join(sorted(self.feeds)) or "none"
            raise FeedError(
                f"feed {name!r} is not listed by {self.url} (it lists: {available}); "
                "pick a listed feed or check discovery_url in config/systems.yaml",
                reason="feed_missing", system_id=self.system_id, feed=name, url=self.url,
            ) from None

    @classmethod
    def from_folder(cls, folder: str | Path, system_id: str | None = None) -> Discovery:
        """Discovery of the feed files in ``folder``, named as GBFS names them.

        ``station_status.json`` (or ``.json.gz``) becomes feed ``station_status``, and so on. A
        ``gbfs.json`` there contributes only its ``version`` and language, because saved discovery
        files usually point at the live URLs; the local files always win. Without ``gbfs.json``
        the version comes from ``system_information``, ``station_status`` or
        ``station_information``. ``system_id`` defaults to the folder's name.
        """
        path = Path(folder).expanduser().resolve()
        system = system_id or path.name
        if not path.is_dir():
            raise FeedError(
                f"folder {path} does not exist; pass a folder holding station_information.json and station_status.json",
                reason="unreachable", system_id=system, url=str(path),
            )
        files = _feed_files(path)
        feeds = {name: file.as_uri() for name, file in files.items() if name != DISCOVERY_FEED}
        if not feeds:
            raise FeedError(
                f"folder {path} holds no GBFS feed files; add e.g. station_information.json and station_status.json",
                reason="no_feeds", system_id=system, url=str(path),
            )
        version, language = _folder_version_and_language(files)
        return cls(system_id=system, url=path.as_uri(), version=version, language=language, feeds=feeds)


class Header(msgspec.Struct):
    """The common top-level fields of a GBFS document, decoded without building ``data``."""

    last_updated: Any = None
    """POSIX seconds (read as :func:`~citibikes.gbfs.fields.as_posix` reads times), or None."""
    ttl: Any = None
    """A non-negative whole number, or None."""
    version: Any = None
    """A string, or None."""


def read_header(body: bytes) -> Header | None:
    """``last_updated``, ``ttl`` and ``version`` of a GBFS document, or ``None`` if it is not a JSON object."""
    try:
        header = msgspec.json.decode(body, type=Header)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    try:
        header.last_updated = as_posix(header.last_updated, set())
    except Invalid:
        header.last_updated = None
    if type(header.ttl) is not int or header.ttl < 0:
        header.ttl = None
    if not isinstance(header.version, str):
        header.version = None
    return header


def parse_discovery(
    body: bytes, url: str, system_id: str, language: str | None, *, base_url: str | None = None
) -> Discovery:
    """The :class:`Discovery` in the ``gbfs.json`` body of ``url``.

    Relative feed URLs resolve against ``base_url`` (where the body really came from, after
    redirects), by default ``url``.
    """

    def fail(reason: str, problem: str) -> FeedError:
        return FeedError(f"discovery document {url} {problem}", reason=reason, system_id=system_id,
                         feed=DISCOVERY_FEED, url=url)

    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        start = " ".join(body[:40].decode("utf-8", "replace").split())
        raise fail("not_json", f"is not JSON (starts with {start!r}); {POINT_AT_GBFS_JSON}") from None
    if not isinstance(doc, dict):
        raise fail("no_feeds", f"is a JSON {type(doc).__name__}, not an object with 'data'; {POINT_AT_GBFS_JSON}")
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("feeds"), list):
        chosen_language, entries = None, data["feeds"]
    else:
        languages = {
            key: value["feeds"]
            for key, value in (data.items() if isinstance(data, dict) else ())
            if isinstance(value, dict) and isinstance(value.get("feeds"), list)
        }
        if not languages:
            raise fail("no_feeds", f"has no feeds (expected data.feeds or data.<language>.feeds); {POINT_AT_GBFS_JSON}")
        chosen_language = _choose_language(list(languages), language, url, system_id)
        entries = languages[chosen_language]
    feeds = _feed_urls(entries, base_url or url)
    if not feeds:
        raise fail("no_feeds", "lists no feeds with a URL; check discovery_url in config/systems.yaml")
    version = doc.get("version")
    return Discovery(system_id, url, str(version) if version else DEFAULT_VERSION, chosen_language, feeds)


def _choose_language(available: list[str], wanted: str | None, url: str, system_id: str) -> str:
    """GBFS 1.x/2.x: the wanted language, else the same primary language (``en`` matches ``en-US``
    and back), else the first one (with a warning)."""
    if wanted:
        folded = {language.lower(): language for language in available}
        if wanted.lower() in folded:
            return folded[wanted.lower()]
        primary = wanted.lower().split("-")[0]
        for key, language in folded.items():
            if key.split("-")[0] == primary:
                return language
    log.warning(
        "%s: language %r is not in %s (it has %s); using %r, set language in config/systems.yaml to choose",
        system_id, wanted, url, ", ".join(available), available[0],
    )
    return available[0]


def _feed_urls(entries: list[Any], base_url: str) -> dict[str, str]:
    """Feed name -> absolute URL; a feed without ``name`` is named after its URL's file."""
    feeds: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not entry["url"].strip():
            continue
        url = urljoin(base_url, entry["url"].strip())
        name = entry.get("name")
        if not isinstance(name, str):
            name = PurePosixPath(urlsplit(url).path).name.split(".")[0]
        feeds.setdefault(name, url)
    return feeds


def _feed_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        for suffix in FEED_FILE_SUFFIXES:
            if path.is_file() and path.name.endswith(suffix):
                files.setdefault(path.name.removesuffix(suffix), path)
    return files


def _folder_version_and_language(files: dict[str, Path]) -> tuple[str, str | None]:
    """The version of the first of these files that has one, and the language of a 1.x/2.x gbfs.json."""
    for name in (DISCOVERY_FEED, "system_information", "station_status", "station_information"):
        if name not in files:
            continue
        body = read_local_file(files[name])
        header = read_header(body)
        if header and header.version:
            return header.version, _discovery_language(body) if name == DISCOVERY_FEED else None
    return DEFAULT_VERSION, None


def _discovery_language(body: bytes) -> str | None:
    data = msgspec.json.decode(body).get("data")  # read_header took it: a JSON object
    if isinstance(data, dict) and data and "feeds" not in data:
        return next(iter(data))
    return None


def read_local_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of a saved feed file, gunzipped when it is gzip; FeedError if missing or too large."""
    path = Path(path).expanduser().resolve()
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise too_large_error(str(path), max_bytes)
        body = path.read_bytes()
    except FileNotFoundError:
        raise FeedError(
            f"file {path} does not exist; check the path or the feed list in its gbfs.json",
            reason="unreachable", url=path.as_uri(),
        ) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise FeedError(
            f"cannot read {path} ({exc.strerror}); point at a readable GBFS JSON file",
            reason="unreachable", url=path.as_uri(),
        ) from None
    return gunzip_if_gzip(body, path.as_uri(), max_bytes)


def gunzip_if_gzip(body: bytes, url: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Decompress a gzip body (a ``.json.gz`` file, or a server that omits Content-Encoding), never past max_bytes."""
    if not body.startswith(GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        plain = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise FeedError(
            f"{url} sent a corrupt gzip body ({exc}); retry later or re-save the file",
            reason="decode_error", url=url,
        ) from None
    if len(plain) > max_bytes:
        raise too_large_error(url, max_bytes)
    if not inflater.eof:
        raise FeedError(
            f"{url} sent an incomplete gzip body ({len(body):,} bytes); retry later or re-save the file",
            reason="decode_error", url=url,
        )
    return plain


def too_large_error(url: str, max_bytes: int) -> FeedError:
    """The ``payload_too_large`` error for a body (file or HTTP) over ``max_bytes``."""
    return FeedError(
        f"{url} is larger than the {max_bytes:,}-byte limit; check it serves a GBFS feed, or raise max_bytes",
        reason="payload_too_large", url=url,
    )


