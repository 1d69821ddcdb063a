"""Migrations against a real, fresh PostgreSQL database."""

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from tests.conftest import ROOT, Services
from vdip.applications import Application, Scope, hash_key
from vdip.db import (
    Migration,
    create_pool,
    drop_database,
    load_migrations,
    loopback_without_tls,
    migrate,
    with_database,
)
from vdip.errors import MigrationError
from vdip.settings import Settings
from vdip.store.applications import get_application


@pytest.fixture
async def empty_db(services: Services) -> AsyncIterator[asyncpg.Connection]:
    name = f"vdip_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(with_database(services.database_url, name))
    yield conn
    await conn.close()
    await drop_database(admin, name)
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


def stats(database_url: str, action: str) -> subprocess.CompletedProcess[str]:
    """``vdip stats check|refresh`` on the database at ``database_url``."""
    return subprocess.run(
        [sys.executable, "-m", "vdip.cli", "stats", action],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "VDIP_DATABASE_URL": database_url},
        cwd=ROOT,
        timeout=60,
    )


async def test_event_ids_become_per_application_on_a_database_holding_data(
    empty_db: asyncpg.Connection, services: Services
) -> None:
    """0007 -> 0008 on data written with event ids global: application B's delivery attached to
    application A's event with the same id (B's event itself was never stored), deliveries of
    deleted rules, one that nothing can place."""
    await migrate(empty_db, load_migrations()[:7])
    db = empty_db
    for app_id in ("app-a", "app-b"):
        await db.execute("INSERT INTO applications (app_id, name) VALUES ($1, $1)", app_id)
    rule_a, rule_b = [
        await db.fetchval(
            """INSERT INTO routing_rules (app_id, rule_name, destination_type)
               VALUES ($1, 'r', 'queue') RETURNING rule_id""",
            app_id,
        )
        for app_id in ("app-a", "app-b")
    ]
    gone_webhook, gone_queue, gone_unknown = 9001, 9002, 9003  # rules deleted since
    x, y, z, w = (uuid.uuid4() for _ in range(4))
    now = datetime.now(UTC)

    async def event(event_id: uuid.UUID, matched: list[int]) -> None:
        routing = {
            "rules_evaluated": 1,
            "matched_rules": matched,
            "deliveries": [],
            "routed_at": now.isoformat(),
        }
        await db.execute(
            """INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                                        schema_version, status, routing)
               VALUES ($1, 'app-a', 't', '{}', '{}', $2, 1, 'processed', $3::jsonb)""",
            event_id,
            now,
            orjson.dumps(routing).decode(),
        )

    async def delivery(event_id: uuid.UUID, rule_id: int, status: str, message: object = None) -> uuid.UUID:
        delivery_id = uuid.uuid4()
        await db.execute(
            """INSERT INTO deliveries (delivery_id, event_id, rule_id, destination_type, status, message)
               VALUES ($1, $2, $3, 'queue', $4, $5::jsonb)""",
            delivery_id,
            event_id,
            rule_id,
            status,
            None if message is None else orjson.dumps(message).decode(),
        )
        return delivery_id

    await event(x, [rule_a])
    await event(y, [gone_webhook])
    await event(z, [])  # a delivery its routing summary does not list
    own = await delivery(x, rule_a, "delivered")
    cross = await delivery(x, rule_b, "failed")  # B's X: counted A's X as failed
    by_message = await delivery(y, gone_webhook, "delivered", {"event": {"app_id": "app-b"}})
    by_event = await delivery(z, gone_queue, "delivered")
    orphan = await delivery(w, gone_unknown, "pending")

    async def status(app_id: str, event_id: uuid.UUID) -> str:
        found: str = await db.fetchval(
            """SELECT event_status(status, app_id, event_id) FROM data_events
               WHERE app_id = $1 AND event_id = $2""",
            app_id,
            event_id,
        )
        return found

    notices: list[str] = []
    assert await migrate(db, load_migrations()[:8], report=notices.append) == ["0008_event_ids_per_app"]

    apps = dict(await db.fetch("SELECT delivery_id, app_id FROM deliveries"))
    assert apps == {own: "app-a", cross: "app-b", by_message: "app-b", by_event: "app-a"}
    assert await db.fetchval("SELECT array_agg(delivery_id) FROM deliveries_orphaned_0008") == [orphan]
    assert any("1 delivery row(s)" in n and "deliveries_orphaned_0008" in n for n in notices), notices
    (lost,) = [n for n in notices if "send them again" in n]
    assert (
        lost.startswith("0008_event_ids_per_app: 2 event(s)")
        and f"(app-b, {x})" in lost
        and f"(app-b, {y})" in lost
    )
    assert any("1 delivery row(s) are not among the rules" in n for n in notices), notices  # z's

    await migrate(db, load_migrations())  # the upgrade goes on to the newest schema, which vdip uses
    url = with_database(services.database_url, await db.fetchval("SELECT current_database()"))
    # A's X was counted failed for B's delivery: it is processed, its own only. A refresh says so.
    assert stats(url, "check").returncode == 1
    assert stats(url, "refresh").returncode == 0
    checked = stats(url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert await status("app-a", x) == "processed"

    # B's X, sent again, is stored beside A's, with the delivery it already had.
    await db.execute(
        """INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                                    schema_version, status)
           VALUES ($1, 'app-b', 't', '{}', '{}', $2, 1, 'processed')""",
        x,
        now,
    )
    assert await status("app-b", x) == "failed"
    checked = stats(url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_events_stored_before_claims_are_claimed_without_a_hash(empty_db: asyncpg.Connection) -> None:
    """0009 claims every stored event with a NULL hash, so that a differing retry of an old
    event cannot win a claim of its own (the router compares it with the stored event)."""
    before = [m for m in load_migrations() if m.name != "event_claims"]
    await migrate(empty_db, before)
    event_id = uuid.uuid4()
    await empty_db.execute(
        """INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                                    schema_version, status, routing)
           VALUES ($1, 'old-app', 'order', '{"total": 10}', '{}', now(), 1, 'processed', '{}')""",
        event_id,
    )
    assert await migrate(empty_db) == ["0009_event_claims"]
    claims = await empty_db.fetch("SELECT app_id, event_id, content_hash FROM event_claims")
    assert [tuple(c) for c in claims] == [("old-app", event_id, None)]


async def test_each_application_key_becomes_a_key_with_every_scope(empty_db: asyncpg.Connection) -> None:
    """0010 -> 0011: the key (and a previous key still in its grace period) keeps opening
    everything it opened."""
    await migrate(empty_db, load_migrations()[:10])
    db = empty_db
    await db.execute(
        """INSERT INTO applications (app_id, name, api_key_hash, previous_key_hash, previous_key_expires_at)
           VALUES ('in-grace', 'a', $1, $2, now() + interval '1 hour'),
                  ('grace-over', 'b', $3, $4, now() - interval '1 hour'),
                  ('no-key', 'c', NULL, NULL, NULL)""",
        hash_key("current-a"),
        hash_key("previous-a"),
        hash_key("current-b"),
        hash_key("previous-b"),
    )
    await migrate(db)
    now = datetime.now(UTC)

    async def opens(app_id: str, key: str) -> bool:
        app = await get_application(db, app_id)
        assert isinstance(app, Application)
        found = app.key_for(key, now)
        return found is not None and found.scopes == (Scope.INGEST, Scope.READ, Scope.MANAGE)

    assert await opens("in-grace", "current-a") and await opens("in-grace", "previous-a")
    assert await opens("grace-over", "current-b") and not await opens("grace-over", "previous-b")
    assert not await opens("in-grace", "current-b")
    no_key = await get_application(db, "no-key")
    assert no_key is not None and no_key.keys == ()
    names = await db.fetch("SELECT app_id, name FROM application_keys ORDER BY app_id")
    assert [tuple(r) for r in names] == [("grace-over", "default"), ("in-grace", "default")]


async def test_existing_topics_and_tables_go_to_their_earliest_rules_application(
    empty_db: asyncpg.Connection,
) -> None:
    """0011 -> 0012: each topic and table belongs to the application of its earliest rule; the
    other applications' rules naming it are switched off, and say why."""
    await migrate(empty_db, load_migrations()[:11])
    db = empty_db
    await db.execute("INSERT INTO applications (app_id, name) VALUES ('first', 'a'), ('second', 'b')")
    rules = [  # (app, type, config, created minutes ago)
        ("second", "queue", {"topic": "shared"}, 5),
        ("first", "queue", {"topic": "shared"}, 10),
        ("second", "database_table", {"table": "orders"}, 10),
        ("first", "database_table", {"table": "orders"}, 5),
        ("second", "queue", {"topic": "own"}, 1),
        ("first", "webhook", {"url": "https://example.com/h"}, 1),
    ]
    for app_id, kind, config, minutes in rules:
        await db.execute(
            """INSERT INTO routing_rules (app_id, rule_name, destination_type, destination_config, created_at)
               VALUES ($1, 'r', $2, $3::jsonb, now() - make_interval(mins => $4))""",
            app_id,
            kind,
            orjson.dumps(config).decode(),
            minutes,
        )
    await migrate(db)
    owners = await db.fetch("SELECT destination_type, name, app_id FROM destination_owners ORDER BY 1, 2")
    assert [tuple(r) for r in owners] == [
        ("database_table", "orders", "second"),
        ("queue", "own", "second"),
        ("queue", "shared", "first"),
    ]
    off = await db.fetch(
        """SELECT app_id, destination_config, destination_disabled_reason FROM routing_rules
           WHERE NOT is_active ORDER BY app_id"""
    )
    assert [(r["app_id"], r["destination_config"]) for r in off] == [
        ("first", '{"table": "orders"}'),
        ("second", '{"topic": "shared"}'),
    ]
    assert all("another application" in r["destination_disabled_reason"] for r in off)
    assert await db.fetchval("SELECT count(*) FROM routing_rules WHERE is_active") == 4


async def test_counting_plans_each_call(empty_db: asyncpg.Connection) -> None:
    """count_events runs on every status change; a plan cached while a new database's tables were
    nearly empty made it scan them whole on every batch, so it plans each call."""
    await migrate(empty_db)
    config = await empty_db.fetchval("SELECT proconfig FROM pg_proc WHERE proname = 'count_events'")
    assert config == ["plan_cache_mode=force_custom_plan"]
