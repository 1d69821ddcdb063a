"""Every process serves Prometheus metrics, and traffic moves them."""

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AppKey, Pipeline, wait_until
from tests.integration.test_rules import rule_body, send
from tests.integration.test_webhooks import ok, receiving, settled, webhook_rule


async def scrape(url: str) -> dict[str, float]:
    """Sample name with its labels -> value, e.g. 'vdip_router_events_total{outcome=routed}'."""
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, url
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in samples.items() if name.startswith(prefix))


async def test_every_process_counts_its_work(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    s = pipeline.settings
    urls = {
        "gateway": f"{pipeline.base_url}/metrics",
        "worker": f"http://127.0.0.1:{s.worker_metrics_port}/metrics",
        "sink": f"http://127.0.0.1:{s.sink_metrics_port}/metrics",
        "table-sink": f"http://127.0.0.1:{s.table_sink_metrics_port}/metrics",
        "webhooks": f"http://127.0.0.1:{s.webhooks_metrics_port}/metrics",
    }
    before = {name: await scrape(url) for name, url in urls.items()}
    table = f"m_{uuid.uuid4().hex[:8]}"
    body = rule_body(
        app, destination_type="database_table", destination_config={"table": table}, condition={}
    )
    created = await client.post("/api/routing-rules", json=body, headers=app.headers)
    assert created.status_code == 201
    async with receiving(ok) as receiver:
        await webhook_rule(pipeline, client, app, receiver.url("/metrics-hook"))
        event_id = await send(client, app, 10)
        await settled(client, app, event_id, count=2)
    rejected = await client.post(f"/api/ingest/{app.app_id}", json={"payload": {}}, headers=app.headers)
    assert rejected.status_code == 422

    moved = {
        "gateway": [
            "vdip_ingest_requests_total{outcome=accepted",
            "vdip_ingest_requests_total{outcome=rejected,reason=invalid}",
            "vdip_ingest_events_total{outcome=accepted}",
            "vdip_produce_seconds_count",
        ],
        "worker": [
            "vdip_router_events_total{outcome=routed}",
            f"vdip_rule_matches_total{{app_id={app.app_id}",
        ],
        "sink": ["vdip_sink_batch_records_count", "vdip_sink_write_seconds_count"],
        "table-sink": ["vdip_sink_batch_records_count"],
        "webhooks": [
            "vdip_webhook_attempts_total{outcome=delivered}",
            "vdip_webhook_seconds_count",
            "vdip_sink_batch_records_count",
        ],
    }

    async def all_moved() -> bool:
        for name, prefixes in moved.items():
            after = await scrape(urls[name])
            if any(total(after, p) <= total(before[name], p) for p in prefixes):
                return False
        return True

    await wait_until(all_moved, 20, message="every process's counters moved")
    worker = await scrape(urls["worker"])
    assert any(name.startswith("vdip_consumer_lag_records{") for name in worker)
