"""Toxiproxy, a TCP proxy that injects network faults (latency, resets, partitions), between the pipeline
and the broker or the feed. Built once with Go into ``.state/tools/``; driven through its HTTP API."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from citibikes.stack.process import free_port

VERSION = "2.12.0"
ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / ".state" / "tools" / f"toxiproxy-{VERSION}" / "server"


def install() -> Path:
    if not BINARY.exists():
        subprocess.run(["go", "install", f"github.com/Shopify/toxiproxy/v2/cmd/server@v{VERSION}"],
                       env={**os.environ, "GOBIN": str(BINARY.parent)}, check=True, capture_output=True, timeout=600)
    return BINARY


@dataclass
class Proxy:
    api: str
    name: str
    listen: str

    def toxic(self, kind: str, stream: str = "downstream", **attributes: int) -> str:
        """Add a toxic (``latency``, ``reset_peer``, ``timeout``, ...); returns its name."""
        name = f"{kind}_{stream}"
        requests.post(f"{self.api}/proxies/{self.name}/toxics",
                      json={"name": name, "type": kind, "stream": stream, "attributes": attributes},
                      timeout=5).raise_for_status()
        return name

    def heal(self) -> None:
        """Remove every toxic and let connections through again."""
        for toxic in requests.get(f"{self.api}/proxies/{self.name}/toxics", timeout=5).json():
            requests.delete(f"{self.api}/proxies/{self.name}/toxics/{toxic['name']}", timeout=5).raise_for_status()
        self.enable(True)

    def enable(self, enabled: bool) -> None:
        """``False``: a partition; open connections are cut and new ones refused."""
        requests.post(f"{self.api}/proxies/{self.name}", json={"enabled": enabled}, timeout=5).raise_for_status()


class Toxiproxy:
    def __init__(self, log_file: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self._log = open(log_file, "wb")
        self.process = subprocess.Popen([str(install()), "-host", "127.0.0.1", "-port", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{self.api}/version", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"toxiproxy did not start; see {log_file}") from None
                time.sleep(0.1)

    def proxy(self, name: str, upstream: str, listen_port: int | None = None) -> Proxy:
        listen = f"127.0.0.1:{listen_port or free_port()}"
        requests.post(f"{self.api}/proxies", json={"name": name, "listen": listen, "upstream": upstream},
                      timeout=5).raise_for_status()
        return Proxy(self.api, name, listen)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()
