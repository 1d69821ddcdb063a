-- Applications that send events. Keys are stored only as SHA-256 hashes.
CREATE TABLE applications (
    app_id        text PRIMARY KEY CHECK (app_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description   text,
    api_key_hash  text,
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every valid event, written once (event_id is the idempotency key) by the event store sink.
-- No foreign key to applications: events of a deleted application stay stored.
CREATE TABLE data_events (
    event_id        uuid PRIMARY KEY,
    app_id          text NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    received_at     timestamptz NOT NULL,
    schema_version  smallint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'processed', 'failed')),
    routing         jsonb,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
-- The read API lists an application's events newest first, with keyset pagination.
CREATE INDEX data_events_app_received ON data_events (app_id, received_at DESC, event_id DESC);
CREATE INDEX data_events_app_type_received
    ON data_events (app_id, event_type, received_at DESC, event_id DESC);

-- Per-application routing rules (MongoDB-style conditions), applied by the stream worker.
CREATE TABLE routing_rules (
    rule_id             bigserial PRIMARY KEY,
    app_id              text NOT NULL REFERENCES applications (app_id) ON DELETE CASCADE,
    rule_name           text NOT NULL CHECK (length(rule_name) BETWEEN 1 AND 200),
    event_type_filter   text,
    condition           jsonb NOT NULL DEFAULT '{}'::jsonb,
    destination_type    text NOT NULL CHECK (destination_type IN ('queue', 'webhook', 'database_table')),
    destination_config  jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority            integer NOT NULL DEFAULT 0,
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_rules_app ON routing_rules (app_id, is_active, priority DESC, rule_id);

-- Hourly, daily and weekly counts per (application, event type), upserted as absolute values
-- by the statistics agent. Buckets are UTC; weeks start on Monday.
CREATE TABLE event_statistics (
    app_id            text NOT NULL,
    event_type        text NOT NULL,
    time_bucket       timestamptz NOT NULL,
    time_period       text NOT NULL CHECK (time_period IN ('hourly', 'daily', 'weekly')),
    total_events      bigint NOT NULL DEFAULT 0 CHECK (total_events >= 0),
    processed_events  bigint NOT NULL DEFAULT 0 CHECK (processed_events >= 0),
    failed_events     bigint NOT NULL DEFAULT 0 CHECK (failed_events >= 0),
    pending_events    bigint NOT NULL DEFAULT 0 CHECK (pending_events >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, event_type, time_bucket, time_period)
);
CREATE INDEX event_statistics_app_period ON event_statistics (app_id, time_period, time_bucket);
