"""Pydantic models of everything on a topic or on the wire."""

from schemas.api import ErrorDetail, ErrorResponse, SuccessResponse
from schemas.events import (
    SCHEMA_VERSION,
    DeliveryStatus,
    EventEnvelope,
    EventMetadata,
    EventSource,
    EventStatus,
    IngestRequest,
    RoutedEvent,
    RoutingSummary,
)

__all__ = [
    "SCHEMA_VERSION",
    "DeliveryStatus",
    "ErrorDetail",
    "ErrorResponse",
    "EventEnvelope",
    "EventMetadata",
    "EventSource",
    "EventStatus",
    "IngestRequest",
    "RoutedEvent",
    "RoutingSummary",
    "SuccessResponse",
]
