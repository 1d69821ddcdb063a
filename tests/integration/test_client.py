"""vdip_client against the real stack: batches by size and time, typed errors, Retry-After on
429, the async variant, and a gateway killed and started again mid-batch (nothing lost, nothing
stored twice)."""

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from vdip_client import AsyncClient, Client, Forbidden, Invalid, QueueFull, Unauthorized

from tests.conftest import AppKey, Pipeline, Process, _free_port, start_gateway, wait_until
from vdip.store.applications import set_quota


async def stored_ids(pool: asyncpg.Pool, app_id: str) -> list[uuid.UUID]:
    rows = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app_id)
    return [row["event_id"] for row in rows]


async def wait_stored(pool: asyncpg.Pool, app_id: str, count: int, timeout: float = 60) -> list[uuid.UUID]:
    async def enough() -> bool:
        return len(await stored_ids(pool, app_id)) >= count

    await wait_until(enough, timeout, message=f"{count} events of {app_id} stored")
    await asyncio.sleep(1)  # and no more arrive
    return await stored_ids(pool, app_id)


async def test_batches_go_by_size_and_by_time(pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey) -> None:
    client = Client(
        f"{pipeline.base_url}/api/ingest/{app.app_id}", app.key, batch_size=10, flush_interval_s=0.3
    )
    try:
        ids = [client.track("page_view", {"n": n}) for n in range(25)]  # 2 full batches, then 5 by time
        found = await wait_stored(pool, app.app_id, 25, timeout=30)  # no flush(): the timer sends the rest
        assert sorted(found) == sorted(i for i in ids if i is not None)
        assert all(i is not None and i.version == 7 for i in ids)
    finally:
        await asyncio.to_thread(client.close, 30)


async def test_refusals_are_typed_errors_raised_by_flush(
    pipeline: Pipeline, client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey
) -> None:
    url = f"{pipeline.base_url}/api/ingest/{app.app_id}"
    wrong = Client(url, "vdip_not-a-key")
    wrong.track("x")
    with pytest.raises(Unauthorized):
        await asyncio.to_thread(wrong.flush, 30)
    await asyncio.to_thread(wrong.close)

    made = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "reader", "scopes": ["read"]},
        headers=app.headers,
    )
    reader = Client(url, made.json()["data"]["api_key"])
    reader.track("x")
    with pytest.raises(Forbidden):
        await asyncio.to_thread(reader.flush, 30)
    await asyncio.to_thread(reader.close)

    reported: list[tuple[Exception, int]] = []
    mixed = Client(url, app.key, on_error=lambda error, events: reported.append((error, len(events))))
    good = mixed.track("fine", {"a": 1})
    mixed.track("not a valid type!", {})
    with pytest.raises(Invalid) as raised:
        await asyncio.to_thread(mixed.flush, 30)
    assert raised.value.errors[0]["field"].startswith("body.events.1")
    assert [n for _, n in reported] == [1]
    assert await wait_stored(pool, app.app_id, 1) == [good]

    small = Client(url, app.key, max_queue=2, flush_interval_s=60)
    small.track("a")
    small.track("b")
    with pytest.raises(QueueFull):
        small.track("c")
    dropping = Client(url, app.key, max_queue=1, flush_interval_s=60, overflow="drop")
    dropping.track("a")
    assert dropping.track("b") is None and dropping.dropped == 1
    for each in (small, dropping):
        await asyncio.to_thread(each.close, 30)
    await wait_stored(pool, app.app_id, 4)


async def test_the_async_client_sends_everything_on_flush(
    pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey
) -> None:
    async with AsyncClient(f"{pipeline.base_url}/api/ingest/{app.app_id}", app.key, batch_size=50) as client:
        ids = {client.track("tick", {"n": n}) for n in range(120)}
        await client.flush()
    assert set(await wait_stored(pool, app.app_id, 120)) == ids


async def test_429_is_retried_after_retry_after(
    pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey, log_dir: Path
) -> None:
    own = pipeline.settings.model_copy(update={"gateway_port": _free_port()})
    await set_quota(pool, app.app_id, 100, 100)  # 100 events a second, 100 at once
    gateway = Process("gateway", own, log_dir, label="client-429-gateway")
    base_url = await start_gateway(gateway)
    try:
        async with AsyncClient(f"{base_url}/api/ingest/{app.app_id}", app.key, batch_size=80) as client:
            ids = {client.track("tick", {"n": n}) for n in range(400)}
            started = time.monotonic()
            await client.flush()
            took = time.monotonic() - started
        assert set(await wait_stored(pool, app.app_id, 400)) == ids
        assert '/batch HTTP/1.1\\" 429' in gateway.log_path.read_text()  # it was limited, and waited
        assert took >= 2, took  # 400 events at 100/s with a 100-event burst
    finally:
        gateway.stop()


async def test_a_gateway_killed_mid_batch_loses_and_duplicates_nothing(
    pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = pipeline.settings.model_copy(update={"gateway_port": _free_port()})
    gateway = Process("gateway", own, log_dir, label="client-restart-gateway")
    base_url = await start_gateway(gateway)
    caplog.set_level(logging.INFO, logger="vdip_client")
    client = Client(f"{base_url}/api/ingest/{app.app_id}", app.key, batch_size=200, flush_interval_s=0.05)
    ids: list[uuid.UUID] = []
    stop = threading.Event()
    full: list[QueueFull] = []

    def produce() -> None:  # a steady producer, while the gateway dies and comes back
        n = 0
        while not stop.is_set():
            try:
                event_id = client.track("order", {"n": n, "pad": "x" * 200})
            except QueueFull as exc:  # at ~1,000 events/s, 10,000 queued should not happen
                full.append(exc)
                return
            assert event_id is not None
            ids.append(event_id)
            n += 1
            if n % 20 == 0:
                time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        await wait_until(lambda: len(ids) > 1_000, 30, message="traffic")
        gateway.kill()  # SIGKILL: batches in flight get no answer (maybe accepted)
        await asyncio.sleep(1.5)
        await start_gateway(gateway)
        await asyncio.sleep(1)
    finally:
        stop.set()
        producer.join()
    assert not full
    await asyncio.to_thread(client.flush, 120)
    await asyncio.to_thread(client.close, 30)
    gateway.stop()

    found = await wait_stored(pool, app.app_id, len(ids), timeout=120)
    assert len(found) == len(ids) == len(set(found))  # none lost, none stored twice
    assert set(found) == set(ids)
    assert any("retrying with the same ids" in r.getMessage() for r in caplog.records), "no batch was cut"
