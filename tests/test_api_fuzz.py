"""Property-based API testing: schemathesis generates requests from the gateway's own OpenAPI
document and checks every answer against it (no 5xx, documented status codes, bodies and headers
that match their schemas). Runs against the real pipeline with a bounded budget per operation."""

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import AppKey, Pipeline

EXAMPLES_PER_OPERATION = int(os.environ.get("VDIP_FUZZ_EXAMPLES", "30"))


def test_api_conforms_to_its_openapi(pipeline: Pipeline, app: AppKey, admin: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{pipeline.base_url}/openapi.json")
    admin_token = admin["Authorization"].removeprefix("Bearer ")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            if case.path_parameters and "app_id" in case.path_parameters:
                case.path_parameters["app_id"] = app.app_id  # a real application, not only 404s
            ingest = case.path.startswith(("/api/ingest", "/api/messages"))
            case.headers = {**(case.headers or {}), "X-API-Key": app.key if ingest else admin_token}
            # Not checked: that every schema-valid request is accepted. Some limits cannot be said in
            # JSON Schema (a payload's depth, key count and size, integers beyond 64 bits, opaque
            # cursors); their 422s are tested one by one in test_limits and test_gateway.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then fail once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    if failures:
        pytest.fail("\n\n".join(failures))
