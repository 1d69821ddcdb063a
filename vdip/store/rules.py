"""``routing_rules``: every statement that writes it, and its reads.

The API's writes run in a transaction that also publishes the application's whole rule set to the
compacted ``routing-rules`` topic before it commits, and a write that fails has the stored set
published again after it, so that the topic always ends equal to PostgreSQL (see
``gateway/routes/rules.py``). The webhook dispatcher (``sinks/webhooks.py``) reads each webhook
rule's secrets and keeps its destination's state here: failing since, disabled.
"""

import base64
import secrets
from typing import Any

import asyncpg

from schemas.rules import AppRules, RoutingRule, RuleFields, SavedRule
from vdip.store import suppressions
from vdip.store.locks import RULE_WRITES

_COLUMNS = """rule_id, app_id, rule_name, event_type_filter, condition, destination_type,
              destination_config, priority, is_active, created_at, updated_at,
              destination_disabled_at, destination_disabled_reason"""


def _rule(row: Any) -> RoutingRule:
    return RoutingRule.model_validate(dict(row))


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _saved(row: Any, secret: str | None) -> SavedRule:
    values = {k: v for k, v in dict(row).items() if k != "webhook_secret"}
    return SavedRule.model_validate({**values, "webhook_secret": secret})


async def get_rule(db: asyncpg.Pool | asyncpg.Connection, rule_id: int) -> RoutingRule | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM routing_rules WHERE rule_id = $1", rule_id)
    return _rule(row) if row else None


async def list_rules(
    db: asyncpg.Pool | asyncpg.Connection, app_id: str, include_inactive: bool
) -> list[RoutingRule]:
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM routing_rules WHERE app_id = $1 AND (is_active OR $2)
            ORDER BY priority DESC, rule_id""",
        app_id,
        include_inactive,
    )
    return [_rule(row) for row in rows]


async def activity(db: asyncpg.Pool | asyncpg.Connection, app_id: str) -> list[asyncpg.Record]:
    """Each of an application's rules with how many events it matched, delivered and failed (reads
    deliveries)."""
    rows: list[asyncpg.Record] = await db.fetch(
        """SELECT r.rule_id, r.rule_name, r.destination_type, r.is_active,
                  count(d.delivery_id) AS matches,
                  count(d.delivery_id) FILTER (WHERE d.status = 'delivered') AS delivered,
                  count(d.delivery_id) FILTER (WHERE d.status = 'failed') AS failed
           FROM routing_rules r LEFT JOIN deliveries d ON d.rule_id = r.rule_id
           WHERE r.app_id = $1
           GROUP BY r.rule_id ORDER BY r.priority DESC, r.rule_id""",
        app_id,
    )
    return rows


# What migration 0012 wrote on the rules it switched off: their destination had another owner.
OWNED_ELSEWHERE = "the destination belongs to another application"


async def switched_off_by_ownership(db: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """The applications with rules migration 0012 switched off (their rule sets to publish again)."""
    rows = await db.fetch(
        "SELECT DISTINCT app_id FROM routing_rules WHERE destination_disabled_reason = $1 ORDER BY app_id",
        OWNED_ELSEWHERE,
    )
    return [row["app_id"] for row in rows]


async def lock_app(conn: asyncpg.Connection, app_id: str) -> None:
    """Serialise rule writes of one application until the transaction ends, so that the rule set
    published last is the one committed last."""
    await conn.execute(f"SELECT pg_advisory_xact_lock(hashtextextended($1, {RULE_WRITES}))", app_id)


async def snapshot(conn: asyncpg.Connection, app_id: str) -> AppRules:
    """The application's rule set as it is published: every rule, and what it suppresses."""
    rules = await list_rules(conn, app_id, include_inactive=True)
    return AppRules(app_id=app_id, rules=rules, suppressions=await suppressions.of_app(conn, app_id))


def _settable(fields: RuleFields) -> tuple[Any, ...]:
    """A rule's values after app_id, in the column order both statements use."""
    return (
        fields.rule_name,
        fields.event_type_filter,
        fields.condition,
        fields.destination_type,
        fields.destination_config,
        fields.priority,
        fields.is_active,
    )


async def insert_rule(conn: asyncpg.Connection, fields: RuleFields) -> SavedRule:
    """The new rule; a webhook rule gets its signing secret, returned this once."""
    secret = new_webhook_secret() if fields.destination_type == "webhook" else None
    row = await conn.fetchrow(
        f"""INSERT INTO routing_rules (app_id, rule_name, event_type_filter, condition, destination_type,
                                       destination_config, priority, is_active, webhook_secret)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
        fields.app_id,
        *_settable(fields),
        secret,
    )
    return _saved(row, secret)


async def update_rule(conn: asyncpg.Connection, rule_id: int, fields: RuleFields) -> SavedRule | None:
    """Replace a rule's fields and re-enable its destination; a rule that becomes a webhook gets a
    secret (returned), a webhook rule keeps its own."""
    candidate = new_webhook_secret()
    row = await conn.fetchrow(
        f"""UPDATE routing_rules SET rule_name = $2, event_type_filter = $3, condition = $4,
                   destination_type = $5, destination_config = $6, priority = $7, is_active = $8,
                   webhook_secret = CASE WHEN $5 = 'webhook' THEN coalesce(webhook_secret, $9) END,
                   destination_failing_since = NULL, destination_disabled_at = NULL,
                   destination_disabled_reason = NULL, updated_at = now()
            WHERE rule_id = $1 RETURNING {_COLUMNS}, webhook_secret""",
        rule_id,
        *_settable(fields),
        candidate,
    )
    if row is None:
        return None
    return _saved(row, candidate if row["webhook_secret"] == candidate else None)


async def rotate_secret(
    conn: asyncpg.Pool | asyncpg.Connection, rule_id: int, grace_s: float
) -> SavedRule | None:
    """A new secret for a webhook rule; the previous one still signs for ``grace_s`` seconds."""
    secret = new_webhook_secret()
    row = await conn.fetchrow(
        f"""UPDATE routing_rules SET previous_webhook_secret = webhook_secret,
                   previous_secret_expires_at = now() + make_interval(secs => $3),
                   webhook_secret = $2, updated_at = now()
            WHERE rule_id = $1 AND destination_type = 'webhook' RETURNING {_COLUMNS}""",
        rule_id,
        secret,
        grace_s,
    )
    return _saved(row, secret) if row else None


async def toggle_rule(
    conn: asyncpg.Connection, rule_id: int, is_active: bool | None = None
) -> RoutingRule | None:
    """Set ``is_active`` when given, else flip it."""
    row = await conn.fetchrow(
        f"""UPDATE routing_rules SET is_active = coalesce($2, NOT is_active), updated_at = now()
            WHERE rule_id = $1 RETURNING {_COLUMNS}""",
        rule_id,
        is_active,
    )
    return _rule(row) if row else None


async def delete_rule(conn: asyncpg.Connection, rule_id: int) -> RoutingRule | None:
    row = await conn.fetchrow(f"DELETE FROM routing_rules WHERE rule_id = $1 RETURNING {_COLUMNS}", rule_id)
    return _rule(row) if row else None


# ------------------------------------------------------------------------------ webhook destinations

ENDPOINT = """
SELECT webhook_secret, previous_webhook_secret, previous_secret_expires_at > now() AS previous_valid,
       destination_disabled_reason
FROM routing_rules WHERE rule_id = $1
"""

RECOVERED = """
UPDATE routing_rules SET destination_failing_since = NULL
WHERE rule_id = ANY($1::bigint[]) AND destination_failing_since IS NOT NULL
"""

FAILING = """
UPDATE routing_rules SET destination_failing_since = coalesce(destination_failing_since, now())
WHERE rule_id = $1 RETURNING extract(epoch FROM now() - destination_failing_since)
"""

DISABLE = """
UPDATE routing_rules SET destination_disabled_at = now(), destination_disabled_reason = $2
WHERE rule_id = $1 AND destination_disabled_at IS NULL
"""


async def webhook_endpoint(db: asyncpg.Pool | asyncpg.Connection, rule_id: int) -> asyncpg.Record | None:
    """A webhook rule's secrets (``previous_valid``: the previous one still signs) and
    ``destination_disabled_reason``; None if the rule is gone."""
    row: asyncpg.Record | None = await db.fetchrow(ENDPOINT, rule_id)
    return row


async def destinations_recovered(conn: asyncpg.Connection, rule_ids: list[int]) -> None:
    """These rules' endpoints answered 2xx: they are no longer failing."""
    await conn.execute(RECOVERED, rule_ids)


async def destination_failing(conn: asyncpg.Connection, rule_id: int) -> Any:
    """Record that the rule's endpoint failed; the seconds it has been failing without a success
    (None if the rule is gone)."""
    return await conn.fetchval(FAILING, rule_id)


async def disable_destination(conn: asyncpg.Connection, rule_id: int, reason: str) -> bool:
    """Disable the rule's webhook destination; whether it was enabled until now."""
    return bool(await conn.execute(DISABLE, rule_id, reason) == "UPDATE 1")


# ------------------------------------------------------------------- rules of the original service


async def imported_seed_rules(db: asyncpg.Pool | asyncpg.Connection) -> set[int]:
    """The original service's rule ids imported already (``vdip import-seed``)."""
    return {row["seed_rule_id"] for row in await db.fetch("SELECT seed_rule_id FROM seed_rules")}


async def insert_seed_rule(conn: asyncpg.Connection, fields: RuleFields, seed_rule_id: int) -> SavedRule:
    """A rule made of the original service's rule ``seed_rule_id``, remembered as imported."""
    rule = await insert_rule(conn, fields)
    await conn.execute(
        "INSERT INTO seed_rules (seed_rule_id, rule_id) VALUES ($1, $2)", seed_rule_id, rule.rule_id
    )
    return rule


async def delete_rules_of_app(conn: asyncpg.Connection, app_id: str) -> int:
    """Delete every rule of the application (and what records where seed rules went); how many.
    Call it under ``lock_app``, then publish the (empty) rule set."""
    await conn.execute(
        "DELETE FROM seed_rules WHERE rule_id IN (SELECT rule_id FROM routing_rules WHERE app_id = $1)",
        app_id,
    )
    done: str = await conn.execute("DELETE FROM routing_rules WHERE app_id = $1", app_id)
    return int(done.split()[-1])


async def failing_since(db: asyncpg.Pool | asyncpg.Connection, app_id: str) -> dict[int, Any]:
    """Since when each of the application's webhook destinations fails without a success (None:
    it does not)."""
    rows = await db.fetch(
        """SELECT rule_id, destination_failing_since FROM routing_rules
           WHERE app_id = $1 AND destination_type = 'webhook'""",
        app_id,
    )
    return {row["rule_id"]: row["destination_failing_since"] for row in rows}
