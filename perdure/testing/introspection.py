"""``introspect_workflow_instance`` and ``introspect_workflow``: Cloudflare's ``cloudflare:test``
introspection, in Python.

A test opens one before it creates the instance, changes how its steps behave
(:class:`InstanceModifier`: no sleeps, no retry delays, mocked step results and errors, forced
timeouts, mocked or timed-out events) and then watches it (``wait_for_step_result``,
``wait_for_status``, ``get_output``, ``get_error``). The modifications live in this process only
(:mod:`perdure.modifiers`), work with an engine started on SQLite or PostgreSQL, and are gone
once the ``async with`` block ends. A modifier that names a step the instance never reached is
an :class:`IntrospectionError` when the block ends (unless the block raised).

Where Perdure differs from Cloudflare: closing the block leaves the instance and its history in
the database (Cloudflare's ``dispose`` also discards the instance); a mocked event is delivered
at the instance's first ``wait_for_event`` (Cloudflare queues it at once, which the waits see the
same way); the waits take a ``timeout`` in seconds of real time (Cloudflare relies on the test
runner's timeout).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..binding import WorkflowBinding
from ..errors import InstanceAlreadyExistsError, InstanceNotFoundError, InvalidStateError, ValidationError
from ..modifiers import Modifications, Session, close_session, install, open_session, remove
from ..records import COMPLETE, DO, ERRORED, QUEUED, STATUSES, TERMINAL, UNKNOWN, InstanceRecord
from ..serde import public_error, rebuild_error
from ..store.base import Store
from . import selectors as check

DEFAULT_TIMEOUT = 10.0  # seconds of real time a wait_for_* gives up after


class IntrospectionError(AssertionError):
    """What an introspection reports as a test failure: a status the instance can no longer reach,
    a step that will never finish, a modifier the instance never used."""


Operation = Callable[[Modifications], None]


class InstanceModifier:
    """What ``modify(setup)`` hands ``setup``: each call changes how the instance's steps behave.
    Bad input raises :class:`ValueError` at once."""

    def __init__(self, apply: Callable[[Operation], None]) -> None:
        self._apply = apply

    async def disable_sleeps(self, steps: list[dict[str, Any]] | None = None) -> None:
        """Every ``step.sleep``/``sleep_until`` returns at once, or only those of ``steps``."""
        chosen = check.selectors(steps, "disable_sleeps")

        def op(m: Modifications) -> None:
            if chosen is None:
                m.all_sleeps = True
            else:
                m.sleeps.update(chosen)

        self._apply(op)

    async def disable_retry_delays(self, steps: list[dict[str, Any]] | None = None) -> None:
        """A failed attempt is retried at once (for every step, or those of ``steps``)."""
        chosen = check.selectors(steps, "disable_retry_delays")

        def op(m: Modifications) -> None:
            if chosen is None:
                m.all_retry_delays = True
            else:
                m.retry_delays.update(chosen)

        self._apply(op)

    async def mock_step_result(self, step: dict[str, Any], result: Any) -> None:
        """The step returns ``result`` without running (its attempt is recorded as usual)."""
        selector = check.selector(step, "mock_step_result")
        value = check.result(result, f"mock_step_result {selector[0]!r}")

        def op(m: Modifications) -> None:
            if selector in m.results:
                raise ValidationError(f"mock_step_result: step {selector[0]!r} (index {selector[1]}) is mocked twice")
            m.results[selector] = value

        self._apply(op)

    async def mock_step_error(self, step: dict[str, Any], error: Exception, times: int | None = None) -> None:
        """Attempts of the step raise ``error`` (every attempt, or the next ``times``; retries apply)."""
        selector = check.selector(step, "mock_step_error")
        failure = check.error(error, "mock_step_error")
        count = check.times(times, "mock_step_error")

        def op(m: Modifications) -> None:
            _not_after_result(m, selector, "mock_step_error")
            if count is None:
                m.errors[selector] = failure
            else:
                m.plan(selector, count, failure)

        self._apply(op)

    async def force_step_timeout(self, step: dict[str, Any], times: int | None = None) -> None:
        """Attempts of the step time out at once (every attempt, or the next ``times``)."""
        selector = check.selector(step, "force_step_timeout")
        count = check.times(times, "force_step_timeout")

        def op(m: Modifications) -> None:
            _not_after_result(m, selector, "force_step_timeout")
            if count is None:
                m.timeouts.add(selector)
            else:
                m.plan(selector, count, None)

        self._apply(op)

    async def mock_event(self, event: dict[str, Any]) -> None:
        """Send ``{"type", "payload"}`` to the instance as if before it started."""
        item = check.event(event)

        def op(m: Modifications) -> None:
            m.events.append(item)
            m.event_types.append(item[0])

        self._apply(op)

    async def force_event_timeout(self, step: dict[str, Any]) -> None:
        """The ``wait_for_event`` of that name times out at once (``EventTimeoutError``)."""
        selector = check.selector(step, "force_event_timeout")
        self._apply(lambda m: m.event_timeouts.add(selector))


def _not_after_result(m: Modifications, selector: tuple[str, int], what: str) -> None:
    if selector in m.results:
        raise ValidationError(f"{what}: step {selector[0]!r} (index {selector[1]}) already has a mocked result")


ModifierCallback = Callable[[InstanceModifier], Awaitable[None] | None]


async def _call(fn: ModifierCallback, modifier: InstanceModifier) -> None:
    if not callable(fn):
        raise ValidationError(f"modify() takes a function of the modifier, got {type(fn).__name__}")
    outcome = fn(modifier)
    if inspect.isawaitable(outcome):
        await outcome


def _parts(binding: object) -> tuple[WorkflowBinding, Any, str]:
    if not isinstance(binding, WorkflowBinding):
        raise ValidationError(f"expected a workflow binding (what engine.register returns), got {binding!r}")
    engine = binding._engine
    url = getattr(engine, "url", None)
    if not isinstance(url, str):
        raise ValidationError(f"the binding {binding!r} has no engine with a database url")
    return binding, engine, url


class InstanceIntrospector:
    """One instance under test: ``modify``, then ``wait_for_step_result`` / ``wait_for_status`` /
    ``get_output`` / ``get_error``. Made by :func:`introspect_workflow_instance` (an ``async with``
    block) or listed by :meth:`WorkflowIntrospector.get_instances`."""

    def __init__(self, binding: WorkflowBinding, instance_id: str, part: Callable[[], Modifications | None]) -> None:
        self._binding = binding
        self._engine = binding._engine
        self.id = instance_id
        self._part = part

    def __repr__(self) -> str:
        return f"<InstanceIntrospector {self._binding.name}/{self.id}>"

    async def modify(self, fn: ModifierCallback) -> InstanceIntrospector:
        """Call ``fn(m)`` (a function or a coroutine function) with this instance's modifier."""

        def apply(op: Operation) -> None:
            part = self._part()
            if part is None:
                raise InvalidStateError(f"{self!r} is closed: modify inside its async with block")
            op(part)

        await _call(fn, InstanceModifier(apply))
        return self

    async def _store(self) -> Store:
        return await self._engine.ensure_store()

    async def _record(self) -> InstanceRecord | None:
        return await (await self._store()).get_instance(self._binding.name, self.id)

    async def _pause(self, record: InstanceRecord | None, interval: float, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 0.0
        if record is not None:
            await self._engine.wait_for_change(record.pk, min(interval, remaining))
        else:
            await asyncio.sleep(min(interval, remaining))
        return min(interval * 2, 0.05)

    async def wait_for_step_result(self, step: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The result of ``step.do`` ``{"name", "index"=1}`` once it completed; raises its error if
        it failed for good, :class:`IntrospectionError` if the instance ended without it, and
        ``TimeoutError`` after ``timeout`` seconds of real time."""
        name, index = check.selector(step, "wait_for_step_result")
        deadline, interval = time.monotonic() + _timeout(timeout), 0.002
        while True:
            record = await self._record()
            if record is not None:
                for found in await (await self._store()).load_steps(record.pk):
                    if found.key == (DO, name, index):
                        if found.status == COMPLETE:
                            return found.result
                        if found.status == "failed" and found.error is not None:
                            raise rebuild_error(found.error)
                if record.status in TERMINAL:
                    raise IntrospectionError(
                        f"instance {self.id!r} is {record.status} and its step {name!r} (index {index}) never completed"
                    )
            if time.monotonic() >= deadline:
                shown = "not created" if record is None else record.status
                raise TimeoutError(
                    f"step {name!r} (index {index}) of instance {self.id!r} did not complete within {timeout}s "
                    f"(the instance is {shown})"
                )
            interval = await self._pause(record, interval, deadline)

    async def wait_for_status(self, status: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once the instance has ``status`` (``"queued"`` returns at once, as on Cloudflare).
        A terminal status that rules the wanted one out raises :class:`IntrospectionError`;
        ``TimeoutError`` after ``timeout`` seconds of real time. Statuses are read every few
        milliseconds: a status the instance leaves sooner may be missed."""
        if status not in STATUSES or status == UNKNOWN:
            allowed = ", ".join(s for s in STATUSES if s != UNKNOWN)
            raise ValidationError(f"wait_for_status: unknown status {status!r}; one of {allowed}")
        if status == QUEUED:
            return
        deadline, interval = time.monotonic() + _timeout(timeout), 0.002
        while True:
            record = await self._record()
            current = None if record is None else record.status
            if current == status:
                return
            if current in TERMINAL and status in TERMINAL:
                raise IntrospectionError(
                    f"instance {self.id!r} has reached status {current!r}, a finite status that prevents it "
                    f"from ever reaching the expected status {status!r}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"instance {self.id!r} did not reach status {status!r} within {timeout}s "
                    f"(it is {current or 'not created'})"
                )
            interval = await self._pause(record, interval, deadline)

    async def get_output(self) -> Any:
        """The output of a complete instance; :class:`~perdure.InvalidStateError` otherwise."""
        record = await self._existing()
        if record.status != COMPLETE:
            raise InvalidStateError(
                f"cannot retrieve output: instance {self.id!r} is in status {record.status!r} but must be "
                "'complete' to have an output available"
            )
        return record.output

    async def get_error(self) -> dict[str, str]:
        """``{"name", "message"}`` of an errored instance; :class:`~perdure.InvalidStateError` otherwise."""
        record = await self._existing()
        error = public_error(record.error)
        if record.status != ERRORED or error is None:
            raise InvalidStateError(
                f"cannot retrieve error: instance {self.id!r} is in status {record.status!r} but must be "
                "'errored' to have error information available"
            )
        return error

    async def _existing(self) -> InstanceRecord:
        record = await self._record()
        if record is None:
            raise InstanceNotFoundError(f"no instance {self.id!r} in workflow {self._binding.name!r} (yet)")
        return record


def _timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"timeout is a number of seconds > 0, got {value!r}")
    return float(value)


def _report(where: str, unreached: list[str], status: str | None) -> None:
    if not unreached:
        return
    hint = ""
    if status not in TERMINAL:
        hint = f" (the instance is {status or 'not created'}: wait_for_status() inside the block if it was not done)"
    raise IntrospectionError(f"{where}: modifier(s) naming steps never reached: {'; '.join(unreached)}{hint}")


class _InstanceContext(InstanceIntrospector):
    def __init__(self, binding: WorkflowBinding, instance_id: str, url: str) -> None:
        self._mods: Modifications | None = None
        super().__init__(binding, instance_id, lambda: self._mods)
        self._key = (url, binding.name, instance_id)

    async def __aenter__(self) -> InstanceIntrospector:
        if self._mods is not None:
            raise InvalidStateError(f"{self!r} is already open")
        if await self._record() is not None:
            raise InstanceAlreadyExistsError(
                f"instance {self.id!r} of workflow {self._binding.name!r} already exists: "
                "introspect_workflow_instance() comes before create(), so that modifiers apply from the first step"
            )
        self._mods = Modifications()
        install(self._key, self._mods)
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        mods, self._mods = self._mods, None
        if mods is None:
            return
        remove(self._key, mods)
        if exc_type is None:
            unreached = mods.unreached()
            if unreached:
                record = await self._record()
                _report(repr(self), unreached, None if record is None else record.status)


def introspect_workflow_instance(binding: WorkflowBinding, instance_id: str) -> _InstanceContext:
    """``async with introspect_workflow_instance(binding, "id") as instance:`` - modifiers for the
    instance ``id`` of ``binding``'s workflow, which must not exist yet (create it inside)."""
    binding, _, url = _parts(binding)
    from .. import validators

    return _InstanceContext(binding, validators.instance_id(instance_id), url)


class WorkflowIntrospector:
    """Every instance ``binding``'s workflow creates while the block is open: ``modify`` applies
    to each (as Cloudflare's ``modifyAll``), ``get_instances`` lists them."""

    def __init__(self, binding: WorkflowBinding, url: str) -> None:
        self._binding = binding
        self._url = url
        self._ops: list[Operation] = []
        self._scratch = Modifications()  # every operation applied once: its conflicts, its selectors
        self._session: Session | None = None
        self._handles: dict[str, InstanceIntrospector] = {}

    def __repr__(self) -> str:
        return f"<WorkflowIntrospector {self._binding.name}>"

    def _build(self) -> Modifications:
        part = Modifications()
        for op in self._ops:
            op(part)
        return part

    async def __aenter__(self) -> WorkflowIntrospector:
        if self._session is not None:
            raise InvalidStateError(f"{self!r} is already open")
        store = await self._binding._engine.ensure_store()
        newest = (await store.list_instances(self._binding.name, limit=1)).items
        session = Session(after_pk=newest[0].pk if newest else 0, build=self._build)
        open_session(self._url, self._binding.name, session)
        self._session = session
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        close_session(self._url, self._binding.name, session)
        if exc_type is None:
            unreached = self._scratch.unreached()
            for part in session.parts.values():
                unreached = [u for u in unreached if u in part.unreached()]
            _report(f"{self!r} ({len(session.parts)} instance(s) ran)", unreached, COMPLETE)

    async def modify(self, fn: ModifierCallback) -> WorkflowIntrospector:
        """Call ``fn(m)``; what it asks for applies to every instance created from now on."""

        def apply(op: Operation) -> None:
            if self._session is None:
                raise InvalidStateError(f"{self!r} is closed: modify inside its async with block")
            op(self._scratch)  # bad combinations raise here, once
            self._ops.append(op)

        await _call(fn, InstanceModifier(apply))
        return self

    modify_all = modify  # Cloudflare's name

    async def get_instances(self) -> list[InstanceIntrospector]:
        """The instances created since the block opened, oldest first."""
        session = self._session
        if session is None:
            raise InvalidStateError(f"{self!r} is closed: get_instances inside its async with block")
        store = await self._binding._engine.ensure_store()
        found: list[InstanceRecord] = []
        cursor = None
        while True:
            page = await store.list_instances(self._binding.name, cursor=cursor, limit=100)
            newer = [r for r in page.items if r.pk > session.after_pk]
            found.extend(newer)
            cursor = page.next_cursor
            if cursor is None or len(newer) < len(page.items):
                break
        for record in sorted(found, key=lambda r: r.pk):
            if record.id not in self._handles:
                self._handles[record.id] = InstanceIntrospector(
                    self._binding, record.id, self._part_of(session, record.id)
                )
        return [self._handles[r.id] for r in sorted(found, key=lambda r: r.pk)]

    def _part_of(self, session: Session, instance_id: str) -> Callable[[], Modifications | None]:
        def part() -> Modifications | None:
            if self._session is not session:
                return None
            if instance_id not in session.parts:  # listed before its first run: give it its copy now
                session.parts[instance_id] = session.build()
                install((self._url, self._binding.name, instance_id), session.parts[instance_id])
            return session.parts[instance_id]

        return part


def introspect_workflow(binding: WorkflowBinding) -> WorkflowIntrospector:
    """``async with introspect_workflow(binding) as workflow:`` - modifiers for every instance the
    workflow creates while the block is open."""
    binding, _, url = _parts(binding)
    return WorkflowIntrospector(binding, url)
