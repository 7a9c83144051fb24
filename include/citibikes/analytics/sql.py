"""The service analytics' SQL (DuckDB's dialect), over the catalog's tables, in the order it runs.

:data:`STATIONS_TABLE` numbers the system's stations, :data:`FEEDS_TABLE` its snapshots (feeds) in the
period with their local windows, and :data:`RECORDS_TABLE` keeps every station record of those feeds, valid
(``station_status``) and quarantined (``quarantine``, with the counts it kept), joined with the description in
effect at the feed's time (the auditors' *snapshot*), as numbers: station, feed, state, broken-bike share.
The parameters: ``$system``, ``$tz``, ``$start``/``$end`` (the period, UTC timestamps) and
``$first_date``/``$last_date`` (the UTC dates they touch, which prune the partitions read).

From these, :data:`SYSTEM`, :data:`STATIONS`, :data:`BROKEN_MEDIANS` and :data:`BY_HOUR` count and average,
and :data:`RUNS` gives each station's stretches in one state, over which
:mod:`citibikes.analytics.series` runs the episode machine.
"""

from __future__ import annotations

from citibikes.live.episodes import MAX_GAP_S

STATIONS_TABLE = """
CREATE OR REPLACE TEMP TABLE analytics_stations AS
SELECT CAST(row_number() OVER (ORDER BY station_id) - 1 AS INTEGER) AS sid, * FROM (
    SELECT station_id, arg_max(name, last_updated) AS name, arg_min(lat, last_updated) AS lat,
           arg_min(lon, last_updated) AS lon
    FROM station_information WHERE system = $system AND date <= $last_date GROUP BY station_id)
"""
"""Every station the system described up to the period's end: a number (``sid``, what the queries group by:
cheaper than its text id), its latest name and its first known position. The queries above need it."""


PEAK, OFF_PEAK = 1, 2
"""The rebalancing standard's windows, as :data:`FEEDS_TABLE` numbers them (0: neither)."""

FEEDS_TABLE = f"""
CREATE OR REPLACE TEMP TABLE analytics_feeds AS
WITH feeds AS (
    SELECT last_updated, CAST(epoch(last_updated) AS BIGINT) AS ts, hour(local) AS hour,
           (CAST(local AS TIME) BETWEEN TIME '07:00:00' AND TIME '10:59:00'
            OR CAST(local AS TIME) BETWEEN TIME '16:00:00' AND TIME '21:59:00') AS in_unusable_window,
           CAST(local AS TIME) BETWEEN TIME '06:00:00' AND TIME '23:59:00' AS in_day_window,
           CASE WHEN isodow(local) <= 5 AND hour(local) BETWEEN 8 AND 19 THEN {PEAK}
                WHEN hour(local) < 8 OR hour(local) >= 20 THEN {OFF_PEAK} ELSE 0 END AS standard_window
    FROM (SELECT last_updated, timezone($tz, last_updated) AS local FROM (
        SELECT DISTINCT last_updated FROM station_status
        WHERE system = $system AND date BETWEEN $first_date AND $last_date
          AND last_updated >= $start AND last_updated < $end
        UNION
        SELECT DISTINCT last_updated FROM quarantine
        WHERE system = $system AND date BETWEEN $first_date AND $last_date AND feed = 'station_status'
          AND last_updated >= $start AND last_updated < $end))
), numbered AS (
    SELECT *, CAST(row_number() OVER (ORDER BY ts) - 1 AS INTEGER) AS k,
           coalesce(ts - lag(ts) OVER (ORDER BY ts) > {MAX_GAP_S}
                    OR in_day_window != lag(in_day_window) OVER (ORDER BY ts)
                    OR standard_window != lag(standard_window) OVER (ORDER BY ts), true) AS starts_segment
    FROM feeds
)
SELECT * EXCLUDE (starts_segment), CAST(sum(starts_segment::INT) OVER (ORDER BY k) AS INTEGER) AS segment FROM numbered
"""
"""The system's snapshots (its station_status feeds in the period), numbered in time order (``k``), with their local windows, computed once per
feed rather than per record: the share-of-time-unusable windows 07:00:00-10:59:00 and 16:00:00-21:59:00 (both
ends included, so 10:59:30 is outside); the durations' window 06:00:00-23:59:00; the rebalancing standard's
window (1: peak, Monday-Friday hours 08-19; 2: off-peak, hours 00-07 and 20-23 every day; 0: neither). A
*segment* is a stretch of consecutive feeds in the same windows without a gap of more than 40 minutes."""


QUARANTINE_COUNTS = {"num_bikes_available": "INTEGER", "num_bikes_disabled": "INTEGER", "num_docks_available": "INTEGER",
                     "is_renting": "BOOLEAN", "is_returning": "BOOLEAN"}
"""The counts and flags the quarantine keeps of a station_status record (files written before it did lack them)."""


def quarantine_view(columns: set[str]) -> str:
    """``analytics_quarantine``: the catalog's ``quarantine`` (whose ``columns`` are given) with every column of
    :data:`QUARANTINE_COUNTS`: a lake all of whose quarantine files were written before the counts were kept
    has NULL ones (its quarantined records are skipped)."""
    missing = [f"CAST(NULL AS {kind}) AS {name}" for name, kind in QUARANTINE_COUNTS.items() if name not in columns]
    return f"CREATE OR REPLACE TEMP VIEW analytics_quarantine AS SELECT {', '.join(['*', *missing])} FROM quarantine"


RECORDS_TABLE = """
CREATE OR REPLACE TEMP TABLE analytics_records AS
WITH records AS (
    SELECT station_id, last_updated, num_bikes_available AS bikes, num_bikes_disabled AS disabled,
           num_docks_available AS docks, is_renting, is_returning, false AS quarantined, true AS readable
    FROM station_status
    WHERE system = $system AND date BETWEEN $first_date AND $last_date
      AND last_updated >= $start AND last_updated < $end
    UNION ALL
    SELECT station_id, last_updated, num_bikes_available, num_bikes_disabled, num_docks_available, is_renting,
           is_returning, true,
           coalesce(num_bikes_available >= 0 AND (num_docks_available >= 0 OR num_docks_available IS NULL)
                    AND is_renting IS NOT NULL AND is_returning IS NOT NULL
                    AND NOT list_contains(reasons, 'duplicate_station_id'), false)
    FROM analytics_quarantine
    WHERE system = $system AND date BETWEEN $first_date AND $last_date AND feed = 'station_status'
      AND station_id IS NOT NULL AND NOT list_contains(reasons, 'unknown_station')
      AND last_updated >= $start AND last_updated < $end
), versions AS (
    SELECT sid, station_id, last_updated AS valid_from,
           coalesce(lead(last_updated) OVER (PARTITION BY station_id ORDER BY last_updated),
                    TIMESTAMPTZ '9999-12-31 00:00:00+00') AS valid_to,
           capacity, coalesce(is_virtual_station, false) AS virtual
    FROM station_information JOIN analytics_stations USING (station_id)
    WHERE system = $system AND date <= $last_date
), joined AS (
    SELECT v.sid, f.k, r.*, v.capacity, r.readable AND (r.docks IS NOT NULL OR v.virtual) AS usable
    FROM records r
    JOIN versions v ON r.station_id = v.station_id AND r.last_updated >= v.valid_from AND r.last_updated < v.valid_to
    JOIN analytics_feeds f USING (last_updated)
)
SELECT sid, k, quarantined,
       CASE WHEN usable THEN CAST((bikes = 0)::INT + 2 * (docks = 0 IS TRUE)::INT + 4 * (docks > 0 IS TRUE)::INT
                                  + 8 * is_renting::INT + 16 * is_returning::INT AS UTINYINT) END AS state,
       CASE WHEN usable AND capacity > 0 AND disabled >= 0 AND bikes + disabled <= capacity THEN disabled / capacity END
           AS broken
FROM joined
"""
"""Every station record of the system's station_status feeds in the period, valid and quarantined, with the
description in effect at its feed's time (an inner join: the auditors' *snapshot*; a status the pipeline
quarantined as ``unknown_station`` had none: the lake's versions of a description say when it took effect,
not when the feed stopped describing the station), compactly: the station
and the feed as their numbers (``sid``, ``k``), whether it was quarantined, its ``state`` (what the episode
machine looks at, as bits: 1 no bike, 2 no free dock, 4 some free dock (neither: a virtual station's
unreported docks), 8 renting, 16 returning; NULL when its counts or flags cannot be read: a count missing or
negative (docks may be missing at a virtual station), a flag missing, or a later copy of a station in its
feed, not a second record of it; the valid records of ``station_status`` always can) and its broken-bike
share (``num_bikes_disabled / capacity``; NULL for capacity 0 or bikes + disabled above capacity). Kept as a
table: the queries below read it three times, faster than reading the lake three times. Its parameters: ``$system``, ``$start``/``$end`` (the period, UTC
timestamps) and ``$first_date``/``$last_date`` (the UTC dates they touch, which prune the partitions read)."""


SYSTEM = """
SELECT count(*), count(*) FILTER (WHERE in_unusable_window) FROM analytics_feeds
WHERE k IN (SELECT DISTINCT k FROM analytics_records)
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
WITH shares AS (SELECT sid, broken, count(*) AS n FROM analytics_records WHERE broken IS NOT NULL GROUP BY ALL),
counted AS (
    SELECT *, sum(n) OVER (PARTITION BY sid ORDER BY broken) AS up_to, sum(n) OVER (PARTITION BY sid) AS total
    FROM shares
)
SELECT sid, (min(broken) FILTER (WHERE up_to > (total - 1) // 2) + min(broken) FILTER (WHERE up_to > total // 2)) / 2
FROM counted GROUP BY sid
"""
"""Each station's median broken-bike share, from how often each share occurs (a station has a few dozen distinct
shares over a month: much cheaper than sorting its records): the mean of the values at the two middle places,
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
       state::INTEGER
FROM starts ORDER BY sid, k
"""
"""Each station's *runs*: stretches of its usable records at consecutive feeds (``first`` to ``last``) of one
segment in one state, which :mod:`citibikes.analytics.series` walks."""
