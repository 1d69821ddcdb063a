-- The origins (scheme://host[:port]) whose web pages may send an application's events from a
-- browser (CORS on the ingest routes); none by default.
ALTER TABLE applications ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
