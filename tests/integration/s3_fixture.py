"""Pytest fixtures: a real S3-compatible server (versitygw) over HTTP for the whole session.

The binary is built once into the project's ``.state/bin`` (``citibikes.stack.s3.ensure_installed``;
the first build takes about 1.5 minutes) and reused; each session serves a fresh temporary folder on
a free port with one bucket, and stops the server at the end. Import the fixtures from conftest.py:
``from integration.s3_fixture import s3_server, s3_lake_uri  # noqa: F401``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citibikes.config import PROJECT_ROOT
from citibikes.stack.process import Service, free_port
from citibikes.stack.s3 import ensure_bucket, ensure_installed, s3_service

BINARY_STATE_DIR = PROJECT_ROOT / ".state"
"""Where the built binary is kept between sessions (not the per-test CITIBIKES_STATE_DIR)."""
ACCESS_KEY = "citibikes-test"
SECRET_KEY = "citibikes-test-secret"
REGION = "us-east-1"
BUCKET = "citibikes-lake"


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server: where it is, the keys it accepts, and its one bucket."""

    host: str
    port: int
    access_key: str
    secret_key: str
    region: str
    bucket: str
    data_dir: Path
    access_log: Path
    service: Service

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def lake_uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self) -> Any:
        """A boto3 S3 client signed with the server's keys."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )

    def object_keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def requests(self, key_fragment: str, timeout_s: float = 5.0) -> list[str]:
        """The S3 operations (``s3_PutObject``...) the access log shows for keys containing the fragment."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            operations = [
                match.group(1)
                for line in text.splitlines() if key_fragment in line
                for match in [re.search(r"\s(s3_[A-Za-z]+)\s", line)] if match
            ]
            if operations or time.monotonic() > deadline:
                return operations
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """versitygw's POSIX backend on a free port, serving a temporary folder, for the session."""
    ensure_installed(BINARY_STATE_DIR)
    home = tmp_path_factory.mktemp("s3")
    host, port = "127.0.0.1", free_port()
    access_log = home / "access.log"
    service = s3_service(
        BINARY_STATE_DIR, port, home / "data", ACCESS_KEY, SECRET_KEY,
        host=host, region=REGION, name="s3-test", run_dir=home / "run", access_log=access_log,
    )
    service.start()
    try:
        server = S3Server(host, port, ACCESS_KEY, SECRET_KEY, REGION, BUCKET, home / "data", access_log, service)
        ensure_bucket(server.endpoint_url, BUCKET, ACCESS_KEY, SECRET_KEY, REGION)
        yield server
    finally:
        service.stop()


@pytest.fixture
def s3_lake_uri(s3_server: S3Server) -> str:
    """A lake URI of its own for each test (a fresh prefix in the shared bucket)."""
    return s3_server.lake_uri(f"lake-{uuid.uuid4().hex[:10]}")
