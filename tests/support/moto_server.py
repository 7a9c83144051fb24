"""moto's server mode (the local AWS API emulator the wiring tests use), started on a free port."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from citibikes.stack.process import Service, free_port


@contextlib.contextmanager
def moto_server(home: Path) -> Iterator[str]:
    """moto's server with its files in ``home``; yields its endpoint URL and stops it afterwards."""
    port = free_port()
    service = Service("moto", [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                      run_dir=home, log_file=home / "moto.log", ports=[("127.0.0.1", port)],
                      fix_hint="install moto[server] (requirements.txt)")
    service.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()
