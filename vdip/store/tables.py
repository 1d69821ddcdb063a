"""The destination tables of ``database_table`` rules: their names and their DDL.

Tables live in their own schema (``VDIP_TABLES_SCHEMA``, ``vdip_tables``) and are created on first
use with the columns below. Names were validated when the rule was saved and are quoted as
identifiers here all the same. Their rows are written together with their outcomes in
``deliveries``, by one statement: ``store.deliveries.table_rows_statement``.
"""

import uuid

import asyncpg

from vdip.store.locks import TABLE_CREATION


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_statements(schema: str, table: str) -> list[str]:
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}",
        f"""CREATE TABLE IF NOT EXISTS {qualified} (
                event_id     uuid NOT NULL,
                rule_id      bigint NOT NULL,
                app_id       text NOT NULL,
                event_type   text NOT NULL,
                payload      jsonb NOT NULL,
                metadata     jsonb NOT NULL,
                received_at  timestamptz NOT NULL,
                written_at   timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (event_id, rule_id))""",
    ]


async def create_table(pool: asyncpg.Pool, schema: str, table: str) -> None:
    """Create the schema and the table if they do not exist yet."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialise creation across sinks: concurrent CREATE ... IF NOT EXISTS can still collide.
        await conn.execute(f"SELECT pg_advisory_xact_lock(hashtextextended($1, {TABLE_CREATION}))", table)
        for statement in create_statements(schema, table):
            await conn.execute(statement)


async def delete_rows_of_events(
    db: asyncpg.Pool | asyncpg.Connection, schema: str, table: str, app_id: str, event_ids: list[uuid.UUID]
) -> None:
    """Delete the rows of these events of the application from a destination table."""
    await db.execute(
        f"DELETE FROM {quote_ident(schema)}.{quote_ident(table)} WHERE app_id = $1 AND event_id = ANY($2)",
        app_id,
        event_ids,
    )


async def drop_table(db: asyncpg.Pool | asyncpg.Connection, schema: str, table: str) -> None:
    """Drop a destination table (its application is deleted)."""
    await db.execute(f"DROP TABLE IF EXISTS {quote_ident(schema)}.{quote_ident(table)}")
