-- Each application's ingest quota (events per second, and the burst it may send at once); NULL:
-- the default derived from the pipeline's capacity (Settings).
ALTER TABLE applications
    ADD COLUMN quota_events_per_s integer CHECK (quota_events_per_s > 0),
    ADD COLUMN quota_burst integer CHECK (quota_burst > 0);

-- The token bucket every gateway process takes an application's events from: tokens left when it
-- was last refilled. Unlogged: after a crash of PostgreSQL the buckets start full again.
CREATE UNLOGGED TABLE ingest_buckets (
    app_id      text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);

-- Refill the application's bucket (rate tokens a second, at most burst), then take up to want
-- whole tokens if at least need are there, else none. Returns what was taken and what is left.
CREATE FUNCTION take_ingest_tokens(app text, rate double precision, burst double precision,
                                   want integer, need integer,
                                   OUT taken integer, OUT tokens_left double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_at timestamptz := clock_timestamp();
    have double precision;
BEGIN
    INSERT INTO ingest_buckets AS b (app_id, tokens, refilled_at) VALUES (app, burst, now_at)
    ON CONFLICT (app_id) DO UPDATE
        SET tokens = least(burst, b.tokens + rate * greatest(0, extract(epoch FROM now_at - b.refilled_at))),
            refilled_at = now_at
    RETURNING b.tokens INTO have;
    taken := CASE WHEN have >= need THEN least(floor(have)::integer, want) ELSE 0 END;
    tokens_left := have - taken;
    IF taken > 0 THEN
        UPDATE ingest_buckets SET tokens = tokens_left WHERE app_id = app;
    END IF;
END
$$;
