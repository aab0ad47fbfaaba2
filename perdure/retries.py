"""Step configuration: defaults, key-by-key merging, validation and backoff delays (SPEC §1.2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .durations import parse_duration
from .errors import ValidationError

DEFAULT_CONFIG: dict[str, Any] = {
    "retries": {"limit": 5, "delay": "10 seconds", "backoff": "exponential"},
    "timeout": "10 minutes",
}
BACKOFFS = ("constant", "linear", "exponential")
_TOP_KEYS = {"retries", "timeout"}
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
        raise ValidationError(f"step {step!r}: unknown config key(s) {sorted(unknown)}; allowed: 'retries', 'timeout'")
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
    try:
        parse_duration(retries["delay"], what=f"step {step!r}: 'retries.delay'")
    except ValidationError:
        raise
    if retries["backoff"] not in BACKOFFS:
        raise ValidationError(
            f"step {step!r}: 'retries.backoff' must be one of {', '.join(BACKOFFS)}, got {retries['backoff']!r}"
        )
    timeout = parse_duration(config["timeout"], what=f"step {step!r}: 'timeout'")
    if timeout <= 0:
        raise ValidationError(f"step {step!r}: 'timeout' must be greater than zero, got {config['timeout']!r}")


def retry_delay(config: Mapping[str, Any], retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (1 after the first failure). No jitter."""
    retries = config["retries"]
    base = parse_duration(retries["delay"])
    backoff = retries["backoff"]
    if backoff == "constant":
        return base
    if backoff == "linear":
        return base * retry
    return float(base * 2 ** (retry - 1))


def timeout_seconds(config: Mapping[str, Any]) -> float:
    return parse_duration(config["timeout"])
