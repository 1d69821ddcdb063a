-- Statistics, counted exactly: every change of an event's status is counted in the transaction
-- that makes it (triggers on data_events and deliveries), as deltas appended to
-- statistics_changes; the statistics agent folds them into event_statistics every second.
-- event_counted remembers the status each event is counted under, so a replayed write, a retry
-- or a crash never counts an event twice, and a status change moves it between counters.
-- Live counting covers events received within the live retention (statistics_live, set by the
-- worker from VDIP_STATISTICS_LIVE_RETENTION_DAYS); older ones are counted by a refresh.

CREATE TABLE statistics_live (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    retention  interval NOT NULL
);
INSERT INTO statistics_live (retention) VALUES (interval '35 days');

-- The start of an event's bucket: hour, day or ISO week (Monday 00:00), all in UTC.
CREATE FUNCTION stat_bucket(period text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT date_trunc(CASE period WHEN 'hourly' THEN 'hour' WHEN 'daily' THEN 'day' ELSE 'week' END, at, 'UTC')
$$;

CREATE TABLE event_counted (
    event_id     uuid PRIMARY KEY,
    app_id       text NOT NULL,
    event_type   text NOT NULL,
    received_at  timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('pending', 'processed', 'failed'))
);
CREATE INDEX event_counted_app_received ON event_counted (app_id, received_at);

CREATE TABLE statistics_changes (
    change_id    bigserial PRIMARY KEY,
    app_id       text NOT NULL,
    event_type   text NOT NULL,
    time_bucket  timestamptz NOT NULL,
    time_period  text NOT NULL,
    d_total      integer NOT NULL,
    d_processed  integer NOT NULL,
    d_failed     integer NOT NULL
);

-- Count event ``id`` under its current status, if that is not how it is counted yet.
CREATE FUNCTION count_event(id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    e data_events%ROWTYPE;
    counted text;
    now_status text;
    period text;
BEGIN
    -- One writer per event at a time; the next one then sees this one's committed changes.
    PERFORM pg_advisory_xact_lock(hashtextextended(id::text, 13));
    SELECT * INTO e FROM data_events WHERE event_id = id;
    IF NOT FOUND THEN
        RETURN;  -- a delivery outcome ahead of its event: the event store counts it
    END IF;
    IF e.received_at < now() - (SELECT retention FROM statistics_live) THEN
        RETURN;  -- beyond the live retention: a refresh counts it
    END IF;
    SELECT status INTO counted FROM event_counted WHERE event_id = id FOR UPDATE;
    now_status := event_status(e.status, id);
    IF counted IS NOT DISTINCT FROM now_status THEN
        RETURN;
    END IF;
    INSERT INTO event_counted VALUES (id, e.app_id, e.event_type, e.received_at, now_status)
    ON CONFLICT (event_id) DO UPDATE SET status = EXCLUDED.status;
    FOREACH period IN ARRAY ARRAY['hourly', 'daily', 'weekly'] LOOP
        INSERT INTO statistics_changes (app_id, event_type, time_bucket, time_period, d_total, d_processed, d_failed)
        VALUES (e.app_id, e.event_type, stat_bucket(period, e.received_at), period,
                CASE WHEN counted IS NULL THEN 1 ELSE 0 END,
                (now_status = 'processed')::int - (counted IS NOT DISTINCT FROM 'processed')::int,
                (now_status = 'failed')::int - (counted IS NOT DISTINCT FROM 'failed')::int);
    END LOOP;
END
$$;

CREATE FUNCTION count_event_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_event(NEW.event_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER data_events_counted AFTER INSERT ON data_events
    FOR EACH ROW EXECUTE FUNCTION count_event_trigger();
CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries
    FOR EACH ROW EXECUTE FUNCTION count_event_trigger();
CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION count_event_trigger();
