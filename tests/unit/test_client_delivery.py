"""The delivery contract of vdip_client without I/O: ids, Retry-After, backoff, what an answer means."""

import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from vdip_client import Conflict, Event, Forbidden, Invalid, Unauthorized, uuid7
from vdip_client._delivery import Backoff, outcome_of, retry_after_s


def answer(
    status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, json=body or {"success": False, "message": "m", "errors": []}, headers=headers
    )


def test_uuid7_has_its_version_variant_and_time_order() -> None:
    ids = [uuid7() for _ in range(1000)]
    assert {i.version for i in ids} == {7} and {i.variant for i in ids} == {uuid.RFC_4122}
    assert len(set(ids)) == 1000
    assert uuid7(1_000) < uuid7(2_000)  # milliseconds first
    assert abs((ids[0].int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert retry_after_s(answer(429, headers={"Retry-After": "3"})) == 3.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (retry_after_s(answer(503, headers={"Retry-After": later})) or 0) <= 30
    assert retry_after_s(answer(503)) is None
    assert retry_after_s(answer(503, headers={"Retry-After": "soon"})) is None


def test_backoff_is_jittered_exponential_and_never_shorter_than_retry_after() -> None:
    backoff = Backoff(base_s=0.2, cap_s=30)
    waits = [backoff.next_wait(None) for _ in range(12)]
    assert all(0 <= w <= min(30, 0.2 * 2 ** (n + 1)) for n, w in enumerate(waits))
    assert len(set(waits)) > 1
    assert all(5 <= Backoff().next_wait(5) <= 6 for _ in range(100))


EVENTS = [Event("e", {"n": n}) for n in range(3)]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_overload_and_server_errors_retry_every_event_with_the_same_ids(status: int) -> None:
    outcome = outcome_of(EVENTS, answer(status, headers={"Retry-After": "2"}))
    assert outcome.retry == EVENTS and outcome.wait_s == 2 and outcome.error is None


@pytest.mark.parametrize(
    ("status", "kind"), [(401, Unauthorized), (403, Forbidden), (409, Conflict), (422, Invalid)]
)
def test_refusals_a_retry_cannot_change_are_typed_errors(status: int, kind: type[Exception]) -> None:
    outcome = outcome_of(EVENTS, answer(status))
    assert isinstance(outcome.error, kind) and outcome.failed == EVENTS and outcome.retry == []


def test_a_partial_answer_retries_what_kafka_refused_and_reports_the_invalid() -> None:
    results = [
        {"index": 0, "status": "accepted", "errors": []},
        {"index": 1, "status": "rejected", "errors": [{"field": "kafka", "reason": "timeout"}]},
        {
            "index": 2,
            "status": "rejected",
            "errors": [{"field": "body.events.2.event_type", "reason": "bad"}],
        },
    ]
    outcome = outcome_of(
        EVENTS, answer(207, {"success": False, "message": "1 of 3", "data": {"results": results}})
    )
    assert outcome.retry == [EVENTS[1]] and outcome.failed == [EVENTS[2]]
    assert isinstance(outcome.error, Invalid) and outcome.error.errors[0]["reason"] == "bad"
    assert outcome_of(EVENTS, answer(202)).retry == []
