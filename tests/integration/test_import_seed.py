"""`vdip import-seed` against the original service's schema (tests/integration/seed_schema.sql,
its database/schema.sql verbatim) loaded into a scratch database, with rows that fill every column
of the tables it imports: applications with new keys, rules validated and published, events
keeping their times and counted in the statistics, and a second run that changes nothing."""

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import ROOT, AppKey, Services, read_to_end, wait_until
from vdip.db import drop_database, with_database
from vdip.seed import seed_event_id
from vdip.settings import Settings

SCHEMA = Path(__file__).with_name("seed_schema.sql")
OLD = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)  # beyond live counting's reach: counted by the import
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture
async def seed_db(services: Services, settings: Settings, run_id: str) -> AsyncIterator[str]:
    """A scratch database with the original's schema and rows in every column imported."""
    name = f"vdip_seed_{run_id}"
    admin = await asyncpg.connect(services.database_url)
    await drop_database(admin, name)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(services.database_url, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA.read_text())
        await conn.execute(
            """INSERT INTO applications (app_id, app_name, api_key, created_at) VALUES
               (9101, 'Shop', 'plain-key-1', '2024-12-01T00:00:00Z'),
               (9102, 'Analytics', 'plain-key-2', now())"""
        )
        await conn.execute(
            f"""INSERT INTO routing_rules (rule_id, app_id, rule_name, event_type_filter, condition,
                       destination_type, destination_config, priority, is_active, created_at, updated_at)
                VALUES
               (1, 9101, 'Forward high-value orders', 'order_created', '{{"payload.total": {{"$gt": 50}}}}',
                'webhook', '{{"url": "https://example.com/webhook"}}', 10, true, now(), now()),
               (2, 9101, 'All to a queue', NULL, '{{}}', 'queue', '{{"queue_name": "seed-all-{run_id}"}}',
                0, false, now(), now()),
               (3, 9102, 'Mobile logins', 'user_login', '{{"payload.device": {{"$eq": "mobile"}}}}',
                'database_table', '{{"table_name": "seed_logins_{run_id}"}}', 5, true, now(), now()),
               (4, 9102, 'By mail', NULL, '{{}}', 'email', '{{"to": "ops@example.com"}}', 0, true,
                now(), now()),
               (5, 9102, 'Regex', NULL, '{{"payload.x": {{"$regex": "a"}}}}', 'queue',
                '{{"queue_name": "seed-x-{run_id}"}}', 0, true, now(), now())"""
        )
        await conn.execute(
            """INSERT INTO data_events
                   (event_id, app_id, event_type, payload, metadata, processed, created_at) VALUES
               (1, 9101, 'order_created', '{"order_id": "ORD-1", "total": 99.99}',
                '{"ip_address": "10.0.0.1", "user_agent": "curl/8", "correlation_id": "c-1"}', true, $1),
               (2, 9101, 'order_created', '{"order_id": "ORD-2", "total": 10}', '{}', false, $2),
               (3, 9101, 'order_created', '{"order_id": "ORD-3"}', NULL, true, $3),
               (4, 9102, 'user_login', '{"user_id": 456, "device": "mobile"}', '{"source": "app"}', true, $4),
               (5, 9102, 'user_login', '[1, 2]', '{}', true, $4)""",
            OLD,
            OLD + timedelta(minutes=30),
            OLD + timedelta(days=19),  # 2025-02-03: another week
            RECENT,
        )
        yield url
    finally:
        await conn.close()
        await drop_database(admin, name)
        await admin.close()


def import_seed(settings: Settings, source: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VDIP_DATABASE_URL": settings.database_url,
        "VDIP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VDIP_TOPIC_PREFIX": settings.topic_prefix,
        "VDIP_WORKER_ID": settings.worker_id,
    }
    return subprocess.run(
        [sys.executable, "-m", "vdip.cli", "import-seed", "--from", source],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


async def counts(pool: asyncpg.Pool) -> tuple[int, ...]:
    return tuple(
        [
            await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id IN ('9101', '9102')"),
            await pool.fetchval("SELECT count(*) FROM routing_rules WHERE app_id IN ('9101', '9102')"),
            await pool.fetchval("SELECT count(*) FROM application_keys WHERE app_id IN ('9101', '9102')"),
            await pool.fetchval(
                "SELECT coalesce(sum(total_events), 0) FROM event_statistics WHERE app_id IN ('9101', '9102')"
            ),
        ]
    )


async def test_import_seed_copies_applications_rules_and_events_once(
    seed_db: str, settings: Settings, pool: asyncpg.Pool, client: httpx.AsyncClient, run_id: str
) -> None:
    first = import_seed(settings, seed_db)
    assert first.returncode == 0, first.stdout + first.stderr
    keys = dict(re.findall(r"^application (\d+)\tapi_key (\S+)$", first.stdout, re.MULTILINE))
    assert set(keys) == {"9101", "9102"}
    made = re.findall(r"^rule (\d+) -> (\d+)(\twebhook_secret whsec_\S+)?$", first.stdout, re.MULTILINE)
    assert {seed for seed, _, _ in made} == {"1", "2", "3"}
    assert [bool(secret) for seed, _, secret in sorted(made)] == [True, False, False]
    assert re.search(r"^rule 4 not imported: .*destination_type", first.stderr, re.MULTILINE), first.stderr
    assert re.search(r"^rule 5 not imported: .*\$regex", first.stderr, re.MULTILINE), first.stderr
    assert "event 5 not imported: its payload is not a JSON object" in first.stderr
    assert "events: 4 new of 5" in first.stderr
    assert re.search(r"^events\s.*\b5/5\b", first.stderr, re.MULTILINE), first.stderr  # the progress bar

    shop, analytics = AppKey("9101", keys["9101"]), AppKey("9102", keys["9102"])

    async def known() -> bool:
        answer = await client.get("/api/routing-rules/app/9101", headers=shop.headers)
        return answer.status_code == 200

    await wait_until(known, 30, message="the gateway knows the imported application's key")

    # Rules: validated, with every field kept, and the original's names of destinations.
    rules = (
        await client.get("/api/routing-rules/app/9101?include_inactive=true", headers=shop.headers)
    ).json()["data"]
    by_name = {r["rule_name"]: r for r in rules}
    webhook, queue = by_name["Forward high-value orders"], by_name["All to a queue"]
    assert webhook["event_type_filter"] == "order_created" and webhook["priority"] == 10
    assert webhook["condition"] == {"payload.total": {"$gt": 50}} and webhook["is_active"] is True
    assert webhook["destination_config"] == {"url": "https://example.com/webhook"}
    assert queue["is_active"] is False and queue["event_type_filter"] is None
    assert queue["destination_config"] == {"topic": f"seed-all-{run_id}"}
    [logins] = (await client.get("/api/routing-rules/app/9102", headers=analytics.headers)).json()["data"]
    assert logins["destination_type"] == "database_table" and logins["priority"] == 5
    # ... and published: the worker's rule book gets each application's rule set.
    published = {r.key: r.value for r in await read_to_end(settings, "routing-rules")}
    assert published[b"9101"] is not None and published[b"9102"] is not None
    assert len(orjson.loads(published[b"9101"])["rules"]) == 2

    # Events: their times, payloads and metadata kept, under ids derived from the original's.
    event = (await client.get(f"/api/events/{seed_event_id('9101', 1)}", headers=shop.headers)).json()["data"]
    assert datetime.fromisoformat(event["received_at"]) == OLD
    assert event["payload"] == {"order_id": "ORD-1", "total": 99.99}
    assert event["metadata"] == {
        "ip_address": "10.0.0.1",
        "user_agent": "curl/8",
        "correlation_id": "c-1",
        "seed_event_id": 1,
    }
    assert event["status"] == "processed" and event["routing"]["seed_processed"] is True
    unprocessed = (await client.get(f"/api/events/{seed_event_id('9101', 2)}", headers=shop.headers)).json()[
        "data"
    ]
    assert unprocessed["routing"]["seed_processed"] is False
    no_metadata = (await client.get(f"/api/events/{seed_event_id('9101', 3)}", headers=shop.headers)).json()[
        "data"
    ]
    assert no_metadata["metadata"] == {"seed_event_id": 3}

    # Statistics: old events in their own buckets (daily, weekly), the recent one hourly.
    daily = (
        await client.get(
            "/api/statistics/9101",
            params={
                "time_period": "daily",
                "start_date": "2025-01-01T00:00:00Z",
                "end_date": "2025-03-01T00:00:00Z",
            },
            headers=shop.headers,
        )
    ).json()["data"]
    assert [(b["time_bucket"][:10], b["total_events"], b["processed_events"]) for b in daily] == [
        ("2025-01-15", 2, 2),
        ("2025-02-03", 1, 1),
    ]
    weekly = (
        await client.get(
            "/api/statistics/9101",
            params={
                "time_period": "weekly",
                "start_date": "2025-01-01T00:00:00Z",
                "end_date": "2025-03-01T00:00:00Z",
            },
            headers=shop.headers,
        )
    ).json()["data"]
    assert [(b["time_bucket"][:10], b["total_events"]) for b in weekly] == [
        ("2025-01-13", 2),
        ("2025-02-03", 1),
    ]
    hourly = (
        await client.get("/api/statistics/dashboard/9102?time_period=hourly", headers=analytics.headers)
    ).json()["data"]
    assert hourly["totals"]["total_events"] == 1

    # Again: nothing new, no key, no rule, the same counts.
    before = await counts(pool)
    assert before == (4, 3, 2, 4 * 3)  # each event in an hourly, a daily and a weekly bucket
    second = import_seed(settings, seed_db)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "api_key" not in second.stdout and " -> " not in second.stdout
    assert "events: 0 new of 5" in second.stderr and "2 kept" in second.stderr
    assert await counts(pool) == before
