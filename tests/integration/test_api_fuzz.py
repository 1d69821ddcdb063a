"""Property-based API testing: schemathesis generates requests from the gateway's own OpenAPI
document (its examples, the coverage phase's edge cases, then valid and invalid fuzzed data) and
checks every answer against it: no 5xx, only documented status codes and content types, bodies
and headers that match their schemas. Every operation is fuzzed with the admin token, with an
application's key of every scope and with a key of each single scope (ingest, read, manage: the
403s of the others are documented too), against the real pipeline, with a bounded budget per
operation."""

import os
import zlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import WEBHOOK_RECEIVER_HOST, AppKey, Pipeline

EXAMPLES_PER_OPERATION = int(os.environ.get("VDIP_FUZZ_EXAMPLES", "15"))

# Not checked: positive_data_acceptance (that every schema-valid request is accepted). Some limits
# cannot be said in JSON Schema (a payload's depth, key count and size, integers beyond 64 bits,
# opaque cursors); their 422s are tested one by one in test_limits and test_gateway.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Operations that would take the fuzzed application's key away (two rotations retire the old key
# at once; a disabled application's ingest answers 403): they get an application of their own.
KEY_TAKERS = ("/rotate-key", "/disable")


@pytest.fixture
async def targets(client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]) -> dict[str, str]:
    """Real ids to put into paths (fuzzed ones only ever meet 404s): a stored event, two rules (one
    for DELETE), an application for the key takers."""
    response = await client.post(
        f"/api/ingest/{app.app_id}", json={"event_type": "fuzz"}, headers=app.headers
    )
    assert response.status_code == 202, response.text
    rules = []
    for name in ("fuzzed", "deleted"):
        rule = await client.post(
            "/api/routing-rules",
            json={
                "app_id": app.app_id,
                "rule_name": name,
                "condition": {"payload.n": {"$gt": 1}},
                "destination_type": "webhook",
                "destination_config": {"url": f"http://{WEBHOOK_RECEIVER_HOST}:9/hook"},  # no one listens
            },
            headers=admin,
        )
        assert rule.status_code == 201, rule.text
        rules.append(str(rule.json()["data"]["rule_id"]))
    other = await client.post("/api/applications", json={"name": "fuzz: key takers"}, headers=admin)
    assert other.status_code == 201, other.text
    return {
        "event_id": response.json()["data"]["event_id"],
        "rule_id": rules[0],
        "deleted_rule_id": rules[1],
        "other_app_id": other.json()["data"]["app_id"],
    }


@pytest.fixture
async def scoped_keys(client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]) -> dict[str, str]:
    """A key of the application with each single scope."""
    found = {}
    for scope in ("ingest", "read", "manage"):
        made = await client.post(
            f"/api/applications/{app.app_id}/keys", json={"name": scope, "scopes": [scope]}, headers=admin
        )
        assert made.status_code == 201, made.text
        found[scope] = made.json()["data"]["api_key"]
    return found


@pytest.mark.parametrize("credential", ["admin", "application", "ingest", "read", "manage"])
def test_api_conforms_to_its_openapi(
    pipeline: Pipeline,
    app: AppKey,
    admin: dict[str, str],
    targets: dict[str, str],
    scoped_keys: dict[str, str],
    credential: str,
) -> None:
    schema = schemathesis.openapi.from_url(f"{pipeline.base_url}/openapi.json")
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES_PER_OPERATION
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    key = {
        "admin": admin["Authorization"].removeprefix("Bearer "),
        "application": app.key,
        **scoped_keys,
    }[credential]
    feedback = FeedbackSources()
    failures: list[str] = []

    def check(case: Any) -> None:
        key_taker = case.path.endswith(KEY_TAKERS)
        parameters = case.path_parameters or {}
        if "app_id" in parameters:  # a real application, not only 404s
            parameters["app_id"] = targets["other_app_id"] if key_taker else app.app_id
        # Half of the cases (a function of the case, so that a run can be repeated) get real ids.
        real_ids = key_taker or zlib.crc32(repr(sorted(parameters.items())).encode()) % 2 == 0
        if real_ids and "event_id" in parameters:
            parameters["event_id"] = targets["event_id"]
        if real_ids and "rule_id" in parameters:
            parameters["rule_id"] = targets["deleted_rule_id" if case.method == "DELETE" else "rule_id"]
        case.headers = {**(case.headers or {}), "X-API-Key": key}
        case.call_and_validate(checks=CHECKS)

    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12
    for operation in operations:
        # The builder behind schemathesis's own pytest integration (its lazy `from_fixture` loader
        # does not run under pytest 9): examples, coverage and fuzzing, as configured above.
        test = build_operation_test(
            config=schema.config,
            operation=operation,
            test_func=check,
            given_kwargs={},
            feedback=feedback,
            explicit_settings=settings(deadline=None, suppress_health_check=list(HealthCheck), database=None),
        )
        try:
            test()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then fail once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    if failures:
        pytest.fail("\n\n".join(failures))
