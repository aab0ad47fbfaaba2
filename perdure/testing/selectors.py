"""Checking what a test hands the modifiers: step selectors, ``times``, events, errors.

Every problem is a :class:`ValueError` (:class:`perdure.ValidationError`) that names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import validators
from ..errors import ValidationError
from ..modifiers import Selector


def selector(value: object, what: str) -> Selector:
    """``{"name": str, "index": int = 1}`` (the n-th step of that name) -> ``(name, index)``."""
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{what}: a step selector is a mapping {{'name': str, 'index'?: int}}, got {type(value).__name__}"
        )
    unknown = set(value) - {"name", "index"}
    if unknown:
        raise ValidationError(
            f"{what}: unknown key(s) {sorted(map(str, unknown))} in step selector {dict(value)!r}; "
            "allowed: 'name', 'index'"
        )
    if "name" not in value:
        raise ValidationError(f"{what}: step selector {dict(value)!r} has no 'name'")
    try:
        name = validators.step_name(value["name"])
    except ValidationError as exc:
        raise ValidationError(f"{what}: {exc}") from None
    index = value.get("index", 1)
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValidationError(
            f"{what}: a step selector's 'index' (the n-th step of that name) is an integer >= 1, got {index!r}"
        )
    return name, index


def selectors(value: object, what: str) -> list[Selector] | None:
    """``None`` (every step) or a non-empty list of selectors."""
    if value is None:
        return None
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise ValidationError(
            f"{what}: steps is a list of step selectors [{{'name': ...}}] (or omitted for all), "
            f"got {type(value).__name__}"
        )
    if not value:
        raise ValidationError(f"{what}: steps is an empty list; omit it to mean every step")
    return [selector(item, what) for item in value]


def times(value: object, what: str) -> int | None:
    """``None`` (every attempt) or how many attempts, an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what}: times is an integer >= 1 (or omitted for every attempt), got {value!r}")
    if value < 1:
        raise ValidationError(f"{what}: times must be >= 1 (omit it for every attempt), got {value}")
    return value


def error(value: object, what: str) -> BaseException:
    if not isinstance(value, Exception):
        raise ValidationError(
            f"{what}: the error is an exception instance, such as RuntimeError('down'), got {value!r}"
        )
    return value


def result(value: Any, what: str) -> Any:
    """The value a mocked step returns, as the step would store it (JSON, decoded again)."""
    return json.loads(validators.encode_json(value, f"{what} result"))


def event(value: object) -> tuple[str, str]:
    """``{"type": str, "payload"?: JSON}`` -> ``(type, payload as JSON)``."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"mock_event: an event is a mapping {{'type', 'payload'}}, got {type(value).__name__}")
    unknown = set(value) - {"type", "payload"}
    if unknown:
        raise ValidationError(
            f"mock_event: unknown key(s) {sorted(map(str, unknown))} in {dict(value)!r}; allowed: 'type', 'payload'"
        )
    if "type" not in value:
        raise ValidationError(f"mock_event: the event {dict(value)!r} has no 'type'")
    try:
        event_type = validators.event_type(value["type"])
    except ValidationError as exc:
        raise ValidationError(f"mock_event: {exc}") from None
    return event_type, validators.encode_json(value.get("payload"), "mock_event payload")
