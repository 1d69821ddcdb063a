-- Webhook destinations: a per-rule signing secret (Standard Webhooks), the previous one kept
-- during a rotation, and the state the dispatcher keeps about the endpoint.
ALTER TABLE routing_rules
    ADD COLUMN webhook_secret              text,
    ADD COLUMN previous_webhook_secret     text,
    ADD COLUMN previous_secret_expires_at  timestamptz,
    ADD COLUMN destination_failing_since   timestamptz,
    ADD COLUMN destination_disabled_at     timestamptz,
    ADD COLUMN destination_disabled_reason text;

-- One row per (event, matching rule): where its delivery stands. Written by the event store
-- (with the event), then by the sink that delivers it. Webhook rows also carry what to send and
-- when to try next: this table is the webhooks' delay queue.
CREATE TABLE deliveries (
    delivery_id       uuid PRIMARY KEY,
    event_id          uuid NOT NULL,
    rule_id           bigint NOT NULL,
    destination_type  text NOT NULL CHECK (destination_type IN ('queue', 'webhook', 'database_table')),
    status            text NOT NULL CHECK (status IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text,
    last_latency_ms   double precision,
    next_attempt_at   timestamptz,
    claimed_until     timestamptz,
    message           jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz
);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');

-- The one definition of an event's status (API, statistics): failed when the event failed
-- routing or any delivery failed for good; pending while any delivery is under way; processed
-- otherwise (every destination delivered, or no rule matched).
CREATE FUNCTION event_status(stored text, id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN stored = 'failed' THEN 'failed'
        WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = id AND d.status = 'failed') THEN 'failed'
        WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = id AND d.status IN ('pending', 'retrying'))
            THEN 'pending'
        ELSE 'processed'
    END
$$;
