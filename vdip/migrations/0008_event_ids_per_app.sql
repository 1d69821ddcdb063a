-- Event ids belong to their application: an event is identified by (app_id, event_id)
-- everywhere. Until now data_events, event_counted and deliveries were keyed by event_id alone:
-- application B's event with an id application A had used was never stored (ON CONFLICT DO
-- NOTHING), and B's deliveries were attached to A's event. Delivery ids (uuid5 of
-- event_id:rule_id) and table rows (event_id, rule_id) keep their keys: a rule belongs to one
-- application for good, so they are unique per (application, event, rule) already.
--
-- Upgrade with the worker stopped and events.routed and deliveries.* drained, then run
-- `vdip stats refresh`: statuses that counted another application's deliveries change.

-- The statistics triggers are rebuilt below; none fires on the rewrites in between.
DROP TRIGGER data_events_counted ON data_events;
DROP TRIGGER deliveries_counted_insert ON deliveries;
DROP TRIGGER deliveries_counted_update ON deliveries;

-- The keys are (app_id, event_id) with event_id first in their indexes: the uuid tells events
-- apart at once (comparing app ids first made every lookup and insert dearer), and the primary
-- key also serves the admin's reads by event id alone, so no other index is needed for them.
ALTER TABLE data_events DROP CONSTRAINT data_events_pkey;
ALTER TABLE data_events ADD PRIMARY KEY (event_id, app_id);

ALTER TABLE event_counted DROP CONSTRAINT event_counted_pkey;
ALTER TABLE event_counted ADD PRIMARY KEY (event_id, app_id);

-- Each delivery's application: its rule's (a rule never changes application), else the one in
-- its message (webhooks), else its event's (a rule deleted since). What is left cannot be
-- placed: kept aside in deliveries_orphaned_0008.
ALTER TABLE deliveries ADD COLUMN app_id text;
UPDATE deliveries d SET app_id = r.app_id FROM routing_rules r WHERE r.rule_id = d.rule_id;
UPDATE deliveries SET app_id = message -> 'event' ->> 'app_id'
WHERE app_id IS NULL AND message -> 'event' ->> 'app_id' IS NOT NULL;
UPDATE deliveries d SET app_id = e.app_id FROM data_events e
WHERE d.app_id IS NULL AND e.event_id = d.event_id;

DO $$
DECLARE
    orphans bigint;
BEGIN
    SELECT count(*) INTO orphans FROM deliveries WHERE app_id IS NULL;
    IF orphans > 0 THEN
        CREATE TABLE deliveries_orphaned_0008 AS SELECT * FROM deliveries WHERE app_id IS NULL;
        DELETE FROM deliveries WHERE app_id IS NULL;
        RAISE NOTICE '% delivery row(s) with no rule, message or event to tell their application were moved to deliveries_orphaned_0008', orphans;
    END IF;
END
$$;

ALTER TABLE deliveries ALTER COLUMN app_id SET NOT NULL;
DROP INDEX deliveries_event;
CREATE INDEX deliveries_event ON deliveries (event_id, app_id);

-- What the old keys got wrong, for the operator: another application's event with the same id
-- was never stored (its deliveries now stand alone: resend those events), and deliveries that
-- are not among the rules their stored event matched.
DO $$
DECLARE
    lost bigint;
    listed text;
    foreign_deliveries bigint;
BEGIN
    SELECT count(*), string_agg(format('(%s, %s)', app_id, event_id), ', ')
    INTO lost, listed
    FROM (SELECT DISTINCT d.app_id, d.event_id FROM deliveries d
          WHERE EXISTS (SELECT 1 FROM data_events e WHERE e.event_id = d.event_id)
            AND NOT EXISTS (SELECT 1 FROM data_events e
                            WHERE e.event_id = d.event_id AND e.app_id = d.app_id)
          ORDER BY 1, 2) AS l;
    IF lost > 0 THEN
        RAISE NOTICE '% event(s) were never stored because another application had used their id; their producers should send them again (app_id, event_id): %', lost, listed;
    END IF;
    SELECT count(*) INTO foreign_deliveries
    FROM deliveries d JOIN data_events e ON (e.app_id, e.event_id) = (d.app_id, d.event_id)
    WHERE e.routing IS NOT NULL
      AND NOT coalesce(e.routing -> 'matched_rules' @> to_jsonb(d.rule_id), false);
    IF foreign_deliveries > 0 THEN
        RAISE NOTICE '% delivery row(s) are not among the rules their stored event matched', foreign_deliveries;
    END IF;
END
$$;

-- Statistics (0004, 0006, 0007) by the new key. The status of one event:
DROP FUNCTION event_status(text, uuid);
CREATE FUNCTION event_status(stored text, app text, id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT status_of(
        stored,
        EXISTS (SELECT 1 FROM deliveries d
                WHERE d.app_id = app AND d.event_id = id AND d.status = 'failed'),
        EXISTS (SELECT 1 FROM deliveries d
                WHERE d.app_id = app AND d.event_id = id AND d.status IN ('pending', 'retrying')))
$$;

-- Count the events (app_ids[i], ids[i]) under their current status, those not counted so yet.
DROP FUNCTION count_events(uuid[]);
CREATE FUNCTION count_events(app_ids text[], ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;
    -- One writer per event at a time, locks taken in one order; the next writer then sees this
    -- one's committed changes (the key: the event id hashed with its application's id as the
    -- seed, no text built per event). ROW EXCLUSIVE on event_counted waits for a refresh in progress
    -- (it holds EXCLUSIVE), so that the statement below reads the repaired state.
    PERFORM pg_advisory_xact_lock(uuid_hash_extended(id, hashtext(app)))
    FROM (SELECT DISTINCT app, id FROM unnest(app_ids, ids) AS k(app, id) ORDER BY app, id) AS sorted;
    LOCK TABLE event_counted IN ROW EXCLUSIVE MODE;
    -- Events beyond the live retention are left to a refresh; a delivery outcome ahead of its
    -- event finds no event: the event store counts it when it stores it.
    WITH current AS (
        SELECT e.event_id, e.app_id, e.event_type, e.received_at, c.status AS counted,
               status_of(e.status, d.any_failed, d.any_under_way) AS now_status
        FROM (SELECT DISTINCT app, id FROM unnest(app_ids, ids) AS k(app, id)) AS batch
        JOIN data_events e ON e.app_id = batch.app AND e.event_id = batch.id
        LEFT JOIN event_counted c ON c.app_id = e.app_id AND c.event_id = e.event_id
        CROSS JOIN LATERAL (
            SELECT bool_or(status = 'failed') AS any_failed,
                   bool_or(status IN ('pending', 'retrying')) AS any_under_way
            FROM deliveries
            WHERE deliveries.app_id = e.app_id AND deliveries.event_id = e.event_id) AS d
        WHERE e.received_at >= now() - (SELECT retention FROM statistics_live)
    ),
    changed AS (
        SELECT * FROM current WHERE counted IS DISTINCT FROM now_status
    ),
    recorded AS (
        INSERT INTO event_counted (event_id, app_id, event_type, received_at, status)
        SELECT event_id, app_id, event_type, received_at, now_status FROM changed
        ON CONFLICT (app_id, event_id) DO UPDATE SET status = EXCLUDED.status
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

-- The two arrays come from one aggregate pass: their elements pair up.
CREATE OR REPLACE FUNCTION count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    app_ids text[];
    ids uuid[];
BEGIN
    SELECT array_agg(app_id), array_agg(event_id) INTO app_ids, ids FROM inserted;
    PERFORM count_events(app_ids, ids);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION count_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    app_ids text[];
    ids uuid[];
BEGIN
    SELECT array_agg(n.app_id), array_agg(n.event_id) INTO app_ids, ids
    FROM updated n JOIN previous o ON o.delivery_id = n.delivery_id
    WHERE n.status IS DISTINCT FROM o.status;
    PERFORM count_events(app_ids, ids);
    RETURN NULL;
END
$$;

CREATE TRIGGER data_events_counted AFTER INSERT ON data_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted();
CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted();
CREATE TRIGGER deliveries_counted_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS previous NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION count_status_changed();
