"""Turning exceptions into stored records and back (SPEC §1.5)."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import NonRetryableError, StepError


def error_info(exc: BaseException) -> dict[str, str]:
    """``{"name", "message", "module", "qualname"}`` of an exception, for storage."""
    cls = type(exc)
    message = exc.message if isinstance(exc, (NonRetryableError, StepError)) else str(exc)
    name = exc.name if isinstance(exc, (NonRetryableError, StepError)) else cls.__name__
    return {"name": name, "message": message, "module": cls.__module__, "qualname": cls.__qualname__}


def public_error(info: dict[str, Any] | None) -> dict[str, str] | None:
    """The ``{"name", "message"}`` form that ``status()`` shows."""
    if info is None:
        return None
    return {"name": str(info.get("name", "Error")), "message": str(info.get("message", ""))}


def rebuild_error(info: dict[str, Any]) -> Exception:
    """Recreate a stored exception: the same class when it can be imported and built from its
    message (so ``except ValueError:`` still matches on replay), else a :class:`StepError`."""
    name = str(info.get("name", "Error"))
    message = str(info.get("message", ""))
    module, qualname = info.get("module"), info.get("qualname")
    if module and qualname:
        try:
            target: Any = importlib.import_module(str(module))
            for part in str(qualname).split("."):
                target = getattr(target, part)
            if isinstance(target, type) and issubclass(target, Exception):
                if issubclass(target, NonRetryableError):
                    return target(message, name)
                rebuilt = target(message)
                if str(rebuilt) == message:
                    return rebuilt
        except Exception:  # any failure to rebuild falls back to StepError
            pass
    return StepError(name, message)
