"""The command-line modes end to end: run (single, continuous + Ctrl-C), consume, backfill, validate, tail."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from citibikes.config import load_settings
from citibikes.lake import open_lake
from citibikes.replay.backfill import run_id_for
from citibikes.replay.recordings import recorded
from citibikes.replay.server import make_server
from citibikes.stream.topics import ensure_topics
from support.kafka_read import read_topic

pytestmark = pytest.mark.kafka
CLI = [sys.executable, "-m", "citibikes.cli"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [\w.]+ - (DEBUG|INFO|WARNING|ERROR) - .+$")
CONSUMER_SUMMARY = re.compile(r" - citibikes\.consumer - INFO - \d+ messages consumed \(\d+ applied, \d+ duplicates, "
                              r"\d+ unreadable\); (\d+) stations live, \d+ described, \d+ empty, \d+ full, \d+ bikes; lag \d+$")


@pytest.fixture
def cli_env(tmp_path: Path, kafka_bootstrap: str):
    server = make_server(tick_s=1.0).start_in_thread()
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "pipeline.yaml").write_text("topics:\n" + "".join(
        f"  {key}: {{name: {prefix}-{key}}}\n" for key in ("station_information", "station_status", "quarantine")))
    (tmp_path / "systems.yaml").write_text(
        f"systems:\n  - id: citibike\n    discovery_url: {server.url}/citibike/gbfs.json\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CITIBIKES_") and k not in ("LOG_LEVEL", "PIPELINE_INTERVAL")}
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


def _run_in_terminal(env, *args, cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """The CLI with stderr on a pseudo-terminal, as in a shell: its exit code and what it wrote there."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, not 0 x 0
    process = subprocess.Popen([*CLI, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 1.0)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        return process.wait(max(1.0, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


def _wait_for(path: Path, text: str, timeout: float = 60) -> str:
    """The file's content once it contains ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{path.name} does not say {text!r} after {timeout:.0f} s:\n{content}")


def test_run_single_logs_one_summary_and_lands_data(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    env, settings = cli_env
    result = _run(env, "run", "--mode", "single", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "citibikes_pipeline.log").read_text().splitlines()
    assert log and all(LOG_LINE.match(line) for line in log), log
    assert not any(" - DEBUG - " in line for line in log)  # LOG_LEVEL unset: INFO
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


def test_pipeline_interval_and_log_level_come_from_the_environment(cli_env, tmp_path: Path) -> None:
    env, _ = cli_env
    process = subprocess.Popen([*CLI, "run", "--mode", "continuous"], env={**env, "PIPELINE_INTERVAL": "7", "LOG_LEVEL": "DEBUG"},
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = _wait_for(tmp_path / "citibikes_pipeline.log", "Next execution in")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    assert code == 0
    assert "mode=continuous, interval=7s" in text
    (wait,) = map(int, re.findall(r" - INFO - Next execution in (\d+) seconds$", text, re.MULTILINE))
    assert 0 < wait <= 7  # the interval less the run's own time (the default would say 59 or so)
    assert re.search(r" - citibikes\.run - DEBUG - ", text), text


def test_ctrl_c_during_a_step_lets_it_finish_and_land(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """SIGINT while the feed is still answering: the step completes, is flushed to Kafka and landed, exit 0."""
    env, settings = cli_env
    base = settings.systems[0].discovery_url.removesuffix("/citibike/gbfs.json")
    (tmp_path / "slow.yaml").write_text(  # station_status answers after 4 s
        f"systems:\n  - id: citibike\n    discovery_url: {base}/fault-slow/gbfs.json?delay=4\n")
    process = subprocess.Popen([*CLI, "run", "--mode", "continuous", "--interval", "2"],
                               env={**env, "CITIBIKES_SYSTEMS_FILE": str(tmp_path / "slow.yaml")},
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "citibikes_pipeline.log"
    _wait_for(log, "Pipeline started")
    time.sleep(1.5)  # into the step: fetching station_status
    assert " done in " not in log.read_text()
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0, process.stderr.read()
    text = log.read_text()
    assert text.index("Stopping after the current step") < text.index("Run 1 done")
    (summary,) = [line for line in text.splitlines() if "Run 1 done" in line]
    processed, sent, quarantined = map(int, re.search(r"(\d+) records processed, (\d+) sent, (\d+) quarantined",
                                                      summary).groups())
    assert processed == 2208 and "systems: 1 success" in summary
    assert sent == sum(len(read_topic(kafka_bootstrap, t.name)) for t in settings.topics.values())
    assert open_lake(settings.lake_uri).read_table("station_status").num_rows == processed - quarantined
    assert "Next execution in" not in text and "Pipeline stopped after 1 runs" in text


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
    log = (tmp_path / "citibikes_consumer.log").read_text().splitlines()
    assert log and all(LOG_LINE.match(line) for line in log), log
    summaries = [int(m.group(1)) for m in map(CONSUMER_SUMMARY.search, log) if m]
    assert summaries and summaries[-1] == valid, log  # the last summary: every valid station live


def test_backfill_is_idempotent_and_lands_history_in_the_lake_only(cli_env, tmp_path: Path,
                                                                    kafka_bootstrap: str) -> None:
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
    published = [m for m in read_topic(kafka_bootstrap, status_topic) if m["headers"]["system_id"] == "citibike-history"]
    assert published == [], "history goes to Kafka only with --publish"
    lake = open_lake(settings.lake_uri)
    table = lake.read_table("station_status")
    rows = table.num_rows
    times = [r.last_updated for r in recorded("station_status")]  # one hour: one file for the four
    assert sorted({int(t.timestamp()) for t in table.column("last_updated").to_pylist()}) == times
    assert [Path(f).name for f in lake.files("station_status")] == [f"{times[0]}-{times[-1]}.parquet"]

    second = _run(env, "backfill", str(tmp_path / "archive"), "--system", "citibike-history", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0
    assert "0 ingested, 4 already done" in second.stderr
    assert lake.read_table("station_status").num_rows == rows


def test_backfill_with_hours_old_station_information_is_done_once(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """Many systems publish station_information hours old: its stations are valid, every snapshot
    succeeds, and a second backfill finds them all done."""
    env, settings = cli_env
    statuses = recorded("station_status")
    (information,) = recorded("station_information")
    document = json.loads(information.read_bytes())
    document["last_updated"] = statuses[0].last_updated - 3600
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "information.json").write_text(json.dumps(document))
    for recording in statuses:
        (archive / f"status-{recording.last_updated}.json").write_bytes(recording.read_bytes())
    first = _run(env, "backfill", str(archive), "--system", "old-info", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 snapshots, 4 ingested, 0 already done, 0 failed" in first.stderr
    lake = open_lake(settings.lake_uri)
    assert [run.outcome for run in lake.read_runs("old-info")] == ["success"] * 4
    assert lake.read_table("station_information", "old-info").num_rows > 2000
    reasons = lake.read_table("quarantine", "old-info").column("reasons").to_pylist()
    assert reasons and not any("stale_feed" in r or "unknown_station" in r for r in reasons)

    second = _run(env, "backfill", str(archive), "--system", "old-info", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "4 snapshots, 0 ingested, 4 already done, 0 failed" in second.stderr
    assert len(lake.read_runs("old-info")) == 4


def test_backfill_follows_last_updated_whatever_the_names(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """Names and folders sort newest first; ingestion still goes oldest first, and with --publish so
    does Kafka. On a terminal the backfill draws a progress bar, and its report counts the files it skipped."""
    env, settings = cli_env
    statuses = recorded("station_status")  # oldest first
    archive = tmp_path / "archive"
    places = ["a.json", "b/status.json", "c/d/x.json", "c/e/y.json"]  # the order a walk meets them
    for recording, place in zip(reversed(statuses), places):
        (archive / place).parent.mkdir(parents=True, exist_ok=True)
        (archive / place).write_bytes(recording.read_bytes())
    (information,) = recorded("station_information")
    (archive / "z" / "information.json").parent.mkdir()
    (archive / "z" / "information.json").write_bytes(information.read_bytes())
    (archive / "README.md").write_text("# scraped every 15 minutes\n")
    code, output = _run_in_terminal(env, "backfill", str(archive), "--system", "renamed", "--publish", cwd=tmp_path)
    assert code == 0, output
    assert "4 snapshots, 4 ingested, 0 already done, 0 failed" in output
    assert "files skipped: 1 unsupported_suffix" in output
    assert re.search(r"\| 4/4 \[", output), output  # tqdm's bar

    runs = sorted(open_lake(settings.lake_uri).read_runs("renamed"), key=lambda run: run.started_at)
    assert [run.run_id for run in runs] == [run_id_for("renamed", r.last_updated) for r in statuses]
    in_partitions: dict[int, list[int]] = {}
    for message in read_topic(kafka_bootstrap, settings.topics["station_status"].name):
        if message["headers"]["system_id"] != "renamed":
            continue
        in_partitions.setdefault(message["partition"], []).append(int(message["headers"]["last_updated"]))
    assert {t for times in in_partitions.values() for t in times} == {r.last_updated for r in statuses}
    assert all(times == sorted(times) for times in in_partitions.values())  # produced oldest first


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


def _lines_of(process: subprocess.Popen) -> queue.Queue:
    """The process's stdout lines, as they come, read by a thread (so a test can wait with a timeout)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_lines(lines: queue.Queue, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    try:
        return [json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic()))) for _ in range(count)]
    except queue.Empty:
        raise AssertionError(f"tail printed fewer than {count} lines in {timeout:.0f} s") from None


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """(key, value) pairs to partition 0 of ``topic``, every one acknowledged."""
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in messages:
        producer.produce(topic, key=key, value=value, partition=0,
                         on_delivery=lambda error, _: error and errors.append(error.str()))
    assert producer.flush(10) == 0 and not errors, errors


def test_tail_follows_until_ctrl_c(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """-n 2 -f: the last two messages of each partition, then every new one, also after idle seconds and
    beyond n x partitions messages; Ctrl-C ends it with exit code 0."""
    env, settings = cli_env
    topic = settings.topics["station_status"].name

    def produce(first: int, last: int) -> None:
        _produce(kafka_bootstrap, topic, [(b"s:A", json.dumps({"n": n}).encode()) for n in range(first, last)])

    produce(0, 5)  # partition 0 only: the other partitions are empty
    process = subprocess.Popen([*CLI, "tail", topic, "-n", "2", "-f"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines_of(process)
        assert [line["value"] for line in _next_lines(lines, 2)] == [{"n": 3}, {"n": 4}]
        for batch in ((5, 7), (7, 12)):
            time.sleep(4)  # idle polls do not end a follow
            produce(*batch)
            assert [line["value"]["n"] for line in _next_lines(lines, batch[1] - batch[0])] == list(range(*batch))
        assert process.poll() is None, "tail -f stopped by itself"
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_tail_into_a_pipe_whose_reader_left_ends_quietly(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """`citibikes tail TOPIC -f | head -2`: once head has its lines and leaves, the next message ends tail
    with 141 (128 + SIGPIPE, as a shell reports it) and no traceback."""
    env, settings = cli_env
    topic = settings.topics["station_status"].name
    _produce(kafka_bootstrap, topic, [(b"s:A", b'{"n": 0}')])
    process = subprocess.Popen([*CLI, "tail", topic, "-n", "1", "-f"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(process.stdout.readline())["value"] == {"n": 0}
        process.stdout.close()  # the reader leaves
        _produce(kafka_bootstrap, topic, [(b"s:A", b'{"n": 1}')] * 50)
        code = process.wait(60)
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert code == 141 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_tail_prints_tombstones_and_text_and_stops_when_caught_up(cli_env, tmp_path: Path, kafka_bootstrap: str) -> None:
    """The compacted information topic carries tombstones (null values); a value that is not JSON is
    printed as text; keys may be null (not on a compacted topic: the broker refuses them there)."""
    env, settings = cli_env
    information, quarantine = settings.topics["station_information"].name, settings.topics["quarantine"].name
    _produce(kafka_bootstrap, information, [(b"s:A", b'{"name": "Main St"}'), (b"s:A", None), (b"s:B", b"not json")])
    _produce(kafka_bootstrap, quarantine, [(None, b"\xff")])
    shown = {}
    for topic in (information, quarantine):
        result = _run(env, "tail", topic, "--from-beginning", cwd=tmp_path, timeout=60)
        assert result.returncode == 0, result.stderr
        shown[topic] = result.stdout.splitlines()
    assert [(line["key"], line["value"]) for line in map(json.loads, shown[information])] == [
        ("s:A", {"name": "Main St"}), ("s:A", None), ("s:B", "not json")]
    assert '"value": null' in shown[information][1]
    assert [(line["key"], line["value"]) for line in map(json.loads, shown[quarantine])] == [(None, "\ufffd")]
