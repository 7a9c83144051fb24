"""How DuckDB reads a table's files: SQL text shared by the catalog's views and the hourly rollup."""

from __future__ import annotations

from citibikes.catalog.crawl import PARTITION_TYPES


def literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def scan_sql(partition_keys: tuple[str, ...], files: list[str], days: list[str], union_by_name: bool) -> str:
    """A SELECT of a table's rows: ``files`` with every partition key from the path, ``days`` (compacted days'
    files) with ``hour`` from the file; the partition columns last, by name, as DuckDB's hive partitioning
    gives them. One of the two lists may be empty."""
    def read(paths: list[str], keys: tuple[str, ...]) -> str:
        types = ", ".join(f"{literal(k)}: {PARTITION_TYPES.get(k, 'VARCHAR')}" for k in keys)
        options = f"hive_partitioning = true, hive_types = {{{types}}}" + (", union_by_name = true" if union_by_name else "")
        return f"read_parquet([{', '.join(map(literal, paths))}], {options})"

    keys = ", ".join(sorted(partition_keys))
    selects = [f"SELECT * FROM {read(files, partition_keys)}"] if files else []
    if days:
        selects.append(f"SELECT * EXCLUDE ({keys}), {keys} FROM {read(days, partition_keys[:-1])}")
    return " UNION ALL BY NAME ".join(selects)
