"""The router's pure logic: parsing records of `events` and routing valid events."""

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from schemas import EventEnvelope, EventStatus
from streams.routing import parse_envelope, rejection_reason, route


def record(**overrides: object) -> bytes:
    data: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "app_id": "shop",
        "event_type": "viewed",
        "payload": {},
        "received_at": "2026-01-01T00:00:00Z",
    }
    data.update(overrides)
    return orjson.dumps(data)


def test_parse_valid_record() -> None:
    event = parse_envelope(record())
    assert isinstance(event, EventEnvelope)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "should be an object"),
        (None, "<record>"),
        (record(payload=3), "payload"),
        (record(received_at="yesterday"), "received_at"),
    ],
)
def test_rejections_say_why(value: bytes | None, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_envelope(value)
    reason = rejection_reason(caught.value)
    assert expected in reason
    assert len(reason) <= 1000


def test_route_without_rules_marks_processed() -> None:
    event = parse_envelope(record())
    now = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    routed = route(event, now)
    assert routed.event == event
    assert routed.status == EventStatus.PROCESSED
    assert routed.routing.matched_rules == []
    assert routed.routing.routed_at == now
