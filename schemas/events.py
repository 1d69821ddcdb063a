"""The event envelope: the one event model that flows from gateway to streams to sinks.

The gateway builds an ``EventEnvelope`` from an ``IngestRequest`` and produces it to ``events``.
Producers that write to Kafka directly write the same envelope as JSON (its JSON Schema is in
``schemas/event-envelope.schema.json``). The worker validates it and passes a ``RoutedEvent`` on.
"""

import hashlib
import ipaddress
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from typing_extensions import TypedDict

SCHEMA_VERSION = 1

AppId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    Field(description="The application's id: 1 to 64 letters, digits, '_' or '-'.", examples=["demo"]),
]
EventType = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(
        description="What happened: 1 to 100 characters, no control characters.", examples=["order_created"]
    ),
]
# PostgreSQL cannot store NUL in text or jsonb: such a string would stop the event store.
NoNulText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]

_IPV4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def _ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, written as ``ipaddress`` writes it. A dotted quad is checked with
    a pattern (pydantic's ``IPvAnyAddress`` took 12-19 µs, most of an event's validation)."""
    if _IPV4.fullmatch(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("value is not a valid IPv4 or IPv6 address") from None


IpAddress = Annotated[
    str, AfterValidator(_ip_address), WithJsonSchema({"type": "string", "format": "ipvanyaddress"})
]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _json_problem(value: Any) -> str | None:
    """Why ``value`` cannot travel safely as JSON (NaN, Infinity, lone surrogates, integers that do
    not fit in 64 bits, which most JSON consumers cannot read; NUL, which PostgreSQL cannot store),
    or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)  # exact types first: what JSON parsing gives, by far the common case
        if kind is str:
            if _UNSTORABLE.search(item):
                return _BAD_STRING
        elif kind is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                return _BAD_INTEGER
        elif kind is float:
            if not math.isfinite(item):
                return _BAD_NUMBER
        elif kind is not bool and item is not None:
            problem = _subclass_problem(item)
            if problem is not None:
                return problem
    return None


_BAD_STRING = "strings must not contain NUL (\\u0000) or lone surrogates (\\ud800-\\udfff)"
_BAD_INTEGER = f"integers must be between {_INT_MIN} and {_INT_MAX}"
_BAD_NUMBER = "NaN and Infinity are not JSON numbers"


def _subclass_problem(item: Any) -> str | None:
    """``_json_problem`` of a value built in Python from a subclass (a ``StrEnum``, an ``IntEnum``)."""
    if isinstance(item, bool):
        return None
    if isinstance(item, str):
        return _BAD_STRING if _UNSTORABLE.search(item) else None
    if isinstance(item, int):
        return None if _INT_MIN <= item <= _INT_MAX else _BAD_INTEGER
    if isinstance(item, float):
        return None if math.isfinite(item) else _BAD_NUMBER
    if isinstance(item, dict):
        return _json_problem([*item, *item.values()])
    if isinstance(item, list | tuple):
        return _json_problem(list(item))
    return None


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = _json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


class EventSource(StrEnum):
    HTTP = "http"
    KAFKA = "kafka"


class EventStatus(StrEnum):
    """An event's status (``data_events.status``; what the database function ``event_status``
    computes from it and the event's deliveries)."""

    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """Where one delivery (an event to one matching rule) stands: ``deliveries.status``."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


class EventMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ip_address: IpAddress | None = Field(default=None, description="The sender's address.")
    user_agent: NoNulText | None = Field(default=None, max_length=1024)
    correlation_id: NoNulText | None = Field(default=None, max_length=200)
    source: EventSource = Field(
        default=EventSource.KAFKA, description="How the event entered: over HTTP or into Kafka."
    )


class EventEnvelope(BaseModel):
    """One event, as it travels on the ``events`` topic (key: the app_id, UTF-8)."""

    model_config = ConfigDict(extra="forbid", title="EventEnvelope")

    schema_version: Literal[1] = Field(default=1, description="Envelope version (SCHEMA_VERSION).")
    event_id: UUID = Field(
        description=(
            "Unique within its application (another application's event with the same id is another"
            " event): a UUIDv7 assigned by the gateway, or supplied by a direct producer, who must"
            " reuse it when retrying so that the event is stored once."
        ),
    )
    app_id: AppId
    event_type: EventType
    payload: JsonObject = Field(description="The event's data: a JSON object.")
    metadata: EventMetadata = Field(default_factory=EventMetadata)
    received_at: UtcDatetime = Field(description="When the platform received it (UTC).")
    occurred_at: UtcDatetime | None = Field(
        default=None, description="When it happened, by the client's clock (UTC), if given."
    )
    occurred_at_clamped: bool = Field(
        default=False,
        description=(
            "True when the client's occurred_at was more than a minute after, or 30 days before,"
            " received_at and was clamped to that range."
        ),
    )


_STRICT = ConfigDict(extra="forbid")


class MetadataView(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]

    ip_address: str | None
    user_agent: str | None
    correlation_id: str | None
    source: EventSource


class EnvelopeView(TypedDict):
    """An ``EventEnvelope`` as a dict, its fields' types checked but not their content (a fifth of
    the model's validation): for the sinks, which read events the router validated and wrote with
    every field. Extra fields are refused, as the model refuses them."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]

    schema_version: Literal[1]
    event_id: UUID
    app_id: str
    event_type: str
    payload: dict[str, Any]
    metadata: MetadataView
    received_at: AwareDatetime
    occurred_at: AwareDatetime | None
    occurred_at_clamped: bool


def envelope_json(event: EventEnvelope) -> bytes:
    """``event.model_dump_json()``, encoded: the same bytes (a unit test holds them equal), in
    about half the time. The gateway writes every event this way and the router every routed one."""
    metadata = event.metadata
    return orjson.dumps(
        {
            "schema_version": event.schema_version,
            "event_id": str(event.event_id),  # the gateway's are uuid6.UUID, which orjson does not take
            "app_id": event.app_id,
            "event_type": event.event_type,
            "payload": event.payload,
            "metadata": {
                "ip_address": metadata.ip_address,
                "user_agent": metadata.user_agent,
                "correlation_id": metadata.correlation_id,
                "source": metadata.source,
            },
            "received_at": event.received_at,
            "occurred_at": event.occurred_at,
            "occurred_at_clamped": event.occurred_at_clamped,
        },
        option=orjson.OPT_UTC_Z,
    )


class IngestRequest(BaseModel):
    """One event as a client sends it: the body of ``POST /api/ingest/{app_id}``, a batch's item."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"event_type": "order_created", "payload": {"total": 42}},
                {
                    "event_id": "0193a4f2-7c1e-7d3a-9f00-5b2a1c3d4e5f",
                    "event_type": "order_created",
                    "payload": {"total": 42, "items": [{"sku": "A-1"}]},
                    "occurred_at": "2026-11-29T10:15:00Z",
                },
            ]
        },
    )

    event_id: UUID | None = Field(
        default=None,
        description=(
            "Your own id for the event (any UUID), unique within your application. Sending the same"
            " id again, a second or a month later, stores and counts the event once."
        ),
    )
    event_type: EventType
    payload: JsonObject = Field(default_factory=dict, description="A JSON object.")
    occurred_at: UtcDatetime | None = Field(
        default=None,
        description="When it happened, by your clock, with a time zone. Kept as given unless more"
        " than a minute in the future or 30 days in the past (then clamped and flagged).",
    )


DestinationType = Literal["queue", "webhook", "database_table"]


class DeliveryRef(BaseModel):
    """One delivery the router made for an event: the event store records it as under way."""

    delivery_id: UUID
    rule_id: int
    destination_type: DestinationType


class RoutingSummary(BaseModel):
    """What the router decided for one event."""

    model_config = ConfigDict(extra="forbid")

    rules_evaluated: int = Field(default=0, description="Active rules whose event_type_filter applied.")
    matched_rules: list[int] = Field(default_factory=list, description="Ids of the rules that matched.")
    deliveries: list[DeliveryRef] = Field(default_factory=list, description="One per matched rule.")
    error: str | None = Field(default=None, description="Why routing failed (the event is then failed).")
    routed_at: UtcDatetime


class RoutedEvent(BaseModel):
    """A validated event after routing, on the ``events.routed`` topic; the event store's input."""

    model_config = ConfigDict(extra="forbid")

    event: EventEnvelope
    status: EventStatus
    routing: RoutingSummary


def content_hash(event_type: str, payload: dict[str, Any]) -> bytes:
    """The hash of an event's version, (event_type, payload), whatever the order of its keys: the
    SHA-256 of ``[event_type, payload]`` as JSON with sorted keys. The gateway and the router
    compare versions of an event with it (the first version of an event_id wins)."""
    return hashlib.sha256(orjson.dumps([event_type, payload], option=orjson.OPT_SORT_KEYS)).digest()
