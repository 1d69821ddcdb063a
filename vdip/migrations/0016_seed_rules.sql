-- Routing rules imported from the original service's database (`vdip import-seed`): the original's
-- rule id and the rule made of it, so that importing again makes no rule twice, nor again one
-- deleted since.
CREATE TABLE seed_rules (
    seed_rule_id bigint PRIMARY KEY,
    rule_id      bigint NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now()
);
