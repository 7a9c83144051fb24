"""Compaction of an S3 lake on moto's server (S3 and Glue on one port). Catalogued by Glue, the hours of a
closed day are compacted (never the day: Glue's partitions are hours), each hour's Glue partition is
moved to its compacted file's folder, and the replaced files are deleted only once Glue has pointed
there for the grace period; what Athena reads (:func:`support.glue_lake.athena`) stays the same.
Catalogued by DuckDB only, its closed days become day files on S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pytest

from citibikes import compaction
from citibikes.catalog import connect, refresh_catalog
from citibikes.lake import Lake, layout
from citibikes.lake.store import status_file
from support.glue_lake import TABLES, athena, glue_lake, locations, prepare
from support.moto_server import moto_server
from support.pipeline_lake import fingerprints, yesterday_evening

pytestmark = pytest.mark.aws
HOUR = 3600


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        prepare(endpoint)
        yield endpoint


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Yesterday evening's minute runs (:func:`support.pipeline_lake.yesterday_evening`) and H0."""
    folder = tmp_path_factory.mktemp("made_glue")
    first_hour = yesterday_evening(folder)
    return folder, first_hour


@pytest.fixture
def setup(moto: str, made: tuple[Path, float], tmp_path: Path):
    """The made lake on moto's S3 under a fresh prefix, catalogued in Glue; its DuckDB catalog's path."""
    lake, glue, s3 = glue_lake(moto, made[0] / "lake", tmp_path.name.replace("_", "-")[-40:])
    return lake, glue, s3, tmp_path / "catalog" / "citibikes.duckdb"


def keys_below(lake: Lake, table: str = "station_status") -> list[str]:
    return [key.removeprefix(layout.TABLES[table].prefix + "/") for key in lake.storage.list(layout.TABLES[table].prefix)]


def test_glue_hours_are_compacted_moved_and_their_sources_deleted_after_the_grace_period(setup, made) -> None:
    lake, glue, s3, catalog = setup
    lacking = f"system=synth-01/date={datetime.fromtimestamp(made[1], UTC):%Y-%m-%d}/hour=21"  # not crawled yet
    glue.aws.client("glue").delete_partition(DatabaseName=glue.database, TableName="station_status",
                                             PartitionValues=[part.split("=", 1)[1] for part in lacking.split("/")])
    refresh_catalog(lake, catalog, s3=s3)
    expected, before = athena(glue, s3), keys_below(lake)
    duckdb_rows = fingerprints(connect(catalog, s3), TABLES)

    summary = compaction.compact(lake, catalog, settle_s=0, grace_s=HOUR, s3=s3, glue=glue)
    status = summary.tables["station_status"]
    assert (status.partitions, status.files_after) == (6, 6), "H0-H2 of two systems, by hour: the day stays"
    compacted = sorted({key.split("/_compacted/")[0] for key in keys_below(lake) if "/_compacted/" in key})
    assert len(compacted) == 6 and all(path.count("/") == 2 for path in compacted), "hour folders only"
    moved = {p: v for p, v in locations(glue, "station_status").items() if "/_compacted/" in v[0]}
    assert sorted(moved) == [p for p in compacted if p != lacking]
    assert all(location == lake.storage.uri(f"curated/station_status/{p}/_compacted/v1/") and at
               for p, (location, at) in moved.items())
    assert athena(glue, s3) == expected and fingerprints(connect(catalog, s3), TABLES) == duckdb_rows
    assert keys_below(lake) == sorted([*before, *(f"{p}/_compacted/v1/compacted.parquet" for p in compacted)])

    # Grace 0: Glue points at the compacted files, so their sources go; not those of the hour Glue lacks.
    done = compaction.compact(lake, catalog, settle_s=0, grace_s=0, s3=s3, glue=glue)
    assert done.tables == {} and done.deleted_files == sum(f.files_before for f in summary.tables.values()) - 4
    left = keys_below(lake)
    assert all([k for k in left if k.startswith(p + "/")] == [f"{p}/_compacted/v1/compacted.parquet"] for p in moved)
    assert len([k for k in left if k.startswith(lacking + "/")]) == 5, "its 4 minute files and compacted file stay"
    assert athena(glue, s3) == expected and fingerprints(connect(catalog, s3), TABLES) == duckdb_rows

    # A late file in a moved hour: Athena reads it once the next run folds it into version 2.
    hour = sorted(moved)[0]
    rows = lake.read_file(f"curated/station_status/{hour}/_compacted/v1/compacted.parquet", "station_status")
    snapshot = rows.filter(pc.equal(rows["last_updated"], rows["last_updated"][0]))
    late, data = status_file(hour.split("/")[0].removeprefix("system="), snapshot,
                             int(rows["last_updated"][0].as_py().timestamp()) + 30)
    lake.write_files([(late, data)])
    assert athena(glue, s3) == expected, "not before"
    again = compaction.compact(lake, catalog, settle_s=0, grace_s=0, s3=s3, glue=glue)
    assert again.tables["station_status"].partitions == 1 and again.deleted_files == 2  # version 1, the late file
    assert locations(glue, "station_status")[hour][0] == lake.storage.uri(f"curated/station_status/{hour}/_compacted/v2/")
    assert [k for k in keys_below(lake) if k.startswith(hour + "/")] == [f"{hour}/_compacted/v2/compacted.parquet"]
    counts = {row[:3]: row[3] for row in athena(glue, s3)["station_status"]}
    values = tuple(part.split("=", 1)[1] for part in hour.split("/"))
    assert counts == {row[:3]: row[3] + (snapshot.num_rows if row[:3] == (values[0], values[1], int(values[2])) else 0)
                      for row in expected["station_status"]}


def test_an_s3_lake_with_the_duckdb_catalog_compacts_whole_days(setup) -> None:
    lake, _, s3, catalog = setup  # the same lake, catalogued by DuckDB only (CITIBIKES_CATALOG=duckdb)
    refresh_catalog(lake, catalog, s3=s3)
    expected = fingerprints(connect(catalog, s3), TABLES)
    summary = compaction.compact(lake, catalog, settle_s=0, grace_s=0, s3=s3)
    assert summary.tables["station_status"].partitions == 2 and summary.deleted_files == sum(
        f.files_before for f in summary.tables.values())
    assert [key.split("/", 2)[2] for key in keys_below(lake)] == ["_compacted/v1/compacted.parquet"] * 2
    assert fingerprints(connect(catalog, s3), TABLES) == expected
