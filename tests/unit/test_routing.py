"""The router's pure logic: parsing records of `events` and routing valid events."""

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas import EventEnvelope, EventStatus, RoutedEvent
from schemas.records import rejection_reason
from schemas.rules import AppRules, Delivery, RoutingRule, Suppression, suppression_hash
from streams.routing import (
    CompiledRule,
    compile_rules,
    is_suppressed,
    parse_app_rules,
    parse_envelope,
    route_record,
    suppressed_by,
)
from streams.rulebook import RuleBook, RulesUnreadable
from vdip.settings import Settings


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


def route(
    value: bytes, rules: list[CompiledRule], now: datetime | None = None
) -> tuple[RoutedEvent, list[Delivery]]:
    """Route one record; its outputs read back through the schemas of their topics."""
    (routing,) = route_record(value, lambda app_id: rules, now)
    assert routing.outcome == "routed" and routing.routed is not None and routing.rejection is None
    deliveries = [Delivery.model_validate_json(value) for _, value in routing.deliveries]
    assert [rule.rule_id for rule, _ in routing.deliveries] == [d.rule_id for d in deliveries]
    return RoutedEvent.model_validate_json(routing.routed), deliveries


def test_route_without_rules_marks_processed() -> None:
    value = record()
    event = parse_envelope(value)
    now = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    routed, deliveries = route(value, [], now)
    assert routed.event == event
    assert routed.status == EventStatus.PROCESSED
    assert (routed.routing.rules_evaluated, routed.routing.matched_rules) == (0, [])
    assert routed.routing.routed_at == now
    assert deliveries == []


def rule(rule_id: int, **fields: Any) -> RoutingRule:
    base: dict[str, Any] = {
        "rule_id": rule_id,
        "app_id": "shop",
        "rule_name": f"r{rule_id}",
        "destination_type": "queue",
        "destination_config": {"topic": f"q{rule_id}"},
        "created_at": NOW,
        "updated_at": NOW,
    }
    base.update(fields)
    return RoutingRule.model_validate(base)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_every_matching_active_rule_fires_in_priority_order() -> None:
    value = record(event_type="order", payload={"total": 80})
    event = parse_envelope(value)
    rules = compile_rules(
        [
            rule(1, condition={"total": {"$gt": 50}}),
            rule(2, condition={"total": {"$gt": 50}}, priority=10),
            rule(3, condition={"total": {"$gt": 100}}),  # no match
            rule(4, condition={}, is_active=False),  # inactive
            rule(5, event_type_filter="refund"),  # another type
            rule(6, event_type_filter="order", priority=10),
        ]
    )
    routed, deliveries = route(value, rules)
    assert routed.event == event
    assert routed.routing.matched_rules == [2, 6, 1]  # priority desc, then rule_id
    assert routed.routing.rules_evaluated == 4  # 1, 2, 3, 6
    assert routed.status == EventStatus.PROCESSED  # queues only: delivered once produced
    assert [d.destination_config["topic"] for d in deliveries] == ["q2", "q6", "q1"]
    assert all(d.event == event for d in deliveries)
    assert [(d.rule_id, d.destination_type) for d in deliveries] == [
        (ref.rule_id, ref.destination_type) for ref in routed.routing.deliveries
    ]
    assert [d.delivery_id for d in deliveries] == [ref.delivery_id for ref in routed.routing.deliveries]
    again = route(value, rules)[1]
    assert [d.delivery_id for d in again] == [d.delivery_id for d in deliveries]  # stable: dedupable
    assert len({d.delivery_id for d in deliveries}) == 3


def test_webhook_or_table_delivery_leaves_the_event_pending() -> None:
    rules = compile_rules(
        [rule(1), rule(2, destination_type="webhook", destination_config={"url": "https://x.test/h"})]
    )
    routed, deliveries = route(record(), rules)
    assert routed.status == EventStatus.PENDING
    assert [d.destination_type for d in deliveries] == ["queue", "webhook"]


def test_seed_spellings_of_destination_settings() -> None:
    assert rule(1, destination_config={"queue_name": "orders"}).destination_config == {"topic": "orders"}
    table = rule(2, destination_type="database_table", destination_config={"table_name": "orders"})
    assert table.destination_config == {"table": "orders"}


def test_rule_sets_round_trip_through_the_topic_format() -> None:
    rules = [rule(1, condition={"a": 1}), rule(2)]
    suppressions = [Suppression(path="payload.user", value_hashes=[suppression_hash("payload.user", "u1")])]
    rule_set = AppRules(app_id="shop", rules=rules, suppressions=suppressions)
    assert parse_app_rules(rule_set.model_dump_json().encode()) == rule_set
    assert parse_app_rules(b'{"app_id": "shop", "rules": []}') == AppRules(app_id="shop", rules=[])
    assert parse_app_rules(None) is None


def test_a_suppressed_value_is_found_by_its_hash_at_its_path_only() -> None:
    def event(payload: dict[str, Any]) -> EventEnvelope:
        return EventEnvelope(
            event_id=uuid.uuid4(),
            app_id="shop",
            event_type="t",
            payload=payload,
            received_at=datetime.now(UTC),
        )

    by = suppressed_by(
        [
            Suppression(path="payload.user.id", value_hashes=[suppression_hash("payload.user.id", "u1")]),
            Suppression(path="payload.n", value_hashes=[suppression_hash("payload.n", 7)]),
        ]
    )
    assert is_suppressed(event({"user": {"id": "u1"}}), by)
    assert is_suppressed(event({"n": 7, "user": "x"}), by)
    for kept in (
        {"user": {"id": "u2"}},
        {"id": "u1"},
        {"user": "u1"},
        {"n": "7"},
        {"n": 7.5},
        {"n": True},
        {},
    ):
        assert not is_suppressed(event(kept), by), kept
    assert suppression_hash("payload.n", 7) != suppression_hash("payload.m", 7)
    assert suppression_hash("payload.n", 7) != suppression_hash("payload.n", "7")


def test_an_event_is_routed_as_normalised_by_its_schema() -> None:
    """A direct producer's envelope travels on as the schema reads it (times in UTC, defaults)."""
    value = record(received_at="2026-01-01T02:00:00+02:00", payload={"n": 1})
    routed, _ = route(value, compile_rules([rule(1)]))
    embedded = orjson.loads(route_record(value, lambda app_id: [], NOW)[0].routed or b"")["event"]
    assert embedded["received_at"] == "2026-01-01T00:00:00Z"
    assert embedded["metadata"] == {
        "ip_address": None,
        "user_agent": None,
        "correlation_id": None,
        "source": "kafka",
    }
    assert routed.event.received_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_invalid_records_and_failing_rules_are_rejected_with_a_stage() -> None:
    (invalid,) = route_record(b"{not json", lambda app_id: [])
    assert (invalid.outcome, invalid.routed, invalid.rejection and invalid.rejection[0]) == (
        "invalid",
        None,
        "validation",
    )

    def unreadable(app_id: str) -> list[CompiledRule]:
        raise ValueError(f"rules of {app_id} unreadable")

    (failed,) = route_record(record(), unreadable)
    assert failed.outcome == "failed" and failed.rejection is not None
    assert failed.rejection == ("routing", "ValueError: rules of shop unreadable")
    stored = RoutedEvent.model_validate_json(failed.routed or b"")
    assert (
        stored.status == EventStatus.FAILED and stored.routing.error == "ValueError: rules of shop unreadable"
    )


def test_a_rule_set_holding_another_applications_rule_is_unreadable() -> None:
    book = RuleBook(Settings(kafka_bootstrap="127.0.0.1:9"), "routing-rules")  # apply() needs no broker
    book.apply(b"shop", AppRules(app_id="shop", rules=[rule(1)]).model_dump_json().encode())
    assert [r.rule.rule_id for r in book.rules_for("shop")] == [1]
    book.apply(
        b"shop", AppRules(app_id="shop", rules=[rule(1), rule(2, app_id="other")]).model_dump_json().encode()
    )
    with pytest.raises(RulesUnreadable):
        book.rules_for("shop")


def test_a_batch_record_routes_each_event_and_rejects_each_invalid_one_alone() -> None:
    good = [orjson.loads(record(payload={"n": n})) for n in range(3)]
    bad = {"event_id": "not-a-uuid", "app_id": "shop"}
    value = orjson.dumps([good[0], bad, good[1], good[2]])
    routings = route_record(value, lambda app_id: compile_rules([rule(1)]), NOW)
    assert [(r.outcome, r.index) for r in routings] == [
        ("routed", 0),
        ("invalid", 1),
        ("routed", 2),
        ("routed", 3),
    ]
    assert routings[1].value == orjson.dumps(bad) and routings[1].rejection is not None
    assert "event_id" in routings[1].rejection[1]
    stored = [RoutedEvent.model_validate_json(r.routed or b"").event.payload for r in routings if r.routed]
    assert stored == [{"n": 0}, {"n": 1}, {"n": 2}]
    all_valid = route_record(orjson.dumps(good), lambda app_id: [], NOW)
    assert [(r.outcome, r.index) for r in all_valid] == [("routed", 0), ("routed", 1), ("routed", 2)]


@pytest.mark.parametrize(
    ("value", "reason"), [(b"[]", "an empty batch"), (b"[{", "Invalid JSON"), (b"[1, 2]", "should be")]
)
def test_a_batch_record_that_holds_no_event_is_rejected(value: bytes, reason: str) -> None:
    routings = route_record(value, lambda app_id: [], NOW)
    assert all(r.outcome == "invalid" and r.rejection and reason in r.rejection[1] for r in routings)
    assert routings


def test_an_event_of_a_batch_whose_routing_fails_is_dead_lettered_alone() -> None:
    events = [orjson.loads(record()) for _ in range(2)]

    def unreadable(app_id: str) -> list[CompiledRule]:
        raise ValueError("unreadable")

    routings = route_record(orjson.dumps(events), unreadable, NOW)
    assert [(r.outcome, r.index) for r in routings] == [("failed", 0), ("failed", 1)]
    assert [orjson.loads(r.value or b"")["event_id"] for r in routings] == [e["event_id"] for e in events]
