-- The first version of an event wins: the router claims each (app_id, event_id) with the hash of
-- its version (schemas.events.content_hash: event_type and payload) before it routes the event,
-- and routes only the claim's winner and identical copies (streams/claims.py). The gateway reads
-- claims to answer 409 to a known differing retry; the event store, to keep out another
-- version's deliveries.
CREATE TABLE event_claims (
    app_id       text NOT NULL,
    event_id     uuid NOT NULL,
    content_hash bytea NULL,  -- NULL: claimed before this table existed; the stored event decides
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, event_id)
);

-- Every stored event is claimed, so that a differing retry of an old event cannot win a claim.
INSERT INTO event_claims (app_id, event_id, content_hash, claimed_at)
SELECT app_id, event_id, NULL, stored_at FROM data_events
ON CONFLICT DO NOTHING;
