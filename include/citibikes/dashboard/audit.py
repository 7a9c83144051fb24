"""The latest audit figures of a system, from the analytics reports in the lake
(``reports/analytics/system=<id>/period=<first>_<last>/``, :mod:`citibikes.analytics.report`): the report whose
period ends last (the longest of those, when several end the same day), and its files for the page's link."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from citibikes.analytics.run import REPORT
from citibikes.lake import Lake, LakeError
from citibikes.lake.layout import REPORTS_PREFIX, check_system_id

PERIOD = re.compile(r"/period=(\d{4}-\d\d-\d\d)_(\d{4}-\d\d-\d\d)/summary\.json$")
FIGURES = ("unusable_share_mean", "unusable_share_median", "peak_instances", "peak_fines", "off_peak_instances",
           "off_peak_fines", "fines")
FILES = {"report.html": "text/html; charset=utf-8", "summary.json": "application/json", "stations.csv": "text/csv",
         "stations.parquet": "application/vnd.apache.parquet"}
"""A report's files the page may link to, and their media types."""


def latest_report(lake: Lake, system_id: str) -> dict[str, Any] | None:
    """The system's latest report: its period, the figures the page shows and the path of its page relative to the
    dashboard (``reports/<system>/<first>_<last>/report.html``); None when the analytics have made none."""
    periods = [found.groups() for key in lake.storage.list(f"{REPORTS_PREFIX}/{REPORT}/system={check_system_id(system_id)}/")
               if (found := PERIOD.search(key))]
    if not periods:
        return None
    first, last = max(periods, key=lambda p: (p[1], date.fromisoformat(p[1]) - date.fromisoformat(p[0])))
    data = lake.storage.get(report_path(system_id, f"{first}_{last}", "summary.json"))
    if data is None:  # replaced between the listing and the read: the next refresh finds the new one
        return None
    try:
        system = json.loads(data)["system"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LakeError(f"cannot read {lake.storage.uri(report_path(system_id, f'{first}_{last}', 'summary.json'))} "
                        f"({exc!r}); run the analytics for {first} to {last} again to rewrite it") from None
    return {"first": first, "last": last, **{name: system.get(name) for name in FIGURES},
            "url": f"reports/{system_id}/{first}_{last}/report.html"}


def report_path(system_id: str, period: str, name: str) -> str:
    """The lake key of one file of a report (names and periods checked: they come from a URL)."""
    if name not in FILES or not re.fullmatch(r"\d{4}-\d\d-\d\d_\d{4}-\d\d-\d\d", period):
        raise ValueError(f"no report file {period}/{name}")
    return f"{REPORTS_PREFIX}/{REPORT}/system={check_system_id(system_id)}/period={period}/{name}"
