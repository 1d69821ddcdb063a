-- Values an application asked never to keep again (a subject's deletion with suppression): the
-- events whose value at `path` hashes to one of them are dropped by the router. Only the hash of
-- each value is kept (schemas.rules.suppression_hash).
CREATE TABLE suppressions (
    app_id      text NOT NULL,
    path        text NOT NULL,
    value_hash  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, path, value_hash)
);

-- A subject's deletion is a job too.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('replay', 'purge', 'deletion'));
