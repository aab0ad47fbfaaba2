"""Cron schedules: each firing creates one instance with ``event.schedule`` set.

Schedules belong to a workflow's registration (``engine.register(..., schedules=[...])``) and
fire while its engine runs: they are the engine's own timers, beside sleeps and retry delays,
so they live with the engine rather than with the triggers that feed it from outside.

The instance id is derived from the workflow, the expression and the firing time, so when
several workers fire the same schedule, the store keeps exactly one instance per firing.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from croniter import croniter

from ._cancel import reraise_if_cancelling
from .binding import WorkflowBinding
from .clock import Clock
from .errors import ValidationError

log = logging.getLogger("perdure")


def validate_cron(expression: object) -> str:
    if not isinstance(expression, str) or not 1 <= len(expression) <= 256:
        raise ValidationError(f"cron schedule {expression!r} must be a string of 1-256 characters")
    if not croniter.is_valid(expression):
        raise ValidationError(f"cron schedule {expression!r} is not a valid cron expression (e.g. '*/30 * * * *')")
    return expression


def next_firing(expression: str, after: float) -> float:
    base = datetime.fromtimestamp(after, tz=UTC)
    return float(croniter(expression, base).get_next(float))


def firing_id(expression: str, when: float) -> str:
    digest = hashlib.sha1(expression.encode()).hexdigest()[:8]
    stamp = datetime.fromtimestamp(when, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"cron-{digest}-{stamp}"


async def run_schedule(binding: WorkflowBinding, clock: Clock, expression: str) -> None:
    """Fire ``expression`` for ``binding``'s workflow forever (until cancelled). Firings missed
    while no worker ran are not made up, as with Cloudflare's cron triggers."""
    after = clock.now()
    while True:
        when = next_firing(expression, after)
        await clock.sleep(when - clock.now())
        try:
            await binding.create_many(
                [{"id": firing_id(expression, when), "params": {}}],
                skip_existing=True,
                trigger="cron",
                schedule={"cron": expression, "scheduled_time": when},
            )
        except Exception:
            reraise_if_cancelling()
            log.exception("perdure: cron firing %s of %s failed", expression, binding.name)
        after = when
