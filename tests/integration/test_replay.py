"""Replays (POST /api/applications/{app_id}/replay): stored events routed again through today's
rules by a job of the event store's process, delivering exactly what was never delivered (all
again with ``force``), resumed after a kill -9 without a duplicate, cancelled on demand."""

import asyncio
import os
import sys
import uuid
from asyncio.subprocess import PIPE
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import ROOT, AppKey, Pipeline, read_to_end, rule_applied, wait_until
from tests.integration.test_rules import create, rule_body
from tests.integration.test_webhooks import ok, receiving
from vdip.statistics import check


async def ingest(client: httpx.AsyncClient, app: AppKey, count: int) -> list[str]:
    """``count`` events (payload ``n``: 0, 1, ...), a hundred per batch; their ids."""
    ids: list[str] = []
    for first in range(0, count, 100):
        events = [{"event_type": "order", "payload": {"n": n}} for n in range(first, min(count, first + 100))]
        answer = await client.post(
            f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
        )
        assert answer.status_code == 202, answer.text
        ids += [item["event_id"] for item in answer.json()["data"]["results"]]
    return ids


async def stored(pool: asyncpg.Pool, app: AppKey, count: int) -> None:
    async def all_there() -> bool:
        found = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id)
        return bool(found == count)

    await wait_until(all_there, 60, message=f"{count} events stored")


async def webhook(pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, url: str, **fields: Any) -> int:
    body = rule_body(app, destination_type="webhook", destination_config={"url": url}, **fields)
    answer = await client.post("/api/routing-rules", json=body, headers=app.headers)
    assert answer.status_code == 201, answer.text
    rule: dict[str, Any] = answer.json()["data"]
    await rule_applied(pipeline, rule)
    return int(rule["rule_id"])


async def replayed(client: httpx.AsyncClient, app: AppKey, body: dict[str, Any]) -> dict[str, Any]:
    """Start a replay and return it once it has ended."""
    answer = await client.post(f"/api/applications/{app.app_id}/replay", json=body, headers=app.headers)
    assert answer.status_code == 202, answer.text
    return await ended(client, app, answer.json()["data"]["job_id"])


async def job(client: httpx.AsyncClient, app: AppKey, job_id: str) -> dict[str, Any]:
    answer = await client.get(f"/api/applications/{app.app_id}/replays/{job_id}", headers=app.headers)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["data"]
    return found


async def ended(client: httpx.AsyncClient, app: AppKey, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def over() -> bool:
        nonlocal found
        found = await job(client, app, job_id)
        return found["state"] in ("done", "failed", "cancelled")

    await wait_until(over, 90, message=f"replay {job_id} ended")
    return found


async def rule_deliveries(pool: asyncpg.Pool, rule_id: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT event_id, status, attempts FROM deliveries WHERE rule_id = $1", rule_id
    )
    return rows


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(minutes=1)).isoformat()}


async def test_a_rule_added_after_1000_events_then_a_replay_gives_exactly_the_missing_deliveries(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    queue = await create(client, app, condition={})
    await rule_applied(pipeline, queue)
    ids = await ingest(client, app, 1000)
    await stored(pool, app, 1000)
    topic = queue["destination_config"]["topic"]
    assert len(await read_to_end(pipeline.settings, topic)) == 1000

    async with receiving(ok) as receiver:
        late = await webhook(
            pipeline, client, app, receiver.url("/late"), condition={"payload.n": {"$gte": 600}}
        )
        done = await replayed(client, app, window())
        assert done["state"] == "done", done
        assert (done["total"], done["scanned"], done["sent"], done["skipped"]) == (1000, 1000, 400, 1000)
        assert done["percent"] == 100.0

        async def delivered() -> bool:
            rows = await rule_deliveries(pool, late)
            return len(rows) == 400 and all(r["status"] == "delivered" for r in rows)

        await wait_until(delivered, 60, message="the new rule's 400 deliveries delivered")
        matching = {uuid.UUID(i) for n, i in enumerate(ids) if n >= 600}
        assert {r["event_id"] for r in await rule_deliveries(pool, late)} == matching
        assert Counter(r.headers["webhook-id"] for r in receiver.to("/late")).most_common(1)[0][1] == 1
        assert len(receiver.to("/late")) == 400
        # The queue rule's deliveries were made already: not sent again.
        assert len(await read_to_end(pipeline.settings, topic)) == 1000
        assert {r["attempts"] for r in await rule_deliveries(pool, queue["rule_id"])} == {1}

        again = await replayed(client, app, window())
        assert (again["sent"], again["skipped"]) == (0, 1400)

        forced = await replayed(client, app, {**window(), "rule_ids": [late], "force": True})
        assert (forced["sent"], forced["skipped"]) == (400, 0)

        async def twice() -> bool:
            return len(receiver.to("/late")) == 800

        await wait_until(twice, 60, message="every delivery of the rule sent once more")
        assert set(Counter(r.headers["webhook-id"] for r in receiver.to("/late")).values()) == {2}
        await wait_until(delivered, 60, message="the forced deliveries delivered")
    assert len(await read_to_end(pipeline.settings, topic)) == 1000
    now = datetime.now(UTC)
    assert await check(pool, app.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []
    listed = (await client.get(f"/api/applications/{app.app_id}/jobs", headers=app.headers)).json()
    assert [j["job_id"] for j in listed["data"]] == [forced["job_id"], again["job_id"], done["job_id"]]
    assert forced["params"]["rule_ids"] == [late] and forced["params"]["force"] is True


async def test_a_replay_killed_halfway_resumes_without_a_duplicate(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    await ingest(client, app, 1000)
    await stored(pool, app, 1000)
    async with receiving(ok) as receiver:
        rule_id = await webhook(pipeline, client, app, receiver.url("/all"), condition={})
        answer = await client.post(
            f"/api/applications/{app.app_id}/replay", json=window(), headers=app.headers
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["data"]["job_id"]

        async def halfway() -> bool:
            return bool((await job(client, app, job_id))["scanned"] >= 200)

        await wait_until(halfway, 60, interval=0.05, message="the replay a fifth of the way")
        pipeline.sink.kill()  # the job runner is in the event store's process
        at_kill = await job(client, app, job_id)
        assert at_kill["state"] == "running" and at_kill["scanned"] < 1000, at_kill
        await asyncio.sleep(1)
        assert (await job(client, app, job_id))["scanned"] == at_kill["scanned"]  # nobody runs it
        pipeline.sink.start()
        done = await ended(client, app, job_id)
        assert done["state"] == "done" and done["scanned"] == 1000, done

        async def delivered() -> bool:
            rows = await rule_deliveries(pool, rule_id)
            return len(rows) == 1000 and all(r["status"] == "delivered" for r in rows)

        await wait_until(delivered, 90, message="every event delivered to the rule")
        await asyncio.sleep(1)  # a duplicate would come now
        sent = Counter(r.headers["webhook-id"] for r in receiver.to("/all"))
        assert len(sent) == 1000 and set(sent.values()) == {1}
    pipeline.assert_alive()
    now = datetime.now(UTC)
    assert await check(pool, app.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []


async def test_a_replay_is_refused_what_it_cannot_do_and_cancelled_on_demand(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    url = f"/api/applications/{app.app_id}/replay"
    queue = await create(client, app, condition={})
    inactive = await create(client, app, condition={}, is_active=False)
    now = datetime.now(UTC).isoformat()
    wrongs = [
        ({"start": now, "end": now}, "body"),
        ({"start": now}, "body.end"),
        ({**window(), "speed": 3}, "body.speed"),
        ({**window(), "rule_ids": []}, "body.rule_ids"),
        ({**window(), "rule_ids": [inactive["rule_id"]]}, "body.rule_ids"),
        ({**window(), "rule_ids": [queue["rule_id"], 10**9]}, "body.rule_ids"),
    ]
    for body, field in wrongs:
        answer = await client.post(url, json=body, headers=app.headers)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["errors"][0]["field"] == field, (body, answer.text)
    unknown = await client.get(f"/api/applications/{app.app_id}/replays/{uuid.uuid4()}", headers=app.headers)
    assert unknown.status_code == 404

    await rule_applied(pipeline, queue)
    await ingest(client, app, 1000)
    await stored(pool, app, 1000)
    answer = await client.post(url, json={**window(), "force": True}, headers=app.headers)
    job_id = answer.json()["data"]["job_id"]
    cancel = f"/api/applications/{app.app_id}/replays/{job_id}/cancel"
    cancelled = await client.post(cancel, headers=app.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["state"] == "cancelled"
    await asyncio.sleep(2)  # at 250 events/s, 1,000 take 4 s
    left = await job(client, app, job_id)
    assert left["state"] == "cancelled" and left["scanned"] < 1000, left
    again = await client.post(cancel, headers=app.headers)
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "path.job_id"
    trail = (await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)).json()["data"]
    assert [e["action"] for e in trail["entries"] if e["action"].startswith("replay.")] == [
        "replay.cancel",
        "replay.create",
    ]


async def vdip(pipeline: Pipeline, *args: str) -> tuple[int, str, str]:
    """``vdip ARGS`` run as an operator would, with the pipeline's settings: exit code, out, err."""
    env = {**os.environ, **pipeline.settings.as_environment()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vdip.cli", *args, env=env, cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_vdip_replay_follows_its_job_to_the_end(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    first = await create(client, app, condition={})
    await rule_applied(pipeline, first)
    await ingest(client, app, 300)
    await stored(pool, app, 300)
    second = await create(client, app, condition={})
    await rule_applied(pipeline, second)
    span = window()
    times = ("--start", span["start"], "--end", span["end"])
    code, out, err = await vdip(pipeline, "replay", app.app_id, *times)
    assert code == 0, out + err
    assert "done: 300 events, 300 deliveries sent, 300 made already" in out, out + err
    assert len(await read_to_end(pipeline.settings, second["destination_config"]["topic"])) == 300
    backwards = ("--start", span["end"], "--end", span["start"])
    code, _, err = await vdip(pipeline, "replay", app.app_id, *backwards)
    assert code == 1 and "end must be after start" in err, err
    code, _, err = await vdip(pipeline, "replay", app.app_id, *times, "--rule-id", "999999999")
    assert code == 1 and "not an active rule" in err, err
