"""The event envelope: what it accepts, what it refuses, and its committed JSON Schema."""

import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address, IPv6Address
from random import Random

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.routes.ingest import build_envelope
from schemas import EventEnvelope, EventMetadata, IngestRequest
from schemas.events import content_hash, envelope_json
from schemas.export import SCHEMA_FILE, envelope_json_schema
from streams.claims import version_of
from streams.routing import parse_record


def envelope(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "app_id": "shop",
        "event_type": "order_created",
        "payload": {"total": 42, "items": [{"sku": "a"}]},
        "received_at": "2026-03-01T10:00:00+00:00",
    }
    base.update(overrides)
    return base


def test_committed_json_schema_is_current() -> None:
    assert SCHEMA_FILE.read_bytes() == envelope_json_schema(), (
        "schemas/event-envelope.schema.json is stale: run `python -m schemas.export`"
    )


def test_envelope_round_trips_and_defaults() -> None:
    event = EventEnvelope.model_validate(envelope())
    assert event.schema_version == 1
    assert event.metadata.source == "kafka"
    assert EventEnvelope.model_validate_json(event.model_dump_json()) == event


def test_received_at_is_normalised_to_utc() -> None:
    event = EventEnvelope.model_validate(envelope(received_at="2026-03-01T12:00:00+02:00"))
    assert event.received_at == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert event.received_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"received_at": "2026-03-01T10:00:00"}, "received_at"),  # naive: ambiguous
        ({"event_type": ""}, "event_type"),
        ({"event_type": "x" * 101}, "event_type"),
        ({"payload": [1, 2]}, "payload"),
        ({"app_id": "has space"}, "app_id"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"unexpected": 1}, "unexpected"),
        ({"schema_version": 2}, "schema_version"),
        ({"metadata": {"source": "ftp"}}, "metadata.source"),
    ],
)
def test_invalid_envelopes_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EventEnvelope.model_validate(envelope(**overrides))
    fields = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert field in fields


def test_required_fields() -> None:
    for name in ("event_id", "app_id", "event_type", "payload", "received_at"):
        data = envelope()
        del data[name]
        with pytest.raises(ValidationError):
            EventEnvelope.model_validate(data)


def test_json_schema_agrees_with_the_model_on_samples() -> None:
    schema = orjson.loads(SCHEMA_FILE.read_bytes())
    good = envelope(metadata={"source": "http", "ip_address": "10.0.0.1", "correlation_id": "c"})
    jsonschema.validate(good, schema)
    EventEnvelope.model_validate(good)
    for bad in (envelope(payload="text"), envelope(extra=True), envelope(event_type="")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ValidationError):
            EventEnvelope.model_validate(bad)


# What PostgreSQL's jsonb stores unchanged: no NUL in strings, integers within 64 bits.
texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


@given(
    payload=st.dictionaries(texts, json_values, max_size=6),
    offset=st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_any_json_object_payload_round_trips(payload: dict[str, object], offset: int) -> None:
    received = datetime(2026, 1, 1, tzinfo=timezone(timedelta(minutes=offset)))
    event = EventEnvelope.model_validate(envelope(payload=payload, received_at=received.isoformat()))
    again = EventEnvelope.model_validate_json(event.model_dump_json())
    assert again.payload == payload
    assert again.received_at == received


@given(
    payload=st.dictionaries(texts, json_values, max_size=6),
    offset=st.integers(min_value=-12 * 60, max_value=14 * 60),
    micros=st.integers(min_value=0, max_value=999_999),
    address=st.none() | st.ip_addresses().map(str),
    occurred=st.booleans(),
)
def test_envelope_json_writes_what_pydantic_writes(
    payload: dict[str, object], offset: int, micros: int, address: str | None, occurred: bool
) -> None:
    received = datetime(2026, 1, 1, 0, 0, 0, micros, tzinfo=timezone(timedelta(minutes=offset)))
    event = EventEnvelope.model_validate(
        envelope(
            payload=payload,
            received_at=received.isoformat(),
            occurred_at=received.isoformat() if occurred else None,
            metadata={"ip_address": address, "user_agent": "ua \u2028", "source": "http"},
        )
    )
    assert envelope_json(event) == event.model_dump_json().encode()
    built = build_envelope(
        "shop", IngestRequest(event_type="t", payload=payload), event.metadata, received, None, 3
    )
    assert envelope_json(built) == built.model_dump_json().encode()


def test_ingest_request_strips_event_type_and_defaults_payload() -> None:
    request = IngestRequest.model_validate({"event_type": "  signup  "})
    assert request.event_type == "signup"
    assert request.payload == {}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_anywhere_in_the_payload(number: float) -> None:
    with pytest.raises(ValidationError, match="NaN and Infinity"):
        EventEnvelope.model_validate(envelope(payload={"a": [{"b": number}]}))
    with pytest.raises(ValidationError, match="NaN and Infinity"):
        IngestRequest.model_validate({"event_type": "t", "payload": {"x": number}})


@pytest.mark.parametrize("payload", [{"a": "\ud800"}, {"\udfff": 1}, {"a": [{"b": "x\udbffy"}]}])
def test_lone_surrogates_are_refused(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="lone surrogates"):
        IngestRequest.model_validate({"event_type": "t", "payload": payload})
    assert IngestRequest.model_validate({"event_type": "t", "payload": {"ok": "é🙂"}}).payload == {
        "ok": "é🙂"
    }


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused(number: int) -> None:
    with pytest.raises(ValidationError, match="integers must be between"):
        IngestRequest.model_validate({"event_type": "t", "payload": {"n": [number]}})
    IngestRequest.model_validate({"event_type": "t", "payload": {"n": [2**64 - 1, -(2**63)]}})


class Label(StrEnum):
    BAD = "a\x00b"


class Count(IntEnum):
    HUGE = 2**70


class Ratio(float):
    pass


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"k": Label.BAD}, "NUL"),
        ({Label.BAD: 1}, "NUL"),
        ({"k": [Count.HUGE]}, "integers must be between"),
        ({"k": {"r": Ratio("nan")}}, "NaN and Infinity"),
        ({"k": ("ok", Label.BAD)}, "NUL"),
    ],
)
def test_payloads_built_in_python_from_subclasses_are_checked_too(
    payload: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        IngestRequest(event_type="t", payload=payload)


@given(address=st.ip_addresses())
def test_ip_addresses_are_kept_as_ipaddress_writes_them(address: IPv4Address | IPv6Address) -> None:
    assert EventMetadata(ip_address=str(address)).ip_address == str(address)
    assert EventMetadata(ip_address=address.exploded).ip_address == str(address)


@given(text=st.text(alphabet="0123456789.:abcdefABCDEF% x", max_size=45))
def test_an_ip_address_is_valid_exactly_when_ipaddress_reads_it(text: str) -> None:
    try:
        expected: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    try:
        found: str | None = EventMetadata(ip_address=text).ip_address
    except ValidationError:
        found = None
    assert found == expected


def reordered(value: object, random: Random) -> object:
    """``value`` with the keys of every object in another order."""
    if isinstance(value, dict):
        keys = list(value)
        random.shuffle(keys)
        return {key: reordered(value[key], random) for key in keys}
    if isinstance(value, list):
        return [reordered(item, random) for item in value]
    return value


@given(payload=st.dictionaries(texts, json_values, max_size=6), random=st.randoms(use_true_random=False))
def test_the_gateway_and_the_router_hash_a_version_alike(payload: dict[str, object], random: Random) -> None:
    """A client's event as the gateway reads it (keys in any order), as it travels in a record,
    and as a direct producer writes it (keys in another order) hash the same: the 409 at the
    gateway and the router's claim compare the same versions."""
    body = json.dumps({"event_type": " order ", "payload": reordered(payload, random)})
    item = IngestRequest.model_validate(json.loads(body))  # as both ways into the gateway read it
    at_the_gateway = content_hash(item.event_type, item.payload)
    sent = build_envelope("shop", item, EventMetadata(), datetime.now(UTC), None, None)
    direct = {**orjson.loads(sent.model_dump_json()), "payload": reordered(payload, random)}
    record = b"[" + sent.model_dump_json().encode() + b"," + orjson.dumps(direct) + b"]"
    routed = [version_of(event) for _, event in parse_record(record) if isinstance(event, EventEnvelope)]
    assert [v.content_hash for v in routed] == [at_the_gateway, at_the_gateway]
    assert at_the_gateway == content_hash("order", payload)
