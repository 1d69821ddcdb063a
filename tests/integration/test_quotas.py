"""Ingest quotas: one bucket per application in PostgreSQL, shared by every gateway process; set
through the management API; counted in memory while PostgreSQL is away."""

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from gateway.quotas import LEASE_S, Quotas
from tests.conftest import AppKey, Pipeline, another_gateway
from vdip.applications import Quota
from vdip.db import create_pool
from vdip.settings import Settings
from vdip.store.applications import create_application


async def test_two_gateways_share_one_quota(
    pipeline: Pipeline, log_dir: Path, app: AppKey, admin: dict[str, str]
) -> None:
    """Requests alternate between two gateway processes: together they accept the burst, not
    twice it."""
    async with (
        httpx.AsyncClient(base_url=pipeline.base_url) as first,
        another_gateway(pipeline.settings, log_dir, "quota-gateway") as second_url,
        httpx.AsyncClient(base_url=second_url) as second,
    ):
        answer = await first.put(
            f"/api/applications/{app.app_id}/quota", json={"events_per_s": 1, "burst": 10}, headers=admin
        )
        assert answer.status_code == 200, answer.text
        statuses = []
        for n in range(30):
            gateway = (first, second)[n % 2]
            sent = await gateway.post(
                f"/api/ingest/{app.app_id}", json={"event_type": "t"}, headers=app.headers
            )
            statuses.append(sent.status_code)
        assert set(statuses) == {202, 429}
        # The burst, and what one event a second refilled while the requests went out.
        assert 10 <= statuses.count(202) <= 12, statuses
        batch = {"events": [{"event_type": "t"}] * 11}
        too_big = await second.post(f"/api/ingest/{app.app_id}/batch", json=batch, headers=app.headers)
        assert too_big.status_code == 422
        assert too_big.json()["errors"] == [
            {"field": "body.events", "reason": "more than its burst of 10 events"}
        ]


async def test_processes_together_take_no_more_than_the_bucket_gives(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """Two limiters (as two gateway processes) hammer one application's bucket at once: what they
    admit together is the burst plus what the rate refilled, give or take a lease each."""
    quota = Quota(events_per_s=2_000, burst=500, default=False)
    app_id = f"quota-{uuid.uuid4().hex[:8]}"
    other = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        limiters = [Quotas(pool, 1.0), Quotas(other, 1.0)]
        admitted = [0, 0]
        started = time.monotonic()

        async def hammer(n: int) -> None:
            while time.monotonic() - started < 0.5:
                if await limiters[n].acquire(app_id, quota, 5) is None:
                    admitted[n] += 5
                await asyncio.sleep(0)

        await asyncio.gather(*[hammer(n) for n in (0, 1) for _ in range(4)])
        elapsed = time.monotonic() - started
        lease = quota.events_per_s * LEASE_S
        assert admitted[0] and admitted[1]  # both got their turn
        assert quota.burst <= sum(admitted) <= quota.burst + quota.events_per_s * elapsed + 2 * lease
    finally:
        await other.close()


async def test_while_postgresql_is_away_each_process_counts_alone(settings: Settings) -> None:
    gone = await create_pool(settings.database_url, min_size=0, max_size=1)
    await gone.close()  # every query now fails, as when PostgreSQL is unreachable
    limiter = Quotas(gone, 0.05)
    quota = Quota(events_per_s=1, burst=3, default=False)
    assert [await limiter.acquire("away", quota, 1) for _ in range(3)] == [None] * 3
    retry = await limiter.acquire("away", quota, 1)
    assert retry is not None and 0 < retry <= 1


async def test_quotas_are_set_checked_and_audited(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin: dict[str, str], app: AppKey
) -> None:
    path = f"/api/applications/{app.app_id}/quota"
    shown = (await client.get(f"/api/applications/{app.app_id}", headers=app.headers)).json()["data"]
    assert shown["quota"]["default"] is True
    for body, field in (
        ({"events_per_s": 0}, "body.events_per_s"),
        ({"burst": -1}, "body.burst"),
        ({"events_per_s": 5, "rate": 3}, "body.rate"),
    ):
        refused = await client.put(path, json=body, headers=admin)
        assert refused.status_code == 422, body
        assert [e["field"] for e in refused.json()["errors"]] == [field], refused.json()
    assert (await client.put(path, json={"events_per_s": 5}, headers=app.headers)).status_code == 401
    assert (await client.put("/api/applications/nope-x/quota", json={}, headers=admin)).status_code == 404
    answer = await client.put(path, json={"events_per_s": 5}, headers=admin)
    assert answer.json()["data"]["quota"] == {"events_per_s": 5, "burst": 500, "default": False}
    back = await client.put(path, json={}, headers=admin)
    assert back.json()["data"]["quota"]["default"] is True
    actions = await pool.fetch(
        "SELECT changes FROM audit_log WHERE app_id = $1 AND action = 'application.quota' ORDER BY audit_id",
        app.app_id,
    )
    assert [r["changes"] for r in actions] == [
        {"events_per_s": 5, "burst": None},
        {"events_per_s": None, "burst": None},
    ]
    created = await create_application(pool, f"quota-{uuid.uuid4().hex[:8]}", "q")
    assert created is not None and created[0].quota_events_per_s is None


async def test_a_flood_is_refused_before_its_events_are_validated(
    client: httpx.AsyncClient, admin: dict[str, str], app: AppKey
) -> None:
    """Right after a refusal, a batch is answered 429 without being validated (a flood's refused
    requests cost the gateway little), here one whose events are all invalid (else a 422)."""
    path = f"/api/applications/{app.app_id}/quota"
    assert (await client.put(path, json={"events_per_s": 1, "burst": 3}, headers=admin)).status_code == 200
    invalid = {"events": [{"payload": {"no": "event_type"}}] * 3}
    answers = []
    for _ in range(20):
        one = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "t"}, headers=app.headers)
        batch = await client.post(f"/api/ingest/{app.app_id}/batch", json=invalid, headers=app.headers)
        answers += [one.status_code, batch.status_code]
        if batch.status_code == 429:
            assert batch.headers["Retry-After"] == "1"
            break
    assert set(answers[1::2]) <= {422, 429} and answers[-1] == 429, answers


async def test_a_refusal_is_remembered_without_asking_again(pool: asyncpg.Pool) -> None:
    limiter = Quotas(pool, 1.0)
    quota = Quota(events_per_s=10, burst=10, default=False)
    app_id = f"quota-{uuid.uuid4().hex[:8]}"
    assert limiter.refused(app_id) is None
    assert await limiter.acquire(app_id, quota, 10) is None
    assert limiter.refused(app_id) is None  # taken, not refused
    wait = await limiter.acquire(app_id, quota, 5)
    assert wait is not None
    remembered = limiter.refused(app_id)
    assert remembered is not None and 0 < remembered <= wait
    await asyncio.sleep(LEASE_S)
    assert limiter.refused(app_id) is None  # remembered one lease at most
    assert limiter.refused("another") is None
