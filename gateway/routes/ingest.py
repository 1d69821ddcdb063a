"""HTTP ingest: validate, enrich, produce to ``events``, answer 202 once Kafka acknowledged."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel
from uuid6 import uuid7

from gateway.deps import AuthorizedApp, ProducerDep
from gateway.responses import errors
from schemas import EventEnvelope, EventMetadata, EventSource, IngestRequest, SuccessResponse

router = APIRouter(tags=["ingest"])


class IngestAccepted(BaseModel):
    event_id: uuid.UUID
    status: Literal["accepted"] = "accepted"


def _envelope(
    app_id: str, body: IngestRequest, request: Request, correlation_id: str | None
) -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid7(),
        app_id=app_id,
        event_type=body.event_type,
        payload=body.payload,
        metadata=EventMetadata(
            ip_address=request.client.host if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:1024] or None,
            correlation_id=(correlation_id or uuid.uuid4().hex)[:200],
            source=EventSource.HTTP,
        ),
        received_at=datetime.now(UTC),
    )


@router.post(
    "/api/ingest/{app_id}",
    status_code=202,
    summary="Ingest one event",
    responses=errors(401, 403, 404, 422, 503),
)
async def ingest(
    app: AuthorizedApp,
    body: IngestRequest,
    request: Request,
    producer: ProducerDep,
    x_correlation_id: Annotated[str | None, Header()] = None,
) -> SuccessResponse[IngestAccepted]:
    """Answers 202 only after Kafka acknowledged the event (``acks=all``, idempotent producer)."""
    envelope = _envelope(app.app_id, body, request, x_correlation_id)
    await producer.send(envelope)
    return SuccessResponse(message="Event accepted", data=IngestAccepted(event_id=envelope.event_id))
