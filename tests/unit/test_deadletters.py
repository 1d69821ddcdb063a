"""What a dead letter holds: the event inside, whatever stage rejected it."""

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from schemas import EventEnvelope
from vdip.deadletters import event_in

EVENT = EventEnvelope(
    event_id=uuid.uuid4(),
    app_id="shop",
    event_type="order",
    payload={"total": 1},
    received_at=datetime.now(UTC),
)


@pytest.mark.parametrize(
    "value",
    [
        EVENT.model_dump_json().encode(),  # validation, routing
        orjson.dumps({"event": orjson.loads(EVENT.model_dump_json()), "status": "pending", "routing": {}}),
        orjson.dumps({"delivery_id": str(uuid.uuid4()), "event": orjson.loads(EVENT.model_dump_json())}),
    ],
    ids=["event", "routed event", "delivery"],
)
def test_the_event_of_each_kind_of_dead_letter(value: bytes) -> None:
    assert event_in(value, "shop") == EVENT


@pytest.mark.parametrize(
    "value",
    [b"{not json", b"[]", b'{"event": 1}', b'{"event": {"event_type": ""}}', b'{"app_id": "shop"}'],
)
def test_what_holds_no_valid_event_says_why(value: bytes) -> None:
    with pytest.raises(ValidationError):
        event_in(value, "shop")


def test_an_event_of_another_application_is_not_taken() -> None:
    with pytest.raises(ValueError, match="of application shop"):
        event_in(EVENT.model_dump_json().encode(), "other")
    with pytest.raises(ValueError, match="no value"):
        event_in(None, "shop")
