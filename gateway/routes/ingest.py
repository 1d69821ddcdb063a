"""HTTP ingest: validate, enrich, produce to ``events``, answer only once Kafka acknowledged.

Idempotency: an event's id is the client's ``event_id`` if it sent one; else, with an
``Idempotency-Key`` header, a UUIDv5 of (app_id, key[, index in the batch]); else a new UUIDv7.
The event store keeps one row per event_id (forever, as long as the event is stored) and every
later effect is keyed by it, so a retry of any age is stored, routed and counted once. The first
version of an event wins: a retry with a client-chosen id whose version (event_type, payload) was
claimed by another one is answered 409 (``gateway.conflicts``; fails open).
"""

import ipaddress
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from uuid6 import uuid7

from gateway.conflicts import Candidate
from gateway.deps import APP_ID_PATTERN, AppIdPath, IngestDep, ingest_dependency
from gateway.errors import ApiError
from gateway.limits import check_event
from gateway.responses import EVENT_CONFLICT, scoped
from schemas import ErrorDetail, EventEnvelope, EventMetadata, EventSource, IngestRequest, SuccessResponse
from vdip import metrics
from vdip.applications import Quota
from vdip.logs import correlation_id
from vdip.settings import Settings

router = APIRouter(tags=["ingest"])
log = logging.getLogger(__name__)

_ACCEPTED, _REJECTED = metrics.INGEST_EVENTS.labels("accepted"), metrics.INGEST_EVENTS.labels("rejected")
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b8f3d0e-6c1a-4f57-9d3e-2a7c4e9b1f60")
FUTURE_TOLERANCE = timedelta(minutes=1)
PAST_TOLERANCE = timedelta(days=30)

IDEMPOTENCY_KEY_MAX = 200
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=IDEMPOTENCY_KEY_MAX,
        description="Makes retries safe: the same key (per application) always gives the same event_id.",
    ),
]


class IngestAccepted(BaseModel):
    event_id: uuid.UUID
    status: Literal["accepted"] = "accepted"


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected"]
    event_id: uuid.UUID | None = None
    errors: list[ErrorDetail] = Field(default_factory=list)


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    results: list[ItemResult]


class BatchRequest(BaseModel):
    events: list[Any] = Field(description="Up to max_batch_events events, each validated on its own.")


# ---------------------------------------------------------------------------------- pure logic


def event_id_for(
    app_id: str, given: uuid.UUID | None, idempotency_key: str | None, index: int | None
) -> uuid.UUID:
    if given is not None:
        return given
    if idempotency_key is not None:
        name = f"{app_id}\n{idempotency_key}" + ("" if index is None else f"\n{index}")
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, name)
    return uuid7()


def clamp_occurred_at(occurred: datetime | None, received: datetime) -> tuple[datetime | None, bool]:
    """The client's time, clamped to [received - 30 days, received + 1 minute]; and whether it was."""
    if occurred is None:
        return None, False
    if occurred > received + FUTURE_TOLERANCE:
        return received + FUTURE_TOLERANCE, True
    if occurred < received - PAST_TOLERANCE:
        return received - PAST_TOLERANCE, True
    return occurred, False


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str | None:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address
    in X-Forwarded-For that is not a trusted proxy (read from the right)."""
    if peer is None or not forwarded_for:  # the common case: nothing to believe or not
        return peer
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain is not believed
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


def build_envelope(
    app_id: str,
    item: IngestRequest,
    metadata: EventMetadata,
    received_at: datetime,
    idempotency_key: str | None,
    index: int | None,
) -> EventEnvelope:
    """The envelope of a validated event. Built without validating again: its parts are valid
    already (the event as an IngestRequest, app_id by the route's pattern, the metadata as an
    EventMetadata), and validating it walked the payload a second time (~2/3 of its cost)."""
    occurred_at, clamped = clamp_occurred_at(item.occurred_at, received_at)
    return EventEnvelope.model_construct(
        event_id=event_id_for(app_id, item.event_id, idempotency_key, index),
        app_id=app_id,
        event_type=item.event_type,
        payload=item.payload,
        metadata=metadata,
        received_at=received_at,
        occurred_at=occurred_at,
        occurred_at_clamped=clamped,
    )


# ----------------------------------------------------------------------------------------- I/O


def _metadata(request: Request, settings: Settings) -> EventMetadata:
    peer = request.client.host if request.client else None
    return EventMetadata(
        ip_address=client_ip(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies),
        user_agent=(request.headers.get("user-agent") or "")[:1024] or None,
        correlation_id=correlation_id.get(),
        source=EventSource.HTTP,
    )


async def _check_quota(ingest: IngestDep, cost: int) -> None:
    """429 with Retry-After when the application is over its quota (``gateway.quotas``)."""
    app_id, quota = ingest.application.app_id, _quota_of(ingest)
    if cost > quota.burst:
        raise ApiError(
            422,
            f"{cost} events at once are more than application '{app_id}' may send at once",
            [ErrorDetail(field="body.events", reason=f"more than its burst of {quota.burst} events")],
        )
    _refuse(ingest, quota, await ingest.quotas.acquire(app_id, quota, cost), cost)


def _refuse_while_refused(ingest: IngestDep, cost: int) -> None:
    """429 at once while the application's last request here was refused and its bucket has not
    refilled yet: a flood's requests are refused before their events are validated (a batch
    larger than the burst is not: its 422 says that it can never go)."""
    quota = _quota_of(ingest)
    if cost <= quota.burst:
        _refuse(ingest, quota, ingest.quotas.refused(ingest.application.app_id), cost)


def _quota_of(ingest: IngestDep) -> Quota:
    settings = ingest.settings
    return ingest.application.quota(settings.default_quota_events_per_s, settings.max_batch_events)


def _refuse(ingest: IngestDep, quota: Quota, retry_after: float | None, cost: int) -> None:
    if retry_after is None:
        return
    app_id = ingest.application.app_id
    metrics.INGEST_THROTTLED.labels(app_id).inc(cost)
    raise ApiError(
        429,
        f"Application '{app_id}' is over its quota of {quota.events_per_s} events/s",
        [ErrorDetail(field="path.app_id", reason="quota exceeded")],
        {"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


async def ingest(
    ingest: IngestDep, body: IngestRequest, request: Request, idempotency_key: IdempotencyKey = None
) -> SuccessResponse[IngestAccepted]:
    """Answers 202 only after Kafka acknowledged the event (``acks=all``, idempotent producer)."""
    app_id, settings = ingest.application.app_id, ingest.settings
    problems = check_event(body.event_type, body.payload, ingest.limits)
    if problems:
        raise ApiError(422, "The event breaks a limit", problems)
    if body.event_id is not None or idempotency_key is not None:
        event_id = event_id_for(app_id, body.event_id, idempotency_key, None)
        candidate = Candidate(event_id, body.event_type, body.payload)
        if await ingest.conflicts.conflicting(app_id, [candidate]):
            field = "body.event_id" if body.event_id is not None else "header.Idempotency-Key"
            log.warning(
                "refused event %s for %s: %s", event_id, app_id, _CONFLICT, extra={"event_id": str(event_id)}
            )
            raise ApiError(
                409,
                f"Event {event_id} was accepted before with other content",
                [ErrorDetail(field=field, reason=_CONFLICT)],
            )
    await _check_quota(ingest, 1)
    envelope = build_envelope(
        app_id, body, _metadata(request, settings), datetime.now(UTC), idempotency_key, None
    )
    await ingest.producer.send(envelope)
    _ACCEPTED.inc()
    log.info(
        "accepted event %s for %s", envelope.event_id, app_id, extra={"event_id": str(envelope.event_id)}
    )
    return SuccessResponse(message="Event accepted", data=IngestAccepted(event_id=envelope.event_id))


_CONFLICT = "another version of this event (event_type and payload) was accepted first; it is kept"
_APP_ID = re.compile(APP_ID_PATTERN)


async def _valid_parameters(request: Request) -> tuple[str, IngestRequest, str | None] | None:
    """The app_id, the body and the Idempotency-Key of a request whose parameters are all valid
    as FastAPI reads them (the same JSON parser, the same model); None for any other request
    (one with a query string too: the standard way refuses the parameters it does not take)."""
    if request.scope.get("query_string"):
        return None
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        raw = await request.body()
    except HTTPException:
        raise  # over the body size limit: 413, as FastAPI lets it through
    except Exception as exc:  # as FastAPI answers a body it could not read
        raise HTTPException(400, "There was an error parsing the body") from exc
    try:
        body = IngestRequest.model_validate(json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, not a valid event
        return None
    app_id = request.path_params["app_id"]
    idempotency_key = request.headers.get("idempotency-key")
    if not _APP_ID.fullmatch(app_id) or len(idempotency_key or "") > IDEMPOTENCY_KEY_MAX:
        return None
    return app_id, body, idempotency_key


class SingleEventRoute(APIRoute):
    """``POST /api/ingest/{app_id}``, with a fast way for requests whose parameters are all valid.

    FastAPI's solving of this route's parameters (the dependency and its headers, the body, the
    Idempotency-Key) cost more CPU than the rest of the request. A request whose parameters are
    valid has them read by ``_valid_parameters`` and goes to the same dependency and endpoint;
    any other request is handled the standard way, so that every error answer is FastAPI's own.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()

        async def handle(request: Request) -> Response:
            valid = await _valid_parameters(request)
            if valid is None:
                return await standard(request)
            app_id, body, idempotency_key = valid
            headers = request.headers
            dependency = await ingest_dependency(
                app_id, request, headers.get("authorization"), headers.get("x-api-key")
            )
            answer = await ingest(dependency, body, request, idempotency_key)
            return Response(answer.model_dump_json(), status_code=202, media_type="application/json")

        return handle


router.add_api_route(
    "/api/ingest/{app_id}",
    ingest,
    methods=["POST"],
    status_code=202,
    summary="Ingest one event",
    responses={**scoped("ingest", 400, 401, 404, 413, 422, 429, 503), **EVENT_CONFLICT},
    route_class_override=SingleEventRoute,
)


@router.post(
    "/api/messages/{app_id}",
    status_code=202,
    summary="Ingest a message (legacy): the body is the payload of an event of type 'message'",
    responses={**scoped("ingest", 400, 401, 404, 413, 422, 429, 503), **EVENT_CONFLICT},
)
async def ingest_message(
    ingest_: IngestDep,
    request: Request,
    body: Annotated[dict[str, Any] | None, Body(examples=[{"text": "hello"}])] = None,
    message_content: Annotated[
        str | None,
        Query(min_length=1, description='The original API\'s form: the payload is {"message_content": ...}.'),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> SuccessResponse[IngestAccepted]:
    """Send the payload as the JSON body, or (as the original API) ``?message_content=``; not both."""
    if (body is None) == (message_content is None):
        raise ApiError(
            422,
            "Send the message as a JSON body or as message_content, one of them",
            [ErrorDetail(field="query.message_content", reason="give either it or a JSON body")],
        )
    payload = body if body is not None else {"message_content": message_content}
    try:
        item = IngestRequest(event_type="message", payload=payload)
    except ValidationError as exc:
        raise ApiError(422, "The message is invalid", _errors_of(exc, "body")) from exc
    return await ingest(ingest_, item, request, idempotency_key)


_items = TypeAdapter(IngestRequest)


def _errors_of(exc: ValidationError, where: str) -> list[ErrorDetail]:
    return [
        ErrorDetail(field=".".join([where, *(str(p) for p in e["loc"])]), reason=e["msg"])
        for e in exc.errors(include_url=False)
    ]


async def _without_conflicts(
    ingest: IngestDep,
    valid: list[tuple[int, IngestRequest]],
    idempotency_key: str | None,
    results: list[ItemResult],
) -> list[tuple[int, IngestRequest]]:
    """The valid events of a batch but those whose client-chosen id another version claimed,
    which are rejected (in ``results``); 409 when no event is left."""
    app_id = ingest.application.app_id
    chosen = {
        index: Candidate(
            event_id_for(app_id, item.event_id, idempotency_key, index), item.event_type, item.payload
        )
        for index, item in valid
        if item.event_id is not None or idempotency_key is not None
    }
    conflicting = await ingest.conflicts.conflicting(app_id, list(chosen.values()))
    if not conflicting:
        return valid
    left = []
    for index, item in valid:
        if index in chosen and chosen[index].event_id in conflicting:
            field = f"body.events.{index}.event_id" if item.event_id is not None else "header.Idempotency-Key"
            results.append(
                ItemResult(
                    index=index, status="rejected", errors=[ErrorDetail(field=field, reason=_CONFLICT)]
                )
            )
        else:
            left.append((index, item))
    log.warning("refused %d event(s) of a batch for %s: %s", len(valid) - len(left), app_id, _CONFLICT)
    if not left:
        raise ApiError(409, "No event of the batch can be accepted", [e for r in results for e in r.errors])
    return left


@router.post(
    "/api/ingest/{app_id}/batch",
    status_code=202,
    summary="Ingest up to max_batch_events events; each is accepted or rejected on its own",
    responses={
        207: {"model": SuccessResponse[BatchResult], "description": "Some events were rejected"},
        **scoped("ingest", 400, 401, 404, 413, 422, 429, 503),
        **EVENT_CONFLICT,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["events"],
                        "additionalProperties": False,
                        "properties": {
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 500,
                                "items": {"$ref": "#/components/schemas/IngestRequest"},
                            }
                        },
                    }
                }
            },
        }
    },
)
async def ingest_batch(
    ingest: IngestDep,
    body: BatchRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SuccessResponse[BatchResult]:
    """202 when every event was accepted, 207 when some were rejected (each result says why),
    422 when none was valid, 409 when every valid one was another version of an event accepted
    before, 503 when Kafka acknowledged none. Valid events are produced even
    when others are rejected; results are in the order of the request."""
    app_id, settings = ingest.application.app_id, ingest.settings
    if len(body.events) > settings.max_batch_events:
        raise ApiError(
            422,
            f"A batch holds at most {settings.max_batch_events} events",
            [ErrorDetail(field="body.events", reason=f"{len(body.events)} events")],
        )
    if not body.events:
        raise ApiError(422, "The batch is empty", [ErrorDetail(field="body.events", reason="no events")])
    _refuse_while_refused(ingest, len(body.events))
    limits = ingest.limits
    results: list[ItemResult] = []
    valid: list[tuple[int, IngestRequest]] = []
    for index, raw in enumerate(body.events):
        where = f"body.events.{index}"
        try:
            item = _items.validate_python(raw)
        except ValidationError as exc:
            results.append(ItemResult(index=index, status="rejected", errors=_errors_of(exc, where)))
            continue
        problems = check_event(item.event_type, item.payload, limits, where)
        if problems:
            results.append(ItemResult(index=index, status="rejected", errors=problems))
        else:
            valid.append((index, item))
    if not valid:
        raise ApiError(422, "No event of the batch is valid", [e for r in results for e in r.errors])
    valid = await _without_conflicts(ingest, valid, idempotency_key, results)
    await _check_quota(ingest, len(valid))
    metadata, received_at = _metadata(request, settings), datetime.now(UTC)
    envelopes = [build_envelope(app_id, item, metadata, received_at, idempotency_key, i) for i, item in valid]
    outcomes = await ingest.producer.send_many(envelopes)
    if all(outcome is not None for outcome in outcomes):
        first = outcomes[0]
        assert first is not None
        raise first
    for (index, _), envelope, outcome in zip(valid, envelopes, outcomes, strict=True):
        if outcome is None:
            results.append(ItemResult(index=index, status="accepted", event_id=envelope.event_id))
        else:
            results.append(
                ItemResult(
                    index=index, status="rejected", errors=[ErrorDetail(field="kafka", reason=str(outcome))]
                )
            )
    results.sort(key=lambda r: r.index)
    accepted = sum(r.status == "accepted" for r in results)
    _ACCEPTED.inc(accepted)
    _REJECTED.inc(len(results) - accepted)
    response.status_code = 202 if accepted == len(results) else 207
    log.info("accepted %d of %d events for %s", accepted, len(results), app_id)
    return SuccessResponse(
        success=accepted == len(results),
        message=f"{accepted} of {len(results)} events accepted",
        data=BatchResult(accepted=accepted, rejected=len(results) - accepted, results=results),
    )


class BeaconRequest(BaseModel):
    key: str = Field(max_length=200, description="An application's key (with the ingest scope).")
    events: list[Any] = Field(description="As in the batch endpoint.")


@router.post(
    "/api/ingest/{app_id}/beacon",
    status_code=202,
    summary="The batch endpoint for navigator.sendBeacon: the key travels in the body, which is"
    " JSON under any Content-Type (text/plain needs no CORS preflight)",
    responses={
        207: {"model": SuccessResponse[BatchResult], "description": "Some events were rejected"},
        **scoped("ingest", 400, 401, 404, 413, 422, 429, 503),
        **EVENT_CONFLICT,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/plain": {"schema": {"$ref": "#/components/schemas/BeaconRequest"}}},
        }
    },
)
async def ingest_beacon(
    app_id: AppIdPath, request: Request, response: Response
) -> SuccessResponse[BatchResult]:
    """What a page sends as it closes (``gateway/static/vdip.js``). A browser cannot set headers
    on a beacon, nor read its answer: the answers are the batch endpoint's."""
    try:
        body = BeaconRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ApiError(422, "The beacon is invalid", _errors_of(exc, "body")) from exc
    dependency = await ingest_dependency(app_id, request, None, body.key)
    return await ingest_batch(dependency, BatchRequest(events=body.events), request, response, None)
