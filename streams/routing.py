"""Pure routing logic: which of an application's rules an event matches, and what to send.

Every active rule whose ``event_type_filter`` is null or equal to the event's type is evaluated,
in priority order (higher first, then lower rule_id), and **every** matching rule gets a delivery:
rules fan an event out, they do not stop at the first match. An event that matches no rule, or
only ``queue`` rules (delivered once the router's produce is acknowledged), is ``processed``; one
with a webhook or table delivery is ``pending`` until its sinks report.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from schemas.events import DeliveryRef
from schemas.rules import AppRules, Delivery, RoutingRule
from streams.conditions import compile_condition, matches

DELIVERY_NAMESPACE = uuid.UUID("0f5a3c52-8d3e-4b7a-a1c2-6a9e57e0b4d1")


@dataclass(frozen=True)
class CompiledRule:
    rule: RoutingRule
    condition: dict[str, Any]

    def applies_to(self, event_type: str) -> bool:
        return self.rule.event_type_filter is None or self.rule.event_type_filter == event_type


def compile_rules(rules: list[RoutingRule]) -> list[CompiledRule]:
    """The active rules, compiled, in the order they are evaluated."""
    active = sorted((r for r in rules if r.is_active), key=lambda r: (-r.priority, r.rule_id))
    return [CompiledRule(rule, compile_condition(rule.condition)) for rule in active]


def parse_app_rules(value: bytes | None) -> list[RoutingRule]:
    """The rules in a routing-rules record; a tombstone (None) means none."""
    return [] if value is None else AppRules.model_validate_json(value).rules


def as_document(event: EventEnvelope) -> dict[str, Any]:
    """The fields a condition can read."""
    return {
        "event_type": event.event_type,
        "app_id": event.app_id,
        "payload": event.payload,
        "metadata": event.metadata.model_dump(mode="json"),
    }


def delivery_id(event_id: uuid.UUID, rule_id: int) -> uuid.UUID:
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}:{rule_id}")


def route(
    event: EventEnvelope, rules: list[CompiledRule], now: datetime | None = None
) -> tuple[RoutedEvent, list[Delivery]]:
    document = as_document(event)
    evaluated = [rule for rule in rules if rule.applies_to(event.event_type)]
    matched = [rule.rule for rule in evaluated if matches(rule.condition, document)]
    deliveries = [
        Delivery(
            delivery_id=delivery_id(event.event_id, rule.rule_id),
            rule_id=rule.rule_id,
            destination_type=rule.destination_type,
            destination_config=rule.destination_config,
            event=event,
        )
        for rule in matched
    ]
    done = all(rule.destination_type == "queue" for rule in matched)
    summary = RoutingSummary(
        rules_evaluated=len(evaluated),
        matched_rules=[rule.rule_id for rule in matched],
        deliveries=[
            DeliveryRef(delivery_id=d.delivery_id, rule_id=d.rule_id, destination_type=d.destination_type)
            for d in deliveries
        ],
        routed_at=now or datetime.now(UTC),
    )
    status = EventStatus.PROCESSED if done else EventStatus.PENDING
    return RoutedEvent(event=event, status=status, routing=summary), deliveries


def rejection_reason(error: ValidationError) -> str:
    """A short, header-sized account of why a record is not a valid envelope."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "<record>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:1000]


def parse_envelope(value: bytes | None) -> EventEnvelope:
    """Parse a record of ``events``; raises ``ValidationError`` when it is not an envelope."""
    if value is None:
        raise ValidationError.from_exception_data(
            "EventEnvelope", [{"type": "missing", "loc": (), "input": None}]
        )
    return EventEnvelope.model_validate_json(value)
