-- Counting a batch at half the cost (bench/tables.py --trigger-cost), by the same rules.

-- stat_bucket as an expression the planner inlines. The first definition (0004) was STRICT
-- around a CASE and called the STABLE date_trunc(text, timestamptz, text) from an IMMUTABLE
-- function: either keeps it from being inlined, and each call went through the SQL function
-- executor (about 10 µs; count_events makes three calls per event). Truncating the UTC
-- wall-clock time gives the same buckets with IMMUTABLE functions only. A NULL period gives NULL,
-- as before.
CREATE OR REPLACE FUNCTION stat_bucket(period text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(CASE period WHEN 'hourly' THEN 'hour' WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' END,
                      at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- An event's counted status changes after it was inserted (pending, then processed or failed):
-- room on each page lets that update stay on the page without new index entries (a HOT update;
-- status is in no index), half the cost of the update. Pages written from now on keep it.
ALTER TABLE event_counted SET (fillfactor = 50);
