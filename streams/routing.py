"""Pure routing logic: what the router decides for one valid event.

No routing rules exist yet: every valid event is routed to no destination and is therefore
``processed``. Rules plug in here: ``route`` will take the application's active rules, evaluate
them against the event and list the matches; the agent stays as it is.
"""

from datetime import UTC, datetime

from pydantic import ValidationError

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary


def route(event: EventEnvelope, now: datetime | None = None) -> RoutedEvent:
    summary = RoutingSummary(matched_rules=[], routed_at=now or datetime.now(UTC))
    status = EventStatus.PROCESSED if not summary.matched_rules else EventStatus.PENDING
    return RoutedEvent(event=event, status=status, routing=summary)


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
