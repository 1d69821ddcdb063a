-- An application has any number of keys, each with a name, scopes and an optional expiry.
-- Each application's key (and a previous key still in its grace period) moves here with every
-- scope, so existing clients keep working.
CREATE TABLE application_keys (
    key_id                  bigserial PRIMARY KEY,
    app_id                  text NOT NULL REFERENCES applications ON DELETE CASCADE,
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes                  text[] NOT NULL
                            CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'read', 'manage']),
    key_hash                text NOT NULL UNIQUE,
    expires_at              timestamptz,
    revoked_at              timestamptz,
    previous_key_hash       text,
    previous_key_expires_at timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX application_keys_app ON application_keys (app_id, key_id);

INSERT INTO application_keys (app_id, name, scopes, key_hash, previous_key_hash, previous_key_expires_at)
SELECT app_id, 'default', ARRAY['ingest', 'read', 'manage'], api_key_hash,
       CASE WHEN previous_key_expires_at > now() THEN previous_key_hash END,
       CASE WHEN previous_key_expires_at > now() THEN previous_key_expires_at END
FROM applications
WHERE api_key_hash IS NOT NULL
ORDER BY app_id;

ALTER TABLE applications
    DROP COLUMN api_key_hash,
    DROP COLUMN previous_key_hash,
    DROP COLUMN previous_key_expires_at;
