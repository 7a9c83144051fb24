"""The DuckDB catalog of an S3 lake (a real S3-compatible server): crawled over S3, queried through httpfs."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3_fixture import S3Server, s3_lake_uri, s3_server  # noqa: F401  (fixtures)

from citibikes.catalog import CatalogError, CatalogInputError, S3Access, connect, refresh_catalog
from citibikes.lake import open_lake
from support.pipeline_lake import pipeline_lake

pytestmark = pytest.mark.s3


def test_an_s3_lake_is_crawled_and_its_tables_are_queried_by_name(s3_server: S3Server, s3_lake_uri: str,
                                                                   tmp_path: Path) -> None:
    pipeline = pipeline_lake(tmp_path)
    try:
        pipeline.minute()
    finally:
        pipeline.close()
    local = pipeline.lake
    lake = open_lake(s3_lake_uri, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                     access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    keys = [key for table in ("station_status", "station_information", "quarantine", "pipeline_runs")
            for key in local.files(table)]
    lake.write_files([(key, local.storage.get(key)) for key in keys])
    lake.write_files([("raw/system=citibike/feed=station_status/date=2024-03-13/hour=13/1.json.zst", b"raw")])
    catalog = tmp_path / "catalog" / "citibikes.duckdb"
    s3 = S3Access(s3_server.region, s3_server.access_key, s3_server.secret_key, endpoint_url=s3_server.endpoint_url)

    with pytest.raises(CatalogError, match="needs the lake's S3 settings"):
        refresh_catalog(lake, catalog)
    summary = refresh_catalog(lake, catalog, s3=s3)
    assert summary.footers_read == len(keys)
    assert s3_server.secret_key.encode() not in catalog.read_bytes(), "the secret lives in the session only"
    con = connect(catalog, s3)
    for table in ("station_status", "station_information", "quarantine", "pipeline_runs"):
        assert con.sql(f"SELECT count(*) FROM {table}").fetchone()[0] == local.read_table(table).num_rows > 0
    assert con.sql("SELECT DISTINCT typeof(date), typeof(hour) FROM station_status").fetchall() == [("DATE", "INTEGER")]
    root = con.sql("SELECT root FROM _tables WHERE table_name = 'station_status'").fetchone()[0]
    assert root == f"{s3_lake_uri}/curated/station_status"
    # The hourly rollup is aggregated over S3 too, then kept.
    assert summary.rollup_partitions_aggregated == 2  # a minute of two systems
    assert con.sql("SELECT sum(observations), count(DISTINCT station_id) FROM station_status_hourly").fetchone() == \
        con.sql("SELECT count(*), count(DISTINCT station_id) FROM station_status").fetchone()
    again = refresh_catalog(lake, catalog, s3=s3)
    assert (again.footers_read, again.rollup_partitions_aggregated) == (0, 0)

    lake.write_files([("quarantine/notes.txt", b"a note")])
    with pytest.raises(CatalogInputError, match=f"{s3_lake_uri}/quarantine/notes.txt is foreign to the lake"):
        refresh_catalog(lake, catalog, s3=s3)
