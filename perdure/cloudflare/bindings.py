"""``self.env`` of a Cloudflare project: workflow bindings with Cloudflare's Python surface, the
``vars``, and a stand-in for every binding Perdure does not provide.

:class:`Workflow` wraps a :class:`~perdure.WorkflowBinding` (``create(options)``,
``create_batch([options])``, ``get(id)``) and :class:`WorkflowInstance` an
:class:`~perdure.Instance` (``id``, ``status()``, ``pause()``, ``resume()``, ``terminate()``,
``restart()``, ``send_event({"type", "payload"})``), as Cloudflare's SDK wraps its JavaScript
objects; the camelCase names (``createBatch``, ``sendEvent``) work too. A D1, R2, KV, AI ...
binding is an :class:`UnsupportedBinding`: touching it raises :class:`UnsupportedBindingError`,
one line naming the binding and its kind (a :class:`~perdure.NonRetryableError`: inside a step,
retrying would not help).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..binding import Instance, WorkflowBinding
from ..errors import NonRetryableError, PerdureError, ValidationError
from .wrangler import OtherBinding

log = logging.getLogger("perdure.cloudflare")
_warned: set[str] = set()


class UnsupportedBindingError(PerdureError, NonRetryableError):
    """Code touched a binding of a kind Perdure does not provide (D1, R2, KV, AI, ...)."""

    def __init__(self, message: str = "", name: str = "UnsupportedBindingError") -> None:
        super().__init__(message, name)


def _warn_once(key: str, why: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("perdure: create option %r is ignored (%s)", key, why)


def _options(options: Any, **kwargs: Any) -> Any:
    """Cloudflare's create options (``create(options)`` or ``create(id=, params=)``) without
    ``locationHint``, a placement hint with one place to go here (said once)."""
    if kwargs:
        options = {**(options if isinstance(options, Mapping) else {}), **kwargs}
    if not isinstance(options, Mapping):
        return options
    if "locationHint" in options:
        _warn_once("locationHint", "there is one location")
    out = {k: v for k, v in options.items() if k != "locationHint"}
    retention = out.get("retention")
    if isinstance(retention, Mapping):  # Cloudflare spells the keys in camelCase
        names = {"successRetention": "success_retention", "errorRetention": "error_retention"}
        out["retention"] = {names.get(k, k): v for k, v in retention.items()}
    return out


class WorkflowInstance:
    """One instance, as ``create`` and ``get`` return it on Cloudflare."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance

    @property
    def id(self) -> str:
        return self._instance.id

    async def status(self) -> dict[str, Any]:
        """``{"status", "output", "error"}``."""
        return await self._instance.status()

    async def pause(self) -> None:
        await self._instance.pause()

    async def resume(self) -> None:
        await self._instance.resume()

    async def terminate(self, options: Mapping[str, Any] | None = None) -> None:
        """``terminate()`` or ``terminate({"rollback": True})``."""
        rollback = bool((options or {}).get("rollback", False))
        await self._instance.terminate(rollback=rollback)

    async def restart(self, options: Mapping[str, Any] | None = None) -> None:
        """``restart()`` or ``restart({"from": {"name", "count"?, "type"?}})``."""
        await self._instance.restart((options or {}).get("from"))

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """``send_event({"type": "approval", "payload": {...}})``."""
        if not isinstance(event, Mapping):
            raise ValidationError(f"send_event takes {{'type', 'payload'}}, got {type(event).__name__}")
        await self._instance.send_event(dict(event))

    sendEvent = send_event

    def __repr__(self) -> str:
        return f"<WorkflowInstance {self._instance.workflow}/{self.id}>"


class Workflow:
    """``env.<BINDING>`` for a ``[[workflows]]`` entry."""

    def __init__(self, binding: WorkflowBinding) -> None:
        self._binding = binding

    @property
    def name(self) -> str:
        return self._binding.name

    async def create(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> WorkflowInstance:
        """``create()``, ``create({"id": ..., "params": ...})`` (or ``create(id=, params=)``)."""
        return WorkflowInstance(await self._binding.create(_options(options or {}, **kwargs)))

    async def create_batch(self, batch: Iterable[Mapping[str, Any]]) -> list[WorkflowInstance]:
        """Up to 100 options at once; ids that exist are skipped and left out."""
        created = await self._binding.create_batch([_options(item) for item in batch])
        return [WorkflowInstance(instance) for instance in created]

    createBatch = create_batch

    async def delete_batch(self, ids: Iterable[str]) -> dict[str, Any]:
        """Delete up to 100 instances (unfinished ones are terminated first):
        ``{"deleted": [{"id"}], "errors": [{"id", "code", "message"}]}``."""
        return await self._binding.delete_batch(list(ids))

    deleteBatch = delete_batch

    async def get(self, instance_id: str) -> WorkflowInstance:
        return WorkflowInstance(await self._binding.get(instance_id))

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"


class UnsupportedBinding:
    """A declared binding of a kind Perdure does not provide; any use says so in one line."""

    def __init__(self, spec: OtherBinding, config_name: str) -> None:
        object.__setattr__(self, "_message", (
            f"env.{spec.name} is a {spec.kind} binding ({spec.section} in {config_name}), "
            "which perdure does not provide; give the workflow a Python client for it instead"
        ))  # fmt: skip

    def _refuse(self) -> UnsupportedBindingError:
        return UnsupportedBindingError(object.__getattribute__(self, "_message"))

    def __getattr__(self, name: str) -> Any:
        raise self._refuse()

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._refuse()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def __getitem__(self, key: Any) -> Any:
        raise self._refuse()

    def __repr__(self) -> str:
        return f"<UnsupportedBinding: {object.__getattribute__(self, '_message')}>"


class Env:
    """``self.env``: bindings and vars as attributes (``env.MY_WORKFLOW``, ``env.API_HOST``)."""

    def __init__(self, values: Mapping[str, Any], config_name: str) -> None:
        self.__dict__.update(values)
        self._config_name = config_name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        known = sorted(k for k in self.__dict__ if not k.startswith("_"))
        raise AttributeError(
            f"env has no binding or var {name!r}: {self.__dict__.get('_config_name', 'the wrangler file')} "
            f"declares {', '.join(known) or 'none'}"
        )

    def __repr__(self) -> str:
        return f"<Env {sorted(k for k in self.__dict__ if not k.startswith('_'))}>"
