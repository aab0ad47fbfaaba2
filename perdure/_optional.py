"""Optional dependencies: a feature whose extra is not installed says which one to install.

``pip install perdure`` is the engine, the SQLite backend and the CLI; the PostgreSQL backend,
the server (REST API, dashboard, metrics), the Redis Streams trigger and OpenTelemetry come
with the extras ``postgres``, ``server``, ``redis`` and ``otel``. :func:`require_extra` is
called where such a feature starts, so that the user reads one line naming the extra
(:class:`~perdure.errors.MissingExtraError`), not a traceback::

    the PostgreSQL backend needs the postgres extra: pip install 'perdure[postgres]'

OpenTelemetry is the exception: without it, :mod:`perdure.tracing` makes no spans and says
nothing, since tracing is never asked for explicitly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# The modules each extra installs (what `require_extra` checks), by their import names.
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg", "psycopg_pool"),
    "server": ("starlette", "uvicorn", "jinja2", "prometheus_client"),
    "redis": ("redis",),
    "otel": ("opentelemetry",),
}


def missing_extra(extra: str, feature: str, module: str | None = None) -> MissingExtraError:
    """The error that says ``feature`` needs ``extra`` (``module`` is the one that did not import)."""
    return MissingExtraError(
        f"{feature} needs the {extra} extra: pip install 'perdure[{extra}]'", extra=extra, module=module
    )


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (a module of ``extra``) for ``feature``, or raise
    :class:`~perdure.errors.MissingExtraError` if it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: not a missing extra
        raise missing_extra(extra, feature, missing) from None


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`~perdure.errors.MissingExtraError` unless every module of ``extra``
    (see :data:`EXTRAS`) imports: ``require_extra("server", "perdure serve")``."""
    for module in EXTRAS[extra]:
        require(module, extra, feature)
