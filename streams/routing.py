"""Pure routing logic: which of an application's rules an event matches, and what to send.

Every active rule whose ``event_type_filter`` is null or equal to the event's type is evaluated,
in priority order (higher first, then lower rule_id), and **every** matching rule gets a delivery:
rules fan an event out, they do not stop at the first match. An event that matches no rule, or
only ``queue`` rules (delivered once the router's produce is acknowledged), is ``processed``; one
with a webhook or table delivery is ``pending`` until its sinks report.

``route_record`` is what the router does with one record of ``events``: it returns the records
to send, already serialised (the event once, embedded in each), so the agent only sends them.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from schemas.events import envelope_json
from schemas.records import Invalid, parse_batch
from schemas.rules import AppRules, RoutingRule, Suppression, suppression_hash, value_at
from streams.conditions import Document, Matcher, compile_matcher

DELIVERY_NAMESPACE = uuid.UUID("0f5a3c52-8d3e-4b7a-a1c2-6a9e57e0b4d1")


@dataclass(frozen=True)
class CompiledRule:
    rule: RoutingRule
    matches: Matcher

    def applies_to(self, event_type: str) -> bool:
        return applies(self.rule.event_type_filter, event_type)


def applies(event_type_filter: str | None, event_type: str) -> bool:
    """Whether a rule with this ``event_type_filter`` evaluates events of ``event_type``."""
    return event_type_filter is None or event_type_filter == event_type


def compile_rule(rule: RoutingRule) -> CompiledRule:
    return CompiledRule(rule, compile_matcher(rule.condition))


def compile_rules(rules: list[RoutingRule]) -> list[CompiledRule]:
    """The active rules, compiled, in the order they are evaluated."""
    active = sorted((r for r in rules if r.is_active), key=lambda r: (-r.priority, r.rule_id))
    return [compile_rule(rule) for rule in active]


def parse_app_rules(value: bytes | None) -> AppRules | None:
    """The rule set in a routing-rules record; a tombstone (None) means none."""
    return None if value is None else AppRules.model_validate_json(value)


# The values an application suppresses: the hashes of each path's (``schemas.rules.Suppression``).
Suppressed = dict[str, frozenset[str]]


def suppressed_by(suppressions: list[Suppression]) -> Suppressed:
    found: dict[str, set[str]] = {}
    for each in suppressions:
        found.setdefault(each.path, set()).update(each.value_hashes)
    return {path: frozenset(hashes) for path, hashes in found.items()}


def is_suppressed(event: EventEnvelope, suppressed: Suppressed) -> bool:
    """Whether the event's value at one of the paths is one the application suppresses."""
    for path, hashes in suppressed.items():
        value = value_at(event, path)
        if (
            isinstance(value, str | int)
            and not isinstance(value, bool)
            and suppression_hash(path, value) in hashes
        ):
            return True
    return False


def as_document(event_json: str | bytes) -> dict[str, Any]:
    """What a condition reads: the event as it travels (``EventEnvelope`` as JSON). Conditions
    reach only ``event_type``, ``app_id``, ``payload`` and ``metadata`` (see conditions.py)."""
    document: dict[str, Any] = orjson.loads(event_json)
    return document


def delivery_id(event_id: uuid.UUID, rule_id: int) -> uuid.UUID:
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}:{rule_id}")


RulesFor = Callable[[str], list[CompiledRule]]


@dataclass
class Routing:
    """What routing one event (or what should have been one) gave: the records to send."""

    # "routed", "invalid" (not an envelope), "failed" (routing raised), "conflict" (another
    # version of the event was claimed first: dead-lettered only), "suppressed" (a value its
    # application suppresses: nothing is sent)
    outcome: str
    event: EventEnvelope | None = None
    routed: bytes | None = None  # the value for events.routed
    deliveries: list[tuple[RoutingRule, bytes]] = field(default_factory=list)  # one per match
    rejection: tuple[str, str] | None = None  # (stage, reason): dead-lettered to events.dlq
    index: int | None = None  # its position in a batch record; None: the record is this event
    value: bytes | None = None  # what to dead-letter, for an event of a batch record


def suppressed_event(event: EventEnvelope, index: int | None) -> Routing:
    """An event the application suppresses: neither routed nor stored."""
    return Routing("suppressed", event, index=index)


def route_record(value: bytes | None, rules_for: RulesFor, now: datetime | None = None) -> list[Routing]:
    """Validate one record of ``events`` (an envelope, or a batch: an array of envelopes) and
    route each of its events with its application's rules."""
    routed_at = now or datetime.now(UTC)
    found = []
    for index, item in parse_record(value):
        found.append(item if isinstance(item, Routing) else route_event(item, rules_for, routed_at, index))
    return found


def route_event(event: EventEnvelope, rules_for: RulesFor, routed_at: datetime, index: int | None) -> Routing:
    """Route one valid event (``index``: its position in a batch record) with its application's rules."""
    try:
        routing = _route(event, rules_for(event.app_id), routed_at)
        routing.index = index
    except Exception as exc:  # never skip an event silently: stored as failed, and dead-lettered
        routing = routing_failed(event, exc, routed_at, index)
    return routing


def conflicting(event: EventEnvelope, first: bytes | None, now: bytes, index: int | None) -> Routing:
    """An event whose id was first claimed with another version (hash ``first``, None for the
    event stored before claims; its own is ``now``): only dead-lettered, the event alone when it
    came in a batch record."""
    was = "the stored event" if first is None else f"sha256 {first.hex()}"
    reason = (
        f"event_id {event.event_id} of app {event.app_id} was first accepted with other content"
        f" ({was} != sha256 {now.hex()}); the first version is kept"
    )
    alone = None if index is None else event.model_dump_json().encode()
    return Routing("conflict", event, rejection=("conflict", reason), index=index, value=alone)


def routing_failed(
    event: EventEnvelope, error: Exception, routed_at: datetime, index: int | None = None
) -> Routing:
    """An event whose routing raised: stored as failed, with the reason, and dead-lettered (the
    event alone when it came in a batch record)."""
    reason = f"{type(error).__name__}: {error}"
    summary = RoutingSummary(error=reason[:1000], routed_at=routed_at)
    failed = RoutedEvent(event=event, status=EventStatus.FAILED, routing=summary)
    alone = None if index is None else event.model_dump_json().encode()
    return Routing("failed", event, failed.model_dump_json().encode(), [], ("routing", reason), index, alone)


def _route(event: EventEnvelope, rules: list[CompiledRule], routed_at: datetime) -> Routing:
    event_json = envelope_json(event)  # serialised once, embedded in each record
    evaluated = 0
    matched: list[RoutingRule] = []
    if rules:
        document = Document(as_document(event_json))
        for rule in rules:
            if rule.applies_to(event.event_type):
                evaluated += 1
                if rule.matches(document):
                    matched.append(rule.rule)
    fragment = orjson.Fragment(event_json)
    refs = [
        {
            "delivery_id": delivery_id(event.event_id, rule.rule_id),
            "rule_id": rule.rule_id,
            "destination_type": rule.destination_type,
        }
        for rule in matched
    ]
    deliveries = [
        (rule, _dumps({**ref, "destination_config": rule.destination_config, "event": fragment}))
        for rule, ref in zip(matched, refs, strict=True)
    ]
    done = all(rule.destination_type == "queue" for rule in matched)
    routed = {
        "event": fragment,
        "status": EventStatus.PROCESSED if done else EventStatus.PENDING,
        "routing": {
            "rules_evaluated": evaluated,
            "matched_rules": [rule.rule_id for rule in matched],
            "deliveries": refs,
            "error": None,
            "routed_at": routed_at,
        },
    }
    return Routing("routed", event, _dumps(routed), deliveries)


def _dumps(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


_ONE, _BATCH = TypeAdapter(EventEnvelope), TypeAdapter(list[EventEnvelope])


def parse_record(value: bytes | None) -> list[tuple[int | None, EventEnvelope | Routing]]:
    """The events of a record of ``events``, each with its position in a batch record (None for
    a record that is one envelope); what is not a valid envelope comes as an "invalid" Routing."""
    return [
        (index, _invalid(item, index) if isinstance(item, Invalid) else item)
        for index, item in parse_batch(value, _ONE, _BATCH)
    ]


def _invalid(item: Invalid, index: int | None) -> Routing:
    return Routing("invalid", rejection=("validation", item.reason), index=index, value=item.value)


def parse_envelope(value: bytes | None) -> EventEnvelope:
    """Parse a record of ``events``; raises ``ValidationError`` when it is not an envelope."""
    if value is None:
        raise ValidationError.from_exception_data(
            "EventEnvelope", [{"type": "missing", "loc": (), "input": None}]
        )
    return EventEnvelope.model_validate_json(value)
