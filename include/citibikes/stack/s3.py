"""A real S3-compatible server on this machine: Versity S3 Gateway (versitygw) over a folder.

Tests and users who want the S3 path without cloud credentials run versitygw's POSIX backend:
each subfolder of the data folder is a bucket, each file an object, and clients speak plain S3
over HTTP (signature v4, path-style). It is built from source with ``go install`` at a pinned
version into ``<state>/bin`` (Go 1.25 or newer; a fresh build downloads ~340 MB of modules and
takes about 1.5 minutes on 2 cores), once: later calls find the binary and return at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from citibikes.stack.process import Service, StackError

VERSITYGW_PACKAGE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
INSTALL_COMMAND = f"go install {VERSITYGW_PACKAGE}@{VERSITYGW_VERSION}"
INSTALL_TIMEOUT_S = 1800
DEFAULT_PORT = 7070
DEFAULT_REGION = "us-east-1"
INSTALL_HINT = f"install Go 1.25+ (apt-get install golang-go, or go.dev/dl) so '{INSTALL_COMMAND}' can run"


def binary_path(state_dir: Path) -> Path:
    return Path(state_dir) / "bin" / "versitygw"


def version_stamp(state_dir: Path) -> Path:
    """Records which version the binary is, so a changed pin triggers a rebuild."""
    return Path(state_dir) / "bin" / "versitygw.version"


def installed(state_dir: Path) -> bool:
    binary, stamp = binary_path(state_dir), version_stamp(state_dir)
    return binary.is_file() and stamp.is_file() and stamp.read_text().strip() == VERSITYGW_VERSION


def ensure_installed(state_dir: Path, *, go: str = "go") -> Path:
    """The versitygw binary under ``<state_dir>/bin``, built with ``go install`` if missing or of
    another version. The build goes to a temporary folder first, so an interrupted build never
    leaves a half-written binary behind. Go's module and build caches are the user's defaults
    (``go env GOMODCACHE GOCACHE``); set those variables to move them."""
    binary = binary_path(state_dir)
    if installed(state_dir):
        return binary
    go_binary = shutil.which(go)
    if go_binary is None:
        raise StackError(f"s3: the Go toolchain ('{go}') is not on PATH; {INSTALL_HINT}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".versitygw-build-", dir=binary.parent) as build_bin:
        run_go_install(go_binary, Path(build_bin))
        os.replace(Path(build_bin) / "versitygw", binary)
    version_stamp(state_dir).write_text(VERSITYGW_VERSION + "\n")
    return binary


def run_go_install(go_binary: str, gobin: Path) -> None:
    env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    try:
        result = subprocess.run(
            [go_binary, "install", f"{VERSITYGW_PACKAGE}@{VERSITYGW_VERSION}"],
            env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"s3: '{INSTALL_COMMAND}' did not finish in {INSTALL_TIMEOUT_S} s; check access to the Go module proxy"
        ) from None
    if result.returncode != 0:
        last = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise StackError(
            f"s3: '{INSTALL_COMMAND}' failed ({last}); check Go 1.25+ and access to the Go module proxy"
        )


def s3_service(
    state_dir: Path,
    port: int,
    data_dir: Path,
    access_key: str,
    secret_key: str,
    *,
    host: str = "127.0.0.1",
    region: str = DEFAULT_REGION,
    name: str = "s3",
    run_dir: Path | None = None,
    access_log: Path | None = None,
) -> Service:
    """The versitygw service serving ``data_dir`` (buckets are its subfolders) on host:port.

    The binary must be installed (:func:`ensure_installed`); pid file and log go to ``run_dir``
    (default ``<state_dir>/run`` and ``<state_dir>/logs/<name>.log``). ``access_key`` and
    ``secret_key`` are the root user's: clients sign their requests with them. ``access_log``
    records one line per request (operation, key, status), e.g. to check how objects were written."""
    state_dir = Path(state_dir)
    log_file = (Path(run_dir) if run_dir else state_dir / "logs") / f"{name}.log"
    run_dir = Path(run_dir) if run_dir else state_dir / "run"
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    command = [
        str(binary_path(state_dir)),
        "--access", access_key,
        "--secret", secret_key,
        "--region", region,
        "--port", f"{host}:{port}",
        "--quiet",
        *(["--access-log", str(access_log)] if access_log else []),
        "posix", str(Path(data_dir).resolve()),
    ]
    return Service(
        name=name,
        command=command,
        run_dir=run_dir,
        log_file=log_file,
        ports=[(host, port)],
        ready=lambda: answers_s3(f"http://{host}:{port}"),
        start_timeout_s=30.0,
        stop_timeout_s=10.0,
        fix_hint=f"install it with '{INSTALL_COMMAND}' (citibikes.stack.s3.ensure_installed) or pick another port",
    )


def answers_s3(endpoint_url: str, timeout_s: float = 2.0) -> bool:
    """True when an HTTP server answers at the URL (S3 answers an unsigned request with 403)."""
    try:
        with urllib.request.urlopen(endpoint_url + "/", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def ensure_bucket(endpoint_url: str, bucket: str, access_key: str, secret_key: str,
                  region: str = DEFAULT_REGION, timeout_s: float = 10.0) -> None:
    """Create ``bucket`` unless it exists (through the S3 API, so the server records its owner)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=region, config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2}),
    )
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise StackError(f"s3: cannot create bucket {bucket!r} at {endpoint_url}: {code or error}; check the keys") from None
    except BotoCoreError as error:
        raise StackError(f"s3: cannot reach {endpoint_url} to create bucket {bucket!r}: {error}; start the S3 server") from None
