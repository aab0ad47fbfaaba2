"""Flow control: how many instances of a workflow run at once, how fast they start, how fast a
step may call a shared resource, and which queued instance goes first.

Like DBOS queues, Hatchet's concurrency keys and Temporal's task-queue rate limits, in
Cloudflare's vocabulary::

    engine.register(Sync, name="sync", concurrency=20, concurrency_per_key=1,
                    rate_limit={"limit": 100, "period": "1 minute"})
    await sync.create(params=..., concurrency_key="tenant-42", priority=5)

    engine.rate_limit("openai", limit=60, period="1 minute")
    await step.do("ask", ask, config={"rate_limit": "openai"})

* ``concurrency``: at most that many instances of the workflow *running* at once, across every
  worker on the database (a ``waiting`` instance, asleep or waiting for an event, holds no
  slot). The rest stay ``queued``.
* ``concurrency_per_key``: at most that many running with one ``concurrency_key``; queued
  instances are taken round-robin across keys, so one busy key does not starve the others.
  Instances created without a key count only towards ``concurrency``.
* ``rate_limit`` (of the workflow): at most ``limit`` first starts in any window of ``period``.
* ``engine.rate_limit(name, ...)``: a limit shared by all workers of the database; each attempt
  of a step with ``config={"rate_limit": name}`` takes a slot first. Over the limit, the step
  *waits* for its slot (the instance is ``waiting``, holding no worker); it never fails for it.
* ``priority``: among the queued instances of a workflow, lower runs first (default 0; woken
  instances still come before queued ones).

Instances of a workflow with limits never wait in memory (its ``fast_wait`` is 0): every
sleep, retry delay and event wait suspends, so its slot goes to the next instance, and every
resumption is claimed within the limits again. The store keeps the limits with the workflow, so
``perdure --db … workflows`` and the dashboard in another process say why instances wait
(:meth:`perdure.store.base.Store.queued_reasons`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import validators
from .durations import parse_duration
from .errors import ValidationError
from .records import FlowLimits

MAX_PRIORITY = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
MAX_KEY_LENGTH = 256
#: The control characters (C0, DEL, C1) a concurrency key may not contain, as a regex class
#: body: the REST API's schema states the same rule as a pattern. Lone surrogates (which no
#: database stores as text) are refused too; a JSON body cannot bring one (perdure.server.api).
KEY_CONTROL = r"\x00-\x1f\x7f-\x9f"
_KEY_FORBIDDEN_RE = re.compile(f"[{KEY_CONTROL}\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` slots in any window of ``period`` seconds."""

    limit: int
    period: float


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def parse_rate_limit(value: Any, what: str) -> RateLimit:
    """``{"limit": n, "period": duration}`` (a duration: seconds or ``"1 minute"``)."""
    if not isinstance(value, Mapping) or set(value) != {"limit", "period"}:
        raise ValidationError(f"{what} must be a mapping {{'limit': int, 'period': duration}}, got {value!r}")
    limit = _positive_int(value["limit"], f"{what}['limit']")
    period = parse_duration(value["period"], what=f"{what}['period']")
    if period <= 0:
        raise ValidationError(f"{what}['period'] must be longer than zero, got {value['period']!r}")
    return RateLimit(limit, float(period))


def flow_limits(concurrency: Any, concurrency_per_key: Any, rate_limit: Any) -> FlowLimits | None:
    """``register()``'s flow-control options, validated; None when there are none."""
    if concurrency is None and concurrency_per_key is None and rate_limit is None:
        return None
    total = None if concurrency is None else _positive_int(concurrency, "register(concurrency=)")
    per_key = (
        None if concurrency_per_key is None else _positive_int(concurrency_per_key, "register(concurrency_per_key=)")
    )
    if total is not None and per_key is not None and per_key > total:
        raise ValidationError(f"register(concurrency_per_key={per_key}) cannot exceed register(concurrency={total})")
    starts = None if rate_limit is None else parse_rate_limit(rate_limit, "register(rate_limit=)")
    return FlowLimits(
        concurrency=total,
        per_key=per_key,
        start_limit=None if starts is None else starts.limit,
        start_period=None if starts is None else starts.period,
    )


def limits_as_dict(limits: FlowLimits | None) -> dict[str, Any] | None:
    """What the store keeps with the workflow, and the API shows."""
    if limits is None:
        return None
    shown: dict[str, Any] = {}
    if limits.concurrency is not None:
        shown["concurrency"] = limits.concurrency
    if limits.per_key is not None:
        shown["concurrency_per_key"] = limits.per_key
    if limits.start_limit is not None:
        shown["rate_limit"] = {"limit": limits.start_limit, "period": limits.start_period}
    return shown


def limits_from_dict(stored: Mapping[str, Any] | None) -> FlowLimits | None:
    """The inverse of :func:`limits_as_dict` (a workflow as another process registered it)."""
    if not stored:
        return None
    rate = stored.get("rate_limit") or {}
    return FlowLimits(
        concurrency=stored.get("concurrency"),
        per_key=stored.get("concurrency_per_key"),
        start_limit=rate.get("limit"),
        start_period=rate.get("period"),
    )


def priority(value: Any) -> int:
    """A ``create(priority=)``: an integer from 0 (the default, first) to 2**31 - 1."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():  # JSON Schema: 3.0 is an integer
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise ValidationError(f"priority must be an integer from 0 to {MAX_PRIORITY} (lower runs first), got {value!r}")
    return value


def concurrency_key(value: Any) -> str | None:
    """A ``create(concurrency_key=)``: a non-empty string of at most 256 characters, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"concurrency_key must be a non-empty string of at most {MAX_KEY_LENGTH} characters, got {value!r:.80}"
        )
    if _KEY_FORBIDDEN_RE.search(value):
        raise ValidationError(
            f"concurrency_key must not contain control characters or lone surrogates, got {value!r:.80}"
        )
    return value


def rate_limit_name(value: Any) -> str:
    """The name of a step rate limit: the rules of a step name."""
    if not isinstance(value, str):
        raise ValidationError(f"a rate limit's name must be a string, got {type(value).__name__}")
    validators.step_name(value)
    return value
