"""Deleting an application (DELETE /api/applications/{app_id}): refused at once, then purged by a
job of the event store's process until no row of it is left, nor its table or its topic; other
applications keep everything."""

import uuid
from typing import Any

import asyncpg
import httpx

from tests.conftest import AppKey, Pipeline, rule_applied, wait_until
from tests.integration.test_replay import ingest, stored, window
from tests.integration.test_rules import rule_body
from tests.integration.test_webhooks import ok, receiving
from vdip.settings import Settings
from vdip.topics import partitions_of


async def rows_of(pool: asyncpg.Pool, app_id: str) -> dict[str, int]:
    """How many rows of the application each table holding an ``app_id`` has (those with any)."""
    tables = await pool.fetch(
        """SELECT table_name FROM information_schema.columns
           WHERE table_schema = 'public' AND column_name = 'app_id' ORDER BY table_name"""
    )
    found = {}
    for row in tables:
        count = await pool.fetchval(f'SELECT count(*) FROM "{row["table_name"]}" WHERE app_id = $1', app_id)
        if count:
            found[row["table_name"]] = count
    return found


async def new_application(client: httpx.AsyncClient, admin: dict[str, str], name: str) -> AppKey:
    made = await client.post("/api/applications", json={"name": name}, headers=admin)
    assert made.status_code == 201, made.text
    return AppKey(made.json()["data"]["app_id"], made.json()["data"]["api_key"])


async def test_a_deleted_application_leaves_no_row_behind(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    app = await new_application(client, admin, "doomed")
    other = await new_application(client, admin, "stays")
    topic, table = f"doomed-{uuid.uuid4().hex[:8]}", f"doomed_{uuid.uuid4().hex[:8]}"
    async with receiving(ok) as receiver:
        destinations: list[tuple[str, dict[str, Any]]] = [
            ("queue", {"topic": topic}),
            ("database_table", {"table": table}),
            ("webhook", {"url": receiver.url("/doomed")}),
        ]
        for kind, config in destinations:
            body = rule_body(app, destination_type=kind, destination_config=config, condition={})
            made = await client.post("/api/routing-rules", json=body, headers=app.headers)
            assert made.status_code == 201, made.text
        await rule_applied(pipeline, made.json()["data"])
        await ingest(client, app, 300)
        await ingest(client, other, 10)
        await stored(pool, app, 300)
        await stored(pool, other, 10)
        key = await client.post(
            f"/api/applications/{app.app_id}/keys",
            json={"name": "k", "scopes": ["read"]},
            headers=app.headers,
        )
        assert key.status_code == 201
        replay = await client.post(
            f"/api/applications/{app.app_id}/replay", json=window(), headers=app.headers
        )
        assert replay.status_code == 202

        async def settled() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE app_id = $1 AND status = 'delivered'", app.app_id
            )
            return bool(done == 900)

        await wait_until(settled, 60, message="every delivery of the application delivered")
        before = await rows_of(pool, app.app_id)
        assert {"applications", "data_events", "deliveries", "routing_rules", "application_keys"} <= set(
            before
        )
        assert {"event_claims", "destination_owners", "audit_log", "jobs", "event_counted"} <= set(before)
        assert await pool.fetchval(f"SELECT count(*) FROM vdip_tables.{table}") == 300
        assert await partitions_of(settings, settings.topic(topic))

        answer = await client.delete(f"/api/applications/{app.app_id}", headers=admin)
    assert answer.status_code == 202, answer.text
    job = answer.json()["data"]
    assert (job["kind"], job["state"], job["total"]) == ("purge", "queued", 300)
    refused = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "late"}, headers=app.headers)
    assert refused.status_code == 401, refused.text
    again = await client.delete(f"/api/applications/{app.app_id}", headers=admin)
    assert again.status_code == 202 and again.json()["data"]["job_id"] == job["job_id"]
    by_key = await client.get(f"/api/jobs/{job['job_id']}", headers=app.headers)
    assert by_key.status_code == 401

    async def purged() -> bool:
        found = (await client.get(f"/api/jobs/{job['job_id']}", headers=admin)).json()["data"]
        assert found["state"] in ("queued", "running", "done"), found
        return bool(found["state"] == "done")

    await wait_until(purged, 120, message="the application purged")
    done = (await client.get(f"/api/jobs/{job['job_id']}", headers=admin)).json()["data"]
    assert (done["scanned"], done["percent"]) == (300, 100.0)
    assert await rows_of(pool, app.app_id) == {"jobs": 1}  # the deletion's own job: its receipt
    assert await pool.fetchval("SELECT to_regclass($1)", f"vdip_tables.{table}") is None
    assert await partitions_of(settings, settings.topic(topic)) == []
    gone = await client.get(f"/api/applications/{app.app_id}", headers=admin)
    assert gone.status_code == 404
    assert (await client.delete(f"/api/applications/{app.app_id}", headers=admin)).status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", other.app_id) == 10
    kept = await client.get(f"/api/events/app/{other.app_id}", headers=other.headers)
    assert len(kept.json()["data"]["events"]) == 10
    pipeline.assert_alive()


async def test_a_deletion_whose_process_is_killed_goes_on_after_its_restart(
    pipeline: Pipeline, client: httpx.AsyncClient, admin: dict[str, str], pool: asyncpg.Pool
) -> None:
    app = await new_application(client, admin, "killed midway")
    table = f"doomed_{uuid.uuid4().hex[:8]}"
    body = rule_body(
        app, destination_type="database_table", destination_config={"table": table}, condition={}
    )
    made = await client.post("/api/routing-rules", json=body, headers=app.headers)
    assert made.status_code == 201, made.text
    await rule_applied(pipeline, made.json()["data"])
    await ingest(client, app, 200)
    await stored(pool, app, 200)
    answer = await client.delete(f"/api/applications/{app.app_id}", headers=admin)
    assert answer.status_code == 202, answer.text
    url = f"/api/jobs/{answer.json()['data']['job_id']}"

    async def running() -> bool:
        return bool((await client.get(url, headers=admin)).json()["data"]["state"] == "running")

    await wait_until(running, 30, interval=0.05, message="the deletion claimed")
    pipeline.sink.kill()  # the job runner is in the event store's process
    pipeline.sink.start()

    async def purged() -> bool:
        return bool((await client.get(url, headers=admin)).json()["data"]["state"] == "done")

    await wait_until(purged, 120, message="the deletion done after the restart")
    assert await rows_of(pool, app.app_id) == {"jobs": 1}
    assert await pool.fetchval("SELECT to_regclass($1)", f"vdip_tables.{table}") is None
    pipeline.assert_alive()
