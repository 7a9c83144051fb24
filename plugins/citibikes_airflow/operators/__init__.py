"""Operators of the lake's DAGs (the common-sql check operators on the catalog)."""
