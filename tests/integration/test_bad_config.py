"""Bad configuration gives one line naming the cause and the fix, and a non-zero exit - never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from citibikes.cli import build_parser
from citibikes.stack.kafka import install
from citibikes.stack.process import StackError, free_port

CLI = [sys.executable, "-m", "citibikes.cli"]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CITIBIKES_")}
    base["CITIBIKES_STATE_DIR"] = os.environ["CITIBIKES_STATE_DIR"]
    return subprocess.run([*CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and " - INFO - " not in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_port_in_use_names_the_port_and_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("up", env={"CITIBIKES_STATE_DIR": str(tmp_path), "CITIBIKES_FEED": "replay",
                                 "CITIBIKES_KAFKA_PORT": str(port), "CITIBIKES_KAFKA_CONTROLLER_PORT": str(free_port())})
    _one_line_error(result, f"port {port}", "already in use", "CITIBIKES_KAFKA_PORT")


def test_java_missing_says_how_to_install_it(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "JAVA_HOME": "", "CITIBIKES_STATE_DIR": str(tmp_path),
           "CITIBIKES_FEED": "replay", "CITIBIKES_KAFKA_PORT": str(free_port()),
           "CITIBIKES_KAFKA_CONTROLLER_PORT": str(free_port())}
    _one_line_error(_run("up", env=env), "java not found", "Java 17", "JAVA_HOME")


def test_maven_missing_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="mvn not found.*install it"):
        install(tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_broker_not_answering_fails_fast(tmp_path: Path) -> None:
    result = _run("run", "--mode", "single", "--log-file", str(tmp_path / "p.log"), env={
        "CITIBIKES_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "CITIBIKES_FEED": "replay",
        "CITIBIKES_LAKE_URI": str(tmp_path / "lake")}, timeout=60)
    _one_line_error(result, "no Kafka broker answers", "make up", "CITIBIKES_KAFKA_BOOTSTRAP")


def test_unreachable_feed_is_unusable() -> None:
    url = f"http://127.0.0.1:{free_port()}/gbfs.json"
    result = _run("validate", url)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot reach" in result.stderr and url in result.stderr


@pytest.mark.parametrize("env, needles", [
    ({"CITIBIKES_SYSTEMS_FILE": "/nonexistent/systems.yaml"}, ("does not exist",)),
    ({"LOG_LEVEL": "LOUD"}, ("LOG_LEVEL", "DEBUG")),
    ({"PIPELINE_INTERVAL": "soon"}, ("PIPELINE_INTERVAL", "seconds")),
    ({"CITIBIKES_FEED": "tomorrow"}, ("CITIBIKES_FEED", "live, replay or auto")),
    ({"CITIBIKES_LAKE_URI": "ftp://somewhere/lake"}, ("CITIBIKES_LAKE_URI",)),
])
def test_bad_settings_are_named(env: dict[str, str], needles: tuple[str, ...], tmp_path: Path) -> None:
    result = _run("run", "--mode", "single", "--log-file", str(tmp_path / "p.log"), env=env)
    _one_line_error(result, *needles)


def test_bad_systems_file_points_at_the_entry(tmp_path: Path) -> None:
    systems = tmp_path / "systems.yaml"
    systems.write_text("systems:\n  - id: Citi Bike\n    discovery_url: https://example.com/gbfs.json\n")
    result = _run("run", "--log-file", str(tmp_path / "p.log"), env={"CITIBIKES_SYSTEMS_FILE": str(systems)})
    _one_line_error(result, "entry 1", "'Citi Bike'", "lowercase")



@pytest.mark.parametrize("command", [("run", "--mode", "single"), ("consume", "--test-mode"),
                                     ("backfill", ".", "--system", "x")])
def test_bad_log_level_option_lists_the_choices(command: tuple[str, ...], tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    result = _run(*command, "--log-file", str(log), "--log-level", "loud", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        "error: argument --log-level: invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')")
    assert not log.exists()  # refused before anything started


def test_log_level_option_takes_any_case() -> None:
    for command in (["run"], ["consume"], ["backfill", ".", "--system", "x"], ["replay"]):
        assert build_parser().parse_args([*command, "--log-level", "warning"]).log_level == "WARNING"
