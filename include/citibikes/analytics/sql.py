"""The service analytics' SQL (DuckDB's dialect), over the catalog's tables.

:data:`RECORDS` is every station record of a system's station_status feeds in a period, valid
(``station_status``) and quarantined (``quarantine``, with the counts it kept), inner-joined on
``station_id`` with the ``station_information`` version in effect at the feed's time (the auditors'
*snapshot*), each with its time in seconds (``ts``) and local time (``local``). Its parameters:
``$system``, ``$tz``, ``$start``/``$end`` (the period, UTC timestamps) and ``$first_date``/``$last_date``
(the UTC dates they touch, which prune the partitions read). A record is *usable* when its counts and
flags can be read (:data:`USABLE`); the rest are skipped and counted.

The per-station aggregates are :data:`STATIONS`; the empty/full episodes run on ordered rows
(:data:`SERIES`): every usable record of the day window (the station alone) and, for each station of
the network, the records of it and its neighbour in the peak and off-peak windows, combined per time.
Only the rows that can change the episode machine's state are returned (see :data:`SERIES`), each with
the time of the row before it in its series.
"""

from __future__ import annotations

from citibikes.live.episodes import MAX_GAP_S

USABLE = ("bikes >= 0 AND (docks >= 0 OR (docks IS NULL AND virtual)) "
          "AND is_renting IS NOT NULL AND is_returning IS NOT NULL "
          "AND NOT coalesce(list_contains(reasons, 'duplicate_station_id'), false)")
"""Counts and flags that can be read (a virtual station need not report docks); a later copy of a station in
one feed is not a second record of it."""

RECORDS_TABLE = f"""
CREATE OR REPLACE TEMP TABLE analytics_records AS
WITH records AS (
    SELECT station_id, last_updated, num_bikes_available AS bikes, num_bikes_disabled AS disabled,
           num_docks_available AS docks, is_renting, is_returning, CAST(NULL AS VARCHAR[]) AS reasons
    FROM station_status
    WHERE system = $system AND date BETWEEN $first_date AND $last_date
      AND last_updated >= $start AND last_updated < $end
    UNION ALL
    SELECT station_id, last_updated, num_bikes_available, num_bikes_disabled, num_docks_available, is_renting,
           is_returning, reasons
    FROM quarantine
    WHERE system = $system AND date BETWEEN $first_date AND $last_date AND feed = 'station_status'
      AND station_id IS NOT NULL AND last_updated >= $start AND last_updated < $end
), versions AS (
    SELECT sid, station_id, last_updated AS valid_from,
           coalesce(lead(last_updated) OVER (PARTITION BY station_id ORDER BY last_updated),
                    TIMESTAMPTZ '9999-12-31 00:00:00+00') AS valid_to,
           capacity, coalesce(is_virtual_station, false) AS virtual
    FROM station_information JOIN analytics_stations USING (station_id)
    WHERE system = $system AND date <= $last_date
)
SELECT v.sid, r.last_updated, r.bikes, r.disabled, r.docks, v.capacity, r.is_renting, r.is_returning,
       r.reasons IS NOT NULL AS quarantined, ({USABLE}) IS TRUE AS usable
FROM records r JOIN versions v
  ON r.station_id = v.station_id AND r.last_updated >= v.valid_from AND r.last_updated < v.valid_to
"""
"""Every station record of the system's station_status feeds in the period, valid and quarantined, with the
description in effect at its feed's time (an inner join: the auditors' *snapshot*), compactly: the station
as its number (``sid``), whether it was quarantined, whether its counts and flags can be read."""

FEEDS_TABLE = """
CREATE OR REPLACE TEMP TABLE analytics_feeds AS
SELECT last_updated, CAST(epoch(last_updated) AS BIGINT) AS ts, hour(local) AS hour,
       (CAST(local AS TIME) BETWEEN TIME '07:00:00' AND TIME '10:59:00'
        OR CAST(local AS TIME) BETWEEN TIME '16:00:00' AND TIME '21:59:00') AS in_unusable_window,
       CAST(local AS TIME) BETWEEN TIME '06:00:00' AND TIME '23:59:00' AS in_day_window,
       CASE WHEN isodow(local) <= 5 AND hour(local) BETWEEN 8 AND 19 THEN 1
            WHEN hour(local) < 8 OR hour(local) >= 20 THEN 2 END AS standard_window
FROM (SELECT last_updated, timezone($tz, last_updated) AS local FROM (SELECT DISTINCT last_updated FROM analytics_records))
"""
"""The system's snapshots (feeds) with their local windows, computed once per feed rather than per record:
the share-of-time-unusable windows 07:00:00-10:59:00 and 16:00:00-21:59:00 (both ends included, so 10:59:30
is outside); the durations' window 06:00:00-23:59:00; the rebalancing standard's window (:data:`SERIES_NAMES`:
1 peak, Monday-Friday hours 08-19; 2 off-peak, hours 00-07 and 20-23 every day)."""

STATIONS = """
SELECT sid,
       count(*) FILTER (WHERE usable) AS snapshots,
       count(*) FILTER (WHERE usable AND quarantined) AS quarantined_counted,
       count(*) FILTER (WHERE NOT usable) AS skipped,
       count(*) FILTER (WHERE usable AND (bikes = 0 OR docks = 0) AND in_unusable_window) AS unusable,
       count(*) FILTER (WHERE broken) AS broken_snapshots,
       median(disabled / capacity) FILTER (WHERE broken) AS broken_median,
       avg(disabled / capacity) FILTER (WHERE broken) AS broken_mean
FROM (SELECT *, usable AND capacity > 0 AND disabled >= 0 AND bikes + disabled <= capacity AS broken
      FROM analytics_records JOIN analytics_feeds USING (last_updated))
GROUP BY sid ORDER BY sid
"""
"""Per station: usable records, quarantined ones among them, skipped ones, unusable ones (0 bikes or 0 docks
in the windows), and the broken-bike share's snapshots, median and mean."""

SYSTEM = "SELECT count(*), count(*) FILTER (WHERE in_unusable_window) FROM analytics_feeds"
"""The system's snapshots in the period and in the unusable windows."""

BY_HOUR = """
SELECT hour, count(*) AS records, count(*) FILTER (WHERE bikes = 0) AS empty, count(*) FILTER (WHERE docks = 0) AS full
FROM analytics_records JOIN analytics_feeds USING (last_updated) WHERE usable GROUP BY hour ORDER BY hour
"""
"""Records with 0 bikes and with 0 docks by local hour of day (the report's availability chart)."""

STATIONS_TABLE = """
CREATE OR REPLACE TEMP TABLE analytics_stations AS
SELECT CAST(row_number() OVER (ORDER BY station_id) - 1 AS INTEGER) AS sid, * FROM (
    SELECT station_id, arg_max(name, last_updated) AS name, arg_min(lat, last_updated) AS lat,
           arg_min(lon, last_updated) AS lon
    FROM station_information WHERE system = $system AND date <= $last_date GROUP BY station_id)
"""
"""Every station the system described up to the period's end: a number (``sid``, what the queries group by:
cheaper than its text id), its latest name and its first known position. The queries above need it."""

SERIES_NAMES = ("day", "peak", "off_peak")
"""The series :data:`SERIES` walks, by number: the durations' day window, the standard's two windows."""

_SUM = "CASE WHEN o.{column} IS NULL THEN n.{column} WHEN n.{column} IS NULL THEN o.{column} ELSE o.{column} + n.{column} END"
"""A pair's count: the sum of the station's and its neighbour's, either alone where the other is absent (or a
virtual station reports no docks)."""

SERIES = f"""
WITH usable AS (
    SELECT sid, ts, in_day_window, standard_window, bikes, docks, is_renting, is_returning
    FROM analytics_records JOIN analytics_feeds USING (last_updated) WHERE usable
), rows AS (
    SELECT 0 AS series, sid AS owner, ts, bikes, docks, is_renting, is_returning FROM usable WHERE in_day_window
    UNION ALL
    SELECT coalesce(o.standard_window, n.standard_window), coalesce(o.owner, n.owner), coalesce(o.ts, n.ts),
           {_SUM.format(column="bikes")}, {_SUM.format(column="docks")},
           coalesce(o.is_renting, n.is_renting), coalesce(o.is_returning, n.is_returning)
    FROM (SELECT p.sid AS owner, u.* FROM usable u JOIN analytics_pairs p USING (sid)
          WHERE standard_window IS NOT NULL) AS o
    FULL JOIN (SELECT p.sid AS owner, u.* FROM usable u JOIN analytics_pairs p ON u.sid = p.neighbour
               WHERE standard_window IS NOT NULL) AS n
      ON o.owner = n.owner AND o.ts = n.ts
), walked AS (
    SELECT *, lag(ts) OVER w AS previous, lag(ts, 2) OVER w AS previous2,
           lag(state) OVER w AS state1, lag(state, 2) OVER w AS state2
    FROM (SELECT *, (bikes = 0 IS TRUE)::INT + 2 * (docks = 0 IS TRUE)::INT + 4 * is_renting::INT + 8 * is_returning::INT
                    AS state FROM rows)
    WINDOW w AS (PARTITION BY series, owner ORDER BY ts)
)
SELECT series, owner, ts, previous, bikes, docks, is_renting, is_returning FROM walked
WHERE previous IS NULL OR previous2 IS NULL OR state != state1 OR state1 != state2
   OR ts - previous > {MAX_GAP_S} OR previous - previous2 > {MAX_GAP_S}
ORDER BY series, owner, ts
"""
"""The rows of each series that can change the episode machine's state. A row changes nothing when neither
it nor the row before it is a series' first, follows a gap of more than 40 minutes, or differs from the
row before in what the machine looks at (bikes = 0, docks = 0, the renting and returning flags): by then every
episode that can open is open and every one that can close is closed (a property test checks it against
the whole series). ``previous`` is the time of the row before in the whole series, for the gap rule."""
