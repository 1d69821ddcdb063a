-- A stored event whose routing failed takes the routing of a later copy of the same version
-- that was routed (the event store's upsert): its status changes, and is counted again, as a
-- delivery's status change is (count_status_changed, 0008).
CREATE FUNCTION count_rerouted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    app_ids text[];
    ids uuid[];
BEGIN
    SELECT array_agg(n.app_id), array_agg(n.event_id) INTO app_ids, ids
    FROM updated n JOIN previous o ON o.app_id = n.app_id AND o.event_id = n.event_id
    WHERE n.status IS DISTINCT FROM o.status;
    PERFORM count_events(app_ids, ids);
    RETURN NULL;
END
$$;

CREATE TRIGGER data_events_counted_update AFTER UPDATE ON data_events
    REFERENCING OLD TABLE AS previous NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION count_rerouted();
