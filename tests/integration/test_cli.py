"""The command-line modes end to end: run (single, continuous + Ctrl-C), consume, backfill, validate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.replay.recordings import recorded
from citibikes.replay.server import make_server
from citibikes.stream.topics import ensure_topics
from support.kafka_read import read_topic

pytestmark = pytest.mark.kafka
CLI = [sys.executable, "-m", "citibikes.cli"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [\w.]+ - (DEBUG|INFO|WARNING|ERROR) - .+$")


@pytest.fixture
def cli_env(tmp_path: Path, kafka_bootstrap: str):
    server = make_server(tick_s=1.0).start_in_thread()
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
    (tmp_path / "systems.yaml").write_text(
        f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITIBIKES_")}
    env.update({
        "CITIBIKES_STATE_DIR": str(tmp_path / "state"),
        "CITIBIKES_SYSTEMS_FILE": str(tmp_path / "systems.yaml"),
        "CITIBIKES_PIPELINE_FILE": str(tmp_path / "pipeline.yaml"),
        "CITIBIKES_LAKE_URI": str(tmp_path / "lake"),
        "CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap,
    })
    settings = load_settings(env)
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), settings.topics.values())
    yield env, settings
    server.shutdown()


def _run(env, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_run_single_logs_one_summary_and_lands_data(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    env, settings = cli_env
    result = _run(env, "run", "--mode", "single", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "citibikes_pipeline.log").read_text().splitlines()
    assert log and all(LOG_LINE.match(line) for line in log), log
    (summary,) = [line for line in log if "Run 1 done" in line]
    processed, sent, quarantined = map(int, re.search(r"(\d+) records processed, (\d+) sent, (\d+) quarantined", summary).groups())
    assert processed == 2208 and quarantined > 0
    messages = sum(len(read_topic(kafka_bootstrap, t.name)) for t in settings.topics.values())
    assert sent == messages
    assert open_lake(settings.lake_uri).read_table("station_status").num_rows == processed - quarantined
    assert len(log) < 10, "one summary per run, not a line per record"


def test_run_continuous_stops_cleanly_on_ctrl_c(cli_env, tmp_path: Path) -> None:
    env, _ = cli_env
    process = subprocess.Popen([*CLI, "run", "--mode", "continuous", "--interval", "2", "--log-level", "DEBUG"],
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "citibikes_pipeline.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count(" done in ") < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    text = log.read_text()
    assert "Next execution in" in text
    assert "Pipeline stopped after" in text
    assert " - DEBUG - " in text


def test_consume_test_mode_builds_the_live_state(cli_env, tmp_path: Path) -> None:
    env, settings = cli_env
    assert _run(env, "run", "--mode", "single", cwd=tmp_path).returncode == 0
    result = _run(env, "consume", "--test-mode", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    valid = open_lake(settings.lake_uri).read_table("station_status").num_rows
    assert summary["stations"] == valid
    assert summary["described"] >= valid
    assert 0 < summary["empty"] < valid and 0 < summary["full"] < valid
    assert (tmp_path / "citibikes_consumer.log").exists()


def test_backfill_is_idempotent(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    env, settings = cli_env
    folder = tmp_path / "archive" / "nested"
    folder.mkdir(parents=True)
    for index, recording in enumerate(recorded("station_status") + recorded("station_information")):
        (folder / f"{index:03d}.json").write_bytes(recording.read_bytes())  # names say nothing
    (folder / "notes.json").write_text('{"hello": "world"}')
    first = _run(env, "backfill", str(tmp_path / "archive"), "--system", "citibike-history", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 snapshots, 4 ingested, 0 already done, 0 failed" in first.stderr
    assert "not_gbfs_station_feed" in first.stderr
    status_topic = settings.topics["station_status"].name
    published = len(read_topic(kafka_bootstrap, status_topic))
    lake = open_lake(settings.lake_uri)
    rows = lake.read_table("station_status").num_rows
    times = sorted(int(Path(f).stem) for f in lake.files("station_status"))
    assert times == [r.last_updated for r in recorded("station_status")]

    second = _run(env, "backfill", str(tmp_path / "archive"), "--system", "citibike-history", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0
    assert "0 ingested, 4 already done" in second.stderr
    assert len(read_topic(kafka_bootstrap, status_topic)) == published
    assert lake.read_table("station_status").num_rows == rows


def test_validate_a_folder_as_json(tmp_path: Path) -> None:
    (information,) = recorded("station_information")
    (tmp_path / "station_information.json").write_bytes(information.read_bytes())
    (tmp_path / "station_status.json").write_bytes(recorded("station_status")[0].read_bytes())
    result = subprocess.run([*CLI, "validate", str(tmp_path), "--json", "--system", "citibike"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["usable"] is True and report["version"] == "1.1"
    summary = report["summary"]
    assert summary["seen"] == {"station_information": 2208, "station_status": 2208}
    assert sum(summary["quarantined"].values()) == sum(summary["quarantined_by_reason"].values())
    assert summary["quarantined_by_reason"]["last_reported_sentinel"] == 7
    assert summary["feed_stale"] is False  # a recorded file is judged as of its own time


def test_validate_reports_an_unusable_feed(tmp_path: Path) -> None:
    (tmp_path / "station_information.json").write_text("<html><body>503 Service Unavailable</body></html>")
    (tmp_path / "station_status.json").write_bytes(recorded("station_status")[0].read_bytes())
    result = subprocess.run([*CLI, "validate", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"usable": False, "reason": "not_json", "error": json.loads(result.stdout)["error"]}
    assert "HTML" in json.loads(result.stdout)["error"]
