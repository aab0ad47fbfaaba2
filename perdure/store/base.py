"""The storage interface: everything the engine, the triggers and the server ask of a database.

Only :mod:`perdure.store` speaks SQL or imports a database driver; everything else goes
through this class, with the words and records of :mod:`perdure.records`. A backend keeps:

* **instances**, with their status, lease (``owner``, ``lease_until``) and ``epoch``: a fencing
  token bumped on each claim, terminate and restart. Every write a worker makes on behalf of a
  running instance names its epoch, and a backend refuses it with
  :class:`~perdure.errors.Fenced` once the epoch moved on, so a worker that lost an instance can
  never record a result for it;
* **steps**, one row per ``(kind, name, count)`` with its attempts: this is where a step is
  **memoised** (:meth:`Store.save_step`, read back by :meth:`Store.load_steps` on replay);
* **events** sent to instances, consumed in order per type (:meth:`Store.take_event`);
* the instance-level **history** (``WORKFLOW_QUEUED`` ... ``WORKFLOW_TERMINATED``), which
  metrics tail (:meth:`Store.history_since`);
* the **workflows** engines registered, so that tools in other processes know which exist;
* the **durable queues'** messages and dead letters (:meth:`Store.queue_send` ...).

Where things happen: an instance is **claimed** in :meth:`Store.claim` (runnable ones: due
timers, then queued, then expired leases); a **timer** is a waiting instance's ``wake_at``,
which :meth:`Store.suspend` sets and :meth:`Store.next_wake_at` reports, so the engine's
dispatcher knows when to claim again. The SQLite backend (:mod:`perdure.store.sqlite`) is the
embedded default; :mod:`perdure.store.postgres` serves many workers. What their SQL shares is
written once in :mod:`perdure.store.sql`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ..records import (
    DeadLetter,
    FlowLimits,
    HistoryRow,
    InstanceRecord,
    LimitedClaim,
    LocalStart,
    NewInstance,
    Page,
    QueueDepth,
    QueueMessage,
    StepRecord,
    WorkflowRecord,
)


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
        self,
        workflow: str,
        items: list[NewInstance],
        now: float,
        *,
        skip_existing: bool,
        start: LocalStart | None = None,
    ) -> list[InstanceRecord]:
        """Insert ``items`` as queued. Existing ids raise InstanceAlreadyExistsError, or are
        skipped (and left out of the result) when ``skip_existing``. With ``start`` (one item
        only) the instance is created claimed, ``running`` for ``start.owner``."""

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
        kept: Collection[int] = (),
    ) -> list[InstanceRecord]:
        """Mark up to ``limit`` runnable instances of ``workflows`` running for ``owner`` and
        bump their epoch. Each record comes with its stored steps (``record.steps``, read in
        the same transaction), except those whose pk is in ``kept``: the engine holds their
        history already (a long one, not worth reading again).

        Runnable, in priority order: waiting instances whose ``wake_at`` passed, queued ones
        (oldest first), and running ones whose lease expired (their worker died).

        ``now`` is the engine's clock (timers, timestamps); leases are compared with
        ``lease_now`` (default ``now``), the wall clock in the engine, because a lease measures
        whether a process is alive, which a test clock that jumps an hour must not decide."""

    @abc.abstractmethod
    async def claim_limited(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_until: float,
        workflow: str,
        limits: FlowLimits,
        *,
        lease_now: float,
    ) -> LimitedClaim:
        """Like :meth:`claim` for one workflow with flow control (:mod:`perdure.store.flow`):
        within its concurrency, per-key and start-rate ``limits``, across all workers."""

    @abc.abstractmethod
    async def reserve_rate_slot(
        self, limiter: str, holder: str, limit: int, period: float, now: Callable[[], float]
    ) -> float:
        """The time of ``holder``'s slot of the rate limit ``limiter`` (``limit`` per ``period``
        seconds), reserving one if it has none: the present (``now()``, read once the
        reservation holds the limiter's lock: a reservation may queue behind others, and a
        time read before that would hand out slots already in the past), or the earliest later
        time with room."""

    @abc.abstractmethod
    async def rate_slots(self, limiter: str, since: float) -> list[float]:
        """The times of ``limiter``'s slots after ``since``, oldest first."""

    @abc.abstractmethod
    async def queued_reasons(self, workflow: str, limits: FlowLimits, now: float) -> dict[str, int]:
        """Counts of ``workflow``'s queued instances by why they are not running."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, pks: list[int], lease_until: float) -> set[int]:
        """Extend the leases of the instances ``owner`` is running now (only those: a run the
        worker gave up on must expire so that another worker takes it). Returns the instances
        whose lease was extended: the others are no longer ``owner``'s."""

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
    async def mark_waiting(self, pk: int, epoch: int, wake_at: float | None) -> str:
        """Show a run's in-memory wait (``wake_at``) as ``waiting``, or end it (``None``)."""

    @abc.abstractmethod
    async def terminate(self, pk: int, now: float, *, rollback: bool = False) -> str:
        """End the instance ``terminated`` (epoch + 1); with ``rollback`` and finished steps, make
        it due now with ``terminating`` set instead, so a worker runs its rollback handlers first."""

    @abc.abstractmethod
    async def restart(self, pk: int, now: float, from_step: tuple[str, str, int] | None) -> str: ...

    @abc.abstractmethod
    async def send_event(self, pk: int, event_type: str, payload_json: str, now: float) -> None: ...

    @abc.abstractmethod
    async def has_event(self, pk: int, event_type: str) -> bool:
        """Whether instance ``pk`` has an unconsumed event of ``event_type`` (a read, no lock: a
        run waiting for one in memory polls it, then takes it with :meth:`take_event`)."""

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

    # -- reads for metrics -------------------------------------------------------------------------
    @abc.abstractmethod
    async def history_since(self, after: int, types: Sequence[str], limit: int = 2000) -> list[HistoryRow]:
        """History rows of ``types`` with ``seq > after``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    async def last_history_seq(self) -> int:
        """The newest history row's ``seq`` (0 when there is none)."""

    @abc.abstractmethod
    async def oldest_queued_at(self, workflow: str) -> float | None:
        """When the oldest queued instance of ``workflow`` was created (None: none queued)."""

    # -- housekeeping: deletion, retention, roles, subscriptions (perdure.store.housekeeping) --------
    @abc.abstractmethod
    async def delete_instances(self, workflow: str, ids: Sequence[str]) -> dict[str, str]:
        """Delete the finished instances among ``ids`` with their steps, events and history, in
        one transaction. Returns each id's outcome: ``"deleted"``, ``"missing"`` (no such
        instance) or ``"unfinished"`` (not deleted: terminate it first)."""

    @abc.abstractmethod
    async def any_expired(self, now: float) -> bool:
        """Whether some finished instance's retention ran out (a read: cheap when none did)."""

    @abc.abstractmethod
    async def delete_expired(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` finished instances whose retention ran out (``expires_at <= now``)
        with all their rows; how many."""

    @abc.abstractmethod
    async def hold_role(self, role: str, owner: str, until: float, now: float) -> bool:
        """Take or renew the background role ``role`` for ``owner`` until ``until``; False while
        another owner holds it (its ``until`` is still ahead of ``now``)."""

    @abc.abstractmethod
    async def release_role(self, role: str, owner: str) -> None:
        """Give ``role`` up, if ``owner`` holds it."""

    @abc.abstractmethod
    async def history_horizon(self) -> tuple[int, int, int]:
        """``(top, xmax, xmin)``: the newest history ``seq``, the next transaction id and the
        oldest running one. Once a later call's ``xmin`` reaches this ``xmax``, every row up to
        ``top`` is visible. A backend that commits in ``seq`` order returns ``xmax`` 0."""

    @abc.abstractmethod
    async def subscription_cursor(self, name: str, start: int) -> int:
        """The history ``seq`` up to which subscription ``name`` delivered; made ``start`` on first use."""

    @abc.abstractmethod
    async def advance_subscription(self, name: str, seq: int) -> None:
        """Record that subscription ``name`` delivered every lifecycle event up to ``seq``."""

    # -- secrets -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def secret(self, name: str) -> bytes:
        """A random 32-byte key named ``name``, kept in the database: made on first use, the
        same afterwards for every process on this database (so several API servers accept each
        other's signed cursors and sessions). Two processes asking at once get the same key."""

    # -- durable queues ------------------------------------------------------------------------------
    # A message is ready once ``visible_at`` passed; a delivery leases it (``lease``) and hides
    # it for the visibility timeout; only the holder of the lease may ack, retry or
    # dead-letter it, so a consumer whose lease ran out cannot touch a redelivered message.
    @abc.abstractmethod
    async def queue_send(self, queue: str, bodies_json: Sequence[str], now: float, delay: float) -> list[int]:
        """Store messages (bodies already JSON), visible after ``delay`` seconds; their ids."""

    @abc.abstractmethod
    async def queue_receive(
        self, queue: str, limit: int, now: float, *, visibility_timeout: float, max_attempts: int, lease: str
    ) -> list[QueueMessage]:
        """Lease up to ``limit`` ready messages, oldest first (``attempts`` + 1 each). A message
        whose lease ran out on its ``max_attempts``-th delivery is dead-lettered instead."""

    @abc.abstractmethod
    async def queue_ack(self, leased: Sequence[tuple[int, str]]) -> int:
        """Delete ``(id, lease)`` messages; how many still held that lease."""

    @abc.abstractmethod
    async def queue_retry(self, message_id: int, lease: str, visible_at: float, error: str | None) -> bool:
        """Make a leased message ready again at ``visible_at``; False if the lease was lost."""

    @abc.abstractmethod
    async def queue_dead_letter(self, message_id: int, lease: str, error: str, now: float) -> bool:
        """Move a leased message to the dead letters; False if the lease was lost."""

    @abc.abstractmethod
    async def queue_redrive(self, queue: str, now: float) -> int:
        """Every dead letter of ``queue`` back to ready, attempts reset; how many."""

    @abc.abstractmethod
    async def queue_depths(self, now: float, queue: str | None = None) -> dict[str, QueueDepth]:
        """Per queue that holds messages or dead letters (only ``queue``, when given)."""

    @abc.abstractmethod
    async def queue_dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """The newest dead letters of ``queue`` first."""
