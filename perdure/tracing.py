"""OpenTelemetry spans: one per run of an instance, one per step attempt.

Spans are made only when the ``opentelemetry`` API is installed (``pip install
'perdure[otel]'``) and reach an exporter only once the application configures an SDK
``TracerProvider``; otherwise every call here is a cheap no-op. An exception that leaves a span
is recorded on it with an error status; a run that suspends (to sleep or wait) is not an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # the optional dependency is not installed
    trace = None  # type: ignore[assignment]


_tracers: dict[int, Any] = {}
_NO_SPAN = contextlib.nullcontext()
_UNKNOWN = object()
# Asked once: OpenTelemetry makes a provider from this variable at its first lookup.
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _tracer() -> Any:
    """The tracer of the configured provider, or None while no SDK provider is set (the
    default proxy would make no-op spans, which still cost a step ~20% of its time)."""
    if trace is None:
        return None
    # The fast answer while nothing is configured: the global that set_tracer_provider() sets
    # (once), read without the environment lookup get_tracer_provider() repeats on every call
    # (~5% of a woken 1-step instance's time). An API version without that global takes the
    # public path.
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _PROVIDER_FROM_ENVIRONMENT:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = provider.get_tracer("perdure")
    return tracer


def span(name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """A span named ``name`` around the ``with`` block, or a shared no-op when none is made."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return _span(tracer, name, attributes)


@contextlib.contextmanager
def _span(tracer: Any, name: str, attributes: dict[str, Any]) -> Iterator[None]:
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield
        except Exception as exc:  # Stop (suspend) and cancellation are BaseExceptions: not errors
            current.record_exception(exc)
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
