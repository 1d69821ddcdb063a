-- Statistics counted per statement instead of per row. The sinks write a batch of hundreds of
-- rows with one INSERT ... SELECT; counting each row with count_event (0004: a dozen statements
-- per row) took about 0.4 ms a row, three quarters of their write time (bench/tables.py
-- --trigger-cost). Statement-level triggers now hand the ids of the events whose rows a statement
-- inserted, or whose delivery status it changed, to count_events, which counts them all at once,
-- in the same transaction, by the same rules: exact, and each event counted once per status.

-- The one rule of an event's status (0003), given what its deliveries say: failed when the
-- event failed routing or a delivery failed for good; pending while one is under way; processed
-- otherwise. A plain expression, so that PostgreSQL inlines it into set-based queries.
CREATE FUNCTION status_of(stored text, any_failed boolean, any_under_way boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN stored = 'failed' OR any_failed IS TRUE THEN 'failed'
        WHEN any_under_way IS TRUE THEN 'pending'
        ELSE 'processed'
    END
$$;

CREATE OR REPLACE FUNCTION event_status(stored text, id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT status_of(
        stored,
        EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = id AND d.status = 'failed'),
        EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = id AND d.status IN ('pending', 'retrying')))
$$;

-- Count the events ``ids`` under their current status, those not counted so yet.
CREATE FUNCTION count_events(ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;
    -- One writer per event at a time, locks taken in one order; the next writer then sees this
    -- one's committed changes. ROW EXCLUSIVE on event_counted waits for a refresh in progress
    -- (it holds EXCLUSIVE), so that the statement below reads the repaired state.
    PERFORM pg_advisory_xact_lock(hashtextextended(id::text, 13))
    FROM (SELECT DISTINCT id FROM unnest(ids) AS id ORDER BY id) AS sorted;
    LOCK TABLE event_counted IN ROW EXCLUSIVE MODE;
    -- Events beyond the live retention are left to a refresh; a delivery outcome ahead of its
    -- event finds no event: the event store counts it when it stores it.
    WITH current AS (
        SELECT e.event_id, e.app_id, e.event_type, e.received_at, c.status AS counted,
               status_of(e.status, d.any_failed, d.any_under_way) AS now_status
        FROM (SELECT DISTINCT id FROM unnest(ids) AS id) AS batch
        JOIN data_events e ON e.event_id = batch.id
        LEFT JOIN event_counted c ON c.event_id = e.event_id
        CROSS JOIN LATERAL (
            SELECT bool_or(status = 'failed') AS any_failed,
                   bool_or(status IN ('pending', 'retrying')) AS any_under_way
            FROM deliveries WHERE deliveries.event_id = e.event_id) AS d
        WHERE e.received_at >= now() - (SELECT retention FROM statistics_live)
    ),
    changed AS (
        SELECT * FROM current WHERE counted IS DISTINCT FROM now_status
    ),
    recorded AS (
        INSERT INTO event_counted (event_id, app_id, event_type, received_at, status)
        SELECT event_id, app_id, event_type, received_at, now_status FROM changed
        ON CONFLICT (event_id) DO UPDATE SET status = EXCLUDED.status
    )
    INSERT INTO statistics_changes (app_id, event_type, time_bucket, time_period, d_total, d_processed, d_failed)
    SELECT app_id, event_type, stat_bucket(period, received_at), period,
           sum((counted IS NULL)::int),
           sum((now_status = 'processed')::int - (counted IS NOT DISTINCT FROM 'processed')::int),
           sum((now_status = 'failed')::int - (counted IS NOT DISTINCT FROM 'failed')::int)
    FROM changed, unnest(ARRAY['hourly', 'daily', 'weekly']) AS period
    GROUP BY app_id, event_type, stat_bucket(period, received_at), period;
END
$$;

CREATE FUNCTION count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_events(ARRAY(SELECT event_id FROM inserted));
    RETURN NULL;
END
$$;

CREATE FUNCTION count_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_events(ARRAY(
        SELECT n.event_id FROM updated n JOIN previous o ON o.delivery_id = n.delivery_id
        WHERE n.status IS DISTINCT FROM o.status));
    RETURN NULL;
END
$$;

DROP TRIGGER data_events_counted ON data_events;
DROP TRIGGER deliveries_counted_insert ON deliveries;
DROP TRIGGER deliveries_counted_update ON deliveries;
DROP FUNCTION count_event_trigger();
DROP FUNCTION count_event(uuid);

CREATE TRIGGER data_events_counted AFTER INSERT ON data_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted();
CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted();
-- A statement that changes no status (an INSERT ... ON CONFLICT DO UPDATE that changes the
-- message only, say) counts nothing.
CREATE TRIGGER deliveries_counted_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS previous NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION count_status_changed();
