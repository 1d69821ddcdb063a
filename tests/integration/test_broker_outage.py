"""The broker goes away: ingest answers 503 quickly, never 2xx; everything recovers after."""

import asyncio
import time

import httpx
import pytest

from tests.conftest import AppKey, Pipeline, Services, needs_local_stack, wait_until
from vdip import stack
from vdip.settings import Settings


@pytest.mark.disruptive
async def test_gateway_answers_503_while_kafka_is_down_then_recovers(
    services: Services, pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    needs_local_stack(services, "broker, which this test stops and starts")
    stack_settings = Settings(kafka_bootstrap=services.kafka_bootstrap)
    assert stack.read_pid(stack.kafka_nodes(stack_settings)[0].paths.pid) is not None, (
        "the broker was not started by this checkout's stack (`vdip stack up` here)"
    )
    body = {"event_type": "outage", "payload": {}}
    url = f"/api/ingest/{app.app_id}"
    assert (await client.post(url, json=body, headers=app.headers)).status_code == 202

    await asyncio.to_thread(stack.stop_kafka, stack_settings)
    try:
        for _ in range(3):
            started = time.monotonic()
            response = await client.post(url, json=body, headers=app.headers)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) > 0
            answer = response.json()
            assert answer["success"] is False and answer["errors"][0]["field"] == "kafka"
            # Bounded by the produce timeout (3 s here), not a hang.
            assert elapsed < pipeline.settings.produce_timeout_s + 1.5, elapsed
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["data"]["kafka"]["ok"] is False
        # A rule that cannot be published is not saved either: the router and PostgreSQL agree.
        rule = {
            "app_id": app.app_id,
            "rule_name": "during the outage",
            "destination_type": "queue",
            "destination_config": {"topic": "outage-rule"},
        }
        refused = await client.post("/api/routing-rules", json=rule, headers=app.headers)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        listed = await client.get(
            f"/api/routing-rules/app/{app.app_id}", params={"include_inactive": "true"}, headers=app.headers
        )
        assert listed.json()["data"] == []
    finally:
        await asyncio.to_thread(stack.start_kafka, stack_settings)

    accepted: list[str] = []

    async def accepted_again() -> bool:
        response = await client.post(url, json=body, headers=app.headers)
        if response.status_code == 202:
            accepted.append(response.json()["data"]["event_id"])
            return True
        assert response.status_code == 503, response.text
        return False

    await wait_until(accepted_again, 90, interval=1, message="ingest accepted after the broker came back")

    async def stored() -> bool:
        return (await client.get(f"/api/events/{accepted[0]}", headers=app.headers)).status_code == 200

    await wait_until(stored, 90, message="the worker and the sink recovered too")
    assert pipeline.worker.alive() and pipeline.sink.alive()
