"""The storage interface: everything the engine asks of a database.

A backend keeps four kinds of rows: instances, steps (one per ``(kind, name, count)``, with its
attempts), events sent to instances, and an instance-level history; and, beside them, the
workflows engines registered (so that tools in other processes know which exist). Every write a worker makes
on behalf of a running instance carries the instance's ``epoch`` (a fencing token bumped on each
claim, terminate and restart): a backend must refuse such a write with :class:`Fenced` when the
epoch moved on, so a worker that lost an instance can never record a result for it.

The SQLite backend (:mod:`perdure.store.sqlite`) is the embedded default; a PostgreSQL backend
implements the same class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Status strings, exactly as SPEC §2 lists them.
QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
ERRORED = "errored"
TERMINATED = "terminated"
COMPLETE = "complete"
WAITING = "waiting"
WAITING_FOR_PAUSE = "waitingForPause"
UNKNOWN = "unknown"
STATUSES = (QUEUED, RUNNING, PAUSED, ERRORED, TERMINATED, COMPLETE, WAITING, WAITING_FOR_PAUSE, UNKNOWN)
TERMINAL = frozenset({COMPLETE, ERRORED, TERMINATED})

# Step kinds; the key of a step is (kind, name, count).
DO = "do"
SLEEP = "sleep"
WAIT = "waitForEvent"
STEP_KINDS = (DO, SLEEP, WAIT)


class Fenced(Exception):
    """A write was refused: the instance's epoch moved on (it was reclaimed, terminated or restarted)."""


@dataclass(slots=True)
class InstanceRecord:
    pk: int
    workflow: str
    id: str
    status: str
    params: Any
    trigger: str
    created_at: float
    epoch: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    output: Any = None
    error: dict[str, str] | None = None
    wake_at: float | None = None
    schedule: dict[str, Any] | None = None
    owner: str | None = None


@dataclass(slots=True)
class StepRecord:
    """One step as stored. ``status`` is running, retrying, waiting, complete or failed."""

    kind: str
    name: str
    count: int
    status: str
    started_at: float
    config: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None
    error: dict[str, Any] | None = None
    ended_at: float | None = None
    wake_at: float | None = None
    seq: int = 0
    result_json: str | None = None  # the encoded result, when the engine already has it

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.name, self.count)


@dataclass(slots=True)
class NewInstance:
    id: str
    params_json: str
    trigger: str = "binding"
    schedule: dict[str, Any] | None = None


@dataclass(slots=True)
class WorkflowRecord:
    """A workflow as the last engine that started with it registered it: what operators' tools
    in other processes (``perdure --db``, a server without the application) show and may trigger.

    ``registered_at`` is the first registration on this database, ``updated_at`` the latest."""

    name: str
    class_name: str
    schedules: list[str]
    step_limit: int
    registered_at: float = 0.0
    updated_at: float = 0.0


@dataclass(slots=True)
class Page:
    items: list[InstanceRecord]
    next_cursor: str | None


class Store(abc.ABC):
    """What the engine needs from a database. All methods are coroutines."""

    url: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- instances ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_instances(
        self, workflow: str, items: list[NewInstance], now: float, *, skip_existing: bool
    ) -> list[InstanceRecord]:
        """Insert ``items`` as queued. Existing ids raise InstanceAlreadyExistsError, or are
        skipped (and left out of the result) when ``skip_existing``."""

    @abc.abstractmethod
    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord | None: ...

    @abc.abstractmethod
    async def get_by_pk(self, pk: int) -> InstanceRecord | None: ...

    @abc.abstractmethod
    async def list_instances(
        self,
        workflow: str,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        id_prefix: str | None = None,
    ) -> Page:
        """Newest first; ``cursor`` is opaque and comes from the previous page.

        ``id_prefix`` keeps the instances whose id starts with it, compared code point by code
        point (no wildcards, case-sensitive), through an index on ``(workflow, id)``."""

    @abc.abstractmethod
    async def count_by_status(self, workflow: str | None = None) -> dict[str, dict[str, int]]:
        """``{workflow: {status: n}}`` (statuses with no instance left out), exact, for every
        workflow or only ``workflow``.

        Backends keep these counts as instances change status (triggers in the database, so
        every writer keeps them) instead of counting the instances: a call reads a few rows
        per workflow and status however many instances there are (the API's workflow lists,
        the dashboard and ``/metrics`` call it on every request)."""

    # -- workflows -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def register_workflows(self, workflows: list[WorkflowRecord], now: float) -> None:
        """Insert or update one row per workflow: ``registered_at`` stays from the first time,
        everything else (``updated_at = now``) is replaced. An engine calls it when it starts."""

    @abc.abstractmethod
    async def known_workflows(self) -> list[WorkflowRecord]:
        """Every workflow an engine registered on this database, by name."""

    # -- running instances (fenced by epoch) ---------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_until: float,
        workflows: list[str],
        *,
        lease_now: float | None = None,
    ) -> list[InstanceRecord]:
        """Mark up to ``limit`` runnable instances of ``workflows`` running for ``owner`` and
        bump their epoch.

        Runnable, in priority order: waiting instances whose ``wake_at`` passed, queued ones
        (oldest first), and running ones whose lease expired (their worker died).

        ``now`` is the engine's clock (timers, timestamps); leases are compared with
        ``lease_now`` (default ``now``), the wall clock in the engine, because a lease measures
        whether a process is alive, which a test clock that jumps an hour must not decide."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, pks: list[int], lease_until: float) -> None:
        """Extend the leases of the instances ``owner`` is running now (only those: a run the
        worker gave up on must expire so that another worker takes it)."""

    @abc.abstractmethod
    async def expire_leases(self, owners: list[str]) -> None:
        """Make the instances of workers known to be dead claimable at once."""

    @abc.abstractmethod
    async def owners(self) -> list[str]:
        """Owners that hold at least one instance."""

    @abc.abstractmethod
    async def load_steps(self, pk: int) -> list[StepRecord]: ...

    @abc.abstractmethod
    async def save_step(self, pk: int, epoch: int, step: StepRecord, *, durable: bool = True) -> str:
        """Insert or replace one step; return the instance's current status.

        With ``durable=False`` the write joins the next commit but the caller does not wait."""

    @abc.abstractmethod
    async def take_event(
        self, pk: int, epoch: int, step: StepRecord, event_type: str, now: float
    ) -> dict[str, Any] | None:
        """Consume the oldest unconsumed event of ``event_type`` into ``step`` (marking it
        complete), or store ``step`` as waiting. Returns the event or None."""

    @abc.abstractmethod
    async def suspend(self, pk: int, epoch: int, wake_at: float | None, wait_types: list[str], now: float) -> str:
        """Release a running instance: ``waiting`` until ``wake_at`` (or an event of one of
        ``wait_types``), ``paused`` if a pause was requested. Returns the new status."""

    @abc.abstractmethod
    async def release(self, pk: int, epoch: int, now: float) -> None:
        """Give a running instance back (the worker is stopping): it is runnable at once.
        An instance that is no longer running (it finished or suspended) is left alone."""

    @abc.abstractmethod
    async def finish(
        self, pk: int, epoch: int, status: str, output_json: str | None, error: dict[str, str] | None, now: float
    ) -> None:
        """Record a terminal status (complete or errored)."""

    @abc.abstractmethod
    async def owned(self, owner: str) -> dict[int, tuple[int, str]]:
        """``{pk: (epoch, status)}`` of the instances ``owner`` holds (to notice terminate/restart)."""

    # -- control -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def pause(self, pk: int, now: float) -> str: ...

    @abc.abstractmethod
    async def resume(self, pk: int, now: float) -> str: ...

    @abc.abstractmethod
    async def terminate(self, pk: int, now: float) -> str: ...

    @abc.abstractmethod
    async def restart(self, pk: int, now: float, from_step: tuple[str, str, int] | None) -> str: ...

    @abc.abstractmethod
    async def send_event(self, pk: int, event_type: str, payload_json: str, now: float) -> None: ...

    # -- timers, history, change detection -------------------------------------------------------
    @abc.abstractmethod
    async def next_wake_at(self, workflows: list[str] | None = None) -> float | None:
        """The earliest ``wake_at`` of a waiting instance (of ``workflows``, when given)."""

    @abc.abstractmethod
    async def history(self, pk: int) -> list[dict[str, Any]]:
        """Instance-level events (WORKFLOW_*), oldest first: ``{"type", "timestamp", "data"}``."""

    @abc.abstractmethod
    async def changed(self) -> bool:
        """True when another connection may have written since the last call (cheap)."""

    def on_change(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call ``callback`` (from any thread) when another process writes something a worker
        should react to. Backends with push notifications implement it; others are polled
        through :meth:`changed`."""
