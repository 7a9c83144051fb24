"""Benchmark: the live dashboard's time to a drawn map after login, in headless Chromium, and its data's size.

Usage, from the repository root: ``.venv/bin/python bench/dashboard.py [--repeat 5] [--screenshot docs/dashboard.png]
[--json out.json]`` (about 3 minutes; needs Debian's chromium, which ``make test`` installs).

For Citi Bike alone (2,208 stations) and for 50 replayed systems (Citi Bike and ``synth-01`` .. ``synth-49``, the
page's "All systems" view), the world the tests use (``tests/support/dashboard.py``): two minutes of snapshots
landed by the pipeline, carried by a real Kafka broker, applied by the live consumer, and Airflow's API server
with the plugin. A browser logged in once opens the dashboard ``--repeat`` times in new tabs; each time is the
page's own ``window.__dashboard.firstDrawMs`` (from the navigation's start to the end of the first draw of the
map: the HTML, the script, the data and the drawing). The data is ``api/state``: its bytes as sent (gzip) and
unpacked, and its server time (median of ``--repeat`` requests).

Baseline, in the same run and browser: Airflow's own health endpoint opened the same way (navigation to a
trivial JSON page: what the browser and the server cost before any dashboard work).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include"), str(ROOT / "plugins"), str(ROOT / "tests")]

import requests  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from support.dashboard import CHROMIUM, dashboard_world  # noqa: E402

from bench.common import kafka_broker, machine_info  # noqa: E402

CASES = {"citibike": (("citibike",), "citibike"),
         "50 systems": (("citibike", *(f"synth-{n:02d}" for n in range(1, 50))), "*")}


def measure(world, browser, system: str, repeat: int, screenshot: Path | None) -> dict:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    world.log_in(context.new_page())
    draws, baseline = [], []
    for _ in range(repeat):
        page = context.new_page()
        page.goto(f"{world.url}/citibikes/#system={system}")
        page.wait_for_function(f"document.querySelector('#map').dataset.system == '{system}'", timeout=60_000)
        draws.append(page.evaluate("window.__dashboard.firstDrawMs") / 1000)
        drawn = int(page.get_attribute("#map", "data-drawn"))
        page.close()
        page = context.new_page()
        page.goto(f"{world.url}/api/v2/monitor/health")
        baseline.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
        page.close()
    if screenshot:
        page = context.new_page()
        page.goto(f"{world.url}/citibikes/#system={system}")
        page.wait_for_selector("#map[data-drawn]")
        page.wait_for_timeout(500)
        page.screenshot(path=str(screenshot))
    context.close()
    headers = {"Authorization": f"Bearer {world.token()}", "Accept-Encoding": "gzip"}
    served, sizes = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        answer = requests.get(f"{world.url}/citibikes/api/state", params={"system": system}, headers=headers,
                              stream=True, timeout=60)
        sent = answer.raw.read(decode_content=False)
        served.append(time.perf_counter() - began)
        sizes = {"gzip_bytes": len(sent), "json_bytes": len(gzip.decompress(sent))}
    return {"stations_drawn": drawn, "first_draw_s": _stats(draws), "baseline_health_page_s": _stats(baseline),
            "state_endpoint_s": _stats(served), **sizes}


def _stats(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"machine": machine_info(), "command": " ".join(sys.argv), "cases": {}}
    with kafka_broker() as broker, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, (systems, shown) in CASES.items():
            world = dashboard_world(Path(tempfile.mkdtemp(prefix="bench-dashboard-")), broker.bootstrap, systems,
                                    minutes=2)
            try:
                figures = report["cases"][name] = measure(world, browser, shown, args.repeat,
                                                          args.screenshot if shown == "citibike" else None)
            finally:
                world.stop()
            print(f"{name}: {figures['stations_drawn']:,} stations drawn, first draw median "
                  f"{figures['first_draw_s']['median_s']} s {figures['first_draw_s']['runs']}; baseline (Airflow's "
                  f"health page) {figures['baseline_health_page_s']['median_s']} s; api/state "
                  f"{figures['gzip_bytes']:,} B gzip ({figures['json_bytes']:,} B JSON) in "
                  f"{figures['state_endpoint_s']['median_s']} s", flush=True)
        browser.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
