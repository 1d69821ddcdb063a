"""No query parameter is silently ignored: every operation of the OpenAPI document refuses one it
does not take (422 naming it, and it alone), and takes every one it documents."""

import uuid
from typing import Any

import httpx
import pytest

from gateway.main import create_app
from vdip.settings import Settings

UNKNOWN = "zz_not_a_parameter"


def _value(schema: dict[str, Any]) -> str:
    """A valid value for a path parameter of this schema."""
    if "enum" in schema:
        return str(schema["enum"][0])
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("type") == "integer":
        return "1"
    return "demo"


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in methods
    ]


def _url(path: str, operation: dict[str, Any]) -> str:
    for param in operation.get("parameters", []):
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", _value(param["schema"]))
    return path


async def test_every_operation_refuses_an_unknown_query_parameter() -> None:
    app = create_app(Settings())
    operations = _operations(app.openapi())
    assert len(operations) > 30
    transport = httpx.ASGITransport(app=app)  # no lifespan: the refusal comes before the route
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for method, path, operation in operations:
            documented = [p for p in operation.get("parameters", []) if p["in"] == "query"]
            params = {UNKNOWN: "1"} | {p["name"]: "x" for p in documented}  # those are taken
            answer = await client.request(method, _url(path, operation), params=params)
            assert answer.status_code == 422, (method, path, answer.text)
            fields = [e["field"] for e in answer.json()["errors"]]
            assert fields == [f"query.{UNKNOWN}"], (method, path, fields)


@pytest.mark.parametrize("misspelt", ["offest", "event-type", "limit "])
async def test_a_misspelt_filter_is_named(misspelt: str) -> None:
    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        answer = await client.get("/api/events/app/demo", params={misspelt: "1"})
    assert answer.status_code == 422
    [error] = answer.json()["errors"]
    assert error["field"] == f"query.{misspelt}"
    assert "cursor" in error["reason"] and "offset" in error["reason"]
