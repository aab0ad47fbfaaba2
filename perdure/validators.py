"""Input rules of SPEC §1.7, checked at the API boundary before anything is stored.

Every check raises :class:`~perdure.errors.ValidationError` (a ``ValueError``) whose message
names the rule that was broken and what is allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import ValidationError
from .records import DO, SLEEP, WAIT, StepKind

MAX_INSTANCE_ID = 100
MAX_WORKFLOW_NAME = 64
MAX_STEP_NAME = 256
MAX_EVENT_TYPE = 100
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_BATCH = 100
MAX_SLEEP_SECONDS = 365 * 86400.0
DEFAULT_STEP_LIMIT = 10_000

_ID_CHAR = "[a-zA-Z0-9_-]"
_ID_RE = re.compile(rf"[a-zA-Z0-9_]{_ID_CHAR}*")
_ID_PREFIX_RE = re.compile(rf"{_ID_CHAR}*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_pattern(value: object, what: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_len:
        raise ValidationError(f"{what} {value[:120]!r} must be 1-{max_len} characters long (got {len(value)})")
    if not _ID_RE.fullmatch(value):
        raise ValidationError(
            f"{what} {value!r} may contain only letters, digits, '_' and '-', and must not start with '-'"
        )
    return value


def instance_id(value: object) -> str:
    return _check_pattern(value, "instance id", MAX_INSTANCE_ID)


def instance_id_prefix(value: object) -> str | None:
    """The start of an instance id, for searching: the characters ids may hold, at most as long
    as an id; empty means no prefix."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(f"id_prefix must be a string, got {type(value).__name__}")
    if len(value) > MAX_INSTANCE_ID:
        raise ValidationError(f"id_prefix is {len(value)} characters long; ids have at most {MAX_INSTANCE_ID}")
    if not _ID_PREFIX_RE.fullmatch(value):
        raise ValidationError(f"id_prefix {value[:60]!r} may contain only letters, digits, '_' and '-', as ids do")
    return value


def workflow_name(value: object) -> str:
    return _check_pattern(value, "workflow name", MAX_WORKFLOW_NAME)


def event_type(value: object) -> str:
    return _check_pattern(value, "event type", MAX_EVENT_TYPE)


def step_name(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"step name must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_STEP_NAME:
        raise ValidationError(f"step name {value[:120]!r} must be 1-{MAX_STEP_NAME} characters long (got {len(value)})")
    if _CONTROL_RE.search(value):
        raise ValidationError(f"step name {value!r} must not contain control characters")
    return value


def encode_json(value: Any, what: str, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """Encode ``value`` as compact JSON, enforcing JSON types and the size limit."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no store takes it as text
        raise ValidationError(f"{what} has a string that is not valid Unicode (a lone surrogate)") from None
    if size > limit:
        raise ValidationError(f"{what} is {size} bytes JSON-encoded; the limit is {limit} bytes (1 MiB)")
    return text


def batch_size(items: object) -> list[Any]:
    if not isinstance(items, (list, tuple)):
        raise ValidationError("create_batch takes a list of {'id'?, 'params'?} mappings")
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValidationError(f"create_batch takes 1-{MAX_BATCH} items (got {len(items)})")
    return list(items)


def sleep_seconds(seconds: float, what: str) -> float:
    if seconds > MAX_SLEEP_SECONDS:
        raise ValidationError(f"{what} is {seconds:.0f} seconds; the limit is 365 days")
    return seconds


# Restarting from a step names it like Cloudflare's API: "do" (or "step"), "sleep", "waitForEvent".
_STEP_TYPES: dict[str, StepKind] = {"do": DO, "step": DO, "sleep": SLEEP, "waitForEvent": WAIT}


def from_step(value: object) -> tuple[StepKind, str, int] | None:
    """Check a restart's ``from_step`` (``{"name", "count"?: 1, "type"?: "do"}``); return the
    step's key ``(kind, name, count)``, or None when there is none."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError("from_step must be an object {name, count?, type?}")
    unknown = set(value) - {"name", "count", "type"}
    if unknown:
        raise ValidationError(f"unknown key(s) {sorted(unknown)} in from_step; allowed: name, count, type")
    name = step_name(value.get("name"))
    count = value.get("count", 1)
    if isinstance(count, float) and count.is_integer():  # JSON Schema: 3.0 is an integer
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(f"from_step count must be an integer >= 1, got {count!r}")
    kind = value.get("type", DO)
    if not isinstance(kind, str) or kind not in _STEP_TYPES:
        raise ValidationError(f"from_step type must be one of do, sleep, waitForEvent, got {kind!r}")
    return (_STEP_TYPES[kind], name, count)
