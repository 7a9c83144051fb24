"""The real alerts DAG (dag.test) on a live store with long outages: the lake table and the notification,
to the default file and to a webhook (a real HTTP server behind an Airflow HTTP connection)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from citibikes.lake import open_lake
from support.outages import DURATION_S, END, EXPECTED, build_store
from support.dags import load_dag

pytestmark = [pytest.mark.airflow]


@pytest.fixture
def alerts_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> Path:
    systems = tmp_path / "systems.yaml"
    systems.write_text("systems:\n  - id: citibike\n    discovery_url: http://127.0.0.1:1/gbfs.json\n"
                       "    outage_threshold_min: 30\n")
    build_store(tmp_path / "live.db").close()
    lake = tmp_path / "lake"
    for name, value in {
        "CITIBIKES_SYSTEMS_FILE": str(systems),
        "CITIBIKES_STATE_DIR": str(tmp_path / "state"),
        "CITIBIKES_LIVE_STORE": str(tmp_path / "live.db"),
        "CITIBIKES_LAKE_URI": str(lake),
        "AIRFLOW_CONN_CITIBIKES_LAKE": json.dumps({"conn_type": "fs", "extra": {"path": str(lake)}}),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CITIBIKES_ALERTS_WEBHOOK_CONN", raising=False)
    return tmp_path



def _helpers(outages: list[dict]) -> dict:
    return {(o["station_id"], o["kind"]): [(h["station_id"], h["distance_m"], h["available"]) for h in o["helpers"]]
            for o in outages}


def test_a_run_lands_the_list_in_the_lake_and_appends_it_to_the_alerts_file_once(alerts_env: Path) -> None:
    run = load_dag("citibikes_alerts").test()
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}

    table = open_lake(str(alerts_env / "lake")).read_table("rebalancing")
    assert sorted((r["station_id"], r["kind"], r["duration_s"], r["run_id"]) for r in table.to_pylist()) == [
        ("E", "empty", DURATION_S, run.run_id), ("F", "full", DURATION_S, run.run_id)]
    assert _helpers(table.to_pylist()) == EXPECTED

    (notes,) = (alerts_env / "state" / "alerts").glob("rebalancing-*.jsonl")
    assert notes.name == f"rebalancing-{run.run_after:%Y-%m-%d}.jsonl"
    (line,) = notes.read_text().splitlines()
    sent = json.loads(line)
    assert sent["run_id"] == run.run_id and sent["triggered_by"] == []
    assert sent["systems"] == {"citibike": {"as_of": END, "empty": 1, "full": 1}}
    assert _helpers(sent["outages"]) == EXPECTED
    assert [f.split("/system=")[1] for f in sent["files"]] == [
        f"citibike/date={run.run_after:%Y-%m-%d}/{sent['files'][0].rsplit('/', 1)[1]}"]

    # Woken again with the same outages: nothing changed, so nothing is written or sent.
    again = load_dag("citibikes_alerts").test()
    assert again.state == "success"
    assert {ti.task_id: ti.state for ti in again.get_task_instances()} == {"plan": "success", "notify": "skipped"}
    assert len(notes.read_text().splitlines()) == 1
    assert open_lake(str(alerts_env / "lake")).read_table("rebalancing").num_rows == 2


class _Webhook(ThreadingHTTPServer):
    """Receives POSTs on 127.0.0.1 and keeps their paths and JSON bodies."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_with_a_webhook_connection_the_list_is_posted_there_instead(alerts_env: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    webhook = _Webhook()
    try:
        url = f"http://127.0.0.1:{webhook.server_address[1]}/hooks/rebalancing"
        monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_WEBHOOK", json.dumps({"conn_type": "http", "host": url}))
        monkeypatch.setenv("CITIBIKES_ALERTS_WEBHOOK_CONN", "citibikes_webhook")
        run = load_dag("citibikes_alerts").test()
    finally:
        webhook.shutdown()
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    ((path, body),) = webhook.received
    assert path == "/hooks/rebalancing"
    assert body["run_id"] == run.run_id and _helpers(body["outages"]) == EXPECTED
    assert not (alerts_env / "state" / "alerts").exists()
