"""The one seam between the running ``step`` and test modifiers (:mod:`perdure.testing`).

A test asks, before an instance exists, that its steps behave differently: a mocked result or
error, a forced timeout, no sleeps, no retry delays, a mocked or timed-out event (Cloudflare's
``introspectWorkflowInstance(...).modify(...)``). What it asked for lives in this process only,
in :data:`_ACTIVE`, keyed by ``(database url, workflow, instance id)``, never in the database:
once the test's context closes, nothing of it is left. The engine looks an instance up once per
run (:func:`lookup`: nothing at all while no test modifies anything) and hands the result to
:class:`perdure.context.Step`, which consults it where Cloudflare's local engine checks its
modifier keys. Without modifiers the step sees ``None`` and pays one ``is None`` test per hook.

A workflow-wide introspection (``introspect_workflow``) is a :class:`Session`: every instance of
that workflow created after it opened (a larger ``pk``) gets its own copy of the session's
modifications the first time it runs here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Selector = tuple[str, int]  # (step name, index: the n-th step of that name, from 1)
Key = tuple[str, str, str]  # (database url, workflow, instance id)

NOT_MOCKED: Any = object()  # what :meth:`Hooks.attempt` returns when the attempt runs for real


@dataclass
class Modifications:
    """What one introspection asked of one instance, and what the instance used of it."""

    all_sleeps: bool = False
    sleeps: set[Selector] = field(default_factory=set)
    all_retry_delays: bool = False
    retry_delays: set[Selector] = field(default_factory=set)
    results: dict[Selector, Any] = field(default_factory=dict)  # JSON-decoded
    errors: dict[Selector, BaseException] = field(default_factory=dict)  # on every attempt
    timeouts: set[Selector] = field(default_factory=set)  # on every attempt
    # attempt number -> the error to raise (None: a timeout), from mock_step_error/force_step_timeout(times=n);
    # one counter per step for both, as on Cloudflare: errors(times=2) then timeout(times=1) is 1, 2, then 3
    planned: dict[Selector, dict[int, BaseException | None]] = field(default_factory=dict)
    next_planned: dict[Selector, int] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)  # (type, payload json) not yet delivered
    event_types: list[str] = field(default_factory=list)  # every mocked event's type
    event_timeouts: set[Selector] = field(default_factory=set)
    reached: set[tuple[str, Selector]] = field(default_factory=set)  # ("do"|"sleep"|"wait", selector)
    waited_types: set[str] = field(default_factory=set)  # event types a wait_for_event asked for

    def plan(self, selector: Selector, times: int, error: BaseException | None) -> None:
        start = self.next_planned.get(selector, 1)
        attempts = self.planned.setdefault(selector, {})
        for number in range(start, start + times):
            attempts[number] = error
        self.next_planned[selector] = start + times

    def attempt(self, selector: Selector, number: int) -> Any:
        self.reached.add(("do", selector))
        error = self.errors.get(selector)
        planned = self.planned.get(selector, {})
        if error is None and planned.get(number) is not None:
            error = planned[number]
        if error is not None:  # a mocked error first, as on Cloudflare
            raise _fresh(error)
        if selector in self.timeouts or (number in planned and planned[number] is None):
            raise TimeoutError
        return self.results.get(selector, NOT_MOCKED)

    def unreached(self) -> list[str]:
        """The modifiers naming a step (or an event type) the instance never reached."""
        found = []
        for label, kind, selectors in (
            ("disable_sleeps", "sleep", self.sleeps),
            ("disable_retry_delays", "do", self.retry_delays),
            ("mock_step_result", "do", set(self.results)),
            ("mock_step_error", "do", set(self.errors) | set(self.planned)),
            ("force_step_timeout", "do", self.timeouts),
            ("force_event_timeout", "wait", self.event_timeouts),
        ):
            for selector in sorted(selectors):
                if (kind, selector) not in self.reached:
                    found.append(f"{label}({{'name': {selector[0]!r}, 'index': {selector[1]}}})")
        for event_type in dict.fromkeys(self.event_types):
            if event_type not in self.waited_types:
                found.append(f"mock_event({{'type': {event_type!r}}}): no step.wait_for_event for that type")
        return found


def _fresh(error: BaseException) -> BaseException:
    """A copy of a mocked error, so that each attempt raises its own (tracebacks do not pile up)."""
    try:
        return copy.copy(error)
    except Exception:
        return error


class Hooks:
    """What :class:`perdure.context.Step` consults for one instance (every introspection that
    covers it). Each method is called only where a modifier can change what happens."""

    def __init__(self) -> None:
        self.parts: list[Modifications] = []

    def attempt(self, kind: str, name: str, count: int, number: int) -> Any:
        """Before attempt ``number`` of step ``do`` (name, count): its mocked result, or
        :data:`NOT_MOCKED`; raises the mocked error, or ``TimeoutError`` for a forced timeout."""
        if kind != "do":
            return NOT_MOCKED
        result = NOT_MOCKED
        for part in list(self.parts):
            value = part.attempt((name, count), number)
            if value is not NOT_MOCKED:
                result = value
        return result

    def skip_retry_delay(self, name: str, count: int) -> bool:
        return any(p.all_retry_delays or (name, count) in p.retry_delays for p in self.parts)

    def skip_sleep(self, name: str, count: int) -> bool:
        skip = False
        for part in self.parts:
            part.reached.add(("sleep", (name, count)))
            skip = skip or part.all_sleeps or (name, count) in part.sleeps
        return skip

    def wait(self, name: str, count: int, event_type: str) -> tuple[bool, list[tuple[str, str]]]:
        """At a ``wait_for_event`` that is not finished: whether to time it out now, and the
        mocked events to deliver first (each once, as if sent before the instance started)."""
        forced = False
        events: list[tuple[str, str]] = []
        for part in self.parts:
            part.reached.add(("wait", (name, count)))
            part.waited_types.add(event_type)
            forced = forced or (name, count) in part.event_timeouts
            events.extend(part.events)
            part.events = []
        return forced, events


@dataclass
class Session:
    """A workflow-wide introspection: its operations go to every instance created after it opened."""

    after_pk: int  # instances with a larger pk were created after the session opened
    build: Callable[[], Modifications]  # a fresh copy of the session's modifications
    parts: dict[str, Modifications] = field(default_factory=dict)  # instance id -> its copy


_ACTIVE: dict[Key, Hooks] = {}
_SESSIONS: dict[tuple[str, str], Session] = {}


def lookup(url: str, workflow: str, instance_id: str, pk: int = 0) -> Hooks | None:
    """The modifiers of an instance, or None (almost always: then this costs two tests)."""
    if not _ACTIVE and not _SESSIONS:
        return None
    session = _SESSIONS.get((url, workflow))
    if session is not None and pk > session.after_pk and instance_id not in session.parts:
        part = session.build()
        session.parts[instance_id] = part
        install((url, workflow, instance_id), part)
    return _ACTIVE.get((url, workflow, instance_id))


def install(key: Key, part: Modifications) -> None:
    _ACTIVE.setdefault(key, Hooks()).parts.append(part)


def remove(key: Key, part: Modifications) -> None:
    hooks = _ACTIVE.get(key)
    if hooks is None:
        return
    hooks.parts = [p for p in hooks.parts if p is not part]  # a run under way sees it gone too
    if not hooks.parts:
        del _ACTIVE[key]


def open_session(url: str, workflow: str, session: Session) -> None:
    if (url, workflow) in _SESSIONS:
        raise ValueError(
            f"workflow {workflow!r} already has an open introspect_workflow() on this database; close it first"
        )
    _SESSIONS[(url, workflow)] = session


def close_session(url: str, workflow: str, session: Session) -> None:
    if _SESSIONS.get((url, workflow)) is session:
        del _SESSIONS[(url, workflow)]
    for instance_id, part in session.parts.items():
        remove((url, workflow, instance_id), part)


def installed() -> dict[Key, Hooks]:
    """A copy of what is installed now (for tests: nothing once every introspection closed)."""
    return dict(_ACTIVE)


def sessions() -> dict[tuple[str, str], Session]:
    return dict(_SESSIONS)
