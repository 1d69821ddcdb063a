"""PostgreSQL: the connection pool and the schema migrations.

Migrations are the ``vdip/migrations/NNNN_name.sql`` files, applied in order, each in its own
transaction, under an advisory lock (so concurrent starts do not race), and recorded with a
checksum in ``schema_migrations``: an applied migration that was edited afterwards is an error.
"""

import asyncio
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from vdip.errors import MigrationError
from vdip.store.locks import MIGRATIONS

# What PostgreSQL being away (stopped, restarting, unreachable) raises through asyncpg. A server
# that terminates a connection mid-statement can leave asyncpg's protocol state confused, which
# surfaces as an InternalClientError on that connection's next use: it is away too.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


def loopback_without_tls(database_url: str) -> bool:
    """Whether to connect without TLS: a server on this machine (loopback), and no ``sslmode``
    asked for in the URL. asyncpg's default (``prefer``) encrypted even loopback connections,
    about 6 % of a sink's CPU."""
    url = urlsplit(database_url)
    return url.hostname in ("127.0.0.1", "localhost", "::1") and "sslmode" not in parse_qs(url.query)


async def connect(database_url: str) -> asyncpg.Connection:
    """One connection, as the pool's are (json/jsonb as Python objects, no TLS on loopback)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        database_url, ssl=False if loopback_without_tls(database_url) else None
    )
    await _init_connection(conn)
    return conn


def with_database(url: str, database: str) -> str:
    """``url`` with another database name (a scratch database beside the project's)."""
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


async def drop_database(conn: asyncpg.Connection, database: str) -> None:
    """Drop ``database`` (if it exists) and end its sessions. ``FORCE`` cannot end an autovacuum
    worker's session for a role that is not a superuser: then it is tried again, once a second,
    until the worker is done (ten tries)."""
    for attempt in range(10):
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            if attempt == 9:
                raise
            await asyncio.sleep(1)


async def _rolled_back_only(conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` that adds nothing to asyncpg's own (rolling back an open transaction)."""


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, session_state: bool = True
) -> asyncpg.Pool:
    """A pool whose json/jsonb columns take and give Python objects. ``session_state=False``: its
    users set nothing that outlives a transaction (no ``SET``, ``LISTEN``, session advisory lock,
    ``WITH HOLD`` cursor), so a released connection is only rolled back if need be, without
    asyncpg's reset statement: a round trip to PostgreSQL saved per ``acquire``."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=None if session_state else _rolled_back_only,
        ssl=False if loopback_without_tls(database_url) else None,
    )
    return pool


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    migrations = []
    for entry in resources.files("vdip.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], entry.read_text()))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return migrations


async def migrate(
    conn: asyncpg.Connection,
    migrations: list[Migration] | None = None,
    report: Callable[[str], None] | None = None,
) -> list[str]:
    """Apply the migrations not applied yet. Returns the names of those applied now; what they
    report (their NOTICEs: data they could not carry over, say) goes to ``report``."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied: dict[int, Any] = {row["version"]: row for row in rows}
        for migration in migrations:
            done = applied.get(migration.version)
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was edited after it was"
                        " applied; add a new migration instead"
                    )
                continue
            name = f"{migration.version:04d}_{migration.name}"

            def listener(_: object, message: asyncpg.PostgresLogMessage, name: str = name) -> None:
                if report is not None:
                    report(f"{name}: {message.message}")

            conn.add_log_listener(listener)
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {name} failed: {exc}") from exc
            finally:
                conn.remove_log_listener(listener)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS)
    return applied_now


async def migrate_url(database_url: str, report: Callable[[str], None] | None = None) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn, report=report)
    finally:
        await conn.close()
