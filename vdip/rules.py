"""Routing rules in PostgreSQL: plain SQL. Writes run in a transaction that also publishes the
application's whole rule set to the compacted ``routing-rules`` topic before it commits, so that
PostgreSQL and the router never disagree for long (see ``gateway/routes/rules.py``)."""

from typing import Any

import asyncpg

from schemas.rules import AppRules, RoutingRule, RuleFields

_COLUMNS = """rule_id, app_id, rule_name, event_type_filter, condition, destination_type,
              destination_config, priority, is_active, created_at, updated_at"""


def _rule(row: Any) -> RoutingRule:
    return RoutingRule.model_validate(dict(row))


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


async def lock_app(conn: asyncpg.Connection, app_id: str) -> None:
    """Serialise rule writes of one application until the transaction ends, so that the rule set
    published last is the one committed last."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", app_id)


async def snapshot(conn: asyncpg.Connection, app_id: str) -> AppRules:
    return AppRules(app_id=app_id, rules=await list_rules(conn, app_id, include_inactive=True))


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


async def insert_rule(conn: asyncpg.Connection, fields: RuleFields) -> RoutingRule:
    row = await conn.fetchrow(
        f"""INSERT INTO routing_rules (app_id, rule_name, event_type_filter, condition, destination_type,
                                       destination_config, priority, is_active)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}""",
        fields.app_id,
        *_settable(fields),
    )
    return _rule(row)


async def update_rule(conn: asyncpg.Connection, rule_id: int, fields: RuleFields) -> RoutingRule | None:
    row = await conn.fetchrow(
        f"""UPDATE routing_rules SET rule_name = $2, event_type_filter = $3, condition = $4,
                   destination_type = $5, destination_config = $6, priority = $7, is_active = $8,
                   updated_at = now()
            WHERE rule_id = $1 RETURNING {_COLUMNS}""",
        rule_id,
        *_settable(fields),
    )
    return _rule(row) if row else None


async def toggle_rule(conn: asyncpg.Connection, rule_id: int) -> RoutingRule | None:
    row = await conn.fetchrow(
        f"""UPDATE routing_rules SET is_active = NOT is_active, updated_at = now()
            WHERE rule_id = $1 RETURNING {_COLUMNS}""",
        rule_id,
    )
    return _rule(row) if row else None


async def delete_rule(conn: asyncpg.Connection, rule_id: int) -> RoutingRule | None:
    row = await conn.fetchrow(f"DELETE FROM routing_rules WHERE rule_id = $1 RETURNING {_COLUMNS}", rule_id)
    return _rule(row) if row else None
