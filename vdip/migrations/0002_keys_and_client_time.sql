-- Key rotation with a grace period: the previous key keeps working until it expires.
ALTER TABLE applications
    ADD COLUMN previous_key_hash text,
    ADD COLUMN previous_key_expires_at timestamptz;

-- The client's own event time (clamped to [received_at - 30 days, received_at + 1 minute]).
ALTER TABLE data_events
    ADD COLUMN occurred_at timestamptz,
    ADD COLUMN occurred_at_clamped boolean NOT NULL DEFAULT false;
