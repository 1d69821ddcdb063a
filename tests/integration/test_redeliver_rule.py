"""Bulk redelivery of a webhook rule's failed deliveries (POST /api/routing-rules/{id}/redeliver)."""

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.conftest import AppKey, Pipeline, wait_until
from tests.integration.test_rules import create, send
from tests.integration.test_webhooks import Received, deliveries, receiving, settled, webhook_rule
from vdip.statistics import check
from vdip.store import deliveries as delivery_store


async def test_a_rules_deliveries_failed_since_a_time_are_sent_again(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    failing = True

    async def reply(_: Received) -> tuple[int, dict[str, str]]:
        return (500 if failing else 200), {}

    async with receiving(reply) as receiver:
        rule = await webhook_rule(pipeline, client, app, receiver.url("/hook"))
        url = f"/api/routing-rules/{rule['rule_id']}/redeliver"
        before = await send(client, app, 1)
        assert [d["status"] for d in await settled(client, app, before)] == ["failed"]
        since = datetime.now(UTC)
        later = [await send(client, app, n) for n in range(3)]
        for event_id in later:
            assert [d["status"] for d in await settled(client, app, event_id)] == ["failed"]
        failing = False

        answer = await client.post(url, json={"since": since.isoformat()}, headers=app.headers)
        assert answer.status_code == 202, answer.text
        assert answer.json()["data"] == {"rule_id": rule["rule_id"], "redelivered": 3}

        async def all_delivered() -> bool:
            found = [await deliveries(client, app, e) for e in later]
            return all([d["status"] for d in each] == ["delivered"] for each in found)

        await wait_until(all_delivered, 30, message="the failed deliveries since `since` delivered")
        assert [d["status"] for d in await deliveries(client, app, before)] == ["failed"]  # before since
        body = {"since": since.isoformat(), "status": "failed"}
        again = await client.post(url, json=body, headers=app.headers)
        assert again.json()["data"]["redelivered"] == 0
        now = datetime.now(UTC)
        assert await check(pool, app.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []
        trail = (await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)).json()["data"]
        counts = [e["changes"]["redelivered"] for e in trail["entries"] if e["action"] == "rule.redeliver"]
        assert sorted(counts) == [0, 3]

        queue_rule = await create(client, app)
        body = {"since": since.isoformat()}
        refused = await client.post(
            f"/api/routing-rules/{queue_rule['rule_id']}/redeliver", json=body, headers=app.headers
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["errors"][0]["field"] == "path.rule_id"
        unknown = await client.post("/api/routing-rules/999999999/redeliver", json=body, headers=app.headers)
        assert unknown.status_code == 404
        assert (await client.post(url, json=body)).status_code == 401
        for bad, field in (
            ({"since": since.isoformat(), "status": "delivered"}, "body.status"),
            ({"since": since.isoformat(), "extra": 1}, "body.extra"),
            ({}, "body.since"),
            ({"since": "yesterday"}, "body.since"),
        ):
            invalid = await client.post(url, json=bad, headers=app.headers)
            assert invalid.status_code == 422, (bad, invalid.text)
            assert invalid.json()["errors"][0]["field"] == field, invalid.text


async def test_redelivery_goes_through_every_batch(pool: asyncpg.Pool) -> None:
    """Five failed deliveries, two per transaction: all five back in the queue, due now."""
    rule_id, app_id = -1 - uuid.uuid4().int % 10**12, f"batches-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC) - timedelta(minutes=1)
    rows = [(uuid.uuid4(), uuid.uuid4(), rule_id, app_id) for _ in range(5)]
    await pool.executemany(
        """INSERT INTO deliveries (delivery_id, event_id, rule_id, app_id, destination_type, status)
           VALUES ($1, $2, $3, $4, 'webhook', 'failed')""",
        rows,
    )
    assert await delivery_store.redeliver_rule(pool, rule_id, since, batch=2) == 5
    statuses = await pool.fetch("SELECT status, next_attempt_at FROM deliveries WHERE rule_id = $1", rule_id)
    assert [r["status"] for r in statuses] == ["pending"] * 5
    assert all(r["next_attempt_at"] <= datetime.now(UTC) for r in statuses)
    assert await delivery_store.redeliver_rule(pool, rule_id, since, batch=2) == 0
