"""Webhook destinations: SSRF checks, signing, retries, disabling, isolation, outcomes.

End-to-end tests send webhooks to a real HTTP receiver on 127.0.0.2 (the one address the test
settings allow) and keep a canary listening on 127.0.0.1 and ::1 that no webhook may ever reach.
Nothing here sends traffic anywhere but loopback.
"""

import asyncio
import ipaddress
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import orjson
import pydantic
import pytest
import standardwebhooks
from aiokafka import AIOKafkaProducer

from schemas.rules import Delivery, RuleFields
from sinks.addresses import GuardedResolver, WebhookClient, networks, refusal
from sinks.webhooks import (
    Dispatcher,
    Intake,
    parse_retry_after,
    recorded_body,
    request_body,
    request_headers,
    retry_delay,
)
from tests.conftest import (
    WEBHOOK_RECEIVER_HOST,
    AppKey,
    Pipeline,
    consume_all,
    consumed,
    rule_applied,
    wait_until,
)
from tests.integration.test_rules import rule_body, send
from vdip.errors import AddressRefused
from vdip.settings import Settings
from vdip.store.rules import insert_rule, new_webhook_secret

# ------------------------------------------------------------------------------ address checks

REFUSED = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1",
    "2002:7f00:1::",
    "2002:a00:1::",
    "2001:db8::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_opens_exactly_what_it_names() -> None:
    allowed = networks(["127.0.0.2/32"])
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is not None
    assert refusal(ipaddress.ip_address("::1"), allowed) is not None


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "017700000001", "127.1", "localhost", "[::1]"])
async def test_names_and_encodings_are_judged_by_what_they_resolve_to(host: str) -> None:
    resolver = GuardedResolver(networks(["127.0.0.2/32"]), resolve_timeout_s=5)
    with pytest.raises(AddressRefused):  # raised before any connection is attempted
        await resolver.resolve(host.strip("[]"), 9)


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "localhost", "[::1]", "127.0.0.1"])
async def test_the_client_refuses_them_before_connecting(host: str) -> None:
    """Through the client: literals (which aiohttp does not resolve) and names alike."""
    async with WebhookClient(networks(["127.0.0.2/32"]), 5) as client:
        with pytest.raises(AddressRefused):
            await client.post(f"http://{host}:9/", b"{}", {})


async def test_an_allowed_address_is_reached() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with WebhookClient(networks(["127.0.0.2/32"]), 5) as client:
            assert await client.post(f"http://127.0.0.2:{port}/", b"{}", {}) == (503, "7")
    finally:
        server.close()


# ------------------------------------------------------------------------------ signing, schedule


def test_signatures_verify_with_the_standard_webhooks_library() -> None:
    secret, previous = new_webhook_secret(), new_webhook_secret()
    delivery = Delivery.model_validate(
        {
            "delivery_id": uuid.uuid4(),
            "rule_id": 1,
            "destination_type": "webhook",
            "destination_config": {"url": "https://example.invalid/", "headers": {"x-team": "a"}},
            "event": {
                "event_id": uuid.uuid4(),
                "app_id": "shop",
                "event_type": "order",
                "payload": {"total": 1.5, "name": "ünïcode"},
                "received_at": datetime.now(UTC),
            },
        }
    )
    body = request_body(delivery)
    headers = request_headers(delivery, [secret, previous], body, datetime.now(UTC).timestamp())
    assert headers["webhook-id"] == str(delivery.delivery_id) and headers["x-team"] == "a"
    for key in (secret, previous):  # either secret verifies: receivers can rotate at their pace
        standardwebhooks.Webhook(key).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_webhook_secret()).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body + b" ", headers)


async def test_a_recorded_delivery_is_sent_as_its_model_would_be(pool: asyncpg.Pool) -> None:
    """The dispatcher builds the body from the message as stored (jsonb, which orders keys its own
    way) without validating it again: the same bytes as the model validated from it gives."""
    received = datetime(2026, 1, 1, 5, 0, 0, 120, tzinfo=timezone(timedelta(hours=2)))
    delivery = Delivery.model_validate(
        {
            "delivery_id": uuid.uuid4(),
            "rule_id": 3,
            "destination_type": "webhook",
            "destination_config": {"url": "https://example.invalid/", "headers": {"x-team": "a"}},
            "event": {
                "event_id": uuid.uuid4(),
                "app_id": "shop",
                "event_type": "order",
                "payload": {"zeta": [1.5, None, True], "a": {"big": 2**64 - 1, "small": -1e-7}, "é": "ü"},
                "metadata": {"ip_address": "::1", "correlation_id": "c-1", "source": "http"},
                "received_at": received,
                "occurred_at": received - timedelta(seconds=3),
            },
        }
    )
    message = await pool.fetchval("SELECT $1::jsonb", delivery.model_dump(mode="json"))
    assert list(message["event"]) != list(delivery.event.model_dump())  # jsonb's order, not the model's
    assert recorded_body(message) == request_body(Delivery.model_validate(message))
    older = {**message, "event": {k: v for k, v in message["event"].items() if k != "occurred_at_clamped"}}
    assert recorded_body(older) == request_body(Delivery.model_validate(message))  # validated: defaults


async def test_the_intake_records_what_the_router_wrote_and_dead_letters_the_rest(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """A delivery is recorded as its model dumps it (the dispatcher builds the body from that);
    what is not a webhook delivery of that exact shape, or what PostgreSQL refuses, is
    dead-lettered, each record alone; a record twice in a batch is recorded once."""

    def delivery(kind: str = "webhook") -> Delivery:
        return Delivery.model_validate(
            {
                "delivery_id": uuid.uuid4(),
                "rule_id": 7,
                "destination_type": kind,
                "destination_config": {"url": "https://example.invalid/", "table": "t"},
                "event": {
                    "event_id": uuid.uuid4(),
                    "app_id": "shop",
                    "event_type": "order",
                    "payload": {"a": [1.5, None, {"b": "é"}]},
                    "metadata": {"ip_address": "::1", "source": "http"},
                    "received_at": datetime.now(UTC),
                },
            }
        )

    good, second, table = delivery(), delivery(), delivery("database_table")
    marker = uuid.uuid4().hex
    extra = orjson.dumps({**orjson.loads(delivery().model_dump_json()), "marker": marker})
    nul = delivery()  # a valid delivery whose text PostgreSQL's jsonb refuses (\u0000)
    nul.event.payload["marker"] = marker + "\x00"
    refused = [b'{"not": "' + marker.encode() + b'"}', extra, table.model_dump_json().encode()]
    refused.append(nul.model_dump_json().encode())
    values = [good.model_dump_json().encode(), second.model_dump_json().encode()]
    # The batch brings the first delivery twice (a record replayed within one batch).
    records = [consumed("deliveries.webhook", v, n) for n, v in enumerate([*values, values[0], *refused])]
    await Intake(pool, producer, settings.topic("events.dlq")).write(records)
    rows = await pool.fetch(
        "SELECT delivery_id, message FROM deliveries WHERE delivery_id = ANY($1::uuid[])",
        [good.delivery_id, second.delivery_id, table.delivery_id, nul.delivery_id],
    )
    assert {r["delivery_id"]: r["message"] for r in rows} == {
        d.delivery_id: d.model_dump(mode="json") for d in (good, second)
    }

    def ours(found: list[Any]) -> list[Any]:
        return [r for r in found if marker.encode() in r.value or str(table.delivery_id).encode() in r.value]

    dead = ours(await consume_all(settings, "events.dlq", until=lambda rs: len(ours(rs)) >= 4))
    assert sorted(r.value for r in dead) == sorted(refused)
    assert {dict(r.headers)["error.stage"] for r in dead} == {b"webhooks"}


def test_retry_schedule_jitter_retry_after_and_exhaustion() -> None:
    rng = random.Random(7)
    schedule = [5.0, 300.0]
    delays = [retry_delay(1, schedule, None, 3600, rng) for _ in range(200)]
    assert all(d is not None and 4.0 <= d <= 6.0 for d in delays)
    assert len({round(d or 0, 3) for d in delays}) > 100  # jittered, not one value
    assert retry_delay(2, schedule, 42.0, 3600, rng) == 42.0
    assert retry_delay(1, schedule, 10**9, 3600, rng) == 3600
    assert retry_delay(3, schedule, None, 3600, rng) is None
    assert retry_delay(3, schedule, 1.0, 3600, rng) is None


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


# ------------------------------------------------------------------------------ a real receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


Reply = Callable[[Received], Awaitable[tuple[int, dict[str, str]]]]


@dataclass
class Receiver:
    """A small HTTP/1.1 server: records each request, answers what ``reply`` says."""

    host: str
    reply: Reply
    requests: list[Received] = field(default_factory=list)
    open_requests: int = 0
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_requests += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Received(path, headers, body)
            self.requests.append(request)
            status, extra = await self.reply(request)
            lines = [f"HTTP/1.1 {status} X", "content-length: 0", "connection: close"]
            lines += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_requests -= 1
            writer.close()


@asynccontextmanager
async def receiving(reply: Reply, host: str = WEBHOOK_RECEIVER_HOST) -> AsyncIterator[Receiver]:
    receiver = Receiver(host, reply)
    server = await asyncio.start_server(receiver.handle, host, 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()


def new_delivery(rule_id: int, app_id: str, url: str) -> Delivery:
    """A webhook delivery of a new event, as the router would make it."""
    return Delivery.model_validate(
        {
            "delivery_id": uuid.uuid4(),
            "rule_id": rule_id,
            "destination_type": "webhook",
            "destination_config": {"url": url},
            "event": {
                "event_id": uuid.uuid4(),
                "app_id": app_id,
                "event_type": "t",
                "payload": {},
                "received_at": datetime.now(UTC),
            },
        }
    )


async def ok(_: Received) -> tuple[int, dict[str, str]]:
    return 200, {}


async def webhook_rule(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    app: AppKey,
    url: str,
    limits: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A webhook rule for every event (``limits``: max_in_flight, max_per_second), applied by
    the worker when this returns."""
    config = {"url": url, **(limits or {})}
    body = rule_body(app, destination_type="webhook", destination_config=config, condition={}, **fields)
    response = await client.post("/api/routing-rules", json=body, headers=app.headers)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()["data"]
    assert rule["webhook_secret"].startswith("whsec_")
    await rule_applied(pipeline, rule)
    return rule


async def deliveries(client: httpx.AsyncClient, app: AppKey, event_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/events/{event_id}/deliveries", headers=app.headers)
    if response.status_code == 404:  # not stored yet
        return []
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def settled(
    client: httpx.AsyncClient, app: AppKey, event_id: str, count: int = 1
) -> list[dict[str, Any]]:
    """The event's deliveries once ``count`` of them are delivered or failed."""
    found: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal found
        found = await deliveries(client, app, event_id)
        return sum(d["status"] in ("delivered", "failed") for d in found) >= count

    await wait_until(done, 60, message=f"deliveries of {event_id} settled")
    return found


async def event_status(client: httpx.AsyncClient, app: AppKey, event_id: str) -> str:
    response = await client.get(f"/api/events/{event_id}", headers=app.headers)
    status: str = response.json()["data"]["status"]
    return status


async def test_signed_delivery_retried_with_the_same_id_until_2xx(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    async def flaky(request: Received) -> tuple[int, dict[str, str]]:
        return (500, {}) if len(receiver.requests) <= 2 else (200, {})

    async with receiving(flaky) as receiver:
        rule = await webhook_rule(pipeline, client, app, receiver.url("/hook"))
        event_id = await send(client, app, 10)
        (outcome,) = await settled(client, app, event_id)
    assert outcome["status"] == "delivered" and outcome["attempts"] == 3
    assert outcome["last_status_code"] == 200 and outcome["last_latency_ms"] > 0
    assert len(receiver.requests) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {outcome["delivery_id"]}
    for request in receiver.requests:
        payload = standardwebhooks.Webhook(rule["webhook_secret"]).verify(request.body, request.headers)
        assert payload["data"]["event_id"] == event_id and payload["type"] == "order"
    assert await event_status(client, app, event_id) == "processed"
    got = (await client.get(f"/api/routing-rules/{rule['rule_id']}", headers=app.headers)).json()["data"]
    assert "webhook_secret" not in got  # shown once, at creation


async def test_retry_after_is_honoured_and_exhaustion_fails_the_event(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    async def busy(_: Received) -> tuple[int, dict[str, str]]:
        return 503, {"retry-after": "2"}

    async with receiving(busy) as receiver:
        await webhook_rule(pipeline, client, app, receiver.url("/busy"))
        event_id = await send(client, app, 10)
        (outcome,) = await settled(client, app, event_id)
    assert outcome["status"] == "failed" and outcome["attempts"] == 4  # 1 + 3 retries
    assert outcome["last_status_code"] == 503 and outcome["last_error"] == "HTTP 503"
    assert len(receiver.requests) == 4
    assert await event_status(client, app, event_id) == "failed"
    # The schedule says 0.5 s, 1 s, 1 s; the receiver said 2 s each time, and was heard.
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= 1.9 for gap in gaps), gaps


async def test_410_disables_the_destination_until_the_rule_is_replaced(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    gone = True

    async def reply(_: Received) -> tuple[int, dict[str, str]]:
        return (410, {}) if gone else (200, {})

    async with receiving(reply) as receiver:
        rule = await webhook_rule(pipeline, client, app, receiver.url("/gone"))
        first = await send(client, app, 10)
        (outcome,) = await settled(client, app, first)
        assert outcome["status"] == "failed" and outcome["attempts"] == 1
        url = f"/api/routing-rules/{rule['rule_id']}"
        disabled = (await client.get(url, headers=app.headers)).json()["data"]
        assert disabled["destination_disabled_at"] and "410" in disabled["destination_disabled_reason"]

        second = await send(client, app, 10)
        (skipped,) = await settled(client, app, second)
        assert skipped["status"] == "failed" and "disabled" in skipped["last_error"]
        assert len(receiver.requests) == 1  # nothing more was sent to a dead endpoint

        gone = False
        body = rule_body(app, destination_type="webhook", destination_config={"url": receiver.url("/gone")})
        replaced = await client.put(url, json={**body, "condition": {}}, headers=app.headers)
        assert replaced.json()["data"]["destination_disabled_at"] is None
        assert replaced.json()["data"]["webhook_secret"] is None  # it keeps its secret
        again = await client.post(
            f"/api/events/{second}/deliveries/{skipped['delivery_id']}/redeliver", headers=app.headers
        )
        assert again.status_code == 202, again.text

        async def delivered() -> bool:
            return [d["status"] for d in await deliveries(client, app, second)] == ["delivered"]

        await wait_until(delivered, 30, message="redelivered")
        assert await event_status(client, app, second) == "processed"
        twice = await client.post(
            f"/api/events/{second}/deliveries/{skipped['delivery_id']}/redeliver", headers=app.headers
        )
        assert twice.status_code == 409
        trail = (await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)).json()["data"]
        redelivered = [e for e in trail["entries"] if e["action"] == "delivery.redeliver"]
        assert [e["changes"] for e in redelivered] == [
            {"event_id": second, "delivery_id": skipped["delivery_id"]}
        ]  # once: the refused second one changed nothing


async def test_a_hanging_endpoint_does_not_delay_a_healthy_one(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    release = asyncio.Event()

    async def reply(request: Received) -> tuple[int, dict[str, str]]:
        if request.path == "/hang":
            await release.wait()
        return 200, {}

    async with receiving(reply) as receiver:
        await webhook_rule(pipeline, client, app, receiver.url("/hang"))
        await webhook_rule(pipeline, client, app, receiver.url("/healthy"))
        sent = [await send(client, app, n) for n in range(12)]

        async def healthy_all_delivered() -> bool:
            return len(receiver.to("/healthy")) >= len(sent)

        # Well within the dispatcher's 15 s timeout: no healthy delivery waited behind a hanging one.
        await wait_until(healthy_all_delivered, 10, message="the healthy endpoint got every event")
        hanging = len(receiver.to("/hang"))
        assert 1 <= hanging <= pipeline.settings.webhook_concurrency_per_endpoint
        assert receiver.open_requests >= 1  # the hanging endpoint still holds its requests
        release.set()
        for event_id in sent:
            await settled(client, app, event_id, count=2)


async def test_ssrf_loopback_forms_and_redirects_never_reach_the_canary(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    canary_hits: list[str] = []

    async def canary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        canary_hits.append(str(writer.get_extra_info("peername")))
        writer.close()

    v4 = await asyncio.start_server(canary, "127.0.0.1", 0)
    port = v4.sockets[0].getsockname()[1]
    v6 = await asyncio.start_server(canary, "::1", port, family=socket.AF_INET6)

    async def redirect(_: Received) -> tuple[int, dict[str, str]]:
        return 302, {"location": f"http://127.0.0.1:{port}/"}

    try:
        async with receiving(redirect) as receiver:
            urls = [
                f"http://127.0.0.1:{port}/",
                f"http://[::1]:{port}/",
                f"http://[::ffff:127.0.0.1]:{port}/",
                f"http://2130706433:{port}/",
                f"http://localhost:{port}/",
                receiver.url("/redirect"),
            ]
            for url in urls:
                await webhook_rule(pipeline, client, app, url)
            event_id = await send(client, app, 10)
            outcomes = await settled(client, app, event_id, count=len(urls))
    finally:
        v4.close()
        v6.close()
    assert canary_hits == []
    assert all(o["status"] == "failed" for o in outcomes)
    refused = [o for o in outcomes if "may not connect" in (o["last_error"] or "")]
    assert len(refused) == 5 and all(o["attempts"] == 1 for o in refused)  # refused at once, not retried
    assert len(receiver.requests) == 4  # the redirect was answered, retried, and never followed


async def test_rotation_signs_with_both_secrets(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    async with receiving(ok) as receiver:
        rule = await webhook_rule(pipeline, client, app, receiver.url("/rotate"))
        rotated = await client.post(
            f"/api/routing-rules/{rule['rule_id']}/rotate-secret", headers=app.headers
        )
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["data"]["webhook_secret"]
        assert new_secret != rule["webhook_secret"]
        event_id = await send(client, app, 10)
        await settled(client, app, event_id)
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (rule["webhook_secret"], new_secret):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    queue_rule = await client.post("/api/routing-rules", json=rule_body(app), headers=app.headers)
    refused = await client.post(
        f"/api/routing-rules/{queue_rule.json()['data']['rule_id']}/rotate-secret", headers=app.headers
    )
    assert refused.status_code == 409


async def test_table_and_queue_deliveries_are_recorded(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    for kind, config in (("database_table", {"table": table}), ("queue", {"topic": f"q-{table}"})):
        body = rule_body(app, destination_type=kind, destination_config=config, condition={})
        created = await client.post("/api/routing-rules", json=body, headers=app.headers)
        assert created.status_code == 201
    await rule_applied(pipeline, created.json()["data"])
    event_id = await send(client, app, 10)
    outcomes = await settled(client, app, event_id, count=2)
    assert sorted((o["destination_type"], o["status"]) for o in outcomes) == [
        ("database_table", "delivered"),
        ("queue", "delivered"),
    ]
    assert await event_status(client, app, event_id) == "processed"
    assert datetime.now(UTC) - datetime.fromisoformat(outcomes[0]["delivered_at"]) < timedelta(minutes=5)


async def test_an_endpoint_failing_for_too_long_is_disabled(
    pool: asyncpg.Pool, app: AppKey, settings: Settings
) -> None:
    """The dispatcher runs the clock itself: with retries every 0.2 s (a schedule that outlasts the
    test) and webhook_disable_after_s of 1.5 s, a receiver that keeps failing makes it give up on
    its own, failing the delivery and disabling the destination; a success in between restarts it."""
    failures_left = 3

    async def reply(_: Received) -> tuple[int, dict[str, str]]:
        nonlocal failures_left
        failures_left -= 1
        return (500, {}) if failures_left != 0 else (200, {})  # 0: once, then failing for good

    async with (
        receiving(reply) as receiver,
        WebhookClient(networks(settings.webhook_allowed_networks), 5) as webhooks,
    ):
        url = receiver.url("/clock")
        fields = RuleFields.model_validate(
            rule_body(app, destination_type="webhook", destination_config={"url": url}, condition={})
        )
        async with pool.acquire() as conn:
            rule = await insert_rule(conn, fields)
        strict = settings.model_copy(
            update={"webhook_disable_after_s": 1.5, "webhook_retry_schedule_s": [0.2] * 100}
        )
        dispatcher = Dispatcher(pool, webhooks, strict)

        async def until_settled() -> tuple[str, int, list[Received]]:
            """A delivery attempted by the dispatcher each time it is due, as its claim loop
            would (without a message in the table, the pipeline's dispatcher never claims it),
            until it is delivered or failed, or 10 s passed: its status, attempts and requests."""
            delivery = new_delivery(rule.rule_id, app.app_id, url)
            await pool.execute(
                "INSERT INTO deliveries (delivery_id, app_id, event_id, rule_id, destination_type, status)"
                " VALUES ($1, $2, $3, $4, 'webhook', 'pending')",
                delivery.delivery_id,
                app.app_id,
                delivery.event.event_id,
                rule.rule_id,
            )
            before, deadline = len(receiver.requests), time.monotonic() + 10
            while True:
                row = await pool.fetchrow(
                    """SELECT status, attempts, extract(epoch FROM next_attempt_at - now()) AS due
                       FROM deliveries WHERE delivery_id = $1""",
                    delivery.delivery_id,
                )
                if row["status"] in ("delivered", "failed") or time.monotonic() > deadline:
                    return row["status"], row["attempts"], receiver.requests[before:]
                await asyncio.sleep(max(0.0, float(row["due"] or 0)))
                dispatcher.busy[rule.rule_id] = 1  # what claim() counts for each delivery it starts
                await dispatcher.deliver(rule.rule_id, row["attempts"], delivery.model_dump(mode="json"))

        async def failing_since() -> Any:
            return await pool.fetchval(
                "SELECT destination_failing_since FROM routing_rules WHERE rule_id = $1", rule.rule_id
            )

        status, attempts, _ = await until_settled()  # two failures, then a success
        assert (status, attempts) == ("delivered", 3)
        assert await failing_since() is None  # the success reset the clock

        status, attempts, requests = await until_settled()  # failing from now on
        reason = await pool.fetchval(
            "SELECT destination_disabled_reason FROM routing_rules WHERE rule_id = $1", rule.rule_id
        )
        assert status == "failed", (status, attempts)
        assert reason is not None and reason.startswith("failing without a success for 0:00:01"), reason
        # Counted from this delivery's first failure (not the earlier ones), by the dispatcher.
        assert attempts == len(requests) > 2 and requests[-1].at - requests[0].at >= 1.3, attempts

        status, attempts, requests = await until_settled()  # the destination is disabled
        assert (status, attempts, requests) == ("failed", 0, [])


def test_an_attempt_must_end_well_within_its_lease() -> None:
    assert Settings().webhook_timeout_s + 5 <= Settings().webhook_lease_s
    with pytest.raises(pydantic.ValidationError, match="webhook_lease_s"):
        Settings(webhook_timeout_s=40, webhook_lease_s=40)
    with pytest.raises(pydantic.ValidationError, match="webhook_lease_s"):
        Settings(webhook_timeout_s=10, webhook_lease_s=12)


async def test_an_attempt_has_one_deadline_however_slowly_the_receiver_drips(
    pool: asyncpg.Pool, app: AppKey, settings: Settings
) -> None:
    """A receiver that sends its answer a byte at a time never trips the HTTP client's timeouts,
    which are per read; the client's one deadline a request ends it, and its outcome is recorded, well
    within the delivery's lease: no other dispatcher can send it again meanwhile."""
    answer = b"x" * 20  # a byte every 0.25 s: 5 s in all, each byte well within a 1 s read timeout
    requests = 0

    async def dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\nconnection: close\r\n\r\n")
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.25)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(dripping, WEBHOOK_RECEIVER_HOST, 0)
    url = f"http://{WEBHOOK_RECEIVER_HOST}:{server.sockets[0].getsockname()[1]}/drip"
    fields = RuleFields.model_validate(
        rule_body(app, destination_type="webhook", destination_config={"url": url}, condition={})
    )
    async with pool.acquire() as conn:
        rule = await insert_rule(conn, fields)
    delivery = new_delivery(rule.rule_id, app.app_id, url)
    # Claimed for an hour, as if by this dispatcher: the pipeline's own dispatcher keeps away.
    await pool.execute(
        "INSERT INTO deliveries (delivery_id, app_id, event_id, rule_id, destination_type, status, message,"
        " next_attempt_at, claimed_until) VALUES ($1, $2, $3, $4, 'webhook', 'pending', $5, now(),"
        " now() + interval '1 hour')",
        delivery.delivery_id,
        app.app_id,
        delivery.event.event_id,
        rule.rule_id,
        delivery.model_dump(mode="json"),
    )
    strict = settings.model_copy(
        update={"webhook_timeout_s": 1.0, "webhook_lease_s": 6.0, "webhook_retry_schedule_s": [3600.0]}
    )
    try:
        async with WebhookClient(networks(strict.webhook_allowed_networks), 1.0) as client:
            dispatcher = Dispatcher(pool, client, strict)
            dispatcher.busy[rule.rule_id] = 1
            started = time.monotonic()
            await dispatcher.deliver(rule.rule_id, 0, delivery.model_dump(mode="json"))
            took = time.monotonic() - started
    finally:
        server.close()
    row = await pool.fetchrow(
        "SELECT status, attempts, last_error, claimed_until FROM deliveries WHERE delivery_id = $1",
        delivery.delivery_id,
    )
    assert took < strict.webhook_timeout_s + 1.5 < strict.webhook_lease_s, took
    assert row["status"] == "retrying" and row["attempts"] == 1, dict(row)
    assert row["last_error"] == "no complete answer within 1.0 s" and row["claimed_until"] is None
    assert requests == 1
