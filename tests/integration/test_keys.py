"""An application's keys and their scopes, over real HTTP: what each scope opens, on every /api
endpoint an application key can call (enumerated from the gateway's routes, so a new endpoint
cannot be left out), on its own application and on another one, whose data never shows."""

import asyncio
import os
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi.routing import APIRoute, iter_route_contexts

from gateway.main import create_app
from tests.conftest import AppKey
from tests.integration.test_cli import vdip
from vdip.applications import Scope
from vdip.db import create_pool
from vdip.settings import Settings
from vdip.store import audit

# What each /api endpoint needs of an application's key: a scope, or (None) the admin token.
NEEDS: dict[tuple[str, str], Scope | None] = {
    ("POST", "/api/ingest/{app_id}"): Scope.INGEST,
    ("POST", "/api/messages/{app_id}"): Scope.INGEST,
    ("POST", "/api/ingest/{app_id}/batch"): Scope.INGEST,
    ("POST", "/api/ingest/{app_id}/beacon"): Scope.INGEST,  # the key in the body
    ("GET", "/api/events/app/{app_id}"): Scope.READ,
    ("GET", "/api/events/{event_id}"): Scope.READ,
    ("GET", "/api/events/{event_id}/deliveries"): Scope.READ,
    ("POST", "/api/events/{event_id}/deliveries/{delivery_id}/redeliver"): Scope.MANAGE,
    ("GET", "/api/applications/{app_id}"): Scope.READ,
    ("POST", "/api/applications/{app_id}/rotate-key"): Scope.MANAGE,
    ("PUT", "/api/applications/{app_id}/allowed-origins"): Scope.MANAGE,
    ("PUT", "/api/applications/{app_id}/retention"): Scope.MANAGE,
    ("POST", "/api/applications/{app_id}/keys"): Scope.MANAGE,
    ("GET", "/api/applications/{app_id}/keys"): Scope.MANAGE,
    ("POST", "/api/applications/{app_id}/keys/{key_id}/revoke"): Scope.MANAGE,
    ("POST", "/api/applications/{app_id}/keys/{key_id}/rotate"): Scope.MANAGE,
    ("POST", "/api/routing-rules"): Scope.MANAGE,
    ("GET", "/api/routing-rules/app/{app_id}"): Scope.READ,
    ("GET", "/api/routing-rules/{rule_id}"): Scope.READ,
    ("PUT", "/api/routing-rules/{rule_id}"): Scope.MANAGE,
    ("PATCH", "/api/routing-rules/{rule_id}/toggle"): Scope.MANAGE,
    ("DELETE", "/api/routing-rules/{rule_id}"): Scope.MANAGE,
    ("POST", "/api/routing-rules/{rule_id}/rotate-secret"): Scope.MANAGE,
    ("POST", "/api/routing-rules/{rule_id}/redeliver"): Scope.MANAGE,
    ("POST", "/api/routing-rules/test"): Scope.READ,
    ("GET", "/api/statistics/{app_id}"): Scope.READ,
    ("GET", "/api/statistics/dashboard/{app_id}"): Scope.READ,
    ("POST", "/api/statistics/refresh/{app_id}"): Scope.MANAGE,
    ("GET", "/api/statistics/rules/{app_id}"): Scope.READ,
    ("GET", "/api/dead-letters/app/{app_id}"): Scope.READ,
    ("POST", "/api/dead-letters/app/{app_id}/resend"): Scope.MANAGE,
    ("POST", "/api/applications/{app_id}/replay"): Scope.MANAGE,
    ("GET", "/api/applications/{app_id}/jobs"): Scope.READ,
    ("GET", "/api/applications/{app_id}/replays/{job_id}"): Scope.READ,
    ("POST", "/api/applications/{app_id}/replays/{job_id}/cancel"): Scope.MANAGE,
    ("GET", "/api/jobs/{job_id}"): None,
    ("GET", "/api/overview"): None,
    ("GET", "/api/webhooks/app/{app_id}"): Scope.READ,
    ("POST", "/api/applications/{app_id}/deletions"): Scope.MANAGE,
    ("GET", "/api/applications/{app_id}/deletions/{job_id}"): Scope.READ,
    ("GET", "/api/destinations/app/{app_id}"): Scope.READ,
    ("GET", "/api/audit/app/{app_id}"): Scope.READ,
    ("PUT", "/api/destinations/{destination_type}/{name}/owner"): None,
    ("POST", "/api/applications"): None,
    ("GET", "/api/applications"): None,
    ("PUT", "/api/applications/{app_id}/quota"): None,
    ("POST", "/api/applications/{app_id}/disable"): None,
    ("POST", "/api/applications/{app_id}/enable"): None,  # after disable: the matrix goes in order
    ("DELETE", "/api/applications/{app_id}"): None,  # last: the application is gone
}

# The status of an allowed call as the matrix makes it (unknown event ids: 404 once authorized).
ALLOWED: dict[tuple[str, str], int] = {
    ("POST", "/api/ingest/{app_id}"): 202,
    ("POST", "/api/messages/{app_id}"): 202,
    ("POST", "/api/ingest/{app_id}/batch"): 202,
    ("POST", "/api/ingest/{app_id}/beacon"): 202,
    ("GET", "/api/events/{event_id}"): 404,
    ("GET", "/api/events/{event_id}/deliveries"): 404,
    ("POST", "/api/events/{event_id}/deliveries/{delivery_id}/redeliver"): 404,
    ("POST", "/api/applications/{app_id}/keys"): 201,
    ("POST", "/api/routing-rules"): 201,
    ("POST", "/api/routing-rules/{rule_id}/redeliver"): 202,
    ("POST", "/api/applications/{app_id}/replay"): 202,
    ("GET", "/api/applications/{app_id}/replays/{job_id}"): 404,
    ("POST", "/api/applications/{app_id}/replays/{job_id}/cancel"): 404,
    ("GET", "/api/jobs/{job_id}"): 404,
    ("POST", "/api/applications/{app_id}/deletions"): 202,
    ("GET", "/api/applications/{app_id}/deletions/{job_id}"): 404,
    ("DELETE", "/api/applications/{app_id}"): 202,
    ("POST", "/api/applications"): 201,
}


def api_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, path) under /api of the gateway's routes, included routers' too."""
    found = set()
    for context in iter_route_contexts(create_app(settings).routes):
        path = context.path or ""
        if path.startswith("/api"):
            route = context.original_route
            assert isinstance(route, APIRoute), path  # a mount or plain route would hide its needs
            found |= {(method, path) for method in route.methods or ()}
    return found


def test_every_api_endpoint_is_in_the_matrix(settings: Settings) -> None:
    assert api_routes(settings) == set(NEEDS)


def test_the_openapi_documents_the_scope_of_each_endpoint(settings: Settings) -> None:
    paths = create_app(settings).openapi()["paths"]
    for (method, path), scope in NEEDS.items():
        responses = paths[path][method.lower()]["responses"]
        if scope is None:
            assert "403" not in responses, (method, path)
        else:
            assert f"'{scope}' scope" in responses["403"]["description"], (method, path)


def rule(app_id: str) -> dict[str, Any]:
    """A webhook rule no event matches."""
    return {
        "app_id": app_id,
        "rule_name": "matrix",
        "event_type_filter": "never-sent",
        "destination_type": "webhook",
        "destination_config": {"url": "https://example.invalid/hook"},
    }


async def make_key(client: httpx.AsyncClient, app: AppKey, headers: dict[str, str], *scopes: str) -> Any:
    made = await client.post(
        f"/api/applications/{app.app_id}/keys", json={"name": "k", "scopes": scopes}, headers=headers
    )
    assert made.status_code == 201, made.text
    return made.json()["data"]


async def call(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str], method: str, path: str, key: str
) -> httpx.Response:
    """``path`` called with ``key``, its path filled with things of ``app`` made for the call."""
    values: dict[str, object] = {
        "app_id": app.app_id,
        "event_id": uuid.uuid4(),
        "delivery_id": uuid.uuid4(),
        "job_id": uuid.uuid4(),
        "destination_type": "database_table",
        "name": f"matrix_{uuid.uuid4().hex[:8]}",
    }
    if "{rule_id}" in path:
        made = await client.post("/api/routing-rules", json=rule(app.app_id), headers=admin)
        values["rule_id"] = made.json()["data"]["rule_id"]
    if "{key_id}" in path:
        values["key_id"] = (await make_key(client, app, admin, "read"))["key_id"]
    bodies: dict[tuple[str, str], object] = {
        ("POST", "/api/ingest/{app_id}"): {"event_type": "matrix", "payload": {}},
        ("POST", "/api/messages/{app_id}"): {"text": "matrix"},
        ("POST", "/api/ingest/{app_id}/batch"): {"events": [{"event_type": "matrix"}]},
        ("POST", "/api/ingest/{app_id}/beacon"): {"key": key, "events": [{"event_type": "matrix"}]},
        ("PUT", "/api/applications/{app_id}/allowed-origins"): {"allowed_origins": ["https://a.example"]},
        ("PUT", "/api/applications/{app_id}/retention"): {"days": 3650},
        ("POST", "/api/applications/{app_id}/keys"): {"name": "made", "scopes": ["manage"]},
        ("POST", "/api/routing-rules"): rule(app.app_id),
        ("PUT", "/api/routing-rules/{rule_id}"): rule(app.app_id),
        ("POST", "/api/routing-rules/{rule_id}/redeliver"): {"since": "2026-01-01T00:00:00Z"},
        ("POST", "/api/dead-letters/app/{app_id}/resend"): {"since": "2026-01-01T00:00:00Z"},
        ("POST", "/api/applications/{app_id}/deletions"): {"path": "payload.user_id", "values": ["x"]},
        ("POST", "/api/applications/{app_id}/replay"): {
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-01-01T00:00:01Z",
        },
        ("POST", "/api/routing-rules/test"): {"app_id": app.app_id, "event": {"event_type": "t"}},
        ("POST", "/api/applications"): {"name": "made by the matrix"},
        ("PUT", "/api/destinations/{destination_type}/{name}/owner"): {"app_id": app.app_id},
        ("PUT", "/api/applications/{app_id}/quota"): {},
    }
    params = {"app_id": app.app_id} if path.startswith("/api/events/{event_id}") else None
    return await client.request(
        method,
        path.format(**values),
        json=bodies.get((method, path)),
        params=params,
        headers={"X-API-Key": key},
    )


async def other_application(client: httpx.AsyncClient, admin: dict[str, str]) -> tuple[AppKey, list[str]]:
    """Another application with data of every kind (events, rules, a topic and a table, keys, an
    audit trail), and the strings that would betray it in an answer."""
    made = (await client.post("/api/applications", json={"name": "the other"}, headers=admin)).json()["data"]
    other = AppKey(made["app_id"], made["api_key"])
    topic, table = f"other-topic-{uuid.uuid4().hex[:8]}", f"other_table_{uuid.uuid4().hex[:8]}"
    for kind, config in (("queue", {"topic": topic}), ("database_table", {"table": table})):
        body = {**rule(other.app_id), "destination_type": kind, "destination_config": config}
        assert (await client.post("/api/routing-rules", json=body, headers=other.headers)).status_code == 201
    sent = await client.post(
        f"/api/ingest/{other.app_id}", json={"event_type": "other-type"}, headers=other.headers
    )
    assert sent.status_code == 202
    await make_key(client, other, other.headers, "read")
    return other, [other.app_id, topic, table, "other-type", sent.json()["data"]["event_id"]]


# What a key of one application gets on another's endpoint: 401 where the path or body names the
# application, 404 where a rule id does (as if the rule did not exist: ids are sequential).
ON_THE_OTHER: dict[tuple[str, str], int] = {
    ("PUT", "/api/routing-rules/{rule_id}"): 404,
    ("GET", "/api/routing-rules/{rule_id}"): 404,
    ("PATCH", "/api/routing-rules/{rule_id}/toggle"): 404,
    ("DELETE", "/api/routing-rules/{rule_id}"): 404,
    ("POST", "/api/routing-rules/{rule_id}/rotate-secret"): 404,
    ("POST", "/api/routing-rules/{rule_id}/redeliver"): 404,
}


async def test_each_scope_on_every_endpoint_of_its_own_and_another_application(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str], settings: Settings
) -> None:
    """Each key with one scope, and the admin token, on every endpoint of its own application: the
    allowed status, a 403 naming the scope needed, or a 401 where only the admin token opens (the
    admin cannot ingest); on another application's: 401 (404 for its rules). No answer to a key
    holds anything of the other application."""
    other, betrayals = await other_application(client, admin)
    keys = {scope: (await make_key(client, app, admin, scope))["api_key"] for scope in Scope}
    assert settings.admin_token is not None
    callers: dict[Scope | None, str] = {scope: keys[scope] for scope in Scope}
    callers[None] = settings.admin_token.get_secret_value()
    seen = []
    for (method, path), needed in NEEDS.items():
        for target in (app, other):
            for holder, key in callers.items():
                response = await call(client, target, admin, method, path, key)
                allowed = ALLOWED.get((method, path), 200)
                if holder is None:  # the admin token
                    expected = 401 if needed is Scope.INGEST else allowed
                elif needed is None:
                    expected = 401
                elif target is other:
                    expected = ON_THE_OTHER.get((method, path), 401)
                else:
                    expected = allowed if holder is needed else 403
                seen.append((method, path, target.app_id, holder, response.status_code))
                assert response.status_code == expected, (method, path, target.app_id, holder, response.text)
                if holder is not None:
                    assert not [b for b in betrayals if b in response.text], (method, path, response.text)
                if expected == 403:
                    error = response.json()["errors"][0]
                    assert error == {"field": "header.X-API-Key", "reason": f"needs the {needed} scope"}
                    assert f"'{needed}'" in response.json()["message"]
    assert len(seen) == 2 * 4 * len(NEEDS)


async def test_an_ingest_key_only_ingests(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    key = {"X-API-Key": (await make_key(client, app, admin, "ingest"))["api_key"]}
    sent = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "t"}, headers=key)
    assert sent.status_code == 202
    for method, url in [
        ("GET", f"/api/events/app/{app.app_id}"),
        ("GET", f"/api/applications/{app.app_id}/keys"),
    ]:
        response = await client.request(method, url, headers=key)
        assert response.status_code == 403, url


async def test_a_read_key_reads_but_neither_ingests_nor_manages(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    key = {"X-API-Key": (await make_key(client, app, admin, "read"))["api_key"]}
    assert (await client.get(f"/api/events/app/{app.app_id}", headers=key)).status_code == 200
    assert (await client.get(f"/api/applications/{app.app_id}", headers=key)).status_code == 200
    sent = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "t"}, headers=key)
    assert sent.status_code == 403 and "'ingest'" in sent.json()["message"]
    made = await client.post("/api/routing-rules", json=rule(app.app_id), headers=key)
    assert made.status_code == 403 and "'manage'" in made.json()["message"]


async def test_a_manage_key_manages_keys_of_its_own_scopes(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    manager = {"X-API-Key": (await make_key(client, app, admin, "manage", "read"))["api_key"]}
    made = await client.post("/api/routing-rules", json=rule(app.app_id), headers=manager)
    assert made.status_code == 201
    reader = await make_key(client, app, manager, "read")
    assert set(reader) >= {"key_id", "name", "scopes", "expires_at", "revoked_at", "api_key"}
    wider = await client.post(
        f"/api/applications/{app.app_id}/keys", json={"name": "w", "scopes": ["ingest"]}, headers=manager
    )
    assert wider.status_code == 403 and "'ingest'" in wider.json()["message"]
    listing = (await client.get(f"/api/applications/{app.app_id}/keys", headers=manager)).json()["data"]
    assert [k["name"] for k in listing] == ["default", "k", "k"]
    assert all("api_key" not in k and "key_hash" not in k for k in listing)
    assert listing[0]["scopes"] == ["ingest", "read", "manage"]


async def test_an_expired_or_revoked_key_is_401(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    url = f"/api/events/app/{app.app_id}"
    soon = datetime.now(UTC) + timedelta(seconds=2)
    expiring = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "soon", "scopes": ["read"], "expires_at": soon.isoformat()},
        headers=admin,
    )
    assert expiring.status_code == 201, expiring.text
    headers = {"X-API-Key": expiring.json()["data"]["api_key"]}
    assert (await client.get(url, headers=headers)).status_code == 200
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    assert (await client.get(url, headers=headers)).status_code == 401

    revoked = await make_key(client, app, admin, "read", "ingest")
    headers = {"X-API-Key": revoked["api_key"]}
    assert (await client.get(url, headers=headers)).status_code == 200
    done = await client.post(f"/api/applications/{app.app_id}/keys/{revoked['key_id']}/revoke", headers=admin)
    assert done.status_code == 200 and done.json()["data"]["revoked_at"]
    assert (await client.get(url, headers=headers)).status_code == 401
    sent = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "t"}, headers=headers)
    assert sent.status_code == 401
    # A revoked key cannot be rotated back to life.
    again = await client.post(
        f"/api/applications/{app.app_id}/keys/{revoked['key_id']}/rotate", headers=admin
    )
    assert again.status_code == 404
    past = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "past", "scopes": ["read"], "expires_at": "2020-01-01T00:00:00Z"},
        headers=admin,
    )
    assert past.status_code == 422 and past.json()["errors"][0]["field"] == "body.expires_at"


async def test_a_rotated_key_keeps_its_scopes_and_the_old_secret_for_the_grace(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    made = await make_key(client, app, admin, "read")
    url = f"/api/applications/{app.app_id}/keys/{made['key_id']}/rotate"
    rotated = (await client.post(url, headers=admin)).json()["data"]
    assert rotated["scopes"] == ["read"] and rotated["previous_key_valid_until"]
    events = f"/api/events/app/{app.app_id}"
    for secret in (made["api_key"], rotated["api_key"]):
        assert (await client.get(events, headers={"X-API-Key": secret})).status_code == 200
    newest = (await client.post(url, params={"grace_s": 0}, headers=admin)).json()["data"]
    assert (await client.get(events, headers={"X-API-Key": rotated["api_key"]})).status_code == 401
    assert (await client.get(events, headers={"X-API-Key": newest["api_key"]})).status_code == 200
    other = await client.post(f"/api/applications/{app.app_id}/keys/999999999/rotate", headers=admin)
    assert other.status_code == 404 and other.json()["errors"][0]["field"] == "path.key_id"


async def test_a_key_opens_its_own_application_only(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    other = await client.post("/api/applications", json={"name": "other"}, headers=admin)
    other_id = other.json()["data"]["app_id"]
    assert (await client.get(f"/api/events/app/{other_id}", headers=app.headers)).status_code == 401
    keys = await client.get(f"/api/applications/{other_id}/keys", headers=app.headers)
    assert keys.status_code == 401
    others = (await client.get(f"/api/applications/{other_id}/keys", headers=admin)).json()["data"]
    # Another application's key id under this application's path: unknown here.
    url = f"/api/applications/{app.app_id}/keys/{others[0]['key_id']}/revoke"
    revoke = await client.post(url, headers=admin)
    assert revoke.status_code == 404 and revoke.json()["errors"][0]["field"] == "path.key_id"
    other_key = {"X-API-Key": other.json()["data"]["api_key"]}
    assert (await client.get(f"/api/events/app/{other_id}", headers=other_key)).status_code == 200


def test_the_cli_has_the_same_verbs(settings: Settings) -> None:
    env = {**os.environ, "VDIP_DATABASE_URL": settings.database_url}
    app_id = f"cli-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return vdip("app", *args, env=env)

    def field(result: subprocess.CompletedProcess[str], name: str) -> str:
        assert result.returncode == 0, result.stdout + result.stderr
        found = re.search(rf"^{name}: (\S+)", result.stdout, re.MULTILINE)
        assert found, result.stdout
        return found[1]

    assert field(run("create", app_id), "scopes") == "ingest,read,manage"
    made = run(
        "add-key", app_id, "--key-name", "reader", "--scopes", "read", "--expires-at", "2099-01-01T00:00Z"
    )
    key_id = field(made, "key_id")
    assert field(made, "scopes") == "read"
    assert field(run("rotate-key", app_id, "--key-id", key_id, "--grace-s", "60"), "key_id") == key_id
    revoked = run("revoke-key", app_id, "--key-id", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    listing = run("keys", app_id).stdout.splitlines()
    assert [line.split("\t")[1:3] for line in listing] == [
        ["default", "ingest,read,manage"],
        ["reader", "read"],
    ]
    assert listing[1].endswith("revoked") and listing[0].endswith("never")
    assert run("rotate-key", app_id, "--key-id", key_id).returncode == 1  # revoked: no new life
    assert run("keys", "missing-app").returncode == 1
    assert run("add-key", app_id, "--scopes", "write").returncode == 2
    trail = asyncio.run(audit_of(settings, app_id))
    assert [(e.action, e.actor, e.changes["via"]) for e in trail] == [
        (action, "admin", "cli")
        for action in ("application.create", "key.create", "key.rotate", "key.revoke")
    ]
    assert "vdip_" not in str(trail)  # no key in it


async def audit_of(settings: Settings, app_id: str) -> list[audit.AuditEntry]:
    pool = await create_pool(settings.database_url)
    try:
        return list(reversed(await audit.page(pool, app_id, None, 100)))
    finally:
        await pool.close()
