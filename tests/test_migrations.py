"""Migrations against a real, fresh PostgreSQL database."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Services, _with_database
from vdip.db import Migration, create_pool, load_migrations, loopback_without_tls, migrate
from vdip.errors import MigrationError
from vdip.settings import Settings


@pytest.fixture
async def empty_db(services: Services) -> AsyncIterator[asyncpg.Connection]:
    name = f"vdip_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_with_database(services.database_url, name))
    yield conn
    await conn.close()
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def test_migration_files_are_numbered_in_order() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions) == list(range(1, len(versions) + 1))


async def test_applies_all_once_and_records_them(empty_db: asyncpg.Connection) -> None:
    first = await migrate(empty_db)
    assert first == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert await migrate(empty_db) == []
    tables = {
        r["tablename"]
        for r in await empty_db.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert {"applications", "data_events", "routing_rules", "event_statistics", "schema_migrations"} <= tables
    recorded = await empty_db.fetchval("SELECT count(*) FROM schema_migrations")
    assert recorded == len(load_migrations())


async def test_edited_migration_is_refused(empty_db: asyncpg.Connection) -> None:
    await migrate(empty_db, [Migration(1, "one", "CREATE TABLE t1 (x int)")])
    with pytest.raises(MigrationError, match="edited"):
        await migrate(empty_db, [Migration(1, "one", "CREATE TABLE t1 (x bigint)")])


async def test_failing_migration_rolls_back_and_stops(empty_db: asyncpg.Connection) -> None:
    migrations = [
        Migration(1, "good", "CREATE TABLE good (x int)"),
        Migration(2, "bad", "CREATE TABLE half (x int); SELECT * FROM missing_table"),
        Migration(3, "later", "CREATE TABLE later (x int)"),
    ]
    with pytest.raises(MigrationError, match="0002_bad"):
        await migrate(empty_db, migrations)
    applied = [r["version"] for r in await empty_db.fetch("SELECT version FROM schema_migrations")]
    assert applied == [1]
    assert await empty_db.fetchval("SELECT to_regclass('half')") is None
    assert await empty_db.fetchval("SELECT to_regclass('later')") is None


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("postgresql://u:p@127.0.0.1:5432/db", True),
        ("postgresql://u:p@localhost/db", True),
        ("postgresql://u:p@[::1]:5432/db", True),
        ("postgresql://u:p@127.0.0.1:5432/db?sslmode=require", False),  # asked for: kept
        ("postgresql://u:p@db.example.com:5432/db", False),
    ],
)
def test_loopback_connections_go_without_tls_unless_asked(url: str, plain: bool) -> None:
    assert loopback_without_tls(url) is plain


async def test_pool_connections_to_the_local_server_are_not_encrypted(settings: Settings) -> None:
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
    finally:
        await pool.close()
