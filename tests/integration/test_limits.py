"""Hard limits, rate limiting, enrichment and correlation ids, against a gateway with tight settings."""

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from tests.conftest import (
    AppKey,
    Pipeline,
    PrivateKafka,
    Process,
    _free_port,
    consume_all,
    gateway_on,
    record_values,
    start_gateway,
    wait_until,
)
from vdip.settings import Settings

STRICT = {
    "VDIP_MAX_BODY_BYTES": "4096",
    "VDIP_MAX_EVENT_BYTES": "512",
    "VDIP_MAX_JSON_DEPTH": "4",
    "VDIP_MAX_JSON_KEYS": "10",
    "VDIP_MAX_BATCH_EVENTS": "5",
    "VDIP_MAX_INFLIGHT_EVENTS": "3",
    "VDIP_TRUSTED_PROXIES": '["127.0.0.1/32"]',
}


@pytest.fixture(scope="module")
async def strict(pipeline: Pipeline) -> AsyncIterator[Process]:
    gateway = Process(
        "gateway",
        pipeline.settings,
        pipeline.gateway.log_path.parent,
        {**STRICT, "VDIP_GATEWAY_PORT": str(_free_port())},
        label="gateway-strict",
    )
    await start_gateway(gateway)
    yield gateway
    gateway.stop()


@pytest.fixture
async def sclient(strict: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{strict.env()['VDIP_GATEWAY_PORT']}") as client:
        yield client


async def test_body_over_the_limit_is_413_before_it_is_read(sclient: httpx.AsyncClient, app: AppKey) -> None:
    big = {"event_type": "t", "payload": {"x": "y" * 5000}}
    declared = await sclient.post(f"/api/ingest/{app.app_id}", json=big, headers=app.headers)
    assert declared.status_code == 413
    assert declared.json()["errors"] == [{"field": "body", "reason": "larger than 4096 bytes"}]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"event_type": "t", "payload": {"x": "'
        for _ in range(100):
            yield b"y" * 100
        yield b'"}}'

    streamed = await sclient.post(
        f"/api/ingest/{app.app_id}",
        content=chunks(),
        headers={**app.headers, "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"x": "y" * 600}, "is 608 bytes serialized; the limit is 512"),
        ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nests 5 levels deep; the limit is 4"),
        ({str(i): i for i in range(11)}, "has 11 keys; the limit is 10"),
    ],
)
async def test_event_limits_are_422_naming_the_payload(
    sclient: httpx.AsyncClient, app: AppKey, payload: dict[str, object], reason: str
) -> None:
    response = await sclient.post(
        f"/api/ingest/{app.app_id}", json={"event_type": "t", "payload": payload}, headers=app.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "body.payload", "reason": reason}]


async def test_batch_limit(sclient: httpx.AsyncClient, app: AppKey) -> None:
    response = await sclient.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": [{"event_type": "t"}] * 6}, headers=app.headers
    )
    assert response.status_code == 422 and "at most 5" in response.json()["message"]


async def test_in_flight_bound_answers_503(sclient: httpx.AsyncClient, app: AppKey) -> None:
    response = await sclient.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": [{"event_type": "t"}] * 4}, headers=app.headers
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "await Kafka" in response.json()["errors"][0]["reason"]


async def test_events_count_as_in_flight_until_kafka_answers(
    private_kafka: PrivateKafka, pipeline: Pipeline, app: AppKey
) -> None:
    """A gateway whose broker hangs: what it could not get acknowledged stays in its producer, and
    counts against the in-flight bound until Kafka answers; no event is ever answered 2xx unacked."""
    log_dir = pipeline.gateway.log_path.parent
    limit = {"VDIP_MAX_INFLIGHT_EVENTS": "3"}
    async with (
        gateway_on(private_kafka, pipeline.settings, log_dir, "gateway-inflight", limit) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):

        async def ingest(n: int) -> httpx.Response:
            body = {"event_type": "t", "event_id": str(uuid.uuid4()), "payload": {"n": n}}
            return await client.post(f"/api/ingest/{app.app_id}", json=body, headers=app.headers)

        assert (await ingest(0)).status_code == 202  # the broker answers
        private_kafka.pause()
        try:
            timed_out = await asyncio.gather(*(ingest(n) for n in range(1, 4)))
            assert [r.status_code for r in timed_out] == [503] * 3
            assert all("did not acknowledge" in r.json()["errors"][0]["reason"] for r in timed_out)
            started = asyncio.get_running_loop().time()
            refused = await asyncio.gather(*(ingest(n) for n in range(4, 7)))
            waited = asyncio.get_running_loop().time() - started
        finally:
            private_kafka.resume()
        # The three timed-out events are still in flight: the next ones are refused at once.
        assert [r.status_code for r in refused] == [503] * 3
        assert all("await Kafka" in r.json()["errors"][0]["reason"] for r in refused), refused[0].text
        assert waited < 0.9, waited  # under the 1 s produce timeout: nothing more was buffered

        async def accepted_again() -> bool:
            return (await ingest(7)).status_code == 202  # acknowledged ones no longer count

        await wait_until(accepted_again, 60, interval=0.5, message="ingest accepted once Kafka answers")

    # The timed-out events did reach Kafka after all (a 503 is "not accepted", not "lost"); the
    # refused ones never did.
    # Requests of one turn of the gateway's loop share a record (a batch record).
    def numbers_in(records: list[ConsumerRecord[bytes, bytes]]) -> set[int]:
        return {event["payload"]["n"] for r in records for event in record_values(r)}

    records = await consume_all(
        Settings(kafka_bootstrap=private_kafka.bootstrap, topic_prefix=pipeline.settings.topic_prefix),
        "events",
        until=lambda found: numbers_in(found) >= {1, 2, 3},
    )
    numbers = numbers_in(records)
    assert {1, 2, 3} <= numbers and not numbers & {4, 5, 6}, numbers


async def test_an_application_over_its_quota_gets_429_and_the_others_do_not(
    sclient: httpx.AsyncClient, pool: asyncpg.Pool, admin: dict[str, str]
) -> None:
    from vdip.store.applications import create_application

    keys = []
    for _ in range(2):
        created = await create_application(pool, f"rate-{uuid.uuid4().hex[:8]}", "rate")
        assert created is not None
        keys.append((created[0].app_id, {"X-API-Key": created[1]}))
    (noisy, noisy_key), (quiet, quiet_key) = keys
    answer = await sclient.put(
        f"/api/applications/{noisy}/quota", json={"events_per_s": 1, "burst": 20}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["quota"] == {"events_per_s": 1, "burst": 20, "default": False}
    began = time.monotonic()
    statuses = [
        (await sclient.post(f"/api/ingest/{noisy}", json={"event_type": "t"}, headers=noisy_key)).status_code
        for _ in range(25)
    ]
    refilled = int(time.monotonic() - began)  # the bucket refills an event a second meanwhile
    accepted = statuses.count(202)
    assert statuses[:20] == [202] * 20 and 20 <= accepted <= 20 + refilled and statuses[-1] == 429, statuses
    limited = await sclient.post(f"/api/ingest/{noisy}", json={"event_type": "t"}, headers=noisy_key)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) == 1
    assert limited.json()["errors"] == [{"field": "path.app_id", "reason": "quota exceeded"}]
    assert (
        await sclient.post(f"/api/ingest/{quiet}", json={"event_type": "t"}, headers=quiet_key)
    ).status_code == 202
    metrics = (await sclient.get("/metrics")).text
    assert f'vdip_ingest_throttled_events_total{{app_id="{noisy}"}} {26 - accepted:.1f}' in metrics
    assert f'vdip_ingest_quota_events_per_second{{app_id="{noisy}"}} 1.0' in metrics
    assert f'vdip_ingest_quota_burst_events{{app_id="{quiet}"}} 500000.0' in metrics  # the default


async def test_forwarded_for_and_correlation_id(
    sclient: httpx.AsyncClient, strict: Process, app: AppKey, pool: asyncpg.Pool
) -> None:
    correlation = f"corr-{uuid.uuid4().hex}"
    response = await sclient.post(
        f"/api/ingest/{app.app_id}",
        json={"event_type": "t"},
        headers={**app.headers, "X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Correlation-ID": correlation},
    )
    assert response.status_code == 202
    assert response.headers["X-Correlation-ID"] == correlation
    event_id = uuid.UUID(response.json()["data"]["event_id"])

    async def stored() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", event_id))

    await wait_until(stored, 30, message="stored")
    metadata = await pool.fetchval("SELECT metadata FROM data_events WHERE event_id = $1", event_id)
    assert metadata["ip_address"] == "198.51.100.7"  # 127.0.0.1 is a trusted proxy here
    assert metadata["correlation_id"] == correlation
    log_lines = [line for line in strict.log_path.read_text().splitlines() if correlation in line]
    assert any(str(event_id) in line for line in log_lines), log_lines
    generated = await sclient.get("/health")
    assert len(generated.headers["X-Correlation-ID"]) == 32  # made up when none was sent
    rejected = await sclient.post(
        f"/api/ingest/{app.app_id}", json={}, headers={"X-Correlation-ID": correlation}
    )
    assert rejected.headers["X-Correlation-ID"] == correlation


async def test_untrusted_peer_cannot_spoof_its_address(
    client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    response = await client.post(
        f"/api/ingest/{app.app_id}",
        json={"event_type": "t"},
        headers={**app.headers, "X-Forwarded-For": "6.6.6.6"},
    )
    event_id = uuid.UUID(response.json()["data"]["event_id"])

    async def stored() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", event_id))

    await wait_until(stored, 30, message="stored")
    metadata = await pool.fetchval("SELECT metadata FROM data_events WHERE event_id = $1", event_id)
    assert metadata["ip_address"] == "127.0.0.1"


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response (Content-Length framed, as the gateway answers)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 40)).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 40)
    return int(head[0].split(" ")[1]), body


async def test_graceful_shutdown_drains_in_flight_produces(
    pipeline: Pipeline, app: AppKey, pool: asyncpg.Pool
) -> None:
    """SIGTERM while 20 batch requests are provably in the gateway's hands and none is answered:
    each asked for its body (``Expect: 100-continue``), half send it as the signal is sent and half
    once the gateway logged that it is shutting down. Every one must be answered 202 and stored."""
    port = _free_port()
    gateway = Process(
        "gateway",
        pipeline.settings,
        pipeline.gateway.log_path.parent,
        {"VDIP_GATEWAY_PORT": str(port)},
        label=f"gateway-shutdown-{uuid.uuid4().hex[:8]}",
    )
    await start_gateway(gateway)
    assert gateway.proc is not None
    bodies = [
        orjson.dumps({"events": [{"event_type": "drain", "payload": {"r": r, "n": n}} for n in range(100)]})
        for r in range(20)
    ]
    connections = []
    for body in bodies:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"POST /api/ingest/{app.app_id}/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-API-Key: {app.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        connections.append((reader, writer))
    for reader, _ in connections:  # each request's handler is running and waits for its body
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
    for (_, writer), body in zip(connections[:10], bodies[:10], strict=True):
        writer.write(body)
    gateway.proc.terminate()  # SIGTERM: no request has been answered yet

    def shutting_down() -> bool:
        return "Shutting down" in gateway.log_path.read_text()

    await wait_until(shutting_down, 10, interval=0.05, message="the gateway shutting down")
    for (_, writer), body in zip(connections[10:], bodies[10:], strict=True):
        writer.write(body)
    answers = await asyncio.gather(*(_answer(reader) for reader, _ in connections), return_exceptions=True)
    for _, writer in connections:
        writer.close()
    bodies_202 = [a[1] for a in answers if not isinstance(a, BaseException) and a[0] == 202]
    assert len(bodies_202) == len(bodies), answers  # no connection error, no other status
    accepted = [
        uuid.UUID(r["event_id"]) for body in bodies_202 for r in orjson.loads(body)["data"]["results"]
    ]
    assert len(set(accepted)) == 100 * len(bodies)
    assert gateway.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    assert "Application shutdown complete" in gateway.log_path.read_text()

    async def all_stored() -> bool:
        found: int = await pool.fetchval(
            "SELECT count(*) FROM data_events WHERE event_id = ANY($1::uuid[])", accepted
        )
        return found == len(accepted)

    await wait_until(all_stored, 60, message=f"all {len(accepted)} accepted events stored")
