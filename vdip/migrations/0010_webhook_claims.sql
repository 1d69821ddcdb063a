-- The webhook dispatcher claims each endpoint's due deliveries, oldest first, up to its free
-- slots: one index probe per webhook rule.
CREATE INDEX deliveries_webhook_due ON deliveries (rule_id, next_attempt_at)
    WHERE status IN ('pending', 'retrying') AND destination_type = 'webhook';
