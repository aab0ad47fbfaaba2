"""Bindings and instance handles: how code creates and controls instances (SPEC §2).

They read and write the store whether or not the engine runs in this process: a web server can
create instances that a worker process runs. A binding knows its engine only through
:class:`EngineLink` (the engine imports this module, never the other way round).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from . import flow, validators
from .clock import Clock
from .errors import InstanceNotFoundError, InvalidStateError, ValidationError
from .records import TERMINAL, InstanceRecord, LocalStart, NewInstance
from .retention import Retention, parse_retention
from .serde import public_error
from .store import Store


class EngineLink(Protocol):
    """What bindings and instance handles need of their engine (:class:`perdure.Engine`)."""

    clock: Clock

    async def ensure_store(self) -> Store:
        """The engine's store, opened."""

    def nudge(self) -> None:
        """Something may have become runnable: a running engine claims soon."""

    def control_changed(self) -> None:
        """An instance was paused, terminated or restarted from this process."""

    def instance_ended(self, pk: int) -> None:
        """Instance ``pk`` ended: wake whoever waits on it here."""

    def local_start(self, workflow: str) -> LocalStart | None:
        """A claim for one instance about to be created, if this process runs it at once."""

    def adopt(self, start: LocalStart, records: list[InstanceRecord]) -> None:
        """Run what a create under ``start`` made (and free the slot it held)."""

    async def wait_for_change(self, pk: int, timeout: float) -> None:
        """Return when instance ``pk`` ends in this process, or after ``timeout`` seconds."""


_CREATE_KEYS = frozenset({"id", "params", "retention", "concurrency_key", "priority"})


def _new_instance(options: object, default: Retention | None, trigger: str, schedule: Any) -> NewInstance:
    if not isinstance(options, Mapping):
        raise ValidationError(
            "an instance to create must be a mapping {'id'?, 'params'?, 'retention'?, 'concurrency_key'?,"
            f" 'priority'?}}, got {type(options).__name__}"
        )
    unknown = set(options) - _CREATE_KEYS
    if unknown:
        raise ValidationError(
            f"unknown key(s) {sorted(unknown)} in create options;"
            " allowed: 'id', 'params', 'retention', 'concurrency_key', 'priority'"
        )
    instance_id = options.get("id")
    instance_id = str(uuid.uuid4()) if instance_id is None else validators.instance_id(instance_id)
    params = options.get("params")
    encoded = validators.encode_json({} if params is None else params, "create params")
    kept = parse_retention(options.get("retention")) or default or Retention()
    return NewInstance(
        instance_id,
        encoded,
        trigger,
        schedule,
        kept.success,
        kept.error,
        flow.concurrency_key(options.get("concurrency_key")),
        flow.priority(options.get("priority")),
    )


# Cloudflare's codes for a deleteBatch result it could not delete
NOT_FOUND = (10400, "workflows.api.error.instance.not_found")
INTERNAL = (10001, "workflows.api.error.internal_server")


class WorkflowBinding:
    """The handle ``engine.register`` returns: ``create``, ``create_batch`` and ``get``."""

    def __init__(self, engine: EngineLink, name: str, retention: Retention | None = None) -> None:
        self._engine = engine
        self.name = name
        self.retention = retention  # the default of instances created without one (register(retention=))

    async def _store(self) -> Store:
        return await self._engine.ensure_store()

    async def create(
        self,
        options: Mapping[str, Any] | None = None,
        /,
        *,
        id: str | None = None,
        params: Any = None,
        retention: Mapping[str, Any] | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
    ) -> Instance:
        """Queue a new instance; ``id`` is generated when omitted. Also accepts Cloudflare's
        single mapping ``create({"id": ..., "params": ..., "retention": ...})``. ``retention``
        (``{"success_retention"?, "error_retention"?}``, durations; see :mod:`perdure.retention`)
        deletes the instance that long after it finished. ``concurrency_key`` and ``priority``
        (lower first, default 0) are its flow control (:mod:`perdure.flow`). A duplicate id
        raises :class:`~perdure.InstanceAlreadyExistsError`."""
        keywords = {
            "id": id,
            "params": params,
            "retention": retention,
            "concurrency_key": concurrency_key,
            "priority": priority,
        }
        if options is not None:
            if any(value is not None for value in keywords.values()):
                raise ValidationError("pass either a mapping or keyword arguments (id=, params=...), not both")
            item: Mapping[str, Any] = options
        else:
            item = keywords
        created = await self.create_many([item], skip_existing=False)
        return created[0]

    async def create_batch(self, items: list[Mapping[str, Any]]) -> list[Instance]:
        """Queue 1-100 instances at once; ids that already exist are skipped and left out."""
        return await self.create_many(validators.batch_size(items), skip_existing=True)

    async def create_many(
        self,
        items: list[Mapping[str, Any]],
        *,
        skip_existing: bool,
        trigger: str = "binding",
        schedule: dict[str, Any] | None = None,
    ) -> list[Instance]:
        """Queue instances on behalf of a trigger: ``trigger`` names it (``"api"``, ``"cron"``,
        ``"queue"``...; ``describe`` shows it as Cloudflare's ``trigger.source``) and
        ``schedule`` is a cron firing's ``event.schedule``. Any number of items (a trigger
        batches as it likes); ids that exist raise, or are skipped with ``skip_existing``."""
        new = [_new_instance(item, self.retention, trigger, schedule) for item in items]
        store = await self._store()
        # One instance created where it runs starts here at once (Engine.local_start).
        start = self._engine.local_start(self.name) if len(new) == 1 else None
        records: list[InstanceRecord] = []
        try:
            records = await store.create_instances(
                self.name, new, self._engine.clock.now(), skip_existing=skip_existing, start=start
            )
        finally:
            if start is not None:
                self._engine.adopt(start, records)
        if records and start is None:
            self._engine.nudge()
        return [Instance(self, r.id, r.pk, r) for r in records]

    async def get(self, instance_id: str) -> Instance:
        """The instance with that id; :class:`~perdure.InstanceNotFoundError` if there is none."""
        validators.instance_id(instance_id)
        record = await (await self._store()).get_instance(self.name, instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no instance {instance_id!r} in workflow {self.name!r}")
        return Instance(self, record.id, record.pk)

    async def delete_batch(self, ids: Any) -> dict[str, list[dict[str, Any]]]:
        """Delete 1-100 instances by id with everything stored about them (Cloudflare's
        ``deleteBatch``); an unfinished one is terminated first. Each id once, duplicates
        included once::

            await binding.delete_batch(["a", "b", "nope"])
            # {"deleted": [{"id": "a"}, {"id": "b"}],
            #  "errors": [{"id": "nope", "code": 10400, "message": "workflows.api.error.instance.not_found"}]}
        """
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise ValidationError("delete_batch takes a list of 1-100 instance ids (strings)")
        unique = list(dict.fromkeys(ids))
        if not 1 <= len(ids) <= validators.MAX_BATCH:
            raise ValidationError(f"delete_batch takes 1-{validators.MAX_BATCH} instance ids (got {len(ids)})")
        for instance_id in unique:
            validators.instance_id(instance_id)
        store = await self._store()
        outcome = await store.delete_instances(self.name, unique)
        unfinished = [i for i in unique if outcome[i] == "unfinished"]
        if unfinished:  # terminate them (their workers are fenced), then delete them too
            records = [await store.get_instance(self.name, i) for i in unfinished]
            for record in records:
                if record is not None and record.status not in TERMINAL:
                    with contextlib.suppress(InvalidStateError):
                        await store.terminate(record.pk, self._engine.clock.now())
                    self._engine.instance_ended(record.pk)
            self._engine.control_changed()
            outcome.update(await store.delete_instances(self.name, unfinished))
        deleted = [{"id": i} for i in unique if outcome[i] == "deleted"]
        errors = []
        for i in unique:
            if outcome[i] != "deleted":
                code, message = NOT_FOUND if outcome[i] == "missing" else INTERNAL
                errors.append({"id": i, "code": code, "message": message})
        return {"deleted": deleted, "errors": errors}

    def __repr__(self) -> str:
        return f"<WorkflowBinding {self.name!r}>"


class Instance:
    """One workflow instance: status and control."""

    def __init__(self, binding: WorkflowBinding, id: str, pk: int, created: InstanceRecord | None = None) -> None:
        self._binding = binding
        self._engine = binding._engine
        self.id = id
        self.pk = pk
        #: The record as ``create`` stored it (queued, or running when this process started it:
        #: Engine.local_start), when this handle comes from a create: a caller that shows what
        #: it created (the REST API) needs no read of the row back.
        self.created = created

    @property
    def workflow(self) -> str:
        return self._binding.name

    async def record(self) -> InstanceRecord:
        """Everything stored about the instance (params, trigger, timestamps, ...)."""
        record = await (await self._binding._store()).get_by_pk(self.pk)
        if record is None:
            raise InstanceNotFoundError(f"instance {self.id!r} of workflow {self.workflow!r} no longer exists")
        return record

    async def status(self) -> dict[str, Any]:
        """``{"status", "output", "error"}`` with the exact Cloudflare status strings."""
        record = await self.record()
        return {"status": record.status, "output": record.output, "error": public_error(record.error)}

    async def pause(self) -> None:
        """Pause: at once when queued or waiting, after the in-flight step when running."""
        store = await self._binding._store()
        await store.pause(self.pk, self._engine.clock.now())
        self._engine.control_changed()

    async def resume(self) -> None:
        """Resume a paused instance; remaining sleep time is kept. A no-op otherwise."""
        store = await self._binding._store()
        await store.resume(self.pk, self._engine.clock.now())
        self._engine.nudge()

    async def terminate(self, *, rollback: bool = False) -> None:
        """Stop for good; raises :class:`~perdure.InvalidStateError` if already terminal.

        With ``rollback=True`` (Cloudflare's ``terminate({rollback: true})``) the rollback
        handlers of the finished steps run first, newest first, on a worker that has the
        workflow's code; the instance reads ``waiting`` until one claims it, ``running`` while the
        handlers run, and then ends ``terminated``
        (at once when no step finished). The handlers' ``error`` is ``Terminated``."""
        if not isinstance(rollback, bool):
            raise ValidationError(f"terminate(rollback=) must be True or False, got {rollback!r}")
        store = await self._binding._store()
        await store.terminate(self.pk, self._engine.clock.now(), rollback=rollback)
        self._engine.control_changed()
        self._engine.instance_ended(self.pk)

    async def restart(self, from_step: Mapping[str, Any] | None = None) -> None:
        """Discard stored step results and run again with the same id and params;
        ``from_step={"name", "count"=1, "type"="do"}`` keeps the steps before that one."""
        key = validators.from_step(from_step)
        store = await self._binding._store()
        await store.restart(self.pk, self._engine.clock.now(), key)
        self._engine.control_changed()

    async def send_event(self, type: Any = None, payload: Any = None, /, **kwargs: Any) -> None:
        """Deliver an event to a ``wait_for_event`` of the same type, now or later.

        ``send_event("approval", {...})``, ``send_event(type=..., payload=...)`` or Cloudflare's
        ``send_event({"type": ..., "payload": ...})``."""
        if isinstance(type, Mapping) and payload is None and not kwargs:
            if set(type) - {"type", "payload"}:
                raise ValidationError("send_event takes a mapping with 'type' and 'payload'")
            event_type, event_payload = type.get("type"), type.get("payload")
        else:
            unknown = set(kwargs) - {"type", "payload"}
            if unknown:
                raise ValidationError(f"unknown argument(s) {sorted(unknown)}; send_event takes type and payload")
            event_type = kwargs.get("type", type)
            event_payload = kwargs.get("payload", payload)
        event_type = validators.event_type(event_type)
        encoded = validators.encode_json(event_payload, "event payload")
        store = await self._binding._store()
        await store.send_event(self.pk, event_type, encoded, self._engine.clock.now())
        self._engine.nudge()

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Return the final ``status()`` once the instance is complete, errored or terminated.

        In the process that runs the instance this wakes on completion; for an instance
        running elsewhere it re-reads the status with a growing interval (up to 0.5 s).
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.01
        while True:
            status = await self.status()
            if status["status"] in TERMINAL:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"instance {self.id!r} did not finish within {timeout} seconds")
            pause = interval if remaining is None else min(interval, remaining)
            await self._engine.wait_for_change(self.pk, pause)
            interval = min(interval * 2, 0.5)

    def __repr__(self) -> str:
        return f"<Instance {self.workflow}/{self.id}>"
