"""A real Trino server for the tests: the engine whose SQL Athena's is (Athena engine 3 is Trino), so the
analytics' and the checks' Athena SQL runs on a real engine here, where Athena cannot be reached.

The server is Trino's core distribution and its Hive plugin from Maven Central (cached in
``.state/trino``), on Java 24 or newer. Its ``lake`` catalog keeps a file metastore and reads the local
file system; :meth:`TrinoServer.register` makes a lake folder's tables there as the Glue crawler makes them
on S3: one external Parquet table per table folder, the Hive partition keys as strings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

VERSION = "476"
MAVEN = "https://repo1.maven.org/maven2/io/trino"
JAVA_MAJOR = 24
"""Trino 476 needs Java 24 or newer."""
TABLES = {"station_status": ("curated/station_status", ("system", "date", "hour")),
          "station_information": ("curated/station_information", ("system", "date", "hour")),
          "quarantine": ("quarantine", ("system", "date", "hour")),
          "pipeline_runs": ("pipeline_runs", ("date",))}
"""The tables the analytics and the checks read: their folder in the lake and their partition keys."""


def java_home() -> Path | None:
    """A Java home of :data:`JAVA_MAJOR` or newer: ``$TRINO_JAVA_HOME``, ``$JAVA_HOME`` or one under /usr/lib/jvm."""
    candidates = [os.environ.get("TRINO_JAVA_HOME"), os.environ.get("JAVA_HOME"),
                  *sorted(map(str, Path("/usr/lib/jvm").glob("*")), reverse=True)]
    for home in filter(None, candidates):
        java = Path(home) / "bin" / "java"
        if not java.exists():
            continue
        version = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
        found = re.search(r'version "(\d+)', version)
        if found and int(found.group(1)) >= JAVA_MAJOR:
            return Path(home)
    return None


def install(cache: Path) -> Path:
    """Trino's core server with the Hive plugin, downloaded once into ``cache``; its folder."""
    server = cache / f"trino-server-core-{VERSION}"
    if (server / "plugin" / "hive").is_dir():
        return server
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    core, hive = work / "core.tar.gz", work / "hive.zip"
    urllib.request.urlretrieve(f"{MAVEN}/trino-server-core/{VERSION}/trino-server-core-{VERSION}.tar.gz", core)
    urllib.request.urlretrieve(f"{MAVEN}/trino-hive/{VERSION}/trino-hive-{VERSION}.zip", hive)
    with tarfile.open(core) as archive:
        archive.extractall(work, filter="data")
    with zipfile.ZipFile(hive) as archive:
        archive.extractall(work / "hive")
    unpacked = work / server.name
    (work / "hive" / f"trino-hive-{VERSION}").rename(unpacked / "plugin" / "hive")
    for launcher in (unpacked / "bin").rglob("*"):
        if launcher.is_file():
            launcher.chmod(0o755)
    unpacked.rename(server)  # last: a folder with its Hive plugin is a whole install
    shutil.rmtree(work)
    return server


class TrinoServer:
    """One Trino node (coordinator and worker) on ``port``, its state under ``home``."""

    def __init__(self, server: Path, java: Path, home: Path, port: int) -> None:
        self.server, self.java, self.home, self.port = server, java, home, port
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        etc = self.home / "etc"
        (etc / "catalog").mkdir(parents=True, exist_ok=True)
        (etc / "node.properties").write_text(f"node.environment=test\nnode.id=citibikes-tests\n"
                                             f"node.data-dir={self.home / 'data'}\n")
        (etc / "jvm.config").write_text("-server\n-Xmx2G\n-XX:+UseG1GC\n-XX:+ExitOnOutOfMemoryError\n"
                                        "-Djdk.attach.allowAttachSelf=true\n-Duser.timezone=UTC\n")
        (etc / "config.properties").write_text(
            f"coordinator=true\nnode-scheduler.include-coordinator=true\nhttp-server.http.port={self.port}\n"
            f"discovery.uri=http://127.0.0.1:{self.port}\nquery.max-memory=1GB\nquery.max-memory-per-node=1GB\n")
        (etc / "catalog" / "lake.properties").write_text(
            "connector.name=hive\nhive.metastore=file\nhive.metastore.catalog.dir=local:///"
            f"{(self.home / 'metastore').relative_to('/')}\nfs.native-local.enabled=true\nlocal.location=/\n"
            "hive.parquet.time-zone=UTC\nhive.non-managed-table-writes-enabled=true\n")
        env = {**os.environ, "JAVA_HOME": str(self.java), "PATH": f"{self.java / 'bin'}:{os.environ['PATH']}"}
        log = (self.home / "server.log").open("wb")
        self.process = subprocess.Popen([str(self.server / "bin" / "launcher"), "run", "--etc-dir", str(etc)],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Trino exited with {self.process.returncode}; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/info", timeout=2) as answer:
                    if not json.load(answer)["starting"]:
                        return
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Trino did not start in {timeout_s:.0f} s; see {self.home / 'server.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def connect(self, schema: str = "default"):  # noqa: ANN201 - trino.dbapi.Connection
        import trino

        return trino.dbapi.connect(host="127.0.0.1", port=self.port, user="citibikes", catalog="lake", schema=schema,
                                   timezone="UTC")

    def register(self, lake: Path, schema: str) -> None:
        """The lake folder's tables in ``schema`` (made anew), as the Glue crawler makes them: each table's columns
        are the union of its files' (a Parquet file may lack a newer column), its partitions those on disk; a table
        without a file is not made."""
        cursor = self.connect().cursor()
        cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cursor.fetchall()
        cursor.execute(f"CREATE SCHEMA {schema}")
        cursor.fetchall()
        for table, (folder, keys) in TABLES.items():
            schemas = [pq.read_schema(f) for f in sorted((lake / folder).rglob("*.parquet"))]
            if not schemas:
                continue  # nor does the crawler make a table of a folder without a file
            schema_of = pa.unify_schemas(schemas, promote_options="permissive")
            columns = [f'"{field.name}" {_trino_type(field.type)}' for field in schema_of if field.name not in keys]
            columns += [f'"{key}" varchar' for key in keys]
            partitioned = ", ".join(f"'{key}'" for key in keys)
            cursor.execute(f"CREATE TABLE {schema}.{table} ({', '.join(columns)}) WITH (format = 'PARQUET', "
                           f"external_location = 'local://{lake / folder}', partitioned_by = ARRAY[{partitioned}])")
            cursor.fetchall()
            cursor.execute(f"CALL system.sync_partition_metadata('{schema}', '{table}', 'FULL')")
            cursor.fetchall()


def _trino_type(kind: pa.DataType) -> str:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"array({_trino_type(kind.value_type)})"
    if pa.types.is_map(kind):
        return f"map({_trino_type(kind.key_type)}, {_trino_type(kind.item_type)})"
    if pa.types.is_struct(kind):
        return f"row({', '.join(f'{field.name} {_trino_type(field.type)}' for field in kind)})"
    if pa.types.is_timestamp(kind):
        return "timestamp(3)"
    simple = {pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "integer", pa.int64(): "bigint",
              pa.float32(): "real", pa.float64(): "double", pa.bool_(): "boolean", pa.string(): "varchar",
              pa.large_string(): "varchar", pa.date32(): "date"}
    if kind in simple:
        return simple[kind]
    raise ValueError(f"no Trino type for the Parquet column type {kind}")
