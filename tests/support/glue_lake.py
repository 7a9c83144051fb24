"""A lake catalogued by Glue on moto's server (S3 and Glue on one port), for the compaction tests.

moto's crawler makes no tables, so :func:`glue_lake` registers what the crawler would: a table per
table root, partitioned by ``system``, ``date``, ``hour`` (strings, as a crawler infers them), and a
partition per hour folder at that folder. :func:`athena` reads the tables as Athena does: every file
directly in each partition's location (``_compacted/`` below it is hidden), through DuckDB over S3.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import duckdb

from citibikes.aws.client import Aws
from citibikes.catalog import S3Access
from citibikes.catalog.glue import SWITCHED_PARAMETER
from citibikes.compaction import Glue
from citibikes.lake import Lake, layout, open_lake

BUCKET, REGION = "citibikes-lake", "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
TABLES = ("station_status", "quarantine")
PARTITION_KEYS = ("system", "date", "hour")


def prepare(endpoint: str) -> None:
    """The lake's bucket on a fresh moto server."""
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **KEYS).create_bucket(Bucket=BUCKET)


def glue_lake(endpoint: str, source: Path, name: str) -> tuple[Lake, Glue, S3Access]:
    """The tables of the lake folder ``source`` copied to ``s3://citibikes-lake/<name>`` on moto, and
    registered in the Glue database ``citibikes_<name>`` as the crawler would."""
    lake = open_lake(f"s3://{BUCKET}/{name}", endpoint_url=endpoint, region=REGION, access_key="testing",
                     secret_key="testing")
    local = open_lake(str(source))
    lake.write_files([(key, local.storage.get(key)) for table in TABLES for key in local.files(table)])
    aws = Aws(boto3.Session(region_name=REGION, **KEYS), REGION, endpoint)
    glue, database = aws.client("glue"), f"citibikes_{name.replace('-', '_')}"
    glue.create_database(DatabaseInput={"Name": database})
    for table in TABLES:
        prefix = layout.TABLES[table].prefix
        glue.create_table(DatabaseName=database, TableInput={
            "Name": table, "PartitionKeys": [{"Name": k, "Type": "string"} for k in PARTITION_KEYS],
            "StorageDescriptor": {"Location": lake.storage.uri(prefix) + "/", "Columns": [{"Name": "station_id", "Type": "string"}]}})
        for folder in sorted({key.rsplit("/", 1)[0] for key in local.files(table)}):
            glue.create_partition(DatabaseName=database, TableName=table, PartitionInput={
                "Values": [part.split("=", 1)[1] for part in folder.removeprefix(prefix + "/").split("/")],
                "StorageDescriptor": {"Location": lake.storage.uri(folder) + "/"}})
    return lake, Glue(aws, database), S3Access(REGION, "testing", "testing", endpoint_url=endpoint)


def locations(glue: Glue, table: str) -> dict[str, tuple[str, str | None]]:
    """Per Glue partition (``system=x/date=d/hour=h``): its location and when compaction moved it."""
    pages = glue.aws.client("glue").get_paginator("get_partitions").paginate(DatabaseName=glue.database, TableName=table)
    return {"/".join(f"{k}={v}" for k, v in zip(PARTITION_KEYS, p["Values"])):
            (p["StorageDescriptor"]["Location"], (p.get("Parameters") or {}).get(SWITCHED_PARAMETER))
            for page in pages for p in page["Partitions"]}


def athena(glue: Glue, s3: S3Access) -> dict[str, list[tuple]]:
    """What Athena reads: per table and partition, the count and a hash of the rows of the files directly
    in its location."""
    con = duckdb.connect()
    s3.prepare(con)
    found = {}
    for table in TABLES:
        rows = []
        for partition, (location, _) in sorted(locations(glue, table).items()):
            system, date, hour = (part.split("=", 1)[1] for part in partition.split("/"))
            count, digest = con.sql(f"SELECT count(*), sum(hash(t))::VARCHAR FROM read_parquet('{location}*.parquet') t").fetchone()
            rows.append((system, date, int(hour), count, digest))
        found[table] = rows
    return found
