"""Benchmarks: `make bench` (all) or `.venv/bin/python -m bench NAME...`; figures go into BENCHMARKS.md."""
