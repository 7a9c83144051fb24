"""The replay server over real HTTP on loopback: discovery, caching headers, gzip, faults, 404s, load.

The server runs in a thread on a free port with a frozen clock (advanced by hand where a test
needs a new tick), so no test depends on when it runs relative to a tick boundary.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.utils import formatdate
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from citibikes.replay.server import FAULTS, ReplayServer, make_server

T0 = 1_800_000_000.0


class FrozenClock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture(scope="module")
def server(clock: FrozenClock) -> Iterator[ReplayServer]:
    replay = make_server(port=0, clock=clock, slow_s=1.0).start_in_thread()
    yield replay
    replay.shutdown()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0, method: str = "GET") -> Response:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def feed_urls(discovery: dict) -> dict[str, str]:
    data = discovery["data"]
    feeds = data["feeds"] if "feeds" in data else data["en"]["feeds"]
    return {feed["name"]: feed["url"] for feed in feeds}


def test_discovery_2_3_lists_absolute_urls_of_the_host_used(server: ReplayServer) -> None:
    response = get(f"{server.url}/citibike/gbfs.json")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["version"] == "2.3" and document["last_updated"] == T0 and document["ttl"] == 15
    urls = feed_urls(document)
    assert set(urls) == {"system_information", "station_information", "station_status"}
    assert urls["station_status"] == f"{server.url}/citibike/2.3/en/station_status.json"

    port = urlsplit(server.url).port
    behind_compose = get(f"{server.url}/citibike/gbfs.json", headers={"Host": f"replay:{port}"}).json()
    assert all(url.startswith(f"http://replay:{port}/citibike/") for url in feed_urls(behind_compose).values())
    by_name = get(f"http://localhost:{port}/citibike/2.3/gbfs.json").json()
    assert feed_urls(by_name)["station_status"] == f"http://localhost:{port}/citibike/2.3/en/station_status.json"


def test_every_listed_feed_answers_with_its_document(server: ReplayServer) -> None:
    urls = feed_urls(get(f"{server.url}/citibike/gbfs.json").json())
    system = get(urls["system_information"]).json()["data"]
    assert system["system_id"] == "citibike" and system["timezone"] == "America/New_York"
    assert system["language"] == "en" and system["name"] == "Citi Bike"
    information = get(urls["station_information"]).json()
    status = get(urls["station_status"]).json()
    assert len(information["data"]["stations"]) == len(status["data"]["stations"]) == 2208
    assert status["last_updated"] == information["last_updated"] == T0


def test_discovery_3_0_shape(server: ReplayServer) -> None:
    document = get(f"{server.url}/citibike-v3/gbfs.json").json()
    assert document["version"] == "3.0"
    assert datetime.fromisoformat(document["last_updated"]).timestamp() == T0
    urls = feed_urls(document)
    assert "en" not in document["data"]
    assert set(urls) == {"system_information", "station_information", "station_status", "vehicle_types"}
    assert urls["station_status"] == f"{server.url}/citibike-v3/3.0/station_status.json"
    system = get(urls["system_information"]).json()["data"]
    assert system["languages"] == ["en"] and system["name"] == [{"text": "Citi Bike", "language": "en"}]
    station = get(urls["station_status"]).json()["data"]["stations"][0]
    assert "num_vehicles_available" in station and isinstance(station["is_installed"], bool)


def test_etag_and_last_modified_give_304(server: ReplayServer, clock: FrozenClock) -> None:
    url = f"{server.url}/citibike/2.3/en/station_status.json"
    first = get(url)
    assert first.status == 200
    assert first.headers["cache-control"] == "max-age=15"
    assert first.headers["last-modified"] == formatdate(T0, usegmt=True)
    etag = first.headers["etag"]
    again = get(url, headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["etag"] == etag
    assert get(url, headers={"If-None-Match": '"something-else"'}).status == 200
    assert get(url, headers={"If-Modified-Since": first.headers["last-modified"]}).status == 304
    assert get(url, headers={"If-Modified-Since": formatdate(T0 - 15, usegmt=True)}).status == 200

    clock.now = T0 + 15
    try:
        next_tick = get(url, headers={"If-None-Match": etag})
        assert next_tick.status == 200 and next_tick.headers["etag"] != etag
        assert next_tick.json()["last_updated"] == T0 + 15
    finally:
        clock.now = T0


def test_gzip_when_asked_and_only_then(server: ReplayServer) -> None:
    url = f"{server.url}/citibike/2.3/en/station_information.json"
    plain = get(url)
    packed = get(url, headers={"Accept-Encoding": "gzip, deflate"})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert len(packed.body) < len(plain.body) / 4
    assert gzip.decompress(packed.body) == plain.body
    assert "content-encoding" not in get(url, headers={"Accept-Encoding": "gzip;q=0"}).headers


def test_head_sends_headers_only(server: ReplayServer) -> None:
    response = get(f"{server.url}/citibike/2.3/en/station_status.json", method="HEAD")
    assert response.status == 200 and response.body == b"" and int(response.headers["content-length"]) > 100_000


@pytest.mark.parametrize("system", sorted(FAULTS))
def test_fault_systems_have_a_valid_discovery_and_station_information(server: ReplayServer, system: str) -> None:
    urls = feed_urls(get(f"{server.url}/{system}/gbfs.json").json())
    assert urls["station_status"].startswith(f"{server.url}/{system}/2.3/en/station_status.json")
    assert get(urls["system_information"]).json()["data"]["system_id"] == system
    assert len(get(urls["station_information"]).json()["data"]["stations"]) == 2208


def status_url(server: ReplayServer, system: str) -> str:
    return f"{server.url}/{system}/2.3/en/station_status.json"


def test_fault_html_answers_200_with_an_html_page(server: ReplayServer) -> None:
    response = get(status_url(server, "fault-html"))
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    assert response.body.lstrip().startswith(b"<!DOCTYPE html>")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fault_500_always_fails(server: ReplayServer) -> None:
    assert [get(status_url(server, "fault-500")).status for _ in range(3)] == [500, 500, 500]


def test_fault_truncated_sends_cut_json(server: ReplayServer) -> None:
    response = get(status_url(server, "fault-truncated"))
    full = get(status_url(server, "citibike"))
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    assert 0 < len(response.body) < len(full.body)
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fault_stale_is_ten_minutes_behind(server: ReplayServer) -> None:
    document = get(status_url(server, "fault-stale")).json()
    assert document["last_updated"] == T0 - 600
    assert len(document["data"]["stations"]) == 2208


def test_fault_404_lists_a_feed_that_is_missing(server: ReplayServer) -> None:
    urls = feed_urls(get(f"{server.url}/fault-404/gbfs.json").json())
    response = get(urls["station_status"])
    assert response.status == 404 and "error" in response.json()


def test_fault_slow_outlasts_a_client_timeout(server: ReplayServer) -> None:
    with pytest.raises((socket.timeout, TimeoutError)):
        get(status_url(server, "fault-slow"), timeout=0.3)  # server option slow_s=1.0
    urls = feed_urls(get(f"{server.url}/fault-slow/gbfs.json?delay=0.5").json())
    assert urls["station_status"].endswith("?delay=0.5")
    start = time.monotonic()
    response = get(urls["station_status"], timeout=5)
    assert response.status == 200 and len(response.json()["data"]["stations"]) == 2208
    assert time.monotonic() - start >= 0.5


@pytest.mark.parametrize("path", [
    "/nowhere/gbfs.json", "/synth-100/gbfs.json", "/citibike/2.3/en/free_bike_status.json",
    "/citibike/3.0/station_status.json", "/citibike-v3/2.3/en/station_status.json", "/citibike", "/favicon.ico",
])
def test_unknown_systems_and_feeds_are_json_404s(server: ReplayServer, path: str) -> None:
    response = get(server.url + path)
    assert response.status == 404 and response.headers["content-type"] == "application/json"
    assert response.json()["status"] == 404 and response.json()["error"]


def test_healthz(server: ReplayServer) -> None:
    response = get(f"{server.url}/healthz")
    assert response.status == 200 and response.json()["status"] == "ok"


def test_twenty_clients_fetch_twenty_synthetic_systems_at_once(server: ReplayServer) -> None:
    systems = [f"synth-{n:02d}" for n in range(10, 30)]
    barrier = threading.Barrier(len(systems))

    def fetch(system: str) -> tuple[str, set[str], int]:
        barrier.wait()
        urls = feed_urls(get(f"{server.url}/{system}/gbfs.json").json())
        status = get(urls["station_status"], headers={"Accept-Encoding": "gzip"})
        assert status.status == 200
        stations = json.loads(gzip.decompress(status.body))["data"]["stations"]
        information = get(urls["station_information"]).json()["data"]["stations"]
        return system, {s["station_id"] for s in stations}, len(information)

    start = time.monotonic()
    with ThreadPoolExecutor(len(systems)) as pool:
        results = list(pool.map(fetch, systems))
    assert time.monotonic() - start < 15
    for system, ids, information_count in results:
        assert ids and all(station_id.startswith(f"{system}-") for station_id in ids)
        assert len(ids) == information_count
    assert len(set().union(*(ids for _, ids, _ in results))) == sum(len(ids) for _, ids, _ in results)


def test_server_stops_promptly_even_with_a_slow_request_in_flight() -> None:
    replay = make_server(port=0, slow_s=60.0).start_in_thread()
    slow = threading.Thread(target=lambda: get(status_url(replay, "fault-slow"), timeout=30), daemon=True)
    slow.start()
    time.sleep(0.3)
    start = time.monotonic()
    replay.shutdown()
    slow.join(5)
    assert not slow.is_alive()
    assert time.monotonic() - start < 5
    address = urlsplit(replay.url)
    with pytest.raises(OSError):
        socket.create_connection((address.hostname, address.port), timeout=1)
