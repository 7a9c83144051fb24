"""The Airflow lake hook: the `citibikes_lake` connection opens the same lake on S3 or a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3_fixture import S3Server, s3_server  # noqa: F401  (fixture)

from citibikes.lake import LakeError
from citibikes.lake.tables import RunRecord

pytestmark = [pytest.mark.s3, pytest.mark.airflow]


def test_aws_connection_opens_the_s3_lake(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, airflow_db) -> None:
    from citibikes_airflow.hooks.lake import LakeHook

    uri = s3_server.lake_uri("hook-test")
    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({
        "conn_type": "aws", "login": s3_server.access_key, "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region, "lake_uri": uri},
    }))
    lake = LakeHook().get_lake()
    assert lake.uri == uri
    [key] = lake.write_runs([RunRecord(run_id="hook", system_id="citibike", started_at=1.0, outcome="success")])
    assert key == "pipeline_runs/date=1970-01-01/hook-citibike.parquet"
    assert [r.run_id for r in lake.read_runs()] == ["hook"]
    assert any(key.startswith("hook-test/pipeline_runs/") for key in s3_server.object_keys("hook-test/"))


def test_fs_connection_opens_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db) -> None:
    from citibikes_airflow.hooks.lake import LakeHook

    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "fs", "extra": {"path": str(tmp_path)}}))
    lake = LakeHook().get_lake()
    assert lake.uri == str(tmp_path)
    lake.write_state("probe/x.json", b"{}")
    assert (tmp_path / "_state" / "probe" / "x.json").read_bytes() == b"{}"
    lake.write_runs([RunRecord(run_id="hook", system_id="citibike", started_at=1.0, outcome="skipped")])
    assert (tmp_path / "pipeline_runs" / "date=1970-01-01" / "hook-citibike.parquet").is_file()
    assert lake.read_runs() == [RunRecord(run_id="hook", system_id="citibike", started_at=1.0, outcome="skipped")]


def test_an_fs_connection_without_a_path_is_named(monkeypatch: pytest.MonkeyPatch, airflow_db) -> None:
    from citibikes_airflow.hooks.lake import LakeHook

    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "fs", "extra": {}}))
    with pytest.raises(LakeError, match="connection 'citibikes_lake' \\(fs\\) has no extra.path; set it to the lake folder"):
        LakeHook().get_lake()


def test_a_connection_of_another_type_is_refused(monkeypatch: pytest.MonkeyPatch, airflow_db) -> None:
    from citibikes_airflow.hooks.lake import LakeHook

    monkeypatch.setenv("AIRFLOW_CONN_CITIBIKES_LAKE", json.dumps({"conn_type": "http", "host": "example.com"}))
    with pytest.raises(LakeError, match="use 'fs' \\(a folder\\) or 'aws' \\(S3\\)"):
        LakeHook().get_lake()
