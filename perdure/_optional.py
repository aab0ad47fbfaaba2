"""Optional dependencies: a feature whose extra is not installed says which one to install.

``pip install perdure`` is the engine, the SQLite backend and the CLI; the PostgreSQL backend,
the server (REST API, dashboard, metrics), the Redis Streams trigger and OpenTelemetry come
with the extras ``postgres``, ``server``, ``redis`` and ``otel``. :func:`require` is called
where such a feature starts, so the user reads one line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib

from .errors import MissingExtraError

# The modules each extra installs (what `require_extra` checks).
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg", "psycopg_pool"),
    "server": ("starlette", "uvicorn", "jinja2", "prometheus_client"),
    "redis": ("redis",),
    "otel": ("opentelemetry",),
}


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`~perdure.errors.MissingExtraError` unless every module of ``extra`` imports."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"{feature} needs the {extra} extra ({exc.name or module} is not installed): "
                f"pip install 'perdure[{extra}]'",
                extra=extra,
            ) from None
