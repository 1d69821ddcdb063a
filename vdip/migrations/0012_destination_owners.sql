-- A queue topic or destination table belongs to the application whose rule first claimed it: a
-- rule of another application naming it is refused. Existing topics and tables go to their
-- earliest rule's application; the other applications' rules that name them are switched off
-- (and say why), so that no application routes into another's destination.
CREATE TABLE destination_owners (
    destination_type text NOT NULL CHECK (destination_type IN ('queue', 'database_table')),
    name             text NOT NULL,
    app_id           text NOT NULL,  -- no foreign key: the table sink may claim for any app_id it sees
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination_type, name)
);
CREATE INDEX destination_owners_app ON destination_owners (app_id, destination_type, name);

INSERT INTO destination_owners (destination_type, name, app_id, claimed_at)
SELECT DISTINCT ON (destination_type, name) destination_type, name, app_id, created_at
FROM (
    SELECT rule_id, app_id, created_at, destination_type,
           destination_config ->> CASE destination_type WHEN 'queue' THEN 'topic' ELSE 'table' END AS name
    FROM routing_rules
    WHERE destination_type IN ('queue', 'database_table')
) AS claims
WHERE name IS NOT NULL
ORDER BY destination_type, name, created_at, rule_id;

UPDATE routing_rules r
SET is_active = false,
    destination_disabled_at = now(),
    destination_disabled_reason = 'the destination belongs to another application',
    updated_at = now()
FROM destination_owners o
WHERE o.destination_type = r.destination_type
  AND o.name = r.destination_config ->> CASE r.destination_type WHEN 'queue' THEN 'topic' ELSE 'table' END
  AND o.app_id <> r.app_id;
