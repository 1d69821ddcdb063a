"""PostgreSQL goes away for 20 seconds: ingest goes on, the sinks pause, nothing is lost or
dead-lettered, and everything is written once it is back."""

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import AppKey, Pipeline, Services, consume_all, needs_local_stack, wait_until
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
