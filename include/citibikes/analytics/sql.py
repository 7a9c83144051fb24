"""The service analytics' SQL, over the catalog's tables, written once in DuckDB's dialect (other engines' is
made by sqlglot: :mod:`citibikes.analytics.engines`), in the order it runs.

:func:`tables` are the work tables: ``analytics_stations`` numbers the system's stations,
``analytics_quarantine`` holds its quarantined station_status records of the period,
``analytics_feeds`` its snapshots (feeds) in the period with their local windows, and ``analytics_records``
keeps every station record of those feeds, valid (``station_status``) and quarantined (``quarantine``, with
the counts it kept), joined with the description in effect at the feed's time (the auditors' *snapshot*), as
numbers: station, feed, state, broken-bike share. Their parameters: ``$system``, ``$tz``, ``$start``/``$end``
(the period, UTC timestamps) and ``$first_date``/``$last_date`` (the UTC dates they touch, which prune the
partitions read). DuckDB keeps them as temporary tables; an engine without them (Athena) inlines them as
common table expressions.

From these, :data:`SYSTEM`, :data:`STATIONS`, :data:`BROKEN_MEDIANS` and :data:`BY_HOUR` count and average,
and :data:`RUNS` gives each station's stretches in one state, over which :mod:`citibikes.analytics.series`
runs the episode machine. What both engines run alike is written so: no DuckDB-only syntax, integer
division avoided, booleans cast.
"""

from __future__ import annotations

from citibikes.live.episodes import MAX_GAP_S

STATIONS_TABLE = """
SELECT CAST(row_number() OVER (ORDER BY station_id) - 1 AS INTEGER) AS sid, station_id, name, lat, lon FROM (
    SELECT station_id, arg_max(name, last_updated) AS name, arg_min(lat, last_updated) AS lat,
           arg_min(lon, last_updated) AS lon
    FROM station_information WHERE system = $system AND "date" <= $last_date GROUP BY station_id) AS described
"""
"""Every station the system described up to the period's end: a number (``sid``, what the queries group by:
cheaper than its text id), its latest name and its first known position."""

DESCRIBED = "SELECT station_id, name, lat, lon FROM analytics_stations ORDER BY sid"


PEAK, OFF_PEAK = 1, 2
"""The rebalancing standard's windows, as ``analytics_feeds`` numbers them (0: neither)."""

FEEDS_TABLE = f"""
WITH moments AS (
    SELECT last_updated FROM station_status
    WHERE system = $system AND "date" BETWEEN $first_date AND $last_date AND last_updated >= $start AND last_updated < $end
    UNION
    SELECT last_updated FROM analytics_quarantine
), feeds AS (
    SELECT last_updated, CAST(epoch(last_updated) AS BIGINT) AS ts, hour(local) AS hour,
           (CAST(local AS TIME) BETWEEN TIME '07:00:00' AND TIME '10:59:00'
            OR CAST(local AS TIME) BETWEEN TIME '16:00:00' AND TIME '21:59:00') AS in_unusable_window,
           CAST(local AS TIME) BETWEEN TIME '06:00:00' AND TIME '23:59:00' AS in_day_window,
           CASE WHEN isodow(local) <= 5 AND hour(local) BETWEEN 8 AND 19 THEN {PEAK}
                WHEN hour(local) < 8 OR hour(local) >= 20 THEN {OFF_PEAK} ELSE 0 END AS standard_window
    FROM (SELECT last_updated, last_updated AT TIME ZONE $tz AS local FROM moments) AS located
), numbered AS (
    SELECT *, CAST(row_number() OVER (ORDER BY last_updated) - 1 AS INTEGER) AS k,
           coalesce(ts - lag(ts) OVER (ORDER BY last_updated) > {MAX_GAP_S}
                    OR in_day_window != lag(in_day_window) OVER (ORDER BY last_updated)
                    OR standard_window != lag(standard_window) OVER (ORDER BY last_updated), true) AS starts_segment
    FROM feeds
)
SELECT last_updated, ts, hour, in_unusable_window, in_day_window, standard_window, k,
       CAST(sum(CAST(starts_segment AS INTEGER)) OVER (ORDER BY k) AS INTEGER) AS segment
FROM numbered
"""
"""The system's snapshots (its station_status feeds in the period), numbered in time order (``k``), with their
local windows, computed once per feed rather than per record: the share-of-time-unusable windows
07:00:00-10:59:00 and 16:00:00-21:59:00 (both ends included, so 10:59:30 is outside); the durations' window
06:00:00-23:59:00; the rebalancing standard's window (1: peak, Monday-Friday hours 08-19; 2: off-peak, hours
00-07 and 20-23 every day; 0: neither). A *segment* is a stretch of consecutive feeds in the same windows
without a gap of more than 40 minutes."""

FEED_TIMES = "SELECT ts FROM analytics_feeds ORDER BY k"
SEGMENTS = ("SELECT segment, in_day_window, standard_window FROM analytics_feeds "
            "GROUP BY segment, in_day_window, standard_window")
"""Each segment's windows (one row each: a segment's feeds share them)."""


QUARANTINE_COUNTS = {"num_bikes_available": "INTEGER", "num_bikes_disabled": "INTEGER", "num_docks_available": "INTEGER",
                     "is_renting": "BOOLEAN", "is_returning": "BOOLEAN"}
"""The counts and flags the quarantine keeps of a station_status record (files written before it did lack them)."""


def quarantine_table(columns: set[str]) -> str:
    """The system's quarantined station_status records in the period, with every column of
    :data:`QUARANTINE_COUNTS` (``columns``: those the catalog's ``quarantine`` has): a lake all of whose
    quarantine files were written before the counts were kept has NULL ones (its records are skipped). Without a
    ``quarantine`` table (no column: the Glue crawler makes none before the pipeline quarantines a record), none."""
    counts = ", ".join(name if name in columns else f"CAST(NULL AS {kind}) AS {name}"
                       for name, kind in QUARANTINE_COUNTS.items())
    if not columns:
        return f"""
SELECT CAST(NULL AS VARCHAR) AS station_id, CAST(NULL AS TIMESTAMP) AS last_updated, CAST(NULL AS VARCHAR[]) AS reasons,
       {counts} FROM (VALUES (0)) AS nothing(x) WHERE false"""
    return f"""
SELECT station_id, last_updated, reasons, {counts} FROM quarantine
WHERE system = $system AND "date" BETWEEN $first_date AND $last_date AND feed = 'station_status'
  AND last_updated >= $start AND last_updated < $end"""


RECORDS_TABLE = """
WITH records AS (
    SELECT station_id, last_updated, num_bikes_available AS bikes, num_bikes_disabled AS disabled,
           num_docks_available AS docks, is_renting, is_returning, false AS quarantined, true AS readable
    FROM station_status
    WHERE system = $system AND "date" BETWEEN $first_date AND $last_date
      AND last_updated >= $start AND last_updated < $end
    UNION ALL
    SELECT station_id, last_updated, num_bikes_available, num_bikes_disabled, num_docks_available, is_renting,
           is_returning, true,
           coalesce(num_bikes_available >= 0 AND (num_docks_available >= 0 OR num_docks_available IS NULL)
                    AND is_renting IS NOT NULL AND is_returning IS NOT NULL
                    AND NOT list_contains(reasons, 'duplicate_station_id'), false)
    FROM analytics_quarantine
    WHERE station_id IS NOT NULL AND NOT list_contains(reasons, 'unknown_station')
), versions AS (
    SELECT sid, station_id, last_updated AS valid_from,
           lead(last_updated) OVER (PARTITION BY station_id ORDER BY last_updated) AS valid_to,
           capacity, coalesce(is_virtual_station, false) AS virtual
    FROM station_information JOIN analytics_stations USING (station_id)
    WHERE system = $system AND "date" <= $last_date
), joined AS (
    SELECT v.sid, f.k, r.quarantined, r.bikes, r.disabled, r.docks, r.is_renting, r.is_returning, v.capacity,
           r.readable AND (r.docks IS NOT NULL OR v.virtual) AS usable
    FROM records AS r
    JOIN versions AS v ON r.station_id = v.station_id AND r.last_updated >= v.valid_from
                          AND (r.last_updated < v.valid_to OR v.valid_to IS NULL)
    JOIN analytics_feeds AS f ON f.last_updated = r.last_updated
)
SELECT sid, k, quarantined,
       CASE WHEN usable THEN CAST(CAST(bikes = 0 AS INTEGER) + 2 * CAST(coalesce(docks = 0, false) AS INTEGER)
                                  + 4 * CAST(coalesce(docks > 0, false) AS INTEGER) + 8 * CAST(is_renting AS INTEGER)
                                  + 16 * CAST(is_returning AS INTEGER) AS TINYINT) END AS state,
       CASE WHEN usable AND capacity > 0 AND disabled >= 0 AND bikes + disabled <= capacity
            THEN CAST(disabled AS DOUBLE) / capacity END AS broken
FROM joined
"""
"""Every station record of the system's station_status feeds in the period, valid and quarantined, with the
description in effect at its feed's time (an inner join: the auditors' *snapshot*; a status the pipeline
quarantined as ``unknown_station`` had none: the lake's versions of a description say when it took effect,
not when the feed stopped describing the station), compactly: the station and the feed as their numbers
(``sid``, ``k``), whether it was quarantined, its ``state`` (what the episode machine looks at, as bits: 1 no
bike, 2 no free dock, 4 some free dock (neither: a virtual station's unreported docks), 8 renting, 16
returning; NULL when its counts or flags cannot be read: a count missing or negative (docks may be missing at
a virtual station), a flag missing, or a later copy of a station in its feed, not a second record of it; the
valid records of ``station_status`` always can) and its broken-bike share (``num_bikes_disabled / capacity``;
NULL for capacity 0 or bikes + disabled above capacity)."""


def tables(quarantine_columns: set[str]) -> list[tuple[str, str]]:
    """The work tables, each a name and its query, in the order they are made (a table reads those before it)."""
    return [("analytics_stations", STATIONS_TABLE), ("analytics_quarantine", quarantine_table(quarantine_columns)),
            ("analytics_feeds", FEEDS_TABLE), ("analytics_records", RECORDS_TABLE)]


SYSTEM = """
SELECT count(*), count(*) FILTER (WHERE in_unusable_window) FROM analytics_feeds
WHERE k IN (SELECT k FROM analytics_records)
"""
"""The system's snapshots in the period and in the unusable windows: its feeds that describe a station they list."""


STATIONS = """
SELECT sid, count(state) AS snapshots, count(state) FILTER (WHERE quarantined) AS quarantined_counted,
       count(*) - count(state) AS skipped, count(*) FILTER (WHERE state & 3 != 0 AND in_unusable_window) AS unusable,
       count(broken) AS broken_snapshots, avg(broken) AS broken_mean
FROM analytics_records JOIN analytics_feeds USING (k)
GROUP BY sid ORDER BY sid
"""
"""Per station: its usable records, quarantined ones among them, skipped ones, unusable ones (0 bikes or 0 docks
in the windows), and the broken-bike share's snapshots and mean."""


BROKEN_MEDIANS = """
WITH shares AS (SELECT sid, broken, count(*) AS n FROM analytics_records WHERE broken IS NOT NULL GROUP BY sid, broken),
counted AS (
    SELECT sid, broken, sum(n) OVER (PARTITION BY sid ORDER BY broken) AS up_to, sum(n) OVER (PARTITION BY sid) AS total
    FROM shares
)
SELECT sid, (min(broken) FILTER (WHERE 2 * up_to > total - 1) + min(broken) FILTER (WHERE 2 * up_to > total)) / 2
FROM counted GROUP BY sid
"""
"""Each station's median broken-bike share, from how often each share occurs (a station has a few dozen distinct
shares over a month: much cheaper than sorting its records): the mean of the values at the two middle places
(counting from 0, places (total - 1) // 2 and total // 2: the first share whose running count passes each),
one place when the count is odd."""


BY_HOUR = """
SELECT hour, count(state) AS records, count(*) FILTER (WHERE state & 1 != 0) AS empty,
       count(*) FILTER (WHERE state & 2 != 0) AS full
FROM analytics_records JOIN analytics_feeds USING (k) GROUP BY hour ORDER BY hour
"""
"""Records with 0 bikes and with 0 docks by local hour of day (the report's availability chart)."""


RUNS = """
WITH usable AS (
    SELECT sid, k, segment, state FROM analytics_records JOIN analytics_feeds USING (k) WHERE state IS NOT NULL
), marked AS (
    SELECT sid, k, segment, state, max(k) OVER (PARTITION BY sid) AS last_k,
           lag((k::BIGINT << 32) | (segment << 8) | state) OVER (PARTITION BY sid ORDER BY k) AS before
    FROM usable
), starts AS (
    SELECT sid, k, segment, state, last_k, before >> 32 AS before_k FROM marked
    WHERE before IS NULL OR k != (before >> 32) + 1 OR segment != (before >> 8) & 16777215 OR state != before & 255
)
SELECT sid, k AS first, coalesce(lead(before_k) OVER (PARTITION BY sid ORDER BY k), last_k) AS last, segment,
       CAST(state AS INTEGER) AS state
FROM starts ORDER BY sid, k
"""
"""Each station's *runs*: stretches of its usable records at consecutive feeds (``first`` to ``last``) of one
segment in one state, which :mod:`citibikes.analytics.series` walks. (The previous record's feed, segment and
state are packed in one number: one window function instead of three.)"""
