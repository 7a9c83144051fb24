"""The README's offline examples, run as written, so the README and the code cannot drift apart.

Convention: the line ``<!-- readme-test: offline -->`` directly before a ```` ```bash ```` block
(both may be indented, as in a list item) marks the block. Each command of every marked block
(a line; a line ending in ``\\`` goes on with the next; blank and ``#`` lines are skipped) runs with
``bash``, in README order, and must exit 0 by itself; a failure names the README line, the command,
its exit code and output. Long-lived commands (``make up``, ``--mode continuous``, ``tail -f``) stay
unmarked.

A marked command may rely on what ``make up`` gives a newcomer offline, here throwaway: the working
directory is the repository root (a folder of symlinks to its files, with ``.venv`` the virtualenv
running the tests and a fresh ``.state/``, which is ``CITIBIKES_STATE_DIR``); the session's Kafka
broker (``CITIBIKES_KAFKA_BOOTSTRAP``) with the project's topics; ``CITIBIKES_FEED=replay`` and the
replay feed at http://127.0.0.1:8765. It may also rely on what earlier marked commands did (the DuckDB
query reads the lake that ``citibikes run --mode single`` wrote just before).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from citibikes.config import load_settings
from citibikes.replay.server import DEFAULT_PORT, make_server
from citibikes.stream.topics import ensure_topics

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test: offline -->"


def marked_commands(readme: str) -> list[tuple[int, str]]:
    """(line number, command) of every marked block, in README order."""
    lines = readme.splitlines()
    commands: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if index + 1 == len(lines) or lines[index + 1].strip() != "```bash":
            raise AssertionError(f"README.md line {index + 1}: {MARKER} must be directly followed by a ```bash line")
        end = next((i for i in range(index + 2, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md line {index + 2}: the marked ```bash block is never closed")
        command: list[str] = []
        for number in range(index + 2, end):
            text = lines[number].strip()
            if not command and (not text or text.startswith("#")):
                continue
            command.append(text)
            if not text.endswith("\\"):
                commands.append((number + 2 - len(command), "\n".join(command)))
                command = []
    return commands


def repository_view(folder: Path) -> Path:
    """The repository root as a folder of symlinks, with ``.venv`` the virtualenv running the tests and
    an empty ``.state/``: commands read the repository but write only here (logs, lake, state)."""
    folder.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.suffix != ".log":
            (folder / entry.name).symlink_to(entry)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    (folder / ".state").mkdir()
    return folder


def test_readme_offline_examples_run_as_written(tmp_path: Path, kafka_bootstrap: str) -> None:
    commands = marked_commands((ROOT / "README.md").read_text())
    assert commands, f"README.md has no block marked {MARKER}"
    assert (Path(sys.prefix) / "bin" / "citibikes").exists(), f"the tests run outside the project's virtualenv ({sys.prefix})"
    root = repository_view(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CITIBIKES_") and k not in ("LOG_LEVEL", "PIPELINE_INTERVAL")}
    env.update({"CITIBIKES_STATE_DIR": str(root / ".state"), "CITIBIKES_KAFKA_BOOTSTRAP": kafka_bootstrap,
                "CITIBIKES_FEED": "replay"})
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), load_settings(env).topics.values())
    try:
        feed = make_server(port=DEFAULT_PORT).start_in_thread()
    except OSError as exc:
        pytest.fail(f"the README's replay feed address 127.0.0.1:{DEFAULT_PORT} is taken ({exc}); `make down` and run again")
    try:
        for line, command in commands:
            try:
                result = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                                        timeout=300)
            except subprocess.TimeoutExpired:
                pytest.fail(f"README.md line {line}: `{command}` did not finish in 300 s (long-lived commands stay unmarked)")
            print(f"$ {command}\n{result.stdout}{result.stderr}")  # shown with -s or -rP
            if result.returncode != 0:
                pytest.fail(f"README.md line {line}: `{command}` exited {result.returncode}\n"
                            f"{result.stdout[-3000:]}{result.stderr[-3000:]}", pytrace=False)
    finally:
        feed.shutdown()
