"""What a replay does with each match (``vdip.replay.plan``) and how a job reads (``JobView``)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas import EventEnvelope
from schemas.jobs import JobView
from schemas.rules import RoutingRule
from sinks.replay import active_rules, matches, plan

NOW = datetime(2026, 12, 1, tzinfo=UTC)
STATUSES = [None, "pending", "retrying", "delivered", "failed"]
KINDS = {
    "queue": {"topic": "q"},
    "webhook": {"url": "https://example.com/h"},
    "database_table": {"table": "t"},
}


def rule(rule_id: int, kind: str, **fields: Any) -> RoutingRule:
    return RoutingRule.model_validate(
        {
            "rule_id": rule_id,
            "app_id": "shop",
            "rule_name": f"r{rule_id}",
            "condition": {},
            "destination_type": kind,
            "destination_config": KINDS[kind],
            "created_at": NOW,
            "updated_at": NOW,
            **fields,
        }
    )


def event(n: int) -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid.uuid4(), app_id="shop", event_type="order", payload={"n": n}, received_at=NOW
    )


RULES = [rule(1, "queue"), rule(2, "webhook"), rule(3, "database_table", condition={"payload.n": {"$gt": 0}})]


def test_each_matching_rule_gives_the_routers_delivery() -> None:
    found = matches([event(0), event(1)], active_rules(RULES, None), NOW)
    assert [(m.event.payload["n"], m.rule.rule_id) for m in found] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
    assert [m.rule.rule_id for m in matches([event(1)], active_rules(RULES, [3, 9]), NOW)] == [3]
    inactive = [rule(4, "queue", is_active=False)]
    assert matches([event(1)], active_rules(inactive, None), NOW) == []


@given(st.lists(st.sampled_from(STATUSES), min_size=3, max_size=3), st.booleans())
def test_only_what_was_never_made_is_sent_unless_forced_and_nothing_under_way_ever(
    statuses: list[str | None], force: bool
) -> None:
    found = matches([event(1)], active_rules(RULES, None), NOW)
    known = {m.delivery_id: s for m, s in zip(found, statuses, strict=True) if s is not None}
    made = plan(found, known, force)
    sent = {m.rule.rule_id for m in made.sends}
    requeued = {uuid for uuid, _ in made.requeues}
    for match, status in zip(found, statuses, strict=True):
        again = status is None or (force and status in ("delivered", "failed"))
        if match.rule.destination_type == "webhook" and status is not None:
            assert (match.delivery_id in requeued) == again
        else:
            assert (match.rule.rule_id in sent) == again
    assert made.sent + made.skipped == 3
    assert [row[3] for row in made.queue_rows] == ([1] if 1 in sent else [])


def test_a_job_reads_as_percent_and_time_left() -> None:
    started = NOW
    row = {
        "job_id": uuid.uuid4(),
        "app_id": "shop",
        "kind": "replay",
        "params": {"start": NOW - timedelta(days=1), "end": NOW},
        "state": "running",
        "total": 1000,
        "scanned": 250,
        "sent": 10,
        "skipped": 0,
        "cursor_at": None,
        "cursor_id": None,
        "error": None,
        "created_at": started,
        "started_at": started,
        "updated_at": started + timedelta(seconds=10),
        "finished_at": None,
    }
    view = JobView.of(row)
    assert (view.percent, view.eta_s) == (25.0, 30.0)
    assert JobView.of({**row, "state": "done", "scanned": 990}).percent == 100.0
    assert JobView.of({**row, "scanned": 1200}).percent == 100.0
    assert JobView.of({**row, "total": 0, "scanned": 0}).percent == 0.0
