"""Load an application's engine from a ``"module:attribute"`` string (as uvicorn loads apps).

``perdure serve myapp.workflows:engine`` imports ``myapp.workflows`` (the current directory is
on the import path) and takes its ``engine`` attribute. The attribute may be:

* an :class:`~perdure.Engine`;
* a function that takes no arguments and returns one (a factory; may be ``async``);
* any object with an ``engine`` attribute that is an Engine (an application object).

Every failure raises :class:`AppLoadError` with a message that says what to fix, except a
missing optional extra (an engine on ``postgresql://`` without ``perdure[postgres]``), which
stays a :class:`~perdure.errors.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from typing import Any

from ..engine import Engine
from ..errors import MissingExtraError


class AppLoadError(Exception):
    """The app string could not be turned into an Engine."""


def _resolve(spec: str) -> Any:
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise AppLoadError(f"app {spec!r} must look like 'module:attribute' (e.g. 'myapp.workflows:engine')")
    module_name, attribute = spec.split(":")
    if not module_name or not attribute:
        raise AppLoadError(f"app {spec!r} must look like 'module:attribute' (e.g. 'myapp.workflows:engine')")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import module {module_name!r}: no module named {exc.name!r}") from None
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def load_engine(spec: str) -> Engine:
    """The Engine that ``spec`` names (see the module docstring)."""
    target = _resolve(spec)
    if isinstance(target, Engine):
        return target
    engine = getattr(target, "engine", None)
    if isinstance(engine, Engine):
        return engine
    if callable(target):
        try:
            result = target()
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except MissingExtraError:
            raise
        except Exception as exc:
            raise AppLoadError(f"calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Engine):
            return result
        engine = getattr(result, "engine", None)
        if isinstance(engine, Engine):
            return engine
        raise AppLoadError(f"{spec!r} returned {type(result).__name__}, not a perdure Engine")
    raise AppLoadError(f"{spec!r} is a {type(target).__name__}, not a perdure Engine (or a function returning one)")


async def _await(awaitable: Any) -> Any:
    return await awaitable
