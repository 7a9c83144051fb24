"""The data-quality checks, as SQL written once in DuckDB's dialect (Athena's is made by sqlglot).

Each :class:`Check` reads the catalog's tables (``station_status``, ``station_information``,
``quarantine``, ``pipeline_runs``) over a window: the ``window_h`` hours of the feeds' clock before
``as_of``, and only the enabled systems of the systems file. It carries three things, one meaning:

* ``operator_args``: what the common-sql check operator named by ``operator`` runs
  (``column``: ``SQLColumnCheckOperator``, ``table``: ``SQLTableCheckOperator``, ``sql``:
  ``SQLCheckOperator``); it decides whether the Airflow task fails;
* ``results_sql``: one row per measure (and system), ``metric, system_id, observed, threshold,
  passed``, with the same condition, for the ``checks`` table and ``citibikes checks``;
* ``offending_sql``: the rows that break the check, logged when it fails.

The invariants, each true on the lake the pipeline writes and false on the broken data named:

* ``freshness`` (per system): the newest observation is at most ``max_age_s`` older than ``as_of``.
  Broken: a system whose feed stopped (nothing new lands), or that is gone from the lake.
* ``rows_per_hour`` (per system): every snapshot (a ``last_updated``) of an hour partition holds at
  least ``min_completeness`` of the stations seen in that hour, so an hour's rows are at least that
  share of its snapshots x its stations. The lake keeps every observation of every valid station
  (change capture only thins Kafka), so on correct data a snapshot lacks only the few stations
  quarantined at that moment. Broken: a truncated or partly lost snapshot. ``pipeline_runs`` cannot
  serve as the reference: it is dated by when a run started, the data by the feed's clock (a
  backfill lands last year's hours today), and a run does not record which snapshot it landed.
* ``duplicates`` (per system): no two rows share (system, station, ``last_updated``); file names
  derive from the snapshot, so a retried run overwrites. Broken: a file copied beside itself.
* ``value_ranges``: every count is 0 to :data:`~citibikes.quality.MAX_PLAUSIBLE_COUNT` (validation
  quarantines the rest). Broken: a negative count written around the validation.
* ``described_stations`` (per system): every station with a status has a description, of any
  time, in ``station_information`` (validation quarantines ``unknown_station``). Broken: a status
  file of a station no description names.
* ``quarantine_rate`` (per system): quarantined status records are at most ``max_quarantine_rate``
  of all the status records of the window (valid plus quarantined; Citi Bike: about 0.6%).
* ``failed_runs`` (per system): no ``pipeline_runs`` row of a run started in the window has outcome
  ``failed``. (``stale`` runs are the freshness check's business.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlglot

from citibikes.config import Settings
from citibikes.quality import MAX_PLAUSIBLE_COUNT, STATUS_COUNT_FIELDS

CHECK_OPERATORS = {"freshness": "table", "rows_per_hour": "sql", "duplicates": "sql", "value_ranges": "column",
                   "described_stations": "sql", "quarantine_rate": "table", "failed_runs": "table"}
"""Each check's common-sql operator: ``column`` (``SQLColumnCheckOperator``), ``table``
(``SQLTableCheckOperator``) or ``sql`` (``SQLCheckOperator``)."""
CHECK_DOCS = {
    "freshness": "per system, the newest observation is at most max_age_s old",
    "rows_per_hour": "every snapshot of an hour holds at least min_completeness of the stations seen in that hour",
    "duplicates": "no two rows share (system, station, last_updated)",
    "value_ranges": "every count is 0 to 100,000",
    "described_stations": "every station with a status is described in station_information",
    "quarantine_rate": "per system, quarantined status records are at most max_quarantine_rate of all",
    "failed_runs": "no pipeline_runs row of a run started in the window has outcome failed",
}
"""What each check's task checks (its doc in the UI; the invariants are explained in the module doc)."""
OFFENDING_ROWS = 20
"""Rows of a failed check that are logged."""
DIALECTS = ("duckdb", "athena")


class ChecksError(ValueError):
    """The checks cannot be made as asked (a parameter is wrong); the message names it and the fix."""


@dataclass(frozen=True)
class CheckParams:
    """What the checks read (the window, the systems) and their thresholds."""

    as_of: datetime
    window_h: int
    max_age_s: int
    max_quarantine_rate: float
    min_completeness: float
    systems: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings, as_of: datetime | None = None, **overrides: Any) -> CheckParams:
        """The settings' thresholds (``CITIBIKES_CHECK_*``) and enabled systems, ``overrides`` (None
        values are ignored) on top; ``as_of`` None is now."""
        values: dict[str, Any] = {
            "window_h": settings.check_window_h, "max_age_s": settings.check_max_age_s,
            "max_quarantine_rate": settings.check_max_quarantine_rate,
            "min_completeness": settings.check_min_completeness,
            "systems": tuple(s.system_id for s in settings.systems if s.enabled),
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        params = cls(as_of=(as_of or datetime.now(UTC)), **values)
        params.validate()
        return params

    def validate(self) -> None:
        if self.as_of.tzinfo is None:
            raise ChecksError(f"as_of {self.as_of.isoformat()} has no time zone; give it in UTC, e.g. 2026-12-07T12:00:00Z")
        if self.window_h < 1 or self.max_age_s < 1:
            raise ChecksError(f"window_h ({self.window_h}) and max_age_s ({self.max_age_s}) must be positive")
        for name in ("max_quarantine_rate", "min_completeness"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ChecksError(f"{name} is {getattr(self, name)}; give a share between 0 and 1")
        if not self.systems:
            raise ChecksError("no enabled system to check; enable one in the systems file (CITIBIKES_SYSTEMS_FILE)")

    @property
    def start(self) -> datetime:
        return self.as_of - timedelta(hours=self.window_h)


@dataclass(frozen=True)
class Check:
    name: str
    results_sql: str
    offending_sql: str
    operator_args: dict[str, Any] = field(default_factory=dict)

    @property
    def operator(self) -> str:
        """Which common-sql operator runs :attr:`operator_args` (see :data:`CHECK_OPERATORS`)."""
        return CHECK_OPERATORS[self.name]

    def in_dialect(self, dialect: str) -> Check:
        """The check with every SQL text translated from DuckDB's dialect (``duckdb``, ``athena``)."""
        if dialect not in DIALECTS:
            raise ChecksError(f"no SQL dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
        if dialect == "duckdb":
            return self
        args = dict(self.operator_args)
        for key in ("sql", "table", "partition_clause"):
            if key in args:
                args[key] = translate(args[key], dialect)
        if "checks" in args:
            args["checks"] = {name: {key: translate(text, dialect) for key, text in entry.items()}
                              for name, entry in args["checks"].items()}
        return replace(self, results_sql=translate(self.results_sql, dialect),
                       offending_sql=translate(self.offending_sql, dialect), operator_args=args)


def translate(text: str, dialect: str) -> str:
    """A query or an expression from DuckDB's dialect to ``dialect`` (sqlglot)."""
    return sqlglot.parse_one(text, read="duckdb").sql(dialect=dialect)


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _moment(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC'"


def _date(value: datetime) -> str:
    """A UTC day as its ISO text: Glue's partition keys are strings (the crawler's), whose ISO days compare as the
    days do, and DuckDB reads the text as a DATE for its typed ``date``."""
    return f"'{value.astimezone(UTC):%Y-%m-%d}'"


def build_checks(params: CheckParams, *, dialect: str = "duckdb", database: str | None = None) -> list[Check]:
    """Every check for ``params``, in ``dialect``, the tables qualified by ``database`` when given
    (Athena: the Glue database)."""
    params.validate()

    def table(name: str) -> str:
        return f'"{database}".{name}' if database else name

    systems = ", ".join(_text(s) for s in params.systems)
    listed = ", ".join(f"({_text(s)})" for s in params.systems)
    all_systems = f"(VALUES {listed}) AS s(system)"
    days = f'"date" BETWEEN {_date(params.start)} AND {_date(params.as_of)}'
    window = f"system IN ({systems}) AND {days} AND last_updated > {_moment(params.start)} AND last_updated <= {_moment(params.as_of)}"
    status = f"(SELECT * FROM {table('station_status')} WHERE {window})"
    checks: list[Check] = []

    fresh_since = params.as_of - timedelta(seconds=params.max_age_s)
    newest = (f"SELECT s.system, max(t.last_updated) AS newest FROM {all_systems} LEFT JOIN {status} AS t "
              "ON t.system = s.system GROUP BY s.system")
    fresh = f"newest >= {_moment(fresh_since)}"
    checks.append(Check(
        "freshness",
        results_sql=(f"SELECT 'age_s' AS metric, system AS system_id, "
                     f"CAST(date_diff('second', newest, {_moment(params.as_of)}) AS DOUBLE) AS observed, "
                     f"{float(params.max_age_s)} AS threshold, coalesce({fresh}, false) AS passed FROM ({newest}) AS n"),
        offending_sql=f"SELECT system, newest, {_moment(params.as_of)} AS as_of FROM ({newest}) AS n "
                      f"WHERE NOT coalesce({fresh}, false) ORDER BY system",
        operator_args={"table": table("station_status"), "partition_clause": window,
                       "checks": {f'"{s}"': {"check_statement": f"max(last_updated) >= {_moment(fresh_since)}",
                                             "partition_clause": f"system = {_text(s)}"} for s in params.systems}},
    ))

    coverage = (
        "SELECT p.system, p.\"date\", p.hour, p.last_updated, p.stations, h.stations AS hour_stations, "
        "CAST(p.stations AS DOUBLE) / h.stations AS coverage FROM "
        f"(SELECT system, \"date\", hour, last_updated, count(DISTINCT station_id) AS stations FROM {status} AS t "
        "GROUP BY system, \"date\", hour, last_updated) AS p JOIN "
        f"(SELECT system, \"date\", hour, count(DISTINCT station_id) AS stations FROM {status} AS t "
        "GROUP BY system, \"date\", hour) AS h ON h.system = p.system AND h.\"date\" = p.\"date\" AND h.hour = p.hour")
    thin = f"coverage < {params.min_completeness}"
    checks.append(Check(
        "rows_per_hour",
        results_sql=(f"SELECT 'min_snapshot_coverage' AS metric, s.system AS system_id, min(c.coverage) AS observed, "
                     f"{params.min_completeness} AS threshold, coalesce(min(c.coverage) >= {params.min_completeness}, true) "
                     f"AS passed FROM {all_systems} LEFT JOIN ({coverage}) AS c ON c.system = s.system GROUP BY s.system"),
        offending_sql=f"SELECT * FROM ({coverage}) AS c WHERE {thin} ORDER BY coverage, system, last_updated",
        operator_args={"sql": f"SELECT count(*) = 0 FROM ({coverage}) AS c WHERE {thin}"},
    ))

    copies = (f"SELECT system, station_id, last_updated, count(*) AS copies FROM {status} AS t "
              "GROUP BY system, station_id, last_updated HAVING count(*) > 1")
    checks.append(Check(
        "duplicates",
        results_sql=(f"SELECT 'extra_rows' AS metric, s.system AS system_id, CAST(coalesce(sum(d.copies - 1), 0) AS DOUBLE) "
                     f"AS observed, 0.0 AS threshold, count(d.system) = 0 AS passed FROM {all_systems} "
                     f"LEFT JOIN ({copies}) AS d ON d.system = s.system GROUP BY s.system"),
        offending_sql=f"SELECT * FROM ({copies}) AS d ORDER BY system, last_updated, station_id",
        operator_args={"sql": f"SELECT count(*) = 0 FROM ({copies}) AS d"},
    ))

    ranges = [f"SELECT '{agg}({column})' AS metric, CAST(NULL AS VARCHAR) AS system_id, CAST({agg}({column}) AS DOUBLE) "
              f"AS observed, {float(bound)} AS threshold, coalesce({agg}({column}) {op} {bound}, true) AS passed "
              f"FROM {status} AS t"
              for column in STATUS_COUNT_FIELDS
              for agg, op, bound in (("min", ">=", 0), ("max", "<=", MAX_PLAUSIBLE_COUNT))]
    outside = " OR ".join(f"{c} < 0 OR {c} > {MAX_PLAUSIBLE_COUNT}" for c in STATUS_COUNT_FIELDS)
    checks.append(Check(
        "value_ranges",
        results_sql=" UNION ALL ".join(ranges),
        offending_sql=(f"SELECT system, station_id, last_updated, {', '.join(STATUS_COUNT_FIELDS)} FROM {status} AS t "
                       f"WHERE {outside} ORDER BY system, last_updated, station_id"),
        operator_args={"table": table("station_status"), "partition_clause": window,
                       "column_mapping": {c: {"min": {"geq_to": 0}, "max": {"leq_to": MAX_PLAUSIBLE_COUNT}}
                                          for c in STATUS_COUNT_FIELDS}},
    ))

    undescribed = (f"SELECT t.system, t.station_id, count(*) AS observations, min(t.last_updated) AS first_seen, "
                   f"max(t.last_updated) AS last_seen FROM {status} AS t WHERE NOT EXISTS (SELECT 1 FROM "
                   f"{table('station_information')} AS i WHERE i.system IN ({systems}) AND i.system = t.system "
                   "AND i.station_id = t.station_id) GROUP BY t.system, t.station_id")
    checks.append(Check(
        "described_stations",
        results_sql=(f"SELECT 'undescribed_stations' AS metric, s.system AS system_id, CAST(count(u.system) AS DOUBLE) "
                     f"AS observed, 0.0 AS threshold, count(u.system) = 0 AS passed FROM {all_systems} "
                     f"LEFT JOIN ({undescribed}) AS u ON u.system = s.system GROUP BY s.system"),
        offending_sql=f"SELECT * FROM ({undescribed}) AS u ORDER BY system, station_id",
        operator_args={"sql": f"SELECT count(*) = 0 FROM ({undescribed}) AS u"},
    ))

    quarantined = f"SELECT * FROM {table('quarantine')} WHERE {window} AND feed = 'station_status'"
    counts = (f"SELECT s.system, coalesce(q.n, 0) AS quarantined, coalesce(v.n, 0) AS observations FROM {all_systems} "
              f"LEFT JOIN (SELECT system, count(*) AS n FROM ({quarantined}) AS q GROUP BY system) AS q ON q.system = s.system "
              f"LEFT JOIN (SELECT system, count(*) AS n FROM {status} AS t GROUP BY system) AS v ON v.system = s.system")
    within = f"quarantined <= {params.max_quarantine_rate} * (quarantined + observations)"
    checks.append(Check(
        "quarantine_rate",
        results_sql=(f"SELECT 'quarantined_share' AS metric, system AS system_id, CAST(quarantined AS DOUBLE) / "
                     f"nullif(quarantined + observations, 0) AS observed, {params.max_quarantine_rate} AS threshold, "
                     f"{within} AS passed FROM ({counts}) AS c"),
        offending_sql=(f"SELECT q.system, q.reasons, count(*) AS records, min(q.last_updated) AS first, max(q.last_updated) "
                       f"AS last FROM ({quarantined}) AS q JOIN ({counts}) AS c ON c.system = q.system WHERE NOT ({within}) "
                       "GROUP BY q.system, q.reasons ORDER BY records DESC"),
        operator_args={"table": f"({counts}) AS counts", "checks": {"quarantine_rate": {"check_statement": within}}},
    ))

    run_window = (f"system_id IN ({systems}) AND {days} AND started_at > {_moment(params.start)} "
                  f"AND started_at <= {_moment(params.as_of)}")
    failures = "coalesce(sum(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END), 0)"
    checks.append(Check(
        "failed_runs",
        results_sql=(f"SELECT 'failed_runs' AS metric, s.system AS system_id, CAST({failures} AS DOUBLE) AS observed, "
                     f"0.0 AS threshold, {failures} = 0 AS passed FROM {all_systems} LEFT JOIN "
                     f"(SELECT * FROM {table('pipeline_runs')} WHERE {run_window}) AS r ON r.system_id = s.system "
                     "GROUP BY s.system"),
        offending_sql=(f"SELECT run_id, system_id, started_at, error FROM {table('pipeline_runs')} WHERE {run_window} "
                       "AND outcome = 'failed' ORDER BY started_at DESC"),
        operator_args={"table": table("pipeline_runs"), "partition_clause": run_window,
                       "checks": {"failed_runs": {"check_statement": f"{failures} = 0"}}},
    ))
    return [check.in_dialect(dialect) for check in checks]
