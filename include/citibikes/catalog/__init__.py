"""The lake's catalog: its tables by name, for DuckDB (a local file) or AWS Glue.

:mod:`citibikes.catalog.crawl` finds the tables, partitions and schemas in the lake;
:mod:`citibikes.catalog.duckdb_catalog` keeps them in a DuckDB file of views;
:mod:`citibikes.catalog.glue` configures a Glue crawler over the same table folders.
"""

from citibikes.catalog.duckdb_catalog import (
    CrawlSummary,
    S3Access,
    connect,
    describe,
    refresh_catalog,
)
from citibikes.catalog.errors import CatalogError, CatalogInputError

__all__ = ["CatalogError", "CatalogInputError", "CrawlSummary", "S3Access", "connect", "describe",
           "refresh_catalog"]
