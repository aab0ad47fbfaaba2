"""How long finished instances are kept, and the sweep that deletes them afterwards.

Cloudflare keeps an instance's state for a while after it finishes; here the time is the
user's: ``create(..., retention={"success_retention": "7 days", "error_retention": "30 days"})``
for one instance, ``register(..., retention=...)`` for every instance a workflow's binding
creates without one. ``success_retention`` applies to ``complete`` instances,
``error_retention`` to ``errored`` and ``terminated`` ones; a missing key keeps them for ever.
When an instance finishes, the store stamps ``expires_at`` (its end plus the retention of its
outcome); a restart clears it.

:class:`RetentionSweep` runs in every started engine and deletes expired instances with all
their rows (steps, events, history), ``batch`` at a time with a pause between batches, so that
step commits go on beside a sweep of millions. On a shared database one worker sweeps at a
time: it holds the role ``"retention"`` (:class:`perdure.roles.Role`), renewed before each
batch, and another takes it over when it stops renewing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._cancel import reraise_if_cancelling
from .durations import parse_duration
from .errors import ValidationError
from .roles import Role

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("perdure.retention")

KEYS = ("success_retention", "error_retention")


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds a finished instance is kept: after success, after an error or termination."""

    success: float | None = None
    error: float | None = None


# The bounds a retention given as milliseconds or as text keeps to (the REST API's schema states
# them too, so that what it documents as valid is what is accepted): at least 1 ms, at most
# MAX_RETENTION_MS (about 31,700 years); text of at most MAX_RETENTION_TEXT characters, so a
# value with hundreds of zeros cannot round to 0 seconds.
MIN_RETENTION_MS = 1
MAX_RETENTION_MS = 10**15
MAX_RETENTION_TEXT = 64


def _short(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"


def check_retention_bounds(raw: object, what: str) -> None:
    """Refuse a number of milliseconds outside [1, MAX_RETENTION_MS] or a text too long."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not MIN_RETENTION_MS <= raw <= MAX_RETENTION_MS:
            raise ValidationError(
                f"{what} must be between {MIN_RETENTION_MS} and {MAX_RETENTION_MS} milliseconds, got {_short(raw)}"
            )
    elif isinstance(raw, str) and len(raw) > MAX_RETENTION_TEXT:
        raise ValidationError(f"{what} must be at most {MAX_RETENTION_TEXT} characters, got {len(raw)}")


def parse_retention(value: object, what: str = "retention") -> Retention | None:
    """``{"success_retention"?: duration, "error_retention"?: duration}`` (None: keep for ever)::

    parse_retention({"success_retention": "7 days"})   # Retention(success=604800.0, error=None)
    """
    if value is None:
        return None
    if isinstance(value, Retention):
        return value
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{what} must be a mapping with 'success_retention' and/or 'error_retention', got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValidationError(f"unknown key(s) {unknown} in {what}; allowed: 'success_retention', 'error_retention'")
    kept: list[float | None] = []
    for key in KEYS:
        raw: Any = value.get(key)
        if raw is None:
            kept.append(None)
            continue
        check_retention_bounds(raw, f"{what}[{key!r}]")
        seconds = parse_duration(raw, what=f"{what}[{key!r}]")
        if seconds <= 0:
            raise ValidationError(f"{what}[{key!r}] must be a duration > 0, got {raw!r}")
        kept.append(seconds)
    return Retention(kept[0], kept[1])


class RetentionSweep:
    """Deletes expired instances in the background (see the module doc)."""

    def __init__(
        self, store: Store, owner: str, clock_now: Any, *, every: float = 5.0, batch: int = 200, pause: float = 0.01
    ) -> None:
        self._store = store
        self._now = clock_now  # wall-clock time, as stored timestamps are
        self.every = every
        self.batch = batch
        self.pause = pause
        self.deleted = 0  # instances this sweep deleted (for tests and logs)
        self.role = Role(store, "retention", owner, 3 * every, clock_now)

    async def sweep_once(self) -> int:
        """Delete every instance expired now, a batch at a time, while this worker holds the
        role (renewed before each batch, so a long sweep stays one worker's); how many."""
        total = 0
        while await self.role.hold():
            n = await self._store.delete_expired(self._now(), self.batch)
            total += n
            if n < self.batch:
                break
            await asyncio.sleep(self.pause)  # let step commits through between two batches
        self.deleted += total
        return total

    async def run(self) -> None:
        while True:
            try:
                now = self._now()
                if await self._store.any_expired(now) and await self.role.hold():
                    n = await self.sweep_once()
                    if n:
                        log.info("perdure: deleted %d instances past their retention", n)
            except asyncio.CancelledError:
                raise
            except Exception:
                reraise_if_cancelling()
                log.exception("perdure retention sweep failed; retrying")
            await asyncio.sleep(self.every)
