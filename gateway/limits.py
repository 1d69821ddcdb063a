"""The gateway's hard limits: pure checks of one event (the quotas: ``gateway.quotas``).

Every check returns the errors it found (field and reason) instead of raising, so that a batch can
report each item's own problems. Nothing rejected here reaches Kafka.
"""

import re
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import ErrorDetail
from vdip.settings import Settings


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int
    max_json_depth: int
    max_json_keys: int
    event_type_pattern: re.Pattern[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            max_event_bytes=settings.max_event_bytes,
            max_json_depth=settings.max_json_depth,
            max_json_keys=settings.max_json_keys,
            event_type_pattern=re.compile(settings.event_type_pattern),
        )


def json_shape(value: Any) -> tuple[int, int]:
    """(nesting depth, number of object keys at all levels) of a JSON value, without recursion.

    A scalar has depth 0; ``{}`` and ``[]`` have depth 1; each level of containers adds one.
    Walked a level at a time: the depth is the number of levels that hold a container.
    """
    depth = keys = 0
    level = [value]
    while True:
        below: list[Any] = []
        containers = False
        for item in level:
            if isinstance(item, dict):
                keys += len(item)
                below.extend(item.values())
                containers = True
            elif isinstance(item, list):
                below.extend(item)
                containers = True
        if not containers:
            return depth, keys
        depth += 1
        level = below


def check_event(
    event_type: str, payload: dict[str, Any], limits: Limits, where: str = "body"
) -> list[ErrorDetail]:
    """The limits one event breaks; ``where`` prefixes the field names (e.g. ``body.events.3``)."""
    errors = []
    if not limits.event_type_pattern.fullmatch(event_type):
        errors.append(
            ErrorDetail(
                field=f"{where}.event_type",
                reason=f"must match {limits.event_type_pattern.pattern}",
            )
        )
    size = len(orjson.dumps(payload))
    if size > limits.max_event_bytes:
        errors.append(
            ErrorDetail(
                field=f"{where}.payload",
                reason=f"is {size} bytes serialized; the limit is {limits.max_event_bytes}",
            )
        )
    depth, keys = json_shape(payload)
    if depth > limits.max_json_depth:
        errors.append(
            ErrorDetail(
                field=f"{where}.payload",
                reason=f"nests {depth} levels deep; the limit is {limits.max_json_depth}",
            )
        )
    if keys > limits.max_json_keys:
        errors.append(
            ErrorDetail(
                field=f"{where}.payload",
                reason=f"has {keys} keys; the limit is {limits.max_json_keys}",
            )
        )
    return errors
