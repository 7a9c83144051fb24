"""The analytics' error (its own module: the command line imports it for every command, without DuckDB)."""

from __future__ import annotations


class AnalyticsError(ValueError):
    """A run that cannot be made as asked (no such system, no data in the period, no time zone): one line with the fix."""


class NoData(AnalyticsError):
    """The catalog holds no station_status of the system in the period (or at all)."""
