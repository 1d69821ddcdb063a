"""PostgreSQL goes away: ingest goes on, the sinks pause and routing waits, nothing is lost or
dead-lettered, and everything is written (and delivered, once) when it is back."""

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import (
    AppKey,
    Pipeline,
    Services,
    consume_all,
    needs_local_stack,
    rule_applied,
    wait_until,
)
from tests.integration.test_router import metric
from tests.integration.test_rules import create, queue_event_ids, send
from vdip import stack
from vdip.db import create_pool
from vdip.settings import Settings


@pytest.mark.disruptive
async def test_twenty_seconds_without_postgres_lose_nothing(
    services: Services, pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    needs_local_stack(services, "PostgreSQL, which this test stops and starts")
    table = f"outage_{uuid.uuid4().hex[:8]}"
    rule = {
        "app_id": app.app_id,
        "rule_name": "all",
        "destination_type": "database_table",
        "destination_config": {"table": table},
    }
    assert (await client.post("/api/routing-rules", json=rule, headers=app.headers)).status_code == 201
    await asyncio.sleep(2)
    body = {"events": [{"event_type": "outage", "payload": {"n": n}} for n in range(10)]}
    url = f"/api/ingest/{app.app_id}/batch"
    sent: set[str] = set()

    async def send_batch() -> None:
        response = await client.post(url, json=body, headers=app.headers)
        assert response.status_code == 202, response.text
        sent.update(r["event_id"] for r in response.json()["data"]["results"])

    await send_batch()  # the gateway now knows the application
    postgres = Settings(database_url=services.database_url)
    await asyncio.to_thread(stack.stop_postgres, postgres)
    try:
        for _ in range(20):  # 20 s without PostgreSQL, ingesting all along
            await send_batch()
            await asyncio.sleep(1)
    finally:
        await asyncio.to_thread(stack.start_postgres, postgres)

    pool = await create_pool(pipeline.settings.database_url)
    try:

        async def everything_written() -> bool:
            stored = await pool.fetchval(
                "SELECT count(*) FROM data_events WHERE event_id = ANY($1::uuid[])",
                [uuid.UUID(i) for i in sent],
            )
            if await pool.fetchval("SELECT to_regclass($1)", f'vdip_tables."{table}"') is None:
                return False
            rows = await pool.fetchval(f'SELECT count(*) FROM vdip_tables."{table}"')
            return bool(stored == len(sent) and rows == len(sent))

        await wait_until(
            everything_written, 120, interval=1, message=f"{len(sent)} events stored and written"
        )
    finally:
        await pool.close()
    dead = await consume_all(pipeline.settings, "events.dlq", until=lambda rs: False, timeout=5)
    assert not [r for r in dead if any(i.encode() in r.value for i in sent)], "nothing was dead-lettered"
    pipeline.assert_alive()


@pytest.mark.disruptive
async def test_routing_waits_for_postgres_and_then_delivers_each_event_once(
    services: Services, pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    """The router claims each event in PostgreSQL before routing it: while PostgreSQL is away it
    waits (fails closed, vdip_router_waiting_for_database 1) and nothing reaches the queue; once
    it is back, every event is delivered, once."""
    needs_local_stack(services, "PostgreSQL, which this test stops and starts")
    rule = await create(client, app, condition={})
    await rule_applied(pipeline, rule)
    queue = rule["destination_config"]["topic"]
    warm = await send(client, app, 1)
    await queue_event_ids(pipeline, queue, {warm})
    postgres = Settings(database_url=services.database_url)
    sent: list[str] = []
    await asyncio.to_thread(stack.stop_postgres, postgres)
    try:
        for n in range(10):  # ingest goes on (server ids: no conflict check)
            sent.append(await send(client, app, n))
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)
        assert set(await queue_event_ids(pipeline, queue, set(sent), timeout=3)) == {warm}
        waiting = await metric(pipeline.settings.worker_metrics_port, "vdip_router_waiting_for_database")
        assert waiting == 1
    finally:
        await asyncio.to_thread(stack.start_postgres, postgres)
    delivered = await queue_event_ids(pipeline, queue, set(sent), timeout=120)
    assert sorted(delivered) == sorted([warm, *sent])  # each once
    await wait_until(
        lambda: metric_is(pipeline, "vdip_router_waiting_for_database", 0), 30, message="routing again"
    )
    pipeline.assert_alive()


async def metric_is(pipeline: Pipeline, name: str, value: float) -> bool:
    return await metric(pipeline.settings.worker_metrics_port, name) == value
