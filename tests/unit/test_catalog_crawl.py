"""The catalog's pure parts: schema fit, partition names, what a view reads, the Glue crawler's configuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from citibikes.aws.plan import CRAWLER_ROLE, DATABASE
from citibikes.catalog.crawl import Partition, Table, _value_problem, fingerprint, misfit, partition_sort_key
from citibikes.catalog.duckdb_catalog import read_list, view_sql
from citibikes.catalog.errors import CatalogError
from citibikes.catalog.glue import choose_catalog, crawl_due, crawler_config
from citibikes.config import ConfigError, load_settings
from citibikes.lake.tables import TABLE_SCHEMAS

STATUS = TABLE_SCHEMAS["station_status"]


def test_a_file_fits_its_table_unless_a_required_column_is_missing_or_a_type_changed() -> None:
    assert misfit(STATUS, STATUS, ("system", "date", "hour")) is None
    optional = next(f for f in STATUS if f.nullable)
    required = next(f for f in STATUS if not f.nullable)
    assert misfit(STATUS.remove(STATUS.get_field_index(optional.name)), STATUS, ()) is None  # read as NULL
    assert misfit(STATUS.append(pa.field("new_column", pa.string())), STATUS, ()) is None  # an added column
    assert misfit(STATUS.remove(STATUS.get_field_index(required.name)), STATUS, ()) == \
        f"it has no column {required.name}, which the table requires"
    changed = STATUS.set(STATUS.get_field_index("num_bikes_available"), pa.field("num_bikes_available", pa.int64()))
    assert misfit(changed, STATUS, ()) == "its column num_bikes_available is int64, the table's is int32"
    assert misfit(STATUS.append(pa.field("hour", pa.int32())), STATUS, ("system", "date", "hour")) == \
        "it has a column hour, the name of a partition column"


def test_list_item_names_and_nullability_do_not_make_another_schema() -> None:
    """Parquet names list items 'element', Arrow 'item'; a file written elsewhere may make columns nullable."""
    items = pa.schema([pa.field("l", pa.list_(pa.field("element", pa.string())), nullable=False)])
    assert fingerprint(items) == fingerprint(pa.schema([pa.field("l", pa.list_(pa.string()))]))
    assert misfit(pa.schema([pa.field("l", pa.list_(pa.string()))]), items, ()) is None
    assert fingerprint(items) != fingerprint(pa.schema([pa.field("l", pa.list_(pa.int32()))]))


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("system", "citibike", None), ("system", "Citi Bike", "not a system id"),
    ("date", "2024-03-13", None), ("date", "2024-3-13", "not a date"), ("date", "2024-02-30", "not a date"),
    ("hour", "0", None), ("hour", "23", None), ("hour", "07", "no leading zero"), ("hour", "24", "not an hour"),
    ("hour", "x", "not an hour"), ("feed", "", "has no value"), ("feed", "anything", None),
])
def test_partition_values_are_checked(key: str, value: str, problem: str | None) -> None:
    found = _value_problem(key, value)
    assert (found is None) if problem is None else (problem in found)


def test_partitions_sort_in_time_order() -> None:
    paths = ["system=a/date=2024-03-13/hour=10", "system=a/date=2024-03-13/hour=9", "system=a/date=2024-03-12/hour=23"]
    assert sorted(paths, key=partition_sort_key) == [paths[2], paths[1], paths[0]]


def _table(*partitions: tuple[str, tuple[str, ...] | None]) -> Table:
    table = Table("station_status", "curated/station_status", "/lake/curated/station_status", ("system", "date", "hour"), "f")
    for path, files in partitions:
        table.partitions[path] = Partition("station_status", path, f"{table.root}/{path}", files, 1 if files else None)
    return table


def test_a_view_reads_a_glob_per_day_until_an_hour_of_it_is_compacted_and_compacted_days_beside() -> None:
    day = "/lake/curated/station_status/system=a/date=2024-03-15/_compacted/v2/compacted.parquet"
    table = _table(("system=a/date=2024-03-13/hour=9", None), ("system=a/date=2024-03-13/hour=10", None),
                   ("system=b/date=2024-03-13/hour=9", None),
                   ("system=a/date=2024-03-14/hour=0", ("/lake/curated/station_status/system=a/date=2024-03-14/hour=0/1-2.parquet",)),
                   ("system=a/date=2024-03-14/hour=1", None),
                   ("system=a/date=2024-03-15/hour=0", (day,)),
                   ("system=a/date=2024-03-15/hour=1", (day, "/lake/curated/station_status/system=a/date=2024-03-15/hour=1/7.parquet")))
    assert read_list(table) == ([
        "/lake/curated/station_status/system=a/date=2024-03-13/hour=*/*.parquet",
        "/lake/curated/station_status/system=b/date=2024-03-13/hour=*/*.parquet",
        "/lake/curated/station_status/system=a/date=2024-03-14/hour=0/1-2.parquet",
        "/lake/curated/station_status/system=a/date=2024-03-14/hour=1/*.parquet",
        "/lake/curated/station_status/system=a/date=2024-03-15/hour=1/7.parquet",
    ], [day])
    assert view_sql(table).endswith(
        " UNION ALL BY NAME SELECT * EXCLUDE (date, hour, system), date, hour, system FROM read_parquet("
        f"['{day}'], hive_partitioning = true, hive_types = {{'system': VARCHAR, 'date': DATE}})")
    runs = Table("pipeline_runs", "pipeline_runs", "s3://b/l/pipeline_runs", ("date",), "f")
    runs.partitions["date=2024-03-13"] = Partition("pipeline_runs", "date=2024-03-13", "s3://b/l/pipeline_runs/date=2024-03-13")
    assert read_list(runs) == (["s3://b/l/pipeline_runs/date=2024-03-13/*.parquet"], [])
    assert view_sql(runs) == ('CREATE VIEW "pipeline_runs" AS SELECT * FROM read_parquet('
                              "['s3://b/l/pipeline_runs/date=2024-03-13/*.parquet'], hive_partitioning = true, "
                              "hive_types = {'date': DATE})")


def test_view_sql_quotes_paths_and_types_every_partition_key() -> None:
    table = _table(("system=a/date=2024-03-13/hour=9", None))
    table.root = "/it's/lake"
    table.union_by_name = True
    sql = view_sql(table)
    assert "'/it''s/lake/system=a/date=2024-03-13/hour=*/*.parquet'" in sql
    assert "hive_types = {'system': VARCHAR, 'date': DATE, 'hour': INTEGER}, union_by_name = true" in sql


def test_the_catalog_follows_the_lake_connection_unless_told() -> None:
    assert choose_catalog("auto", "fs") == "duckdb"
    assert choose_catalog("auto", "aws") == "glue"
    assert choose_catalog("duckdb", "aws") == "duckdb" and choose_catalog("glue", "fs") == "glue"
    with pytest.raises(CatalogError, match="make it fs or aws"):
        choose_catalog("auto", "postgres")
    assert load_settings({}).catalog == "auto"
    assert load_settings({"CITIBIKES_CATALOG": "Glue"}).catalog == "glue"
    with pytest.raises(ConfigError, match="CITIBIKES_CATALOG='athena' is not a catalog"):
        load_settings({"CITIBIKES_CATALOG": "athena"})


def test_the_glue_crawler_has_one_data_store_per_table_root_with_what_aws_setup_makes() -> None:
    config = crawler_config("s3://bucket/lake/", name="c", database=DATABASE)
    assert [t["Path"] for t in config["Targets"]["S3Targets"]] == [
        "s3://bucket/lake/curated/checks/", "s3://bucket/lake/curated/rebalancing/",
        "s3://bucket/lake/curated/station_information/", "s3://bucket/lake/curated/station_status/",
        "s3://bucket/lake/pipeline_runs/", "s3://bucket/lake/quarantine/"]  # no raw/, _state/, _athena/
    assert all("**/_*" in t["Exclusions"] for t in config["Targets"]["S3Targets"])
    assert config["DatabaseName"] == "citibikes_analytics" == load_settings({}).glue_database
    assert config["Role"] == CRAWLER_ROLE  # the role citibikes aws setup creates, allowed to read exactly these folders
    assert crawler_config("s3://b", name="c", database="d", role="arn:aws:iam::1:role/r")["Role"] == "arn:aws:iam::1:role/r"
    assert config["RecrawlPolicy"] == {"RecrawlBehavior": "CRAWL_NEW_FOLDERS_ONLY"}
    assert json.loads(config["Configuration"])["Grouping"] == {"TableGroupingPolicy": "CombineCompatibleSchemas"}
    with pytest.raises(CatalogError, match="CITIBIKES_CATALOG=duckdb"):
        crawler_config("/data/lake", name="c", database="d")


def test_the_glue_crawler_runs_at_most_every_interval_and_never_twice_at_once() -> None:
    now = datetime(2024, 3, 13, 13, 30, tzinfo=UTC)
    assert crawl_due(None, now, 1800)  # not created yet
    assert crawl_due({"State": "READY"}, now, 1800)  # never crawled
    assert not crawl_due({"State": "RUNNING", "LastCrawl": {"StartTime": now - timedelta(hours=2)}}, now, 1800)
    assert not crawl_due({"State": "READY", "LastCrawl": {"StartTime": now - timedelta(minutes=10)}}, now, 1800)
    assert crawl_due({"State": "READY", "LastCrawl": {"StartTime": now - timedelta(minutes=30)}}, now, 1800)
    assert crawl_due({"State": "READY", "LastCrawl": {"StartTime": now}}, now, 0)
