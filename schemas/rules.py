"""Routing rules and the delivery messages the router produces for them."""

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    model_validator,
)

from schemas.events import AppId, DestinationType, EventEnvelope, JsonObject

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)
MAX_IN_FLIGHT = 64  # a webhook destination's max_in_flight, at most
MAX_PER_SECOND = 10_000.0  # and its max_per_second


def _integer_as_text(value: Any) -> Any:
    """The original API's application ids were integers: ``1`` is the application ``"1"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


RuleAppId = Annotated[
    AppId,
    BeforeValidator(_integer_as_text),
    Field(description="The application's id; an integer (as the original API's) is taken as its text."),
]


class RuleFields(BaseModel):
    """What a client sends to create a rule."""

    model_config = ConfigDict(extra="forbid")

    app_id: RuleAppId
    rule_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    event_type_filter: Annotated[str | None, Field(max_length=100, pattern=r"^[^\x00]+$")] = Field(
        default=None, description="Only events of this type; null: every event."
    )
    condition: JsonObject = Field(
        default_factory=dict, description="A MongoDB-style query on the event; {} matches every event."
    )
    destination_type: DestinationType
    destination_config: JsonObject = Field(
        description='queue: {"topic"}; webhook: {"url", "headers"?, "max_in_flight"?, "max_per_second"?};'
        ' database_table: {"table"}'
    )
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000, description="Higher runs first.")
    is_active: bool = True

    @model_validator(mode="after")
    def _normalise_destination(self) -> "RuleFields":
        """Accept the seed's names (``queue_name``, ``table_name``) and keep one spelling."""
        config = dict(self.destination_config)
        if self.destination_type == "queue" and "topic" not in config and "queue_name" in config:
            config["topic"] = config.pop("queue_name")
        if self.destination_type == "database_table" and "table" not in config and "table_name" in config:
            config["table"] = config.pop("table_name")
        self.destination_config = config
        return self


class RuleUpdate(BaseModel):
    """What a client sends to change a rule: the fields it gives change, the others keep their
    values (``null`` clears ``event_type_filter``). Validated as a whole rule once merged."""

    model_config = ConfigDict(extra="forbid")

    app_id: RuleAppId | None = Field(default=None, description="If given, the rule's own: it cannot move.")
    rule_name: str | None = None
    event_type_filter: str | None = None
    condition: JsonObject | None = None
    destination_type: DestinationType | None = None
    destination_config: JsonObject | None = None
    priority: int | None = None
    is_active: bool | None = None

    def applied_to(self, rule: RuleFields) -> dict[str, Any]:
        """The rule's fields with this change made, for ``RuleFields`` to validate."""
        fields = rule.model_dump(include=set(RuleFields.model_fields))
        return {**fields, **self.model_dump(exclude_unset=True)}


class RoutingRule(RuleFields):
    """A stored rule, as the API shows it and the routing-rules topic carries it."""

    rule_id: int
    created_at: datetime
    updated_at: datetime
    destination_disabled_at: datetime | None = Field(
        default=None, description="Set when the webhook dispatcher gave up on the endpoint; a PUT clears it."
    )
    destination_disabled_reason: str | None = None


class SavedRule(RoutingRule):
    """A rule just created, replaced or given a new secret."""

    webhook_secret: str | None = Field(
        default=None,
        description="The webhook signing secret (Standard Webhooks, whsec_...): shown only when it is made.",
    )


# Where a subject's value is: a path into the payload (``payload.user_id``, ``payload.user.email``).
SUBJECT_PATH = r"^payload(\.[^.\s\x00-\x1f\x7f]{1,100}){1,10}$"
# A subject's value: a string or a 64-bit integer, as ids are (JSON's other values are not ids).
SubjectValue = (
    Annotated[StrictStr, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")]
    | Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
)


def suppression_hash(path: str, value: SubjectValue) -> str:
    """What is kept of a suppressed value: the SHA-256 of its path and its JSON."""
    return hashlib.sha256(f"{path}\x00{orjson.dumps(value).decode()}".encode()).hexdigest()


def value_at(event: EventEnvelope, path: str) -> Any:
    """The value at ``path`` (``SUBJECT_PATH``) of the event; None when it has none."""
    found: Any = {"payload": event.payload}
    for key in path.split("."):
        if not isinstance(found, dict):
            return None
        found = found.get(key)
    return found


class Suppression(BaseModel):
    """Events whose value at ``path`` hashes (``suppression_hash``) to one of these are dropped."""

    path: str
    value_hashes: list[str]


class AppRules(BaseModel):
    """The value on the compacted ``routing-rules`` topic (key: app_id): all of an app's rules,
    and the values it suppresses."""

    app_id: str
    rules: list[RoutingRule]
    suppressions: list[Suppression] = Field(default_factory=list)


class Delivery(BaseModel):
    """One match of one rule: what the router sends to the destination's topic."""

    delivery_id: UUID = Field(description="Stable for (event, rule): consumers dedupe on it.")
    rule_id: int
    destination_type: DestinationType
    destination_config: dict[str, Any]
    event: EventEnvelope


def destination_problems(kind: str, config: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, reason) for each problem of a destination config."""
    problems: list[tuple[str, str]] = []
    if kind == "queue":
        allowed = {"topic"}
        topic = config.get("topic")
        if not isinstance(topic, str) or not TOPIC_NAME.fullmatch(topic):
            problems.append(("topic", "a Kafka topic name: 1-200 letters, digits, '.', '_' or '-'"))
        elif topic.startswith("__") or topic in (".", ".."):
            problems.append(("topic", "an internal topic name cannot be a destination"))
    elif kind == "webhook":
        allowed = {"url", "headers", "max_in_flight", "max_per_second"}
        url = config.get("url")
        if not isinstance(url, str) or len(url) > 2000 or not URL.fullmatch(url):
            problems.append(("url", "an http:// or https:// URL"))
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
            for k, v in headers.items()
        ):
            problems.append(("headers", "an object of header names to string values"))
        in_flight = config.get("max_in_flight", 1)
        if (
            not isinstance(in_flight, int)
            or isinstance(in_flight, bool)
            or not 1 <= in_flight <= MAX_IN_FLIGHT
        ):
            problems.append(
                ("max_in_flight", f"an integer from 1 to {MAX_IN_FLIGHT}: requests in flight at once")
            )
        rate = config.get("max_per_second", 1.0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= MAX_PER_SECOND:
            problems.append(
                (
                    "max_per_second",
                    f"a number above 0, at most {MAX_PER_SECOND:g}: requests started per second",
                )
            )
    else:
        allowed = {"table"}
        table = config.get("table")
        if not isinstance(table, str) or not TABLE_NAME.fullmatch(table):
            problems.append(("table", "a table name: lowercase letters, digits and '_', at most 63"))
    problems.extend((key, "unknown setting for this destination") for key in sorted(set(config) - allowed))
    return problems
