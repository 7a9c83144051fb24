"""GBFS discovery and fetching against a real local HTTP server (and real files for file://)."""

from __future__ import annotations

import gzip
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from http_server import Reply, ScriptedServer

from citibikes.config import SystemConfig
from citibikes.gbfs.client import USER_AGENT, ClientState, GbfsClient, build_retry
from citibikes.gbfs.discovery import Discovery, read_header
from citibikes.gbfs.errors import FeedError
from citibikes.stack.process import free_port

SYSTEM_ID = "testbike"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gbfs"
FAST_RETRY = build_retry(retries=2, backoff_factor=0.01, backoff_jitter=0.01, retry_after_max_s=2.0)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def make_client(discovery_url: str, *, language: str = "en", **options: Any) -> GbfsClient:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("timeout", 2.0)
    return GbfsClient(SystemConfig(SYSTEM_ID, discovery_url, language=language), **options)


def gbfs_2x(feeds_by_language: dict[str, dict[str, str]], version: str | None = "2.3", ttl: int = 0) -> dict:
    doc: dict[str, Any] = {
        "last_updated": 1_710_335_271,
        "ttl": ttl,
        "data": {
            language: {"feeds": [{"name": name, "url": url} for name, url in feeds.items()]}
            for language, feeds in feeds_by_language.items()
        },
    }
    if version is not None:
        doc["version"] = version
    return doc


def gbfs_3x(feeds: dict[str, str]) -> dict:
    return {
        "last_updated": "2024-03-13T13:07:51Z",
        "ttl": 0,
        "version": "3.0",
        "data": {"feeds": [{"name": name, "url": url} for name, url in feeds.items()]},
    }


def station_status(last_updated: int | str, ttl: int = 0, stations: int = 2) -> dict:
    return {
        "last_updated": last_updated,
        "ttl": ttl,
        "version": "2.3",
        "data": {"stations": [
            {"station_id": str(i), "num_bikes_available": i, "num_docks_available": 10 - i,
             "is_installed": 1, "is_renting": 1, "is_returning": 1, "last_reported": 1_710_335_000}
            for i in range(stations)
        ]},
    }


def as_bytes(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def serve_system(server: ScriptedServer, *feed_replies: tuple[str, Reply]) -> str:
    """Script a 2.3 discovery listing the given feeds at /feeds/<name>.json; returns the discovery URL."""
    feeds = {name: server.url(f"/feeds/{name}.json") for name, _ in feed_replies}
    server.script("/gbfs.json", Reply(200, gbfs_2x({"en": feeds})))
    for name, reply in feed_replies:
        server.script(f"/feeds/{name}.json", reply)
    return server.url("/gbfs.json")


# --- discovery -----------------------------------------------------------------------------


def test_discovery_2x_picks_the_configured_language(server: ScriptedServer) -> None:
    server.script("/gbfs.json", Reply(200, gbfs_2x({
        "en": {"station_status": "https://example.org/en/station_status.json"},
        "fr": {"station_status": "https://example.org/fr/station_status.json",
               "station_information": "https://example.org/fr/station_information.json"},
    })))
    with make_client(server.url("/gbfs.json"), language="fr") as client:
        discovery = client.discover()
    assert discovery.version == "2.3"
    assert discovery.language == "fr"
    assert discovery.feeds == {
        "station_status": "https://example.org/fr/station_status.json",
        "station_information": "https://example.org/fr/station_information.json",
    }
    assert discovery.system_id == SYSTEM_ID


def test_discovery_2x_falls_back_to_the_first_language_with_a_warning(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/gbfs.json", Reply(200, gbfs_2x({
        "es": {"station_status": "https://example.org/es/station_status.json"},
        "en": {"station_status": "https://example.org/en/station_status.json"},
    })))
    with caplog.at_level(logging.WARNING), make_client(server.url("/gbfs.json"), language="de") as client:
        discovery = client.discover()
    assert discovery.language == "es"
    assert discovery.feeds["station_status"].endswith("/es/station_status.json")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'de'" in warning and "es, en" in warning


def test_discovery_language_matches_on_the_primary_subtag_without_warning(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/gbfs.json", Reply(200, gbfs_2x({
        "fr": {"station_status": "https://example.org/fr/station_status.json"},
        "en": {"station_status": "https://example.org/en/station_status.json"},
    })))
    with caplog.at_level(logging.WARNING), make_client(server.url("/gbfs.json"), language="en-US") as client:
        assert client.discover().language == "en"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_discovery_3x_shape(server: ScriptedServer) -> None:
    feeds = {"station_status": "https://gbfs.example.org/gbfs/3.0/bkn/station_status.json",
             "vehicle_status": "https://gbfs.example.org/gbfs/3.0/bkn/vehicle_status.json"}
    server.script("/gbfs.json", Reply(200, gbfs_3x(feeds)))
    with make_client(server.url("/gbfs.json")) as client:
        discovery = client.discover()
    assert (discovery.version, discovery.language, discovery.feeds) == ("3.0", None, feeds)


def test_discovery_without_version_is_gbfs_1_0(server: ScriptedServer) -> None:
    server.script("/gbfs.json", Reply(200, gbfs_2x({"en": {"station_status": "x.json"}}, version=None)))
    with make_client(server.url("/gbfs.json")) as client:
        assert client.discover().version == "1.0"


def test_feeds_are_mapped_by_name_not_by_url(server: ScriptedServer) -> None:
    odd_url = server.url("/v2/station_status_v2.json?key=abc")
    server.script("/gbfs.json", Reply(200, gbfs_2x({"en": {"station_status": odd_url}})))
    server.script("/v2/station_status_v2.json", Reply(200, station_status(1000)))
    with make_client(server.url("/gbfs.json")) as client:
        result = client.fetch("station_status")
    assert result.url == odd_url
    assert result.outcome == "new"
    assert [r.path for r in server.seen("/v2/station_status_v2.json")] == ["/v2/station_status_v2.json?key=abc"]


def test_relative_feed_urls_resolve_against_the_discovery_url(server: ScriptedServer) -> None:
    server.script("/gbfs/2.3/gbfs.json", Reply(200, gbfs_2x({"en": {
        "station_status": "station_status.json",
        "system_information": "../common/system_information.json",
        "station_information": "/static/station_information.json",
    }})))
    with make_client(server.url("/gbfs/2.3/gbfs.json")) as client:
        feeds = client.discover().feeds
    assert feeds == {
        "station_status": server.url("/gbfs/2.3/station_status.json"),
        "system_information": server.url("/gbfs/common/system_information.json"),
        "station_information": server.url("/static/station_information.json"),
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>Service unavailable</body></html>", "not_json"),
        (b'{"data": {"en": {"feeds": [', "not_json"),
        (b'{"data": {}, "version": "2.3"}', "no_feeds"),
        (b'[{"name": "station_status"}]', "no_feeds"),
        (b'{"data": {"feeds": [{"name": "station_status"}]}, "version": "3.0"}', "no_feeds"),
    ],
    ids=["html", "truncated", "no-languages", "array", "feeds-without-urls"],
)
def test_unusable_discovery_raises_a_one_line_feed_error(server: ScriptedServer, body: bytes, reason: str) -> None:
    server.script("/gbfs.json", Reply(200, body))
    with make_client(server.url("/gbfs.json")) as client, pytest.raises(FeedError) as caught:
        client.discover()
    assert caught.value.reason == reason
    assert server.url("/gbfs.json") in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{SYSTEM_ID} gbfs: ")


def test_missing_feed_names_the_available_ones(server: ScriptedServer) -> None:
    feeds = {"station_status": "s.json", "system_information": "i.json"}
    server.script("/gbfs.json", Reply(200, gbfs_2x({"en": feeds})))
    with make_client(server.url("/gbfs.json")) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_information")
    assert caught.value.reason == "feed_missing"
    assert "station_status" in str(caught.value) and "system_information" in str(caught.value)
    assert server.count("/s.json") == 0


def test_discovery_is_cached_then_revalidated_with_its_etag(server: ScriptedServer) -> None:
    clock = FakeClock()
    server.script(
        "/gbfs.json",
        Reply(200, gbfs_2x({"en": {"station_status": "s.json"}}), headers={"ETag": '"d1"'}),
        Reply(304, headers={"ETag": '"d1"'}),
    )
    server.script("/s.json", Reply(200, station_status(1000)))
    with make_client(server.url("/gbfs.json"), clock=clock) as client:
        first = client.discover()
        client.fetch("station_status")
        assert server.count("/gbfs.json") == 1
        clock.advance(61)
        assert client.discover() == first
    requests_seen = server.seen("/gbfs.json")
    assert len(requests_seen) == 2
    assert requests_seen[0].header("If-None-Match") is None
    assert requests_seen[1].header("If-None-Match") == '"d1"'


def test_a_feed_that_moved_makes_the_next_fetch_discover_again(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(404)))
    with make_client(url) as client:
        with pytest.raises(FeedError) as caught:
            client.fetch("station_status")
        assert caught.value.reason == "http_error"
        assert "HTTP 404" in str(caught.value)
        with pytest.raises(FeedError):
            client.fetch("station_status")
    assert server.count("/gbfs.json") == 2


# --- HTTP behaviour --------------------------------------------------------------------------


def test_server_errors_are_retried_until_success(server: ScriptedServer) -> None:
    body = as_bytes(station_status(1000))
    url = serve_system(server, ("station_status", Reply(500)))
    server.script("/feeds/station_status.json", Reply(500), Reply(503), Reply(200, body))
    with make_client(url) as client:
        result = client.fetch("station_status")
    assert (result.outcome, result.body) == ("new", body)
    assert server.count("/feeds/station_status.json") == 3


def test_persistent_server_errors_raise_http_error_naming_status_and_url(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(502)))
    with make_client(url) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    message = str(caught.value)
    assert caught.value.reason == "http_error"
    assert "HTTP 502" in message and server.url("/feeds/station_status.json") in message
    assert "3 attempts" in message
    assert server.count("/feeds/station_status.json") == 3  # first try + 2 retries


def test_the_retry_policy_is_the_one_used(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(500)))
    with make_client(url, retry=build_retry(retries=0)) as client, pytest.raises(FeedError):
        client.fetch("station_status")
    assert server.count("/feeds/station_status.json") == 1


def test_connection_refused_is_unreachable_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}/gbfs.json"
    started = time.monotonic()
    with make_client(url) as client, pytest.raises(FeedError) as caught:
        client.discover()
    assert time.monotonic() - started < 2.0
    assert caught.value.reason == "unreachable"
    assert f"cannot reach {url} (Connection refused)" in str(caught.value)
    assert "config/systems.yaml" in str(caught.value)


def test_429_waits_for_retry_after(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(429, headers={"Retry-After": "1"}), Reply(200, station_status(1000)))
    with make_client(url) as client:
        assert client.fetch("station_status").outcome == "new"
    first, second = server.seen("/feeds/station_status.json")
    assert second.at - first.at >= 0.95


def test_retry_after_is_capped(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(429, headers={"Retry-After": "60"}), Reply(200, station_status(1000)))
    retry = build_retry(retries=2, backoff_factor=0.01, backoff_jitter=0.0, retry_after_max_s=0.3)
    with make_client(url, retry=retry) as client:
        assert client.fetch("station_status").outcome == "new"
    first, second = server.seen("/feeds/station_status.json")
    assert 0.25 <= second.at - first.at < 2.0


def test_persistent_429_says_it_is_rate_limited(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(429, headers={"Retry-After": "0"})))
    with make_client(url) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert caught.value.reason == "http_error"
    assert "HTTP 429" in str(caught.value) and "rate limiting" in str(caught.value)


def test_etag_makes_a_conditional_request_and_304_is_not_modified(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(200, station_status(1000), headers={"ETag": '"abc"'}),
                  Reply(304, headers={"ETag": '"abc"'}))
    with make_client(url) as client:
        first = client.fetch("station_status")
        second = client.fetch("station_status")
    assert first.outcome == "new"
    assert (second.outcome, second.body) == ("not_modified", None)
    assert second.last_updated == 1000
    sent = [r.header("If-None-Match") for r in server.seen("/feeds/station_status.json")]
    assert sent == [None, '"abc"']


def test_last_modified_makes_an_if_modified_since_request(server: ScriptedServer) -> None:
    stamp = "Wed, 13 Mar 2024 13:07:51 GMT"
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(200, station_status(1000), headers={"Last-Modified": stamp}), Reply(304))
    with make_client(url) as client:
        client.fetch("station_status")
        assert client.fetch("station_status").outcome == "not_modified"
        assert client.state.feeds["station_status"].last_modified == stamp
    sent = [r.header("If-Modified-Since") for r in server.seen("/feeds/station_status.json")]
    assert sent == [None, stamp]


def test_gzip_responses_are_requested_and_decoded(server: ScriptedServer) -> None:
    body = as_bytes(station_status(1000, stations=200))
    url = serve_system(server, ("station_status", Reply(200, body, gzip=True)))
    with make_client(url) as client:
        result = client.fetch("station_status")
    assert result.body == body
    assert "gzip" in server.seen("/feeds/station_status.json")[0].header("Accept-Encoding")


def test_gzip_body_without_content_encoding_is_decoded(server: ScriptedServer) -> None:
    body = as_bytes(station_status(1000))
    url = serve_system(server, ("station_status", Reply(200, gzip.compress(body))))
    with make_client(url) as client:
        assert client.fetch("station_status").body == body


def test_corrupt_or_cut_gzip_body_is_a_decode_error(server: ScriptedServer) -> None:
    packed = gzip.compress(as_bytes(station_status(1000, stations=50)))
    url = serve_system(server, ("station_status", Reply(200)))
    cut, corrupt = packed[: len(packed) // 2], packed[:10] + b"junk" * 20
    server.script("/feeds/station_status.json", Reply(200, cut), Reply(200, corrupt))
    with make_client(url) as client:
        errors = []
        for _ in range(2):
            with pytest.raises(FeedError) as caught:
                client.fetch("station_status")
            errors.append(caught.value)
    assert [e.reason for e in errors] == ["decode_error", "decode_error"]
    assert "incomplete gzip body" in str(errors[0])


def test_requests_name_citibikes_in_the_user_agent(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200, station_status(1000))))
    with make_client(url) as client:
        client.fetch("station_status")
    assert {r.header("User-Agent") for r in server.requests} == {USER_AGENT}
    assert USER_AGENT.startswith("citibikes/")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"x" * 5000),
        Reply(200, b"x" * 5000, content_length=False),
        Reply(200, b"x" * 50_000, gzip=True),
    ],
    ids=["content-length", "streamed", "gzip-expands"],
)
def test_oversized_payload_is_refused(server: ScriptedServer, reply: Reply) -> None:
    url = serve_system(server, ("station_status", reply))
    with make_client(url, max_bytes=1000) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert caught.value.reason == "payload_too_large"
    assert "1,000-byte limit" in str(caught.value)


def test_payload_at_the_limit_is_accepted(server: ScriptedServer) -> None:
    body = b"x" * 1000
    url = serve_system(server, ("station_status", Reply(200, body, content_length=False)))
    with make_client(url, max_bytes=1000) as client:
        assert client.fetch("station_status").body == body


def test_slow_server_read_timeout_is_bounded(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200, station_status(1000), delay_s=5)))
    started = time.monotonic()
    with make_client(url, timeout=0.3) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert time.monotonic() - started < 2.0
    assert caught.value.reason == "timeout"
    assert "did not answer within 0.3 s" in str(caught.value)
    assert server.count("/feeds/station_status.json") == 2  # one read retry


def test_slow_body_is_abandoned_after_max_download_s(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200, b"y" * 10_000, drip_s=0.2)))
    started = time.monotonic()
    with make_client(url, max_download_s=0.5) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert time.monotonic() - started < 1.5
    assert caught.value.reason == "timeout"


# --- ttl and last_updated -------------------------------------------------------------------


def test_ttl_skips_the_network_until_it_passes(server: ScriptedServer) -> None:
    clock = FakeClock(10_000.0)
    url = serve_system(server, ("station_status", Reply(200, station_status(9_990, ttl=60))))
    feed_path = "/feeds/station_status.json"
    with make_client(url, clock=clock) as client:
        first = client.fetch("station_status")
        clock.advance(30)
        skipped = client.fetch("station_status")
        assert server.count(feed_path) == 1
        clock.advance(28.5)  # 58.5 s after the fetch: within the 2 s slack of the 60 s ttl
        due = client.fetch("station_status")
        forced = client.fetch("station_status", force=True)
    assert (first.outcome, first.fetched_at) == ("new", 10_000.0)
    assert (skipped.outcome, skipped.body) == ("skipped_ttl", None)
    assert (skipped.fetched_at, skipped.last_updated) == (10_000.0, 9_990)
    assert due.outcome == "unchanged"
    assert forced.outcome == "new" and forced.body == first.body
    assert server.count(feed_path) == 3


def test_same_last_updated_is_unchanged_and_not_returned(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(200, station_status(1000)), Reply(200, station_status(1000, stations=3)),
                  Reply(200, station_status(1060)))
    with make_client(url) as client:
        outcomes = [client.fetch("station_status") for _ in range(3)]
    assert [r.outcome for r in outcomes] == ["new", "unchanged", "new"]
    assert [r.last_updated for r in outcomes] == [1000, 1000, 1060]
    assert outcomes[1].body is None and server.count("/feeds/station_status.json") == 3
    assert json.loads(outcomes[2].body)["last_updated"] == 1060


@pytest.mark.parametrize("stamp", ["2024-03-13T13:07:51Z", "2024-03-13T15:07:51+02:00", "2024-03-13T13:07:51.250Z"])
def test_rfc3339_last_updated_is_read_as_posix_seconds(server: ScriptedServer, stamp: str) -> None:
    expected = int(datetime(2024, 3, 13, 13, 7, 51, tzinfo=timezone.utc).timestamp())
    url = serve_system(server, ("station_status", Reply(200, station_status(stamp))))
    with make_client(url) as client:
        assert client.fetch("station_status").last_updated == expected


def test_unreadable_body_is_returned_as_new_for_the_parser_to_judge(server: ScriptedServer) -> None:
    html = b"<html>maintenance</html>"
    url = serve_system(server, ("station_status", Reply(200, html)))
    with make_client(url) as client:
        results = [client.fetch("station_status") for _ in range(2)]
    assert [(r.outcome, r.body, r.last_updated) for r in results] == [("new", html, None)] * 2


def test_read_header_reads_times_as_the_parser_does() -> None:
    header = read_header(b'{"last_updated": 1710335271, "ttl": 5, "version": "2.3", "data": {}}')
    assert (header.last_updated, header.ttl, header.version) == (1710335271, 5, "2.3")
    assert read_header(b'{"last_updated": "2024-03-13T13:07:51Z", "data": {}}').last_updated == 1710335271
    assert read_header(b'{"last_updated": "1710335271", "data": {}}').last_updated is None  # parse_feed refuses it too
    assert read_header(b'{"last_updated": 1710335271123, "data": {}}').last_updated == 1710335271
    assert read_header(b'{"last_updated": "yesterday", "ttl": "x", "data": {}}') == read_header(b'{"data": {}}')
    assert read_header(b'{"last_updated": 1') is None


# --- files -------------------------------------------------------------------------------------


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_file_discovery_with_relative_urls_reads_local_files(tmp_path: Path) -> None:
    gbfs = write_json(tmp_path / "gbfs.json", gbfs_2x({"en": {"station_status": "feeds/status.json"}}))
    (tmp_path / "feeds").mkdir()
    status = write_json(tmp_path / "feeds" / "status.json", station_status(1000))
    with make_client(gbfs.as_uri()) as client:
        result = client.fetch("station_status")
    assert result.url == status.as_uri()
    assert (result.outcome, result.body) == ("new", status.read_bytes())


def test_missing_local_feed_file_is_unreachable(tmp_path: Path) -> None:
    gbfs = write_json(tmp_path / "gbfs.json", gbfs_2x({"en": {"station_status": "gone.json"}}))
    with make_client(gbfs.as_uri()) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert caught.value.reason == "unreachable"
    assert "gone.json does not exist" in str(caught.value)


def test_from_folder_maps_local_files_and_takes_version_from_gbfs_json(tmp_path: Path) -> None:
    live_feeds = {"station_status": "https://example.org/ss.json"}
    write_json(tmp_path / "gbfs.json", gbfs_2x({"en": live_feeds}, version="2.2"))
    info = write_json(tmp_path / "station_information.json", {"last_updated": 1, "data": {"stations": []}})
    status = tmp_path / "station_status.json.gz"
    status.write_bytes(gzip.compress(as_bytes(station_status(1000))))
    (tmp_path / "notes.txt").write_text("not a feed")
    discovery = Discovery.from_folder(tmp_path, "citibike")
    assert discovery.feeds == {"station_information": info.as_uri(), "station_status": status.as_uri()}
    assert (discovery.system_id, discovery.version, discovery.language) == ("citibike", "2.2", "en")


def test_from_folder_without_gbfs_json_reads_the_version_of_a_feed(tmp_path: Path) -> None:
    folder = tmp_path / "bkn"
    folder.mkdir()
    write_json(folder / "station_status.json", {**station_status("2024-03-13T13:07:51Z"), "version": "3.0"})
    discovery = Discovery.from_folder(folder)
    assert (discovery.system_id, discovery.version, discovery.language) == ("bkn", "3.0", None)


def test_from_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FeedError) as empty:
        Discovery.from_folder(tmp_path)
    with pytest.raises(FeedError) as missing:
        Discovery.from_folder(tmp_path / "nope")
    assert (empty.value.reason, missing.value.reason) == ("no_feeds", "unreachable")
    assert str(tmp_path) in str(empty.value) and "nope" in str(missing.value)


def test_client_for_folder_fetches_gzip_files_and_reports_missing_feeds(tmp_path: Path) -> None:
    body = as_bytes(station_status(1000))
    (tmp_path / "station_status.json.gz").write_bytes(gzip.compress(body))
    with GbfsClient.for_folder(tmp_path, "citibike") as client:
        result = client.fetch("station_status")
        with pytest.raises(FeedError) as caught:
            client.fetch("station_information")
    assert (result.outcome, result.body, result.last_updated) == ("new", body, 1000)
    assert caught.value.reason == "feed_missing" and "station_status" in str(caught.value)


@pytest.mark.parametrize("version", ["2.3", "3.0"])
def test_shared_fixture_folders_read_as_systems(version: str) -> None:
    """The hand-built fixtures date both systems at the same instant, in POSIX seconds (2.3) and RFC 3339 (3.0)."""
    folder = FIXTURES / f"v{version}"
    with GbfsClient.for_folder(folder) as client:
        discovery = client.discover()
        status = client.fetch("station_status")
    assert discovery.version == version
    assert set(discovery.feeds) == {"station_information", "station_status"}
    assert status.body == (folder / "station_status.json").read_bytes()
    assert status.last_updated == read_header((FIXTURES / "v2.3" / "station_status.json").read_bytes()).last_updated
    assert client.state.feeds["station_status"].ttl == json.loads(status.body)["ttl"]


def test_oversized_local_file_is_refused(tmp_path: Path) -> None:
    write_json(tmp_path / "station_status.json", station_status(1000, stations=50))
    with GbfsClient.for_folder(tmp_path, max_bytes=500) as client, pytest.raises(FeedError) as caught:
        client.fetch("station_status")
    assert caught.value.reason == "payload_too_large"


# --- state -------------------------------------------------------------------------------------


def test_state_round_trips_through_json_and_keeps_validators(server: ScriptedServer) -> None:
    clock = FakeClock()
    url = serve_system(server, ("station_status", Reply(200)))
    server.script("/feeds/station_status.json",
                  Reply(200, station_status(1000), headers={"ETag": '"v1"'}), Reply(304))
    with make_client(url, clock=clock) as first_run:
        first_run.fetch("station_status")
        saved = json.dumps(first_run.state.to_dict())
    restored = ClientState.from_dict(json.loads(saved))
    assert restored == first_run.state
    clock.advance(5)
    with make_client(url, clock=clock, state=restored) as second_run:
        result = second_run.fetch("station_status")
    assert (result.outcome, result.last_updated) == ("not_modified", 1000)
    assert server.seen("/feeds/station_status.json")[-1].header("If-None-Match") == '"v1"'
    assert server.count("/gbfs.json") == 1  # the restored discovery was still fresh


@pytest.mark.parametrize(
    "data",
    [{"format": 99}, {"feeds": {}}, {"format": 1, "feeds": {"station_status": {"ttl": "soon"}}}, []],
    ids=["other-format", "no-format", "bad-field", "not-a-mapping"],
)
def test_invalid_state_is_refused_with_a_fix(data: Any) -> None:
    with pytest.raises(ValueError, match="delete the state file"):
        ClientState.from_dict(data)


def test_state_of_another_discovery_url_is_not_used(server: ScriptedServer) -> None:
    url = serve_system(server, ("station_status", Reply(200, station_status(1000))))
    stale = ClientState(discovery=Discovery(SYSTEM_ID, "https://old.example.org/gbfs.json", "2.3", "en",
                                            {"station_status": "https://old.example.org/ss.json"}))
    with make_client(url, state=stale) as client:
        assert client.fetch("station_status").url == server.url("/feeds/station_status.json")
