-- Long jobs an operator starts (replays of stored events), run by the event store's process
-- under a lease: a job whose lease ran out (its process was killed) is taken up again from its
-- cursor. No foreign key to applications: a job outlives nothing, it is deleted with its
-- application's data.
CREATE TABLE jobs (
    job_id         uuid PRIMARY KEY,
    app_id         text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('replay')),
    params         jsonb NOT NULL,
    state          text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'done', 'cancelled', 'failed')),
    total          bigint NOT NULL DEFAULT 0 CHECK (total >= 0),    -- events in its range when made
    scanned        bigint NOT NULL DEFAULT 0 CHECK (scanned >= 0),  -- events gone through
    sent           bigint NOT NULL DEFAULT 0 CHECK (sent >= 0),     -- deliveries sent
    skipped        bigint NOT NULL DEFAULT 0 CHECK (skipped >= 0),  -- deliveries made already, not sent
    cursor_at      timestamptz,  -- the (received_at, event_id) of the last event gone through
    cursor_id      uuid,
    error          text,
    claimed_until  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX jobs_of_app ON jobs (app_id, created_at DESC);
CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE state IN ('queued', 'running');
