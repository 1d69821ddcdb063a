"""Applications as tenants, over real HTTP and the real table sink: each queue topic and table
belongs to one application (the first to name it in a rule; the admin may move it), and every
management action is in the application's audit trail."""

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from schemas import EventEnvelope
from schemas.rules import AppRules, Delivery
from sinks.tables import TableWriter
from streams.routing import delivery_id
from tests.conftest import AppKey, Services, another_gateway, consume_all
from tests.integration.test_rules import rule_body
from tests.integration.test_tables import as_record
from vdip.db import drop_database, load_migrations, migrate, with_database
from vdip.settings import Settings
from vdip.store import owners


async def other_app(client: httpx.AsyncClient, admin: dict[str, str]) -> AppKey:
    made = (await client.post("/api/applications", json={"name": "B"}, headers=admin)).json()["data"]
    return AppKey(made["app_id"], made["api_key"])


def queue(topic: str) -> dict[str, Any]:
    return {"destination_type": "queue", "destination_config": {"topic": topic}}


def table(name: str) -> dict[str, Any]:
    return {"destination_type": "database_table", "destination_config": {"table": name}}


async def test_another_applications_topic_or_table_is_refused_without_saying_whose(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    b = await other_app(client, admin)
    topic, name = f"b-topic-{uuid.uuid4().hex[:8]}", f"b_table_{uuid.uuid4().hex[:8]}"
    for destination in (queue(topic), table(name)):
        made = await client.post("/api/routing-rules", json=rule_body(b, **destination), headers=b.headers)
        assert made.status_code == 201, made.text
        # B's own second rule on it is fine: it is B's.
        again = await client.post("/api/routing-rules", json=rule_body(b, **destination), headers=b.headers)
        assert again.status_code == 201
    for destination, field in ((queue(topic), "topic"), (table(name), "table")):
        for headers in (app.headers, admin):  # not even the admin routes A into B's destination
            refused = await client.post(
                "/api/routing-rules", json=rule_body(app, **destination), headers=headers
            )
            assert refused.status_code == 409, refused.text
            assert refused.json()["errors"] == [
                {"field": f"body.destination_config.{field}", "reason": "owned by another application"}
            ]
            assert b.app_id not in refused.text
        # Nor by replacing one of its rules.
        mine = await client.post("/api/routing-rules", json=rule_body(app), headers=app.headers)
        rule_id = mine.json()["data"]["rule_id"]
        moved = await client.put(
            f"/api/routing-rules/{rule_id}", json=rule_body(app, **destination), headers=app.headers
        )
        assert moved.status_code == 409 and b.app_id not in moved.text
        kept = (await client.get(f"/api/routing-rules/{rule_id}", headers=app.headers)).json()["data"]
        assert kept["destination_type"] == "queue" and kept["destination_config"] != destination
    rules = (await client.get(f"/api/routing-rules/app/{app.app_id}", headers=app.headers)).json()["data"]
    named = {r["destination_config"].get("topic") or r["destination_config"].get("table") for r in rules}
    assert topic not in named and name not in named
    listed = (await client.get(f"/api/destinations/app/{b.app_id}", headers=b.headers)).json()["data"]
    assert {(d["destination_type"], d["name"]) for d in listed} == {
        ("queue", topic),
        ("database_table", name),
    }
    mine = (await client.get(f"/api/destinations/app/{app.app_id}", headers=app.headers)).json()["data"]
    assert all(d["app_id"] == app.app_id for d in mine) and {topic, name}.isdisjoint(d["name"] for d in mine)


async def test_the_admin_transfers_a_destination_once_no_other_rule_names_it(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    b = await other_app(client, admin)
    name = f"moving_{uuid.uuid4().hex[:8]}"
    made = await client.post("/api/routing-rules", json=rule_body(b, **table(name)), headers=b.headers)
    url = f"/api/destinations/database_table/{name}/owner"
    for headers in (app.headers, b.headers):
        assert (await client.put(url, json={"app_id": app.app_id}, headers=headers)).status_code == 401
    busy = await client.put(url, json={"app_id": app.app_id}, headers=admin)
    assert busy.status_code == 409 and b.app_id in busy.json()["errors"][0]["reason"]  # the admin may know
    rule_id = made.json()["data"]["rule_id"]
    assert (await client.delete(f"/api/routing-rules/{rule_id}", headers=b.headers)).status_code == 200
    # Deleting its last rule does not give the table up.
    taken = await client.post("/api/routing-rules", json=rule_body(app, **table(name)), headers=app.headers)
    assert taken.status_code == 409
    moved = await client.put(url, json={"app_id": app.app_id}, headers=admin)
    assert moved.status_code == 200 and moved.json()["data"]["app_id"] == app.app_id
    assert (
        await client.post("/api/routing-rules", json=rule_body(app, **table(name)), headers=app.headers)
    ).status_code == 201
    assert (
        await client.post("/api/routing-rules", json=rule_body(b, **table(name)), headers=b.headers)
    ).status_code == 409
    for who, action in ((app, "destination.transfer_in"), (b, "destination.transfer_out")):
        trail = (await client.get(f"/api/audit/app/{who.app_id}", headers=who.headers)).json()["data"]
        entry = next(e for e in trail["entries"] if e["action"] == action)
        assert entry["actor"] == "admin" and entry["target"] == f"database_table {name}"
        assert (b if who is app else app).app_id not in str(trail)
    unknown = await client.put(url, json={"app_id": "no-such-app"}, headers=admin)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "body.app_id"
    bad = await client.put(
        "/api/destinations/database_table/Not-A-Table/owner", json={"app_id": app.app_id}, headers=admin
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "path.name"


def delivery_of(app_id: str, name: str) -> Delivery:
    event = EventEnvelope(
        event_id=uuid.uuid4(), app_id=app_id, event_type="t", payload={}, received_at=datetime.now(UTC)
    )
    return Delivery(
        delivery_id=delivery_id(event.event_id, 1),
        rule_id=1,
        destination_type="database_table",
        destination_config={"table": name},
        event=event,
    )


async def test_the_table_sink_writes_rows_of_the_tables_owner_only(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """Whatever reaches the sink (a rule from before ownership, a producer writing the topic), a
    table only ever holds its owner's rows; a table nobody owns goes to its first rows' app."""
    owned, fresh = f"owned_{uuid.uuid4().hex[:8]}", f"fresh_{uuid.uuid4().hex[:8]}"
    assert await owners.claim(pool, "database_table", owned, "tenant-b") == "tenant-b"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    batch = [delivery_of("tenant-a", owned), delivery_of("tenant-b", owned), delivery_of("tenant-a", fresh)]
    batch.append(delivery_of("tenant-b", fresh))
    await writer.write([as_record(d.model_dump_json().encode(), i) for i, d in enumerate(batch)])
    for name, owner in ((owned, "tenant-b"), (fresh, "tenant-a")):
        rows = await pool.fetch(f'SELECT app_id FROM vdip_tables."{name}"')
        assert [r["app_id"] for r in rows] == [owner]
    assert (await owners.owners_of(pool, "database_table", [fresh])) == {fresh: "tenant-a"}
    outcomes = await pool.fetch(
        "SELECT app_id, status, last_error FROM deliveries WHERE delivery_id = ANY($1::uuid[])",
        [d.delivery_id for d in batch],
    )
    failed = [(r["app_id"], r["last_error"]) for r in outcomes if r["status"] == "failed"]
    assert sorted(failed) == [
        ("tenant-a", f"table {owned!r} belongs to another application"),
        ("tenant-b", f"table {fresh!r} belongs to another application"),
    ]


async def test_every_management_action_is_in_the_audit_trail_with_who_did_it(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    made = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "ops", "scopes": ["manage", "read"]},
        headers=admin,
    )
    ops = made.json()["data"]
    key = {"X-API-Key": ops["api_key"]}
    webhook = {
        "destination_type": "webhook",
        "destination_config": {"url": "https://example.com/h", "headers": {"Authorization": "Bearer s3cret"}},
    }
    rule = (await client.post("/api/routing-rules", json=rule_body(app, **webhook), headers=key)).json()[
        "data"
    ]
    url = f"/api/routing-rules/{rule['rule_id']}"
    replaced = await client.put(url, json=rule_body(app, **webhook, priority=5), headers=key)
    assert replaced.status_code == 200
    assert (await client.patch(f"{url}/toggle", headers=key)).status_code == 200
    assert (await client.post(f"{url}/rotate-secret", headers=admin)).status_code == 200
    reader = await client.post(
        f"/api/applications/{app.app_id}/keys", json={"name": "r", "scopes": ["read"]}, headers=key
    )
    reader_id = reader.json()["data"]["key_id"]
    assert (
        await client.post(f"/api/applications/{app.app_id}/keys/{reader_id}/rotate", headers=key)
    ).status_code == 200
    assert (
        await client.post(f"/api/applications/{app.app_id}/keys/{reader_id}/revoke", headers=key)
    ).status_code == 200
    assert (await client.post(f"/api/applications/{app.app_id}/disable", headers=admin)).status_code == 200
    assert (await client.post(f"/api/applications/{app.app_id}/enable", headers=admin)).status_code == 200
    assert (await client.delete(url, headers=key)).status_code == 200

    trail = f"/api/audit/app/{app.app_id}"
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:  # two at a time: the cursor walks the whole trail, newest first, each entry once
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(trail, params=params, headers=key)).json()["data"]
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [e["audit_id"] for e in entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    done = [(e["action"], e["actor"], e["key_id"]) for e in reversed(entries)]
    by_key, key_id = "key", ops["key_id"]
    assert done == [
        ("key.create", "admin", None),
        ("rule.create", by_key, key_id),
        ("rule.replace", by_key, key_id),
        ("rule.toggle", by_key, key_id),
        ("rule.rotate_secret", "admin", None),
        ("key.create", by_key, key_id),
        ("key.rotate", by_key, key_id),
        ("key.revoke", by_key, key_id),
        ("application.disable", "admin", None),
        ("application.enable", "admin", None),
        ("rule.delete", by_key, key_id),
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["rule.replace"]["changes"] == {"priority": [0, 5]}
    assert by_action["rule.toggle"]["changes"] == {"is_active": [True, False]}
    assert by_action["key.create"]["changes"]["scopes"] in (["read"], ["read", "manage"])
    text = str(entries)
    for secret in ("s3cret", "whsec_", ops["api_key"], reader.json()["data"]["api_key"]):
        assert secret not in text
    assert all(e["app_id"] == app.app_id for e in entries)

    b = await other_app(client, admin)
    assert (await client.get(f"/api/audit/app/{b.app_id}", headers=key)).status_code == 401
    theirs = (await client.get(f"/api/audit/app/{b.app_id}", headers=admin)).json()["data"]["entries"]
    assert [e["action"] for e in theirs] == ["application.create"]
    bad = await client.get(trail, params={"cursor": "not-a-cursor"}, headers=key)
    assert bad.status_code == 422


async def test_a_gateway_that_applies_0012_publishes_the_rules_it_switched_off(
    services: Services, settings: Settings, log_dir: Path
) -> None:
    """A database from before ownership, two applications' rules on one topic: the gateway that
    migrates it publishes the later rule's application's rule set again, that rule off, so that the
    worker stops routing it into the other application's topic."""
    name = f"vdip_own_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(services.database_url, name)
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn, load_migrations()[:11])
        first, second = f"first-{uuid.uuid4().hex[:6]}", f"second-{uuid.uuid4().hex[:6]}"
        await conn.execute(
            "INSERT INTO applications (app_id, name) VALUES ($1, 'a'), ($2, 'b')", first, second
        )
        for app_id, minutes in ((first, 10), (second, 5)):
            await conn.execute(
                """INSERT INTO routing_rules (app_id, rule_name, destination_type, destination_config,
                                              created_at)
                   VALUES ($1, 'r', 'queue', '{"topic": "shared"}', now() - make_interval(mins => $2))""",
                app_id,
                minutes,
            )
        await conn.close()
        async with another_gateway(settings.model_copy(update={"database_url": url}), log_dir, "upgrade"):
            key = second.encode()
            records = await consume_all(
                settings, "routing-rules", until=lambda rs: any(r.key == key for r in rs)
            )
        published = AppRules.model_validate_json(next(r.value for r in records if r.key == key))
        assert [(r.app_id, r.is_active) for r in published.rules] == [(second, False)]
        assert not any(r.key == first.encode() for r in records)  # its rule set did not change
    finally:
        await drop_database(admin, name)
        await admin.close()
