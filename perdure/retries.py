"""Step configuration: defaults, key-by-key merging, validation and backoff delays (SPEC §1.2).

``retries.delay`` may be a function (Cloudflare's dynamic retry delay): ``delay(ctx, error)``,
sync or async, called once per failed attempt that will be retried, returns the base duration
that ``backoff`` then scales. A function cannot be stored, so the step's stored config holds
:data:`DYNAMIC_DELAY` in its place and the live function is read from the code on every run;
the ``ctx["config"]`` a step sees omits ``delay`` then.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .dag import parameters
from .durations import parse_duration
from .errors import NonRetryableDelayError, ValidationError

DYNAMIC_DELAY = "[dynamic]"
"""Stored in place of a delay function (as Cloudflare's local engine stores it)."""
DELAY_FUNCTION_TIMEOUT = 5.0
_DELAY_PARAMETERS = ("ctx", "error")

DEFAULT_CONFIG: dict[str, Any] = {
    "retries": {"limit": 5, "delay": "10 seconds", "backoff": "exponential"},
    "timeout": "10 minutes",
}
BACKOFFS = ("constant", "linear", "exponential")
_TOP_KEYS = {"retries", "timeout", "sensitive", "rate_limit"}
REDACTED = "[REDACTED]"
"""What a ``sensitive: "output"`` step's result reads as outside the workflow (Cloudflare's)."""
_RETRY_KEYS = {"limit", "delay", "backoff"}


def resolve_config(step: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``config`` into the defaults and validate it; errors name the step and the key."""
    resolved = _defaults()
    if config is None:
        return resolved
    if not isinstance(config, Mapping):
        raise ValidationError(f"step {step!r}: config must be a mapping, got {type(config).__name__}")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ValidationError(
            f"step {step!r}: unknown config key(s) {sorted(unknown)};"
            " allowed: 'retries', 'timeout', 'sensitive', 'rate_limit'"
        )
    if "retries" in config:
        retries = config["retries"]
        if not isinstance(retries, Mapping):
            raise ValidationError(f"step {step!r}: config 'retries' must be a mapping")
        unknown = set(retries) - _RETRY_KEYS
        if unknown:
            raise ValidationError(
                f"step {step!r}: unknown key(s) {sorted(unknown)} in 'retries'; allowed: 'limit', 'delay', 'backoff'"
            )
        resolved["retries"].update(retries)
    if "timeout" in config:
        resolved["timeout"] = config["timeout"]
    if "sensitive" in config:
        if config["sensitive"] != "output":
            raise ValidationError(
                f"step {step!r}: config 'sensitive' must be \"output\" (the step's result is then shown as "
                f"{REDACTED!r} everywhere but in the workflow), got {config['sensitive']!r}"
            )
        resolved["sensitive"] = "output"
    if config.get("rate_limit") is not None:  # the name of an engine.rate_limit() (perdure.flow)
        name = config["rate_limit"]
        if not isinstance(name, str) or not name:
            raise ValidationError(
                f"step {step!r}: config 'rate_limit' must be the name of an engine.rate_limit(), got {name!r}"
            )
        resolved["rate_limit"] = name
    _validate(step, resolved)
    return resolved


def _defaults() -> dict[str, Any]:
    # Built fresh each time (cheaper than deepcopy): callers may keep and mutate their copy.
    retries = DEFAULT_CONFIG["retries"]
    return {
        "retries": {"limit": retries["limit"], "delay": retries["delay"], "backoff": retries["backoff"]},
        "timeout": DEFAULT_CONFIG["timeout"],
    }


def _validate(step: str, config: dict[str, Any]) -> None:
    retries = config["retries"]
    limit = retries["limit"]
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError(f"step {step!r}: 'retries.limit' must be an integer >= 0, got {limit!r}")
    delay = retries["delay"]
    if callable(delay):
        _check_delay_function(step, delay)
    elif delay != DYNAMIC_DELAY:
        parse_duration(delay, what=f"step {step!r}: 'retries.delay'")
    if retries["backoff"] not in BACKOFFS:
        raise ValidationError(
            f"step {step!r}: 'retries.backoff' must be one of {', '.join(BACKOFFS)}, got {retries['backoff']!r}"
        )
    timeout = parse_duration(config["timeout"], what=f"step {step!r}: 'timeout'")
    if timeout <= 0:
        raise ValidationError(f"step {step!r}: 'timeout' must be greater than zero, got {config['timeout']!r}")


def _check_delay_function(step: str, delay: Callable[..., Any]) -> None:
    for name in parameters(delay):  # (a builtin without a signature is called with (ctx, error))
        if name not in _DELAY_PARAMETERS:
            raise ValidationError(
                f"step {step!r}: the 'retries.delay' function's parameter {name!r} is not one the "
                "engine passes; use 'ctx' and/or 'error'"
            )


def is_sensitive(config: Mapping[str, Any] | None) -> bool:
    """Whether a step's (stored) config hides its result: ``{"sensitive": "output"}``."""
    return bool(config) and config.get("sensitive") == "output"  # type: ignore[union-attr]


def has_dynamic_delay(config: Mapping[str, Any]) -> bool:
    return callable(config["retries"]["delay"])


def stored_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as it is stored with the step: a delay function becomes :data:`DYNAMIC_DELAY`."""
    if not has_dynamic_delay(config):
        return dict(config)
    return {**config, "retries": {**config["retries"], "delay": DYNAMIC_DELAY}}


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as a step's ``ctx["config"]`` shows it: without a dynamic delay."""
    delay = config["retries"]["delay"]
    if not callable(delay) and delay != DYNAMIC_DELAY:
        return dict(config)
    retries = {k: v for k, v in config["retries"].items() if k != "delay"}
    return {**config, "retries": retries}


async def dynamic_base_delay(step: str, delay: Callable[..., Any], ctx: dict[str, Any], error: Exception) -> float:
    """Call a delay function (at most 5 seconds) and return its duration in seconds; raise
    :class:`NonRetryableDelayError` saying why when it raises, times out or returns junk."""
    offered = {"ctx": ctx, "error": error}
    try:
        names = [n for n in inspect.signature(delay).parameters if n in offered]
        call: Callable[[], Any] = lambda: delay(**{n: offered[n] for n in names})  # noqa: E731
    except (TypeError, ValueError):
        call = lambda: delay(ctx, error)  # noqa: E731
    prefix = f"The delay function for step {step!r}"
    try:
        async with asyncio.timeout(DELAY_FUNCTION_TIMEOUT):
            if inspect.iscoroutinefunction(delay):
                value = await call()
            else:
                value = await asyncio.to_thread(call)  # a plain function must not block the loop
                if inspect.isawaitable(value):
                    value = await value
    except TimeoutError:
        raise NonRetryableDelayError(f"{prefix} did not return within {DELAY_FUNCTION_TIMEOUT:g} seconds") from None
    except Exception as exc:
        raise NonRetryableDelayError(f"{prefix} threw an error: {type(exc).__name__}: {exc}") from None
    try:
        return parse_duration(value, what="the delay")
    except ValidationError:
        raise NonRetryableDelayError(
            f"{prefix} returned an invalid delay value {value!r} (expected a number of milliseconds, a "
            "timedelta or a duration string like '30 seconds')"
        ) from None


def retry_delay(config: Mapping[str, Any], retry: int, base: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1 after the first failure). No jitter.

    ``base``: the delay a delay function returned (in seconds), instead of ``retries.delay``."""
    retries = config["retries"]
    if base is None:
        base = parse_duration(retries["delay"])
    backoff = retries["backoff"]
    if backoff == "constant":
        return base
    if backoff == "linear":
        return base * retry
    return float(base * 2 ** (retry - 1))


def timeout_seconds(config: Mapping[str, Any]) -> float:
    return parse_duration(config["timeout"])
