"""The management API for applications and keys, over real HTTP."""

import httpx

from tests.conftest import AppKey, Pipeline, another_gateway


async def test_create_list_get(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await client.post(
        "/api/applications",
        json={"app_id": "shop-eu", "name": "Shop EU", "description": "web"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["app_id"] == "shop-eu" and data["is_active"] is True
    assert data["api_key"].startswith("vdip_") and data["previous_key_valid_until"] is None
    key = {"X-API-Key": data["api_key"]}

    again = await client.post("/api/applications", json={"app_id": "shop-eu", "name": "x"}, headers=admin)
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "body.app_id"

    generated = await client.post("/api/applications", json={"name": "No id given"}, headers=admin)
    assert generated.status_code == 201 and generated.json()["data"]["app_id"].startswith("app-")

    listing = (await client.get("/api/applications", headers=admin)).json()["data"]
    assert {"shop-eu", generated.json()["data"]["app_id"]} <= {a["app_id"] for a in listing}
    assert all("api_key" not in a for a in listing)

    own = await client.get("/api/applications/shop-eu", headers=key)
    assert own.status_code == 200 and own.json()["data"]["name"] == "Shop EU"
    assert (await client.get("/api/applications/shop-eu", headers=admin)).status_code == 200
    assert (await client.get("/api/applications/missing-app", headers=admin)).status_code == 404
    assert (await client.post("/api/applications/missing-app/disable", headers=admin)).status_code == 404


async def test_management_needs_the_admin_token(client: httpx.AsyncClient, app: AppKey) -> None:
    for method, url in [
        ("POST", "/api/applications"),
        ("GET", "/api/applications"),
        ("POST", f"/api/applications/{app.app_id}/disable"),
        ("POST", f"/api/applications/{app.app_id}/enable"),
    ]:
        for headers in ({}, app.headers, {"Authorization": "Bearer wrong"}):
            response = await client.request(method, url, json={"name": "x"}, headers=headers)
            assert response.status_code == 401, (method, url, headers)
            assert response.json()["success"] is False


async def test_invalid_new_application_is_a_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for body, field in [
        ({}, "body.name"),
        ({"name": ""}, "body.name"),
        ({"name": "x", "app_id": "a b"}, "body.app_id"),
    ]:
        response = await client.post("/api/applications", json=body, headers=admin)
        assert response.status_code == 422
        assert field in [e["field"] for e in response.json()["errors"]]


async def test_rotated_key_keeps_the_old_one_for_the_grace_period(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    rotated = await client.post(f"/api/applications/{app.app_id}/rotate-key", headers=app.headers)
    assert rotated.status_code == 200
    new_key = rotated.json()["data"]["api_key"]
    assert new_key != app.key and rotated.json()["data"]["previous_key_valid_until"]
    body = {"event_type": "t", "payload": {}}
    for key in (app.key, new_key):
        assert (
            await client.post(f"/api/ingest/{app.app_id}", json=body, headers={"X-API-Key": key})
        ).status_code == 202
    # A second rotation (by the admin) retires the first key at once: only one previous key is kept.
    again = await client.post(f"/api/applications/{app.app_id}/rotate-key", headers=admin)
    newest = again.json()["data"]["api_key"]
    assert (
        await client.post(f"/api/ingest/{app.app_id}", json=body, headers={"X-API-Key": app.key})
    ).status_code == 401
    for key in (new_key, newest):
        assert (
            await client.post(f"/api/ingest/{app.app_id}", json=body, headers={"X-API-Key": key})
        ).status_code == 202


async def test_without_grace_the_old_key_stops_at_once(
    pipeline: Pipeline, app: AppKey, log_dir: object
) -> None:
    no_grace = {"VDIP_KEY_ROTATION_GRACE_S": "0"}
    logs = pipeline.gateway.log_path.parent
    async with (
        another_gateway(pipeline.settings, logs, "gateway-no-grace", no_grace) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        rotated = await client.post(f"/api/applications/{app.app_id}/rotate-key", headers=app.headers)
        body = {"event_type": "t"}
        old = await client.post(f"/api/ingest/{app.app_id}", json=body, headers=app.headers)
        assert old.status_code == 401
        new = {"X-API-Key": rotated.json()["data"]["api_key"]}
        assert (await client.post(f"/api/ingest/{app.app_id}", json=body, headers=new)).status_code == 202
