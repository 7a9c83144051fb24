"""The lake on a real S3-compatible server over HTTP: writes, reads (pyarrow and DuckDB httpfs),
idempotent overwrites, single-PUT objects, and one-line errors for bad configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from duckdb_extensions import import_extension
from s3_fixture import BINARY_STATE_DIR, S3Server, s3_lake_uri, s3_server  # noqa: F401  (fixtures)

from citibikes.gbfs.model import STATION_STATUS_SCHEMA, QuarantinedRecord
from citibikes.gbfs.normalize import normalize_status
from citibikes.gbfs.parse import parse_feed
from citibikes.lake import layout
from citibikes.lake.errors import LakeError
from citibikes.lake.store import Lake, decompress_raw, open_lake, quarantine_file, status_file
from citibikes.lake.tables import RunRecord, seconds
from citibikes.replay.recordings import recorded
from citibikes.stack.process import free_port
from citibikes.stack.s3 import s3_service

pytestmark = pytest.mark.s3

SNAPSHOT_AT = 1710335271
LAST_SNAPSHOT_AT = 1710337610


def status_snapshot(index: int = 0) -> tuple[bytes, pa.Table]:
    """A recorded Citi Bike status feed and its stations as the normalizer makes them."""
    recording = recorded("station_status")[index]
    payload = recording.read_bytes()
    return payload, normalize_status(parse_feed(payload, "station_status"), "citibike", recording.last_updated + 1.5).table


def in_order(table: pa.Table) -> pa.Table:
    return table.select(STATION_STATUS_SCHEMA.names).sort_by([("last_updated", "ascending"), ("station_id", "ascending")])


def duckdb_source(lake: Lake, name: str, partitions: str) -> str:
    files = lake.storage.uri(f"{layout.table_layout(name).prefix}/**/*.parquet")
    return f"read_parquet('{files}', hive_partitioning = true, hive_types = {{{partitions}}})"


def open_s3_lake(server: S3Server, uri: str, **overrides: Any) -> Lake:
    options = {"endpoint_url": server.endpoint_url, "region": server.region,
               "access_key": server.access_key, "secret_key": server.secret_key, **overrides}
    return open_lake(uri, **options)


def lake_prefix(uri: str) -> str:
    return uri.split("/", 3)[3]


def test_curated_raw_runs_and_state_round_trip_over_s3(s3_server: S3Server, s3_lake_uri: str) -> None:
    lake = open_s3_lake(s3_server, s3_lake_uri)
    payload, snapshot = status_snapshot()
    rejected = QuarantinedRecord(system_id="citibike", feed="station_status", station_id="x", reasons=["capacity_exceeded"],
                                 raw='{"station_id":"x"}', last_updated=SNAPSHOT_AT, fetched_at=SNAPSHOT_AT + 1.5)
    status_key, quarantine_key = lake.write_files([status_file("citibike", snapshot, SNAPSHOT_AT),
                                                   quarantine_file("citibike", "station_status", [rejected], SNAPSHOT_AT)])
    raw_key = lake.write_raw("citibike", "station_status", SNAPSHOT_AT, payload)
    run = RunRecord(run_id="scheduled__2024-03-13T13:07:00+00:00", system_id="citibike", started_at=SNAPSHOT_AT + 1.0,
                    finished_at=SNAPSHOT_AT + 4.0, outcome="success", stations_status=2208, stations_valid=2207,
                    stations_quarantined=1, quarantine_reasons={"capacity_exceeded": 1}, write_s=0.25)
    [run_key] = lake.write_runs([run])
    lake.write_state("citibike/http.json", b'{"etag": "W/1"}')

    prefix = lake_prefix(s3_lake_uri)
    assert s3_server.object_keys(prefix) == sorted(
        f"{prefix}/{key}" for key in (status_key, raw_key, quarantine_key, run_key, "_state/citibike/http.json")
    )
    assert lake.files("station_status", system="citibike") == [status_key]
    table = lake.read_table("station_status", system="citibike")
    assert table.num_rows == 2208
    assert in_order(table).equals(in_order(snapshot))
    quarantine = lake.read_table("quarantine")
    assert quarantine["reasons"].to_pylist() == [["capacity_exceeded"]]
    assert quarantine["raw"].to_pylist() == ['{"station_id":"x"}']
    assert seconds(quarantine["fetched_at"], whole=False) == [SNAPSHOT_AT + 1.5]
    assert lake.read_runs() == [run]
    assert lake.read_state("citibike/http.json") == b'{"etag": "W/1"}'
    assert lake.read_state("citibike/other.json") is None
    assert lake.list_state("citibike") == ["citibike/http.json"]  # below the lake's prefix, without "_state/"
    stored_raw = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"{prefix}/{raw_key}")["Body"].read()
    assert raw_key.endswith(".json.zst")
    assert decompress_raw(stored_raw) == payload == lake.read_raw("citibike", "station_status", SNAPSHOT_AT)
    lake.delete_state("citibike")
    assert lake.read_state("citibike/http.json") is None
    # Nothing is left below the key (pyarrow may keep an empty "_state/" marker for the parent folder).
    assert not [key for key in s3_server.object_keys(f"{prefix}/_state/citibike")]


def test_a_file_of_several_snapshots_over_s3(s3_server: S3Server, s3_lake_uri: str) -> None:
    """A backfill's hour in one object: rows grouped by station, read back as the same rows."""
    lake = open_s3_lake(s3_server, s3_lake_uri)
    snapshots = [status_snapshot(index)[1] for index in range(4)]
    [key] = lake.write_files([status_file("citibike", pa.concat_tables(snapshots), SNAPSHOT_AT, LAST_SNAPSHOT_AT)])
    assert key.endswith("/hour=13/1710335271-1710337610.parquet")
    table = lake.read_table("station_status")
    assert in_order(table).equals(in_order(pa.concat_tables(snapshots)))
    ids = table["station_id"].to_pylist()
    assert ids[:4] == [ids[0]] * 4  # the first station's four observations together
    with lake.filesystem.open_input_file(lake.storage.path(key)) as source:
        assert pq.read_metadata(source).num_rows == 4 * 2208


def test_duckdb_reads_the_s3_lake_through_httpfs(s3_server: S3Server, s3_lake_uri: str) -> None:
    lake = open_s3_lake(s3_server, s3_lake_uri)
    for index in (0, 1):
        lake.write_files([status_file("citibike", status_snapshot(index)[1], recorded("station_status")[index].last_updated)])
    lake.write_runs([RunRecord(run_id="r1", system_id="citibike", started_at=SNAPSHOT_AT, outcome="no_new_data")])
    con = duckdb.connect()
    import_extension("httpfs", con=con)
    con.load_extension("httpfs")
    con.execute(
        f"CREATE SECRET lake (TYPE s3, KEY_ID '{s3_server.access_key}', SECRET '{s3_server.secret_key}', "
        f"REGION '{s3_server.region}', ENDPOINT '{s3_server.host}:{s3_server.port}', URL_STYLE 'path', USE_SSL false)"
    )
    status = duckdb_source(lake, "station_status", "'system': 'VARCHAR', 'date': 'DATE', 'hour': 'INTEGER'")
    rows = con.sql(
        f"SELECT system, date::VARCHAR, hour, count(*), count(DISTINCT last_updated) "
        f"FROM {status} WHERE system = 'citibike' AND hour = 13 GROUP BY ALL"
    ).fetchall()
    assert rows == [("citibike", "2024-03-13", 13, 4416, 2)]
    runs = duckdb_source(lake, "pipeline_runs", "'date': 'DATE'")
    assert con.sql(f"SELECT outcome, date::VARCHAR FROM {runs}").fetchall() == [("no_new_data", "2024-03-13")]


def test_repeated_writes_leave_one_object_written_by_single_puts(s3_server: S3Server, s3_lake_uri: str) -> None:
    lake = open_s3_lake(s3_server, s3_lake_uri)
    _, snapshot = status_snapshot()
    [key] = lake.write_files([status_file("citibike", snapshot, SNAPSHOT_AT)])
    first = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{lake_prefix(s3_lake_uri)}/{key}")
    assert lake.write_files([status_file("citibike", snapshot, SNAPSHOT_AT)]) == [key]
    prefix = lake_prefix(s3_lake_uri)
    assert s3_server.object_keys(f"{prefix}/curated/") == [f"{prefix}/{key}"]
    second = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{prefix}/{key}")
    assert second["ETag"] == first["ETag"]  # the same snapshot gives the same bytes
    assert s3_server.requests(f"{prefix}/{key}") == ["s3_PutObject", "s3_HeadObject", "s3_PutObject", "s3_HeadObject"]
    # A retry that saw other data for the same last_updated replaces the object: last write wins.
    lake.write_files([status_file("citibike", snapshot.slice(0, 10), SNAPSHOT_AT)])
    assert lake.read_table("station_status").num_rows == 10
    assert s3_server.object_keys(f"{prefix}/curated/") == [f"{prefix}/{key}"]


def test_a_ready_pyarrow_filesystem_can_be_passed_in(s3_server: S3Server, s3_lake_uri: str) -> None:
    filesystem = pafs.S3FileSystem(
        access_key=s3_server.access_key, secret_key=s3_server.secret_key, region=s3_server.region,
        scheme="http", endpoint_override=f"{s3_server.host}:{s3_server.port}", allow_delayed_open=True,
    )
    lake = open_lake(s3_lake_uri, filesystem=filesystem)
    lake.write_state("k", b"v")
    assert open_s3_lake(s3_server, s3_lake_uri).read_state("k") == b"v"


def test_wrong_secret_key_is_named(s3_server: S3Server, s3_lake_uri: str) -> None:
    with pytest.raises(LakeError) as error:
        open_s3_lake(s3_server, s3_lake_uri, secret_key="wrong")
    assert str(error.value) == (
        f"cannot open lake {s3_lake_uri}: S3 at {s3_server.endpoint_url} refused the credentials for bucket "
        f"'{s3_server.bucket}'; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the keys of the Airflow connection)"
    )


def test_unknown_access_key_is_named(s3_server: S3Server, s3_lake_uri: str) -> None:
    with pytest.raises(LakeError, match="refused the credentials .*; check AWS_ACCESS_KEY_ID"):
        open_s3_lake(s3_server, s3_lake_uri, access_key="nobody")


def test_credentials_come_from_the_aws_environment_variables(s3_server: S3Server, s3_lake_uri: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    lake = open_lake(s3_lake_uri, endpoint_url=s3_server.endpoint_url, region=s3_server.region)
    lake.write_state("from-env", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(LakeError, match="refused the credentials"):
        open_lake(s3_lake_uri, endpoint_url=s3_server.endpoint_url, region=s3_server.region)


def test_missing_bucket_is_named(s3_server: S3Server) -> None:
    with pytest.raises(LakeError) as error:
        open_s3_lake(s3_server, "s3://no-such-bucket/lake")
    assert "bucket 'no-such-bucket' does not exist at http://" in str(error.value)
    assert "create the bucket or fix the lake URI" in str(error.value)


def test_server_down_is_named(s3_lake_uri: str, s3_server: S3Server) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LakeError) as error:
        open_s3_lake(s3_server, s3_lake_uri, endpoint_url=nothing_there)
    assert str(error.value) == (
        f"cannot open lake {s3_lake_uri}: S3 endpoint {nothing_there} is unreachable; "
        "start the S3 server or fix CITIBIKES_S3_ENDPOINT_URL"
    )


def test_server_going_away_mid_run_is_a_lake_error(s3_server: S3Server, tmp_path: Path) -> None:
    """A second server of our own, stopped between opening the lake and writing to it."""
    port = free_port()
    service = s3_service(BINARY_STATE_DIR, port, tmp_path / "data",
                         s3_server.access_key, s3_server.secret_key, name="s3-short", run_dir=tmp_path / "run")
    service.start()
    try:
        (tmp_path / "data" / "short").mkdir()  # a bucket made directly in the POSIX root
        lake = open_s3_lake(s3_server, "s3://short/lake", endpoint_url=f"http://127.0.0.1:{port}")
        lake.write_state("before", b"1")
    finally:
        service.stop()
    with pytest.raises(LakeError, match=r"cannot write s3://short/lake/_state/after: S3 endpoint .* is unreachable"):
        lake.write_state("after", b"2")
    assert (tmp_path / "data/short/lake/_state/before").read_bytes() == b"1"
