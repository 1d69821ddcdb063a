-- Every management action: who did it (the admin token, or an application's key), when, on which
-- application, and what changed. Rows are only ever added; they outlive the keys they name.
CREATE TABLE audit_log (
    audit_id  bigserial PRIMARY KEY,
    app_id    text NOT NULL,
    actor     text NOT NULL CHECK (actor IN ('admin', 'key')),
    key_id    bigint CHECK ((actor = 'key') = (key_id IS NOT NULL)),
    action    text NOT NULL,
    target    text,
    changes   jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_app ON audit_log (app_id, audit_id DESC);
