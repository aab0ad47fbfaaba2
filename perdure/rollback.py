"""Rollback (saga) handlers: Cloudflare's ``rollback`` / ``rollbackConfig`` in Python.

``await step.do("charge", charge, rollback=refund, rollback_config={...})`` registers ``refund``
for the step ``charge`` once that step finished in this run (or was read back from the store
on replay); a step that failed for good registers it too, with ``output=None``. When the
instance fails (an uncaught error in ``run()``), the engine runs the registered handlers in
reverse order of their steps' start, each as a durable step of kind ``rollback`` with the same
name and count: retried by its own config (``rollback_config``: ``retries`` and ``timeout``,
defaults as for any step), memoised, and resumed after a crash like any step, so a handler
that finished never runs again. The first handler that fails for good stops the chain, as on
Cloudflare; the instance still ends ``errored`` with the error that failed it.

A handler's parameters are filled by name from ``ctx`` (the step's context: name, count, last
attempt, config), ``error`` (what failed the instance) and ``output`` (the step's result).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .dag import parameters
from .errors import ValidationError
from .retries import resolve_config

HANDLER_PARAMETERS = ("ctx", "error", "output")


@dataclass
class Handler:
    """A rollback handler registered for one finished step of this run."""

    name: str
    count: int
    started_at: float
    fn: Callable[..., Any]
    config: dict[str, Any]
    ctx: dict[str, Any]
    output: Any

    def arguments(self, error: BaseException) -> dict[str, Any]:
        offered = {"ctx": self.ctx, "error": error, "output": self.output}
        return {name: offered[name] for name in _parameters(self.fn)}


def check_handler(step: str, fn: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a rollback handler and its config; return the resolved config."""
    if not callable(fn):
        raise ValidationError(f"step {step!r}: rollback must be a function, got {type(fn).__name__}")
    for name in parameters(fn):
        if name not in HANDLER_PARAMETERS:
            raise ValidationError(
                f"step {step!r}: the rollback handler's parameter {name!r} is not one the engine "
                "passes; use 'ctx', 'error' and/or 'output'"
            )
    if config is not None and isinstance(config, Mapping) and set(config) - {"retries", "timeout"}:
        raise ValidationError(
            f"step {step!r}: unknown rollback_config key(s) {sorted(set(config) - {'retries', 'timeout'})}; "
            "allowed: 'retries', 'timeout'"
        )
    return resolve_config(f"{step} (rollback_config)", config)


def _parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        return [n for n in inspect.signature(fn).parameters if n in HANDLER_PARAMETERS]
    except (TypeError, ValueError):
        return []


class Registry:
    """The handlers registered so far in this run, by step."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, int], Handler] = {}

    def register(self, handler: Handler) -> None:
        self._handlers[(handler.name, handler.count)] = handler

    def __bool__(self) -> bool:
        return bool(self._handlers)

    def in_order(self) -> list[Handler]:
        """Newest step start first (Cloudflare's LIFO order); ties by the later call first."""
        return sorted(self._handlers.values(), key=lambda h: (h.started_at, h.count), reverse=True)
