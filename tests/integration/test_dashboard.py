"""The live dashboard in a real browser (Debian's Chromium, driven by Playwright), served by Airflow's own API
server with the project's plugin, over the replay feed's Citi Bike landed by the pipeline, carried by a real
Kafka broker and applied by the live consumer: the login, the refusal of anonymous requests, the numbers on
the page against the live state store, the map, the refresh, the audit link."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from support.dashboard import CHROMIUM, DashboardWorld, dashboard_world

from citibikes.analytics.engines import DuckDBEngine
from citibikes.analytics.run import run
from citibikes.catalog import connect, refresh_catalog
from citibikes.config import SystemConfig

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, airflow_db: Path) -> DashboardWorld:
    world = dashboard_world(tmp_path_factory.mktemp("dashboard"), kafka_bootstrap, systems=("citibike", "synth-01"))
    yield world
    world.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"no {CHROMIUM}: run `make test` (it installs Debian's chromium) or apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(world: DashboardWorld, browser):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    world.log_in(page)
    page.wait_for_selector("#map[data-system=citibike][data-drawn]")  # the first system, of two
    yield page
    context.close()
    assert not errors, errors


def test_anonymous_requests_are_refused(world: DashboardWorld) -> None:
    for path in ("api/systems", "api/state?system=citibike", "api/health", "api/audit?system=citibike",
                 "static/dashboard.js", "reports/citibike/2026-01-01_2026-01-01/report.html"):
        assert requests.get(f"{world.url}/citibikes/{path}", timeout=10).status_code == 401, path
        forged = requests.get(f"{world.url}/citibikes/{path}", headers={"Authorization": "Bearer a.b.c"}, timeout=10)
        assert forged.status_code == 403, path
    for cookies in ({}, {"_token": "a.b.c"}):  # no session, or a forged one: the login page, then back
        page = requests.get(f"{world.url}/citibikes/", cookies=cookies, allow_redirects=False, timeout=10)
        assert page.status_code == 303 and "/auth/login" in page.headers["location"], cookies
    token = world.token()
    answer = requests.get(f"{world.url}/citibikes/api/systems", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["systems"][0]["id"] == "citibike"
    # Airflow's own REST API: nothing without the login either (its health probe alone is public).
    for path in ("dags", "connections", "variables", "dags/citibikes_ingest/dagRuns", "config"):
        assert requests.get(f"{world.url}/api/v2/{path}", timeout=10).status_code == 401, path
        authorised = requests.get(f"{world.url}/api/v2/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert authorised.status_code != 401, path
    assert requests.post(f"{world.url}/api/v2/dags/citibikes_ingest/dagRuns", json={"logical_date": None},
                         timeout=10).status_code == 401
    assert requests.post(f"{world.url}/auth/token", json={"username": "admin", "password": "guess"},
                         timeout=10).status_code == 401


def test_the_page_after_login_shows_what_the_live_state_store_holds(world: DashboardWorld, page) -> None:  # noqa: ANN001
    store = world.store()
    try:
        stations = store.stations("citibike")
        episodes = store.open_episodes("citibike")
    finally:
        store.close()
    placed = [s for s in stations if s["lat"] is not None and s["lon"] is not None]
    assert len(placed) > 2000
    assert page.get_attribute("#map", "data-drawn") == str(len(placed))
    assert cards(page) == {
        "stations": len(stations),
        "empty": sum(bool(s["is_installed"] and s["is_renting"] and s["num_bikes_available"] == 0) for s in stations),
        "full": sum(bool(s["is_installed"] and s["is_returning"] and s["num_docks_available"] == 0) for s in stations),
        "not-renting": sum(not (s["is_installed"] and s["is_renting"]) for s in stations),
        "bikes": sum(s["num_bikes_available"] or 0 for s in stations),
        "ebikes": sum(s["num_ebikes_available"] or 0 for s in stations)}
    rows = page.locator("#outages tbody tr[data-station-id]")
    longest = sorted(episodes, key=lambda e: (e["started"], e["station_id"]))[:10]
    assert len(longest) == 10  # the replayed Citi Bike has dozens of empty or full stations
    assert [rows.nth(i).get_attribute("data-station-id") for i in range(rows.count())] == [e["station_id"] for e in longest]
    health = page.inner_text("#health")
    assert "citibike" in health and "synth-01" in health and "up" in health


def test_the_selector_shows_each_system_and_all_of_them(world: DashboardWorld, page) -> None:  # noqa: ANN001
    store = world.store()
    try:
        synth = [s for s in store.stations("synth-01") if s["lat"] is not None]
        summary = store.summary()
    finally:
        store.close()
    assert page.locator("#system-select option").all_inner_texts()[-1] == "All systems"
    page.select_option("#system-select", "synth-01")
    page.wait_for_selector("#map[data-system=synth-01]")
    assert page.get_attribute("#map", "data-drawn") == str(len(synth)) and page.url.endswith("#system=synth-01")
    page.select_option("#system-select", "*")
    page.wait_for_selector("#map[data-system='*']")
    got = cards(page)
    assert (got["stations"], got["empty"], got["full"], got["bikes"]) == (
        summary["stations"], summary["empty"], summary["full"], summary["bikes_available"])
    assert not page.locator("#audit").is_visible()  # no audit for every system at once


def cards(page) -> dict[str, int]:  # noqa: ANN001
    """The cards' numbers, exact (their ``data-value``)."""
    return {name: int(page.get_attribute(f"#summary-{name}", "data-value"))
            for name in ("stations", "empty", "full", "not-renting", "bikes", "ebikes")}


def test_hovering_a_station_shows_its_figures(world: DashboardWorld, page) -> None:  # noqa: ANN001
    store = world.store()
    try:
        stations = {s["name"]: s for s in store.stations("citibike") if s["name"]}
    finally:
        store.close()
    box = page.locator("#map").bounding_box()
    shown = None
    for fx in (0.5, 0.45, 0.55, 0.4, 0.6):
        for fy in (0.5, 0.45, 0.55, 0.4, 0.6):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            if page.locator("#tooltip").is_visible():
                shown = page.inner_text("#tooltip")
                break
        if shown:
            break
    assert shown, "no station under the pointer anywhere near the map's middle"
    name = next(n for n in stations if n in shown)
    assert str(stations[name]["num_bikes_available"]) in shown


def test_the_page_refreshes_by_itself(world: DashboardWorld, page) -> None:  # noqa: ANN001
    before = page.get_attribute("#last-refresh", "data-as-of")
    world.minute()
    store = world.store()
    try:
        newest = store.summary()["newest_last_updated"]
    finally:
        store.close()
    page.wait_for_function(f"document.querySelector('#last-refresh').dataset.asOf == '{newest}'", timeout=8_000)
    assert int(newest) > int(before)


def test_the_audit_figures_link_to_the_report(world: DashboardWorld, page) -> None:  # noqa: ANN001
    assert "No analytics report yet" in page.inner_text("#audit")
    settings = world.pipeline.settings
    refresh_catalog(world.pipeline.lake, settings.catalog_path)
    day = datetime.now(UTC).astimezone(ZoneInfo("America/New_York")).date()
    con = connect(settings.catalog_path)
    try:
        analytics, _ = run(DuckDBEngine(con), world.pipeline.lake,
                           SystemConfig("citibike", "http://127.0.0.1:9/gbfs.json", timezone="America/New_York"), day, day)
    finally:
        con.close()
    headers = {"Authorization": f"Bearer {world.token()}"}
    deadline = time.monotonic() + 30  # the lake's figures are read again every 10 s
    while not requests.get(f"{world.url}/citibikes/api/audit", params={"system": "citibike"}, headers=headers,
                           timeout=10).json()["report"]:
        assert time.monotonic() < deadline, "the dashboard did not find the report in 30 s"
        time.sleep(1)
    page.reload()
    page.wait_for_selector("#audit-report")
    assert f"${analytics.system.fines:,}" in page.inner_text("#audit")
    with page.expect_popup() if page.get_attribute("#audit-report", "target") else page.expect_navigation():
        page.click("#audit-report")
    time.sleep(0.5)
    report = page.context.pages[-1]
    assert "citibike" in report.inner_text("body")
    summary = json.loads(requests.get(f"{world.url}/citibikes/reports/citibike/{day}_{day}/summary.json",
                                      headers=headers, timeout=10).text)
    assert summary["system"]["fines"] == analytics.system.fines
