"""A subject's deletion (POST /api/applications/{app_id}/deletions): exactly the stored events
that carry its values at the path are deleted, with their deliveries and table rows; with
``suppress``, the router drops every later event that carries one."""

import uuid
from typing import Any

import asyncpg
import httpx

from tests.conftest import AppKey, Pipeline, rule_applied, wait_until
from tests.integration.test_rules import rule_body
from tests.integration.test_webhooks import ok, receiving


async def send(client: httpx.AsyncClient, app: AppKey, payloads: list[dict[str, Any]]) -> list[uuid.UUID]:
    events = [{"event_type": "visit", "payload": p} for p in payloads]
    answer = await client.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
    )
    assert answer.status_code == 202, answer.text
    return [uuid.UUID(r["event_id"]) for r in answer.json()["data"]["results"]]


async def stored_ids(pool: asyncpg.Pool, app: AppKey) -> set[uuid.UUID]:
    return {
        r["event_id"]
        for r in await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app.app_id)
    }


async def test_a_subject_deletion_removes_exactly_the_matching_events_and_suppresses_the_rest(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    table = f"visits_{uuid.uuid4().hex[:8]}"
    async with receiving(ok) as receiver:
        for kind, config in (("database_table", {"table": table}), ("webhook", {"url": receiver.url("/v")})):
            made = await client.post(
                "/api/routing-rules",
                json=rule_body(app, destination_type=kind, destination_config=config, condition={}),
                headers=app.headers,
            )
            assert made.status_code == 201, made.text
        await rule_applied(pipeline, made.json()["data"])
        payloads: list[dict[str, Any]] = [
            *({"user_id": "u1", "n": n} for n in range(20)),
            *({"user_id": "u2", "n": n} for n in range(20)),
            *({"user_id": "u3", "n": n} for n in range(20)),
            *({"user_id": 42, "n": n} for n in range(5)),
            *({"user_id": "42", "n": n} for n in range(5)),
            *({"user": {"user_id": "u1"}, "n": n} for n in range(5)),
            {"n": 0},
        ]
        ids = await send(client, app, payloads)

        async def delivered() -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE app_id = $1 AND status = 'delivered'", app.app_id
            )
            return bool(count == 2 * len(ids))

        await wait_until(delivered, 60, message="every event stored and delivered")
        url = f"/api/applications/{app.app_id}/deletions"
        wrongs = [
            ({"path": "user_id", "values": ["u1"]}, "body.path"),
            ({"path": "payload.", "values": ["u1"]}, "body.path"),
            ({"path": "payload.user_id", "values": []}, "body.values"),
            ({"path": "payload.user_id", "values": [{"a": 1}]}, "body.values.0.constrained-str"),
            ({"path": "payload.user_id", "values": [2**64]}, "body.values.0.constrained-int"),
            ({"path": "payload.user_id", "values": ["u1"], "also": 1}, "body.also"),
        ]
        for body, field in wrongs:
            answer = await client.post(url, json=body, headers=app.headers)
            assert answer.status_code == 422, (body, answer.text)
            assert field in [e["field"] for e in answer.json()["errors"]], (body, answer.text)

        body = {"path": "payload.user_id", "values": ["u1", "u2", 42, "u1"], "suppress": True}
        answer = await client.post(url, json=body, headers=app.headers)
    assert answer.status_code == 202, answer.text
    job = answer.json()["data"]
    assert (job["kind"], job["total"], job["params"]) == (
        "deletion",
        45,
        {"path": "payload.user_id", "values": 3, "suppress": True},
    )
    status_url = f"{url}/{job['job_id']}"

    async def done() -> bool:
        found = (await client.get(status_url, headers=app.headers)).json()["data"]
        return bool(found["state"] == "done")

    await wait_until(done, 60, message="the deletion done")
    finished = (await client.get(status_url, headers=app.headers)).json()["data"]
    assert (finished["scanned"], finished["params"]["values"]) == (45, 3)
    kept = await pool.fetchval("SELECT params FROM jobs WHERE job_id = $1", uuid.UUID(job["job_id"]))
    assert kept == {"path": "payload.user_id", "values": 3, "suppress": True}  # the values forgotten
    doomed = {i for i, p in zip(ids, payloads, strict=True) if p.get("user_id") in ("u1", "u2", 42)}
    assert len(doomed) == 45
    assert await stored_ids(pool, app) == set(ids) - doomed
    rows = await pool.fetch(f"SELECT event_id FROM vdip_tables.{table}")
    assert {r["event_id"] for r in rows} == set(ids) - doomed
    left = await pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = ANY($1)", list(doomed))
    assert left == 0

    # Suppressed from now on: by the router, whichever way the events come.
    later = await send(client, app, [{"user_id": "u1"}, {"user_id": 42}, {"user_id": "u3", "last": True}])

    async def last_stored() -> bool:
        return later[2] in await stored_ids(pool, app)

    await wait_until(last_stored, 30, message="the event sent after the suppressed ones stored")
    assert not {later[0], later[1]} & await stored_ids(pool, app)
    trail = (await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)).json()["data"]
    (entry,) = [e for e in trail["entries"] if e["action"] == "deletion.create"]
    assert entry["changes"] == {"path": "payload.user_id", "values": 3, "suppress": True}
