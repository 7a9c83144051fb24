"""The analytics report: the per-station table as Parquet and CSV, the figures as JSON, a readable HTML page.

:func:`report_files` makes the files of one :class:`~citibikes.analytics.measures.Analytics`; the lake keeps
them at ``reports/analytics/system=<id>/period=<first>_<last>/`` (:func:`citibikes.lake.layout.report_key`),
so a rerun of a period replaces its report. The page is self-contained (charts inline as SVG, drawn with
matplotlib; no script, no network), and links the tables beside it.
"""

from __future__ import annotations

import io

import jinja2
import matplotlib
import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv

from citibikes.analytics.measures import Analytics, StationFigures
from citibikes.lake.tables import parquet_bytes

matplotlib.use("Agg")  # no display: files only
from matplotlib.figure import Figure  # noqa: E402 (after the backend is chosen)

WORST = 15
"""Stations shown in the worst-stations chart and table."""

STATIONS_SCHEMA = pa.schema([
    ("system_id", pa.string()), ("station_id", pa.string()), ("name", pa.string()), ("lat", pa.float64()),
    ("lon", pa.float64()), ("snapshots", pa.int64()), ("quarantined_counted", pa.int64()), ("skipped", pa.int64()),
    ("unusable", pa.int64()), ("unusable_share", pa.float64()), ("broken_snapshots", pa.int64()),
    ("broken_median", pa.float64()), ("broken_mean", pa.float64()), ("episodes", pa.int64()),
    ("longest_h", pa.float64()), ("mean_h", pa.float64()), ("median_h", pa.float64()), ("in_network", pa.bool_()),
    ("neighbour_id", pa.string()), ("neighbour_ft", pa.float64()), ("peak_instances", pa.int64()),
    ("peak_fines", pa.int64()), ("off_peak_instances", pa.int64()), ("off_peak_fines", pa.int64()),
    ("fines", pa.int64()),
])
"""The per-station table: one row per station, the fields of :class:`~citibikes.analytics.measures.StationFigures`."""


def stations_table(analytics: Analytics) -> pa.Table:
    return pa.Table.from_pylist(msgspec.to_builtins(analytics.stations), schema=STATIONS_SCHEMA)


def report_files(analytics: Analytics) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the report's files: ``stations.parquet``, ``stations.csv``, ``summary.json``, ``report.html``."""
    table = stations_table(analytics)
    csv = io.BytesIO()
    pacsv.write_csv(table, csv)
    summary = msgspec.json.format(msgspec.json.encode({"system": analytics.system, "by_hour": analytics.by_hour}))
    return [("stations.parquet", parquet_bytes(table)), ("stations.csv", csv.getvalue()), ("summary.json", summary),
            ("report.html", html(analytics).encode())]


def html(analytics: Analytics) -> str:
    """The readable summary: headline figures, three charts, the worst stations."""
    worst = sorted((s for s in analytics.stations if s.unusable_share is not None),
                   key=lambda s: (-s.unusable_share, s.station_id))[:WORST]
    return _PAGE.render(system=analytics.system, worst=worst, charts=[
        ("Availability by hour of day", _by_hour_chart(analytics)),
        (f"The {len(worst)} stations most often unusable", _worst_chart(worst)),
        ("Rebalancing-standard fines by window", _fines_chart(analytics)),
    ])


def _svg(figure: Figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight")
    text = out.getvalue()
    return text[text.index("<svg"):]  # inline: without the XML prologue


def _by_hour_chart(analytics: Analytics) -> str:
    figure = Figure(figsize=(8, 3.2))
    axes = figure.subplots()
    hours = [h.hour for h in analytics.by_hour]
    axes.plot(hours, [100 * h.empty / h.records for h in analytics.by_hour], marker="o", label="no bike (empty)")
    axes.plot(hours, [100 * h.full / h.records for h in analytics.by_hour], marker="o", label="no dock (full)")
    axes.set(xlabel=f"hour of day ({analytics.system.timezone})", ylabel="% of station records", xticks=range(0, 24, 2))
    axes.set_ylim(bottom=0)
    axes.legend()
    axes.grid(alpha=0.3)
    return _svg(figure)


def _worst_chart(worst: list[StationFigures]) -> str:
    figure = Figure(figsize=(8, 0.3 * len(worst) + 1))
    axes = figure.subplots()
    axes.barh([s.name or s.station_id for s in reversed(worst)], [100 * (s.unusable_share or 0) for s in reversed(worst)])
    axes.set(xlabel="% of the windows' snapshots with no bike or no dock")
    axes.grid(alpha=0.3, axis="x")
    return _svg(figure)


def _fines_chart(analytics: Analytics) -> str:
    system = analytics.system
    figure = Figure(figsize=(5, 3))
    axes = figure.subplots()
    bars = axes.bar(["peak", "off-peak"], [system.peak_fines, system.off_peak_fines], color=["#c0392b", "#2c3e50"])
    axes.bar_label(bars, labels=[f"${system.peak_fines:,}\n{system.peak_instances:,} instances",
                                 f"${system.off_peak_fines:,}\n{system.off_peak_instances:,} instances"])
    axes.set(ylabel="fines ($)")
    axes.margins(y=0.3)
    return _svg(figure)


def percent(value: float | None) -> str:
    """A share as a person reads it (``n/a`` when there is none)."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENVIRONMENT.filters["percent"] = percent
_PAGE = _ENVIRONMENT.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Service analytics: {{ system.system_id }}, {{ system.first }} to {{ system.last }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
 table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
 td:first-child, th:first-child { text-align: left; } figure { margin: 1.5em 0; } svg { max-width: 100%; height: auto; }
</style></head><body>
<h1>Service analytics: {{ system.system_id }}</h1>
<p>{{ system.first }} to {{ system.last }} ({{ system.timezone }}): {{ "{:,}".format(system.snapshots) }} snapshots of
{{ "{:,}".format(system.stations) }} stations, {{ "{:,}".format(system.records) }} station records counted
({{ "{:,}".format(system.quarantined_counted) }} of them quarantined by the pipeline; {{ "{:,}".format(system.skipped) }}
skipped: their counts could not be read). Tables: <a href="stations.csv">stations.csv</a>,
<a href="stations.parquet">stations.parquet</a>, <a href="summary.json">summary.json</a>.</p>
<table>
<tr><th>measure</th><th>value</th></tr>
<tr><td>share of time unusable (mean of stations)</td><td>{{ system.unusable_share_mean | percent }}</td></tr>
<tr><td>share of time unusable (median station)</td><td>{{ system.unusable_share_median | percent }}</td></tr>
<tr><td>broken-bike share (median of station medians)</td><td>{{ system.broken_median | percent }}</td></tr>
<tr><td>broken-bike share (mean of station means)</td><td>{{ system.broken_mean | percent }}</td></tr>
<tr><td>empty/full episodes, 06:00-23:59</td><td>{{ "{:,}".format(system.episodes) }}</td></tr>
<tr><td>longest episode</td><td>{{ "%.2f" | format(system.longest_h) }} h</td></tr>
<tr><td>stations in the rebalancing network ({{ system.projection }})</td><td>{{ "{:,}".format(system.network_stations) }}</td></tr>
<tr><td>violations, peak / off-peak</td><td>{{ "{:,}".format(system.peak_instances) }} / {{ "{:,}".format(system.off_peak_instances) }}</td></tr>
<tr><td>fines, peak / off-peak / total</td><td>${{ "{:,}".format(system.peak_fines) }} / ${{ "{:,}".format(system.off_peak_fines) }} / ${{ "{:,}".format(system.fines) }}</td></tr>
</table>
{% for title, svg in charts %}<figure><figcaption><h2>{{ title }}</h2></figcaption>{{ svg | safe }}</figure>
{% endfor %}
<h2>Worst stations</h2>
<table>
<tr><th>station</th><th>unusable</th><th>broken (median)</th><th>episodes</th><th>longest (h)</th><th>fines</th></tr>
{% for s in worst %}<tr><td>{{ s.name or s.station_id }}</td><td>{{ s.unusable_share | percent }}</td>
<td>{{ s.broken_median | percent }}</td><td>{{ s.episodes }}</td><td>{{ "%.2f" | format(s.longest_h) }}</td><td>${{ "{:,}".format(s.fines) }}</td></tr>
{% endfor %}</table>
</body></html>
""")
