"""The gateway's pure logic: event ids, client time, client address, limits, rate limiting."""

import ipaddress
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.limits import Limits, check_event, json_shape
from gateway.quotas import LocalBucket
from gateway.routes.ingest import build_envelope, clamp_occurred_at, client_ip, event_id_for
from schemas import EventEnvelope, EventMetadata, EventSource, IngestRequest
from vdip.applications import Application, Quota
from vdip.settings import Settings

RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_event_ids() -> None:
    given_id = uuid.uuid4()
    assert event_id_for("a", given_id, "key", None) == given_id
    keyed = event_id_for("a", None, "key", None)
    assert keyed == event_id_for("a", None, "key", None)
    assert keyed != event_id_for("b", None, "key", None)  # scoped per application
    assert event_id_for("a", None, "key", 0) != event_id_for("a", None, "key", 1)  # per batch item
    assert event_id_for("a", None, "key", 0) != keyed
    fresh = event_id_for("a", None, None, None)
    assert fresh.version == 7 and fresh != event_id_for("a", None, None, None)


@pytest.mark.parametrize(
    ("occurred", "expected", "clamped"),
    [
        (None, None, False),
        (RECEIVED, RECEIVED, False),
        (RECEIVED + timedelta(minutes=1), RECEIVED + timedelta(minutes=1), False),
        (RECEIVED + timedelta(minutes=1, microseconds=1), RECEIVED + timedelta(minutes=1), True),
        (RECEIVED + timedelta(days=400), RECEIVED + timedelta(minutes=1), True),
        (RECEIVED - timedelta(days=30), RECEIVED - timedelta(days=30), False),
        (RECEIVED - timedelta(days=30, seconds=1), RECEIVED - timedelta(days=30), True),
    ],
)
def test_occurred_at_clamping(occurred: datetime | None, expected: datetime | None, clamped: bool) -> None:
    assert clamp_occurred_at(occurred, RECEIVED) == (expected, clamped)


@given(st.datetimes(timezones=st.just(UTC)))
def test_clamped_time_is_always_within_bounds(occurred: datetime) -> None:
    value, clamped = clamp_occurred_at(occurred, RECEIVED)
    assert value is not None
    assert RECEIVED - timedelta(days=30) <= value <= RECEIVED + timedelta(minutes=1)
    assert clamped == (value != occurred)


TRUSTED = ["10.0.0.0/8", "127.0.0.1/32"]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, 10.9.9.9", "198.51.100.1"),  # skips trusted hops from the right
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # spoofed left part ignored
        ("10.1.2.3", "10.2.2.2, 10.3.3.3", "10.2.2.2"),  # all trusted: the leftmost
        ("10.1.2.3", "not-an-ip", "10.1.2.3"),
        ("10.1.2.3", None, "10.1.2.3"),
        ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
        (None, "1.2.3.4", None),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, expected: str | None) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=6))
def test_client_ip_is_never_a_trusted_proxy_when_an_untrusted_hop_exists(hops: list[str]) -> None:
    result = client_ip("10.0.0.1", ", ".join(hops), TRUSTED)
    untrusted = [
        h for h in hops if not any(ipaddress.ip_address(h) in ipaddress.ip_network(n) for n in TRUSTED)
    ]
    assert result == (untrusted[-1] if untrusted else hops[0])


def shape_reference(value: Any) -> tuple[int, int]:
    if isinstance(value, dict):
        children = [shape_reference(v) for v in value.values()]
        return 1 + max((d for d, _ in children), default=0), len(value) + sum(k for _, k in children)
    if isinstance(value, list):
        children = [shape_reference(v) for v in value]
        return 1 + max((d for d, _ in children), default=0), sum(k for _, k in children)
    return 0, 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=40,
)


@given(json_values)
def test_json_shape_matches_a_recursive_definition(value: Any) -> None:
    assert json_shape(value) == shape_reference(value)


def test_json_shape_handles_nesting_beyond_the_recursion_limit() -> None:
    value: Any = 1
    for _ in range(10_000):
        value = [value]
    assert json_shape({"deep": value}) == (10_001, 1)


NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(
    max_event_bytes=100, max_json_depth=3, max_json_keys=5, event_type_pattern=re.compile(r"^[a-z_]{1,20}$")
)


@pytest.mark.parametrize(
    ("event_type", "payload", "reason"),
    [
        ("Bad Type", {}, "must match"),
        ("ok", {"x": "y" * 200}, "bytes serialized"),
        ("ok", {"a": {"b": {"c": {"d": 1}}}}, "nests 4 levels"),
        ("ok", {str(i): i for i in range(6)}, "has 6 keys"),
    ],
)
def test_each_limit_names_field_and_reason(event_type: str, payload: dict[str, Any], reason: str) -> None:
    problems = check_event(event_type, payload, LIMITS, "body.events.2")
    assert len(problems) == 1
    assert problems[0].field.startswith("body.events.2.")
    assert reason in problems[0].reason


def test_events_within_limits_pass() -> None:
    assert check_event("ok", {"a": {"b": {"c": 1}}, "d": 2}, LIMITS) == []
    assert len(orjson.dumps({"x": "y" * 80})) <= 100
    assert check_event("ok", {"x": "y" * 80}, LIMITS) == []


def test_default_event_type_pattern() -> None:
    pattern = Limits.from_settings(Settings()).event_type_pattern
    for good in ("signup", "order.created", "Checkout:Step-2", "a b", "x" * 100):
        assert pattern.fullmatch(good), good
    for bad in ("", " lead", "x" * 101, "tab\there", "émoji🙂", "new\nline"):
        assert not pattern.fullmatch(bad), bad


def test_an_application_has_its_own_quota_or_a_share_of_the_capacity() -> None:
    settings = Settings(ingest_capacity_events_per_s=3000, app_quota_share=0.5)
    assert settings.default_quota_events_per_s == 1500
    app = Application("shop", "Shop", None, True, NOW, NOW)
    assert app.quota(1500, 500) == Quota(1500, 1500, default=True)  # a second's worth
    assert app.quota(100, 500) == Quota(100, 500, default=True)  # at least a whole batch
    own = Application("shop", "Shop", None, True, NOW, NOW, quota_events_per_s=10)
    assert own.quota(1500, 500) == Quota(10, 500, default=False)
    both = Application("shop", "Shop", None, True, NOW, NOW, quota_events_per_s=10, quota_burst=3)
    assert both.quota(1500, 500) == Quota(10, 3, default=False)


def test_the_local_bucket_refills_at_the_quota_up_to_the_burst() -> None:
    quota = Quota(events_per_s=10, burst=5, default=False)
    bucket = LocalBucket(tokens=5, at=0.0)
    assert bucket.take(quota, 5, 0.0) is None
    assert bucket.take(quota, 1, 0.0) == pytest.approx(0.1)  # one token comes in a tenth of a second
    assert bucket.take(quota, 2, 0.1) == pytest.approx(0.1)  # one came, two are needed
    assert bucket.take(quota, 2, 0.2) is None
    assert bucket.take(quota, 5, 100.0) is None  # never more than the burst
    assert bucket.take(quota, 1, 100.0) is not None


def test_events_go_to_kafka_in_as_few_records_as_fit() -> None:
    from schemas.records import batch_records

    events = [orjson.dumps({"n": n, "pad": "x" * 40}) for n in range(10)]
    assert batch_records(events[:1]) == [(events[0], 1)]  # one event: its envelope, as sent alone
    (whole,) = batch_records(events)
    assert whole == (orjson.dumps([orjson.loads(e) for e in events]), 10)
    split = batch_records(events, limit=len(events[0]) * 3 + 4)  # three a record
    assert [count for _, count in split] == [3, 3, 3, 1]
    assert [e for value, _ in split[:3] for e in orjson.loads(value)] + [orjson.loads(split[3][0])] == [
        orjson.loads(e) for e in events
    ]
    assert all(len(value) <= len(events[0]) * 3 + 4 for value, _ in split)


def test_the_envelope_built_without_validation_is_the_validated_one() -> None:
    item = IngestRequest.model_validate(
        {
            "event_type": " order ",
            "payload": {"a": [1, {"b": None}]},
            "occurred_at": "2026-03-01T14:00:00+02:00",
        }
    )
    metadata = EventMetadata(
        ip_address="10.0.0.1", user_agent="ua", correlation_id="c", source=EventSource.HTTP
    )
    built = build_envelope("app", item, metadata, RECEIVED + timedelta(hours=-2), "key", 3)
    validated = EventEnvelope.model_validate_json(built.model_dump_json())
    assert built.model_dump_json() == validated.model_dump_json()
    assert (built.event_type, built.occurred_at, built.occurred_at_clamped) == (
        "order",
        RECEIVED - timedelta(hours=2) + timedelta(minutes=1),
        True,
    )
