"""The routing rules API: CRUD, toggle and dry run (the admin token, or the application's key).

Every write is validated whole (the condition, the destination), then goes through
``vdip.rulesets.write_rules``: one transaction with the publish of the application's rule set to
the compacted ``routing-rules`` topic. If Kafka cannot be reached the request fails with 503 and
nothing changed in PostgreSQL; the ``Republisher`` brings the topic back in step after a failed
write (see ``vdip.rulesets``).
"""

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway.deps import (
    ApplicationCache,
    ApplicationsDep,
    AppReader,
    Caller,
    EventTypeFilter,
    PoolDep,
    PresentedKey,
    ProducerDep,
    RepublisherDep,
    SettingsDep,
    authorize_app,
)
from gateway.errors import ApiError
from gateway.producer import EventProducer
from gateway.responses import scoped
from schemas import ErrorDetail, EventEnvelope, EventMetadata, IngestRequest, SuccessResponse
from schemas.events import JsonObject
from schemas.rules import RoutingRule, RuleAppId, RuleFields, RuleUpdate, SavedRule, destination_problems
from streams.conditions import ConditionLimits, Document, compile_matcher, explain, validate
from streams.routing import applies, as_document
from vdip.applications import Scope
from vdip.errors import DestinationOwned
from vdip.rulesets import Republisher, claim_destination, write_rules
from vdip.settings import Settings
from vdip.store import audit
from vdip.store import deliveries as delivery_store
from vdip.store import rules as store
from vdip.topics import load_topics

router = APIRouter(tags=["routing rules"])
log = logging.getLogger(__name__)
R = TypeVar("R", bound=RoutingRule)


def condition_problems(condition: dict[str, Any], settings: Settings, where: str) -> list[ErrorDetail]:
    """What is wrong with a condition, under the configured limits (saving and dry runs alike)."""
    limits = ConditionLimits(
        settings.max_condition_depth, settings.max_condition_clauses, settings.max_rule_bytes
    )
    return [
        ErrorDetail(field=f"{where}.{p.where}".rstrip("."), reason=p.reason)
        for p in validate(condition, limits)
    ]


def rule_problems(fields: RuleFields, settings: Settings) -> list[ErrorDetail]:
    """What is wrong with a rule (also ``vdip import-seed``'s check)."""
    found = condition_problems(fields.condition, settings, "body.condition")
    found += [
        ErrorDetail(field=f"body.destination_config.{key}", reason=reason)
        for key, reason in destination_problems(fields.destination_type, fields.destination_config)
    ]
    topic = fields.destination_config.get("topic")
    if fields.destination_type == "queue" and isinstance(topic, str) and _reserved(topic, settings):
        found.append(
            ErrorDetail(field="body.destination_config.topic", reason="is one of the platform's own topics")
        )
    return found


def _reserved(topic: str, settings: Settings) -> bool:
    own = {spec.name for spec in load_topics(settings.topics_file)}
    return topic in own or topic.startswith(settings.worker_id)


def _check(fields: RuleFields, settings: Settings) -> None:
    problems = rule_problems(fields, settings)
    if problems:
        raise ApiError(422, "The rule is invalid", problems)


async def _claim(conn: asyncpg.Connection, fields: RuleFields) -> None:
    """Claim the rule's topic or table (409 if another application owns it; whose is not said)."""
    try:
        await claim_destination(conn, fields)
    except DestinationOwned as exc:
        key = "topic" if exc.destination_type == "queue" else "table"
        raise ApiError(
            409,
            "The destination belongs to another application",
            [ErrorDetail(field=f"body.destination_config.{key}", reason="owned by another application")],
        ) from exc


def audited(rule: RoutingRule | RuleFields) -> dict[str, Any]:
    """A rule's fields as the audit trail keeps them: webhook header values left out (secrets)."""
    fields = rule.model_dump(mode="json", include=set(RuleFields.model_fields))
    headers = fields["destination_config"].get("headers")
    if isinstance(headers, dict):
        fields["destination_config"]["headers"] = {name: "(not recorded)" for name in headers}
    return fields


def _not_found(rule_id: int) -> ApiError:
    return ApiError(
        404,
        f"Routing rule {rule_id} does not exist",
        [ErrorDetail(field="path.rule_id", reason="unknown rule")],
    )


async def _authorized_rule(
    pool: asyncpg.Pool,
    applications: ApplicationsDep,
    settings: Settings,
    rule_id: int,
    key: str | None,
    scope: Scope,
) -> tuple[RoutingRule, Caller]:
    """The rule and its caller; another application's rule is unknown to a key (404, as if it
    did not exist: rule ids are sequential, so a 401 would tell that it does)."""
    rule = await store.get_rule(pool, rule_id)
    if rule is None:
        raise _not_found(rule_id)
    try:
        return rule, await authorize_app(applications, settings, rule.app_id, key, scope)
    except ApiError as exc:
        if exc.status_code == 401 and key is not None:
            raise _not_found(rule_id) from exc
        raise


RuleId = Annotated[int, Field(ge=1, le=2**63 - 1)]


@router.post(
    "/api/routing-rules",
    status_code=201,
    summary="Create a routing rule",
    responses=scoped("manage", 400, 401, 404, 409, 422, 503),
)
async def create_rule(
    body: RuleFields,
    pool: PoolDep,
    producer: ProducerDep,
    republisher: RepublisherDep,
    settings: SettingsDep,
    applications: ApplicationsDep,
    key: PresentedKey,
) -> SuccessResponse[SavedRule]:
    """A webhook rule's signing secret is in the response, and only there: keep it."""
    caller = await authorize_app(applications, settings, body.app_id, key, Scope.MANAGE)
    _check(body, settings)

    async def insert(conn: asyncpg.Connection) -> SavedRule:
        await _claim(conn, body)
        rule = await store.insert_rule(conn, body)
        await audit.record(
            conn, body.app_id, caller.actor, "rule.create", f"rule {rule.rule_id}", audited(body)
        )
        return rule

    rule = await write_rules(pool, producer.publish, republisher, settings, body.app_id, insert)
    assert rule is not None
    return SuccessResponse(message="Routing rule created", data=rule)


@router.get(
    "/api/routing-rules/app/{app_id}",
    summary="An application's routing rules",
    responses=scoped("read", 401, 404, 422),
)
async def list_app_rules(
    caller: AppReader,
    pool: PoolDep,
    include_inactive: bool = False,
    event_type: EventTypeFilter = None,
) -> SuccessResponse[list[RoutingRule]]:
    assert caller.application is not None
    found = await store.list_rules(pool, caller.application.app_id, include_inactive)
    # as the original: the rules an event of this type goes through (their filter is null or it)
    if event_type is not None:
        found = [rule for rule in found if rule.event_type_filter in (None, event_type)]
    return SuccessResponse(message=f"{len(found)} rule(s)", data=found)


@router.get(
    "/api/routing-rules/{rule_id}", summary="One routing rule", responses=scoped("read", 401, 404, 422)
)
async def get_rule(
    rule_id: RuleId, pool: PoolDep, applications: ApplicationsDep, settings: SettingsDep, key: PresentedKey
) -> SuccessResponse[RoutingRule]:
    rule, _ = await _authorized_rule(pool, applications, settings, rule_id, key, Scope.READ)
    return SuccessResponse(message="Routing rule found", data=rule)


@dataclass(frozen=True)
class RuleChanges:
    """What changing a saved rule needs: who asks, and where the rule lives and is published."""

    pool: asyncpg.Pool
    producer: EventProducer
    republisher: Republisher
    settings: Settings
    applications: ApplicationCache
    key: str | None

    async def current(self, rule_id: int) -> tuple[RoutingRule, audit.Actor]:
        """The rule, if it exists (404) and the caller may change it (401, 403), and who asks."""
        rule, caller = await _authorized_rule(
            self.pool, self.applications, self.settings, rule_id, self.key, Scope.MANAGE
        )
        return rule, caller.actor

    async def apply(
        self, rule: RoutingRule, change: Callable[[asyncpg.Connection], Awaitable[R | None]]
    ) -> R:
        changed = await write_rules(
            self.pool, self.producer.publish, self.republisher, self.settings, rule.app_id, change
        )
        if changed is None:  # deleted meanwhile
            raise _not_found(rule.rule_id)
        return changed


async def _rule_changes(
    pool: PoolDep,
    producer: ProducerDep,
    republisher: RepublisherDep,
    settings: SettingsDep,
    applications: ApplicationsDep,
    key: PresentedKey,
) -> RuleChanges:
    return RuleChanges(pool, producer, republisher, settings, applications, key)


RuleChangesDep = Annotated[RuleChanges, Depends(_rule_changes)]


def _merged(change: RuleUpdate, current: RoutingRule) -> RuleFields:
    """The rule with ``change`` made, validated whole (422 naming the fields at fault)."""
    if change.app_id is not None and change.app_id != current.app_id:
        raise ApiError(
            422,
            "A rule cannot move to another application",
            [ErrorDetail(field="body.app_id", reason=f"must stay {current.app_id}")],
        )
    try:
        return RuleFields.model_validate(change.applied_to(current))
    except ValidationError as exc:
        errors = [
            ErrorDetail(field=".".join(["body", *(str(p) for p in e["loc"])]), reason=e["msg"])
            for e in exc.errors(include_url=False)
        ]
        raise ApiError(422, "The rule is invalid", errors) from exc


@router.put(
    "/api/routing-rules/{rule_id}",
    summary="Change a routing rule: the fields given change, the others keep their values",
    responses=scoped("manage", 400, 401, 404, 409, 422, 503),
)
async def replace_rule(
    rule_id: RuleId, change: RuleUpdate, rules: RuleChangesDep
) -> SuccessResponse[SavedRule]:
    """A full body replaces the rule; app_id cannot change. Also re-enables a destination the
    webhook dispatcher disabled. A rule that becomes a webhook gets a signing secret, in this
    response only."""
    current, actor = await rules.current(rule_id)
    body = _merged(change, current)
    _check(body, rules.settings)

    async def update(conn: asyncpg.Connection) -> SavedRule | None:
        await _claim(conn, body)
        before = await store.get_rule(conn, rule_id)
        rule = await store.update_rule(conn, rule_id, body)
        if before is not None and rule is not None:
            old, new = audited(before), audited(body)
            changed = {k: [old[k], new[k]] for k in new if old[k] != new[k]}
            await audit.record(conn, rule.app_id, actor, "rule.replace", f"rule {rule_id}", changed)
        return rule

    rule = await rules.apply(current, update)
    return SuccessResponse(message="Routing rule replaced", data=rule)


@router.patch(
    "/api/routing-rules/{rule_id}/toggle",
    summary="Switch a routing rule on or off: to is_active when given, else the other way",
    responses=scoped("manage", 401, 404, 422, 503),
)
async def toggle_rule(
    rule_id: RuleId,
    rules: RuleChangesDep,
    is_active: Annotated[
        bool | None, Query(description="true: on, false: off (as often as you like); absent: flip.")
    ] = None,
) -> SuccessResponse[RoutingRule]:
    current, actor = await rules.current(rule_id)

    async def toggle(conn: asyncpg.Connection) -> RoutingRule | None:
        rule = await store.toggle_rule(conn, rule_id, is_active)
        if rule is not None:
            changes = {"is_active": [current.is_active, rule.is_active]}
            await audit.record(conn, rule.app_id, actor, "rule.toggle", f"rule {rule_id}", changes)
        return rule

    rule = await rules.apply(current, toggle)
    return SuccessResponse(
        message=f"Routing rule {'activated' if rule.is_active else 'deactivated'}", data=rule
    )


@router.delete(
    "/api/routing-rules/{rule_id}",
    summary="Delete a routing rule",
    responses=scoped("manage", 401, 404, 422, 503),
)
async def delete_rule(rule_id: RuleId, rules: RuleChangesDep) -> SuccessResponse[RoutingRule]:
    current, actor = await rules.current(rule_id)

    async def delete(conn: asyncpg.Connection) -> RoutingRule | None:
        rule = await store.delete_rule(conn, rule_id)
        if rule is not None:
            await audit.record(conn, rule.app_id, actor, "rule.delete", f"rule {rule_id}", audited(rule))
        return rule

    rule = await rules.apply(current, delete)
    return SuccessResponse(message="Routing rule deleted", data=rule)


def _webhook_only(rule: RoutingRule, message: str) -> None:
    """409 with ``message`` unless ``rule`` is a webhook rule."""
    if rule.destination_type != "webhook":
        reason = f"is a {rule.destination_type} rule"
        raise ApiError(409, message, [ErrorDetail(field="path.rule_id", reason=reason)])


@router.post(
    "/api/routing-rules/{rule_id}/rotate-secret",
    summary="A new webhook signing secret; the previous one keeps signing for a grace period",
    responses=scoped("manage", 401, 404, 409, 422),
)
async def rotate_secret(rule_id: RuleId, rules: RuleChangesDep) -> SuccessResponse[SavedRule]:
    """During the grace period (``VDIP_WEBHOOK_SECRET_GRACE_S``) every delivery carries both
    signatures, so receivers can switch to the new secret whenever they like."""
    current, actor = await rules.current(rule_id)
    _webhook_only(current, "Only a webhook rule has a signing secret")
    grace_s = rules.settings.webhook_secret_grace_s
    async with rules.pool.acquire() as conn, conn.transaction():
        rule = await store.rotate_secret(conn, rule_id, grace_s)
        if rule is None:
            raise _not_found(rule_id)
        changes = {"previous_secret_valid_s": grace_s}
        await audit.record(conn, rule.app_id, actor, "rule.rotate_secret", f"rule {rule_id}", changes)
    return SuccessResponse(message="Signing secret rotated", data=rule)


class BulkRedelivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="Deliveries that failed at or after this time (with its zone).")
    status: Literal["failed"] = Field(default="failed", description="The deliveries' status: failed.")


class Redelivered(BaseModel):
    rule_id: int
    redelivered: int = Field(description="How many deliveries went back in the queue.")


@router.post(
    "/api/routing-rules/{rule_id}/redeliver",
    status_code=202,
    summary="Send again every webhook delivery of a rule that failed since a time",
    responses=scoped("manage", 400, 401, 404, 409, 422),
)
async def redeliver_rule(
    rule_id: RuleId, body: BulkRedelivery, rules: RuleChangesDep
) -> SuccessResponse[Redelivered]:
    """Each goes back to the dispatcher's queue, due now, with the same ``webhook-id`` (as a single
    redelivery), a thousand per transaction."""
    current, actor = await rules.current(rule_id)
    _webhook_only(current, "Only a webhook rule's deliveries can be sent again")
    count = await delivery_store.redeliver_rule(rules.pool, rule_id, body.since)
    changes = {"since": body.since.isoformat(), "status": body.status, "redelivered": count}
    await audit.record(rules.pool, current.app_id, actor, "rule.redeliver", f"rule {rule_id}", changes)
    data = Redelivered(rule_id=rule_id, redelivered=count)
    return SuccessResponse(message="Deliveries queued again", data=data)


# ---------------------------------------------------------------------------------- dry run


class InlineRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule_name: str = "inline"
    event_type_filter: str | None = None
    condition: JsonObject = Field(default_factory=dict)


class SampleEvent(IngestRequest):
    metadata: EventMetadata = Field(default_factory=EventMetadata)


class DryRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: RuleAppId
    event: SampleEvent
    rule: InlineRule | None = Field(default=None, description="A rule to try, not saved.")
    rule_id: int | None = Field(default=None, description="A saved rule to try; neither: all active rules.")


class RuleVerdict(BaseModel):
    rule_id: int | None
    rule_name: str
    applies: bool = Field(description="Whether the rule's event_type_filter lets this event in.")
    matched: bool
    reasons: list[str] = Field(description="Why it did not match: the failing clauses, with the values seen.")


@router.post(
    "/api/routing-rules/test",
    summary="Dry run: which rules a sample event matches, and why the others do not",
    responses=scoped("read", 400, 401, 404, 422),
)
async def dry_run(
    body: DryRun,
    pool: PoolDep,
    settings: SettingsDep,
    applications: ApplicationsDep,
    key: PresentedKey,
) -> SuccessResponse[list[RuleVerdict]]:
    await authorize_app(applications, settings, body.app_id, key, Scope.READ)
    candidates: list[tuple[int | None, str, str | None, dict[str, Any], str]] = []
    if body.rule is not None:
        candidates.append(
            (None, body.rule.rule_name, body.rule.event_type_filter, body.rule.condition, "body.rule")
        )
    elif body.rule_id is not None:
        rule = await store.get_rule(pool, body.rule_id)
        if rule is None or rule.app_id != body.app_id:
            raise _not_found(body.rule_id)
        candidates.append(
            (rule.rule_id, rule.rule_name, rule.event_type_filter, rule.condition, "body.rule_id")
        )
    else:
        for rule in await store.list_rules(pool, body.app_id, include_inactive=False):
            candidates.append((rule.rule_id, rule.rule_name, rule.event_type_filter, rule.condition, "rule"))
    event = EventEnvelope(
        event_id=uuid.uuid4(),
        app_id=body.app_id,
        event_type=body.event.event_type,
        payload=body.event.payload,
        metadata=body.event.metadata,
        received_at=datetime.now(UTC),
    )
    document = as_document(event.model_dump_json())
    verdicts = []
    for rule_id, name, type_filter, condition, where in candidates:
        problems = condition_problems(condition, settings, f"{where}.condition")
        if problems:
            raise ApiError(422, "The rule's condition is invalid", problems)
        applied = applies(type_filter, event.event_type)
        reasons = explain(condition, document) if applied else [f"event_type_filter is {type_filter!r}"]
        verdicts.append(
            RuleVerdict(
                rule_id=rule_id,
                rule_name=name,
                applies=applied,
                matched=applied and compile_matcher(condition)(Document(document)),
                reasons=reasons,
            )
        )
    matched = sum(v.matched for v in verdicts)
    return SuccessResponse(message=f"{matched} of {len(verdicts)} rule(s) match", data=verdicts)
