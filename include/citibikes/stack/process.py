"""Background services managed by pid file: start once, wait until ready, stop cleanly.

The local stack (Kafka broker, replay feed, S3 server, Airflow) runs as plain processes without
Docker. Each service has a pid file under the state folder; ``start`` refuses to start a second
copy, ``stop`` signals the whole process group and waits, and ``status`` tells what is running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence


class StackError(RuntimeError):
    """A service could not be started or stopped; the message names the cause and the fix."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests that start their own services)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


@dataclass
class Service:
    """One background process: how to start it, where its pid and log go, how to know it is ready."""

    name: str
    command: Sequence[str]
    run_dir: Path
    log_file: Path
    ports: Sequence[tuple[str, int]] = ()
    """Ports the service listens on: must be free before start, and open once it is ready."""
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    ready: Callable[[], bool] | None = None
    """Extra readiness probe, checked after the ports are open."""
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    stop_signal: int = signal.SIGTERM
    fix_hint: str = ""
    """Appended to a start failure: what the user can do about it."""
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def check_ports_free(self) -> None:
        for host, port in self.ports:
            if port_open(host, port):
                raise StackError(
                    f"{self.name}: port {port} on {host} is already in use by another program; "
                    f"stop that program or choose another port ({self.fix_hint or 'see README, Configuration'})"
                )

    def start(self) -> str:
        """Start unless already running; wait until ready. Returns 'started' or 'already running'."""
        if self.running():
            return "already running"
        self.pid_file.unlink(missing_ok=True)
        self.check_ports_free()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_file, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    list(self.command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.cwd, env=env, start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise StackError(f"{self.name}: cannot run {exc.filename!r}: not installed; {self.fix_hint}") from None
        self.pid_file.write_text(str(self._proc.pid))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name}: exited with code {self._proc.returncode} while starting; "
                    f"last log lines: {tail(self.log_file, 3)!r} (full log: {self.log_file})"
                )
            if all(port_open(h, p) for h, p in self.ports) and (self.ready is None or self.ready()):
                return "started"
            time.sleep(0.2)
        self.stop()
        raise StackError(
            f"{self.name}: not ready after {self.start_timeout_s:.0f} s; see {self.log_file} ({self.fix_hint or 'check the log'})"
        )

    def stop(self) -> str:
        """Stop the service and everything it started. Returns 'stopped (pid N)' or 'not running'.

        The leader gets the stop signal first and shuts its own children down in order (Airflow
        standalone hangs when every child gets SIGINT at once). If it has not exited after
        ``stop_timeout_s``, the whole process group gets SIGTERM, and SIGKILL as a last resort
        (standalone waits forever on a child that keeps its output pipe open).
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        escalation = (
            (os.kill, self.stop_signal, self.stop_timeout_s, "stopped"),
            (os.killpg, signal.SIGTERM, 10.0, "stopped after SIGTERM to its process group"),
            (os.killpg, signal.SIGKILL, 5.0, "killed"),
        )
        for send, signum, grace, how in escalation:
            try:
                send(pid, signum)
            except ProcessLookupError:
                break
            if _wait_gone(pid, grace):
                break
        try:  # children that outlived the leader share its process group
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.pid_file.unlink(missing_ok=True)
        return f"{how} (pid {pid})"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def tail(path: Path, lines: int) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""
