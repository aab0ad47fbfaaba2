"""Step functions and their dependencies: the decorator form of ``step.do``.

``@step.do("name")`` over a function does not run it: it returns a :class:`StepFunction`, and
``await fn()`` runs the step. A step function's parameters named like earlier step functions
receive their results (Cloudflare's Python API since 2026-02-25); the legacy form lists them
instead, ``@step.do("name", depends=[a, b])``, and passes the results positionally. Either way
a dependency that already finished in this run is reused, one in flight is awaited, and one
not started yet is run first (all at once with ``concurrent=True``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

_signatures: dict[Any, list[str]] = {}


def parameters(fn: Callable[..., Any]) -> list[str]:
    """The names of ``fn``'s parameters that need a value (no default), cached per code object."""
    key = getattr(fn, "__code__", fn)
    names = _signatures.get(key)
    if names is None:
        try:
            found = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # some builtins have no signature: call them bare
            found = []
        names = [p.name for p in found if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]
        _signatures[key] = names
    return names


@dataclass(frozen=True)
class DoOptions:
    """What a ``step.do`` call says besides its name and function."""

    config: Mapping[str, Any] | None = None
    concurrent: bool = False
    depends: list[StepFunction] | None = None
    rollback: Callable[..., Any] | None = None
    rollback_config: Mapping[str, Any] | None = None


RunDo = Callable[[str, Callable[..., Any], DoOptions], Awaitable[Any]]


def check_depends(name: str | None, depends: Any) -> list[StepFunction]:
    if not isinstance(depends, (list, tuple)) or not all(isinstance(d, StepFunction) for d in depends):
        raise TypeError(
            f"step {name!r}: depends must be a list of step functions (made with @step.do), got {depends!r}"
        )
    return list(depends)


def _check_positional(name: str, fn: Callable[..., Any], depends: list[StepFunction]) -> None:
    params = [p for p in parameters(fn) if p != "ctx"]
    if len(params) != len(depends):
        raise TypeError(
            f"step {name!r}: depends lists {len(depends)} step function(s) "
            f"({', '.join(d.__name__ for d in depends) or 'none'}) but {getattr(fn, '__name__', 'the function')} "
            f"takes {len(params)} parameter(s) besides ctx ({', '.join(params) or 'none'}); "
            "their results are passed in depends order"
        )


class StepFunction:
    """What ``@step.do(...)`` returns: awaiting ``fn()`` runs the step (the decorator alone does not)."""

    def __init__(self, owner: Declarations, fn: Callable[..., Any], name: str, options: DoOptions) -> None:
        self._owner = owner
        self.fn = fn
        self.name = name
        self.options = options
        self.__name__ = getattr(fn, "__name__", name)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self) -> Awaitable[Any]:
        return self._owner.invoke(self)

    def __repr__(self) -> str:
        return f"<step function {self.__name__} (step {self.name!r})>"


class Declarations:
    """The step functions one run declared, their results and the ones in flight."""

    def __init__(self, run_do: RunDo) -> None:
        self._run_do = run_do
        self._declared: dict[str, StepFunction] = {}
        self._results: dict[str, Any] = {}
        self._in_flight: dict[str, asyncio.Future[Any]] = {}

    def declare(self, fn: Callable[..., Any], name: str, options: DoOptions) -> StepFunction:
        if options.depends is not None:
            _check_positional(name, fn, options.depends)
        declared = StepFunction(self, fn, name, options)
        self._declared[declared.__name__] = declared
        return declared

    async def invoke(self, declared: StepFunction) -> Any:
        key = declared.__name__
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._run_do(declared.name, declared.fn, declared.options)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here; dependents re-raise it themselves
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        self._results[key] = result
        future.set_result(result)
        return result

    async def _dependency(self, param: str, declared: StepFunction | None = None) -> Any:
        if param in self._results:
            return self._results[param]
        if param in self._in_flight:
            return await asyncio.shield(self._in_flight[param])
        return await self.invoke(declared if declared is not None else self._declared[param])

    async def resolve(self, name: str, fn: Callable[..., Any], options: DoOptions) -> dict[str, Any]:
        """Results of the earlier step functions that ``fn``'s parameters name (or, in the
        legacy form, that ``depends`` lists, for its parameters in order)."""
        params = [p for p in parameters(fn) if p != "ctx"]
        if options.depends is not None:
            awaited = [self._dependency(d.__name__, d) for d in options.depends]
            if options.concurrent and len(awaited) > 1:
                values = list(await asyncio.gather(*awaited))
            else:
                values = [await a for a in awaited]
            return dict(zip(params, values, strict=True))
        for p in params:
            if p not in self._declared:
                raise TypeError(
                    f"step {name!r}: unexpected parameter {p!r}; a step function's parameters must be 'ctx' "
                    "or the names of earlier @step.do functions"
                )
        if options.concurrent and len(params) > 1:
            return dict(zip(params, await asyncio.gather(*(self._dependency(p) for p in params)), strict=True))
        return {p: await self._dependency(p) for p in params}
