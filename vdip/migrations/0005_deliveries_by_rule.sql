-- The dashboard counts each rule's matches and outcomes.
CREATE INDEX deliveries_rule ON deliveries (rule_id, status);
