"""The engine: registers workflows, claims runnable instances and replays them.

Where things happen, end to end: HTTP enters in :mod:`perdure.server.api` (or a trigger in
:mod:`perdure.triggers`, or the application's code) and calls a binding
(:mod:`perdure.binding`), which writes a queued instance to the store. This engine's
dispatcher (:meth:`Engine._dispatch_loop`) **claims** it (:meth:`perdure.store.base.Store.claim`)
and replays ``run()``; each step is **memoised** by :class:`perdure.context.Step` through
:meth:`~perdure.store.base.Store.save_step`. A long sleep or an event wait suspends the
instance with a ``wake_at``: the **timer fires** when the dispatcher, sleeping until
:meth:`~perdure.store.base.Store.next_wake_at`, claims it again. Cron schedules are the engine's
own timers too (:mod:`perdure.cron`).

An :class:`Engine` that is never started is a client: bindings create and control instances in
the store, and workers elsewhere run them. A started engine (``async with engine:``) also runs a
*dispatcher* that

* claims runnable instances from the store, up to ``max_concurrent`` at a time, woken ones
  first (their timers are due), then queued ones oldest first;
* runs each by replaying its workflow's ``run()`` (see :mod:`perdure.context`);
* sleeps until the next timer, a local nudge (a create, an event, a finished run) or the next
  poll tick, on which it asks the store whether another process wrote anything;
* renews the leases of the instances it holds, and cancels a run whose instance was
  terminated, restarted or taken over elsewhere (its epoch moved on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import validators
from ._cancel import reraise_if_cancelling
from .binding import WorkflowBinding
from .clock import Clock, SystemClock
from .context import Step, Stop
from .cron import run_schedule, validate_cron
from .entrypoint import WorkflowEntrypoint
from .errors import Fenced, ValidationError, WorkflowNotFoundError
from .event import WorkflowEvent, to_datetime
from .flow import RateLimit, flow_limits, limits_as_dict, parse_rate_limit, rate_limit_name
from .leases import LeaseGate
from .modifiers import lookup as modifiers_of
from .records import (
    COMPLETE,
    ERRORED,
    TERMINAL,
    TERMINATED,
    FlowLimits,
    InstanceRecord,
    LocalStart,
    StepRecord,
    WorkflowRecord,
)
from .retention import RetentionSweep, parse_retention
from .serde import error_info, rebuild_error
from .store import Store, open_store
from .subscriptions import Deliveries, Subscription, parse_subscriptions
from .tracing import span

log = logging.getLogger("perdure")

# How often a worker looks again for a free slot of a limited workflow while instances wait for
# one (its own runs ending nudge it at once; this catches slots freed on other workers).
_FLOW_RECHECK = 0.25
# Histories a worker keeps in memory after a run suspends, to replay from when it claims the
# instance next (instead of reading and decoding every step again): only long ones (a 10,000-step
# instance took 135 ms to load per wake), and a few at a time.
_KEPT_HISTORIES = 16
_KEPT_HISTORY_MIN_STEPS = 200


@dataclass
class Registration:
    cls: type[WorkflowEntrypoint]
    name: str
    env: Any
    schedules: list[str]
    step_limit: int
    subscriptions: list[Subscription] = field(default_factory=list)
    flow: FlowLimits | None = None  # concurrency, per-key and start-rate limits (perdure.flow)
    binding: WorkflowBinding = field(init=False)

    def record(self) -> WorkflowRecord:
        """What the store keeps of it, for operators' tools in other processes."""
        return WorkflowRecord(
            self.name, self.cls.__name__, list(self.schedules), self.step_limit, flow=limits_as_dict(self.flow)
        )


class Engine:
    """Durable execution on one database.

    ``Engine("sqlite:///perdure.db")`` embeds everything in one file; ``Engine("postgresql://…")``
    lets any number of workers share one server.

    Options: ``max_concurrent`` running instances per engine (100), ``poll_interval`` seconds
    between checks for other processes' writes (0.05), ``lease_ttl`` seconds before a silent
    worker's instances are taken over (3; leases run on the wall clock), ``fast_wait`` seconds up
    to which a sleep or retry delay is waited in memory instead of suspending (1), ``clock``
    (the one source of workflow time: sleeps, retry delays, timeouts),
    and store options such as ``durability="full"|"normal"`` for SQLite.
    """

    def __init__(
        self,
        url: str = "sqlite:///perdure.db",
        *,
        max_concurrent: int = 100,
        poll_interval: float = 0.05,
        lease_ttl: float = 3.0,
        fast_wait: float = 1.0,
        clock: Clock | None = None,
        **store_options: Any,
    ) -> None:
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValidationError(f"max_concurrent must be an integer >= 1, got {max_concurrent!r}")
        for label, value in (("poll_interval", poll_interval), ("lease_ttl", lease_ttl)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValidationError(f"{label} must be a number of seconds > 0, got {value!r}")
        if not isinstance(fast_wait, (int, float)) or fast_wait < 0:
            raise ValidationError(f"fast_wait must be a number of seconds >= 0, got {fast_wait!r}")
        self.url = url
        self.store = open_store(url, **store_options)
        self.clock: Clock = clock or SystemClock()
        self.max_concurrent = max_concurrent
        self.poll_interval = float(poll_interval)
        self.lease_ttl = float(lease_ttl)
        # How often an idle dispatcher looks for runs whose worker died (see _dispatch_loop).
        self._sweep_every = min(1.0, self.lease_ttl / 3)
        self.fast_wait = float(fast_wait)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._registry: dict[str, Registration] = {}
        self._rate_limits: dict[str, RateLimit] = {}  # named step rate limits (perdure.flow)
        self._flow_retry_at: float | None = None  # when a limited workflow's claim may take more
        self._backlog = False  # the last claim filled every free slot: queued instances may wait
        # The dispatcher wants to claim when a slot frees (it had none, filled them all, or a
        # limited workflow's claim left instances queued): a run that finishes nudges it then,
        # and otherwise not (see _run_ended).
        self._claim_wanted = True
        self._flow_held = False  # the last claim left instances of a limited workflow queued
        self._starting = 0  # local starts under way (local_start): slots they hold
        self._loop: asyncio.AbstractEventLoop | None = None
        # pk -> (epoch it suspended at, its steps): see _KEPT_HISTORIES
        self._histories: collections.OrderedDict[int, tuple[int, list[StepRecord]]] = collections.OrderedDict()
        self._running: dict[int, tuple[int, asyncio.Task[None]]] = {}
        self._gates: dict[int, LeaseGate] = {}  # how fresh each run's lease is (perdure.leases)
        self._refreshing: asyncio.Task[set[int]] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.retention: RetentionSweep | None = None  # once started
        self.deliveries: Deliveries | None = None  # once started
        self._nudge: asyncio.Event | None = None
        self._check_control = False
        self._watchers: dict[int, list[asyncio.Future[None]]] = {}
        self._started = False
        self._stopping = False
        self._store_open = False

    # -- registration --------------------------------------------------------------------------
    def register(
        self,
        cls: type[WorkflowEntrypoint],
        *,
        name: str,
        env: Any = None,
        schedules: list[str] | str | None = None,
        limits: dict[str, int] | None = None,
        retention: dict[str, Any] | None = None,
        subscriptions: list[Any] | None = None,
        concurrency: int | None = None,
        concurrency_per_key: int | None = None,
        rate_limit: dict[str, Any] | None = None,
    ) -> WorkflowBinding:
        """Register a workflow class under ``name``; returns its binding.

        ``retention`` is the default of the instances its binding creates
        (:mod:`perdure.retention`); ``subscriptions`` receive its instances' lifecycle events
        (:mod:`perdure.subscriptions`); ``concurrency``, ``concurrency_per_key`` and
        ``rate_limit`` (``{"limit": n, "period": duration}`` of starts) are its flow control
        (:mod:`perdure.flow`)."""
        if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
            raise ValidationError(f"register() takes a WorkflowEntrypoint subclass, got {cls!r}")
        validators.workflow_name(name)
        if name in self._registry:
            raise ValidationError(f"a workflow named {name!r} is already registered")
        if isinstance(schedules, str):
            schedules = [schedules]
        schedules = list(schedules or [])
        for cron in schedules:
            validate_cron(cron)
        step_limit = validators.DEFAULT_STEP_LIMIT
        if limits is not None:
            if not isinstance(limits, dict) or set(limits) - {"steps"}:
                raise ValidationError(f"limits must be a mapping with the key 'steps', got {limits!r}")
            steps = limits.get("steps", step_limit)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValidationError(f"limits['steps'] must be an integer >= 1, got {steps!r}")
            step_limit = steps
        kept = parse_retention(retention, "register(retention=)")
        flow = flow_limits(concurrency, concurrency_per_key, rate_limit)
        registration = Registration(cls, name, env, schedules, step_limit, parse_subscriptions(subscriptions), flow)
        registration.binding = WorkflowBinding(self, name, kept)
        self._registry[name] = registration
        if self._started:
            self._start_schedules(registration)
            if registration.subscriptions and self.deliveries is not None:
                self.deliveries.add(name, registration.subscriptions)
            self._background.append(
                asyncio.create_task(self._announce([registration]), name=f"perdure-register-{name}")
            )
        return registration.binding

    def rate_limit(self, name: str, *, limit: int, period: Any) -> None:
        """Define the step rate limit ``name``: ``limit`` attempts in any window of ``period``
        (a duration), shared by every worker of the database. A step takes a slot per attempt
        with ``config={"rate_limit": name}``; over the limit it waits (see :mod:`perdure.flow`).
        Every worker that runs such steps defines the limit, with the same values."""
        rate_limit_name(name)
        parsed = parse_rate_limit({"limit": limit, "period": period}, f"rate_limit({name!r})")
        known = self._rate_limits.get(name)
        if known is not None and known != parsed:
            raise ValidationError(
                f"rate limit {name!r} is already defined as {known.limit} per {known.period}s; one name has one limit"
            )
        self._rate_limits[name] = parsed

    @property
    def rate_limits(self) -> dict[str, RateLimit]:
        return dict(self._rate_limits)

    @property
    def workflows(self) -> dict[str, Registration]:
        return dict(self._registry)

    def binding(self, name: str) -> WorkflowBinding:
        try:
            return self._registry[name].binding
        except KeyError:
            raise WorkflowNotFoundError(f"no workflow named {name!r} is registered") from None

    # -- lifecycle -----------------------------------------------------------------------------
    async def ensure_store(self) -> Store:
        if not self._store_open:
            await self.store.open()
            self._store_open = True
        return self.store

    async def start(self) -> None:
        """Run workers and timers in this process until :meth:`stop`."""
        if self._started:
            return
        await self.ensure_store()
        # Tell the database which workflows run here, so that tools in other processes (the
        # CLI with --db, a server without the application) can list and trigger them.
        await self.store.register_workflows([r.record() for r in self._registry.values()], self.clock.now())
        self._started = True
        self._stopping = False
        self._nudge = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop = loop

        def on_change() -> None:
            loop.call_soon_threadsafe(self._external_change)

        self.store.on_change(on_change)
        await self._expire_dead_local_owners()
        self._background.append(asyncio.create_task(self._dispatch_loop(), name="perdure-dispatcher"))
        self._background.append(asyncio.create_task(self._lease_loop(), name="perdure-leases"))
        for registration in self._registry.values():
            self._start_schedules(registration)
        await self._start_housekeeping()
        watch = getattr(self.clock, "watch", None)  # a test clock that skips time (perdure.testing)
        if watch is not None:
            watch(self)

    async def stop(self) -> None:
        """Stop running instances (they resume from their last step elsewhere or on the next
        start) and close the store's connections."""
        if self._started:
            self._stopping = True
            for task in self._background:
                task.cancel()
            running = [task for _, task in self._running.values()]
            for task in running:
                task.cancel()
            await _cancel_until_done([*self._background, *running])
            self._background.clear()
            self._started = False
        # Always: the store also opens itself on first use (a binding or a read through
        # engine.store before start), and its pools and listener must not outlive stop().
        await self.store.close()
        self._store_open = False

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _announce(self, registrations: list[Registration]) -> None:
        """Record a workflow registered after :meth:`start` (start records the others)."""
        try:
            await self.store.register_workflows([r.record() for r in registrations], self.clock.now())
        except Exception:
            log.exception("perdure: could not record the registration of %s", [r.name for r in registrations])

    async def _start_housekeeping(self) -> None:
        """The retention sweep, and the delivery of lifecycle subscriptions if there are any."""
        self.retention = RetentionSweep(self.store, self.owner, time.time)
        self._background.append(asyncio.create_task(self.retention.run(), name="perdure-retention"))
        # The delivery task runs even with nothing subscribed yet, so that a workflow registered
        # after start finds it with a recent history position to start its subscriptions at.
        subscribed = {r.name: r.subscriptions for r in self._registry.values() if r.subscriptions}
        store = self.store

        async def send(queue: str, bodies: Sequence[str]) -> None:
            await store.queue_send(queue, bodies, time.time(), 0.0)

        self.deliveries = Deliveries(store, self.owner, subscribed, send)
        await self.deliveries.prepare()  # a new subscription starts here: with what follows start()
        self._background.append(asyncio.create_task(self.deliveries.run(), name="perdure-subscriptions"))

    def _start_schedules(self, registration: Registration) -> None:
        for cron in registration.schedules:
            self._background.append(
                asyncio.create_task(
                    run_schedule(registration.binding, self.clock, cron), name=f"perdure-cron-{registration.name}"
                )
            )

    # -- notifications from bindings -------------------------------------------------------------
    def local_start(self, workflow: str) -> LocalStart | None:
        """A claim for one instance of ``workflow`` about to be created in this process, when
        this engine runs it and has a free slot and no backlog: the create writes it claimed
        and :meth:`adopt` runs it at once, without a claim round (one commit and one dispatcher
        turn less per ``create()``, as DBOS starts a workflow in the process that starts it).
        None otherwise (the instance is queued, and claimed by whichever worker comes first).
        Not for workflows with flow control, which only the claim may start."""
        registration = self._registry.get(workflow)
        if (
            registration is None
            or registration.flow is not None
            or not self._started
            or self._stopping
            or self._backlog
            or len(self._running) + self._starting >= self.max_concurrent
        ):
            return None
        try:
            if asyncio.get_running_loop() is not self._loop:
                return None  # created from another event loop: the dispatcher's loop claims it
        except RuntimeError:
            return None
        self._starting += 1
        leased_at = time.monotonic()
        return LocalStart(self.owner, time.time() + self.lease_ttl, leased_at)

    def adopt(self, start: LocalStart, records: list[InstanceRecord]) -> None:
        """Run the instances created claimed under ``start`` (none when the create failed or
        found the id taken); the slot :meth:`local_start` held is free again either way."""
        self._starting -= 1
        for record in records:
            if record.owner == self.owner and record.status == "running":
                self._launch(record, start.leased_at)
            else:
                self.nudge()

    def nudge(self) -> None:
        """Something may have become runnable: claim soon."""
        if self._nudge is not None:
            self._nudge.set()

    def _external_change(self) -> None:
        self._check_control = True
        self.nudge()

    def control_changed(self) -> None:
        """An instance was terminated, restarted or paused from this process."""
        self._check_control = True
        self.nudge()

    async def wait_for_change(self, pk: int, timeout: float) -> None:
        """Return when instance ``pk`` ends in this process, or after ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(pk, []).append(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            watchers = self._watchers.get(pk)
            if watchers is not None:
                with contextlib.suppress(ValueError):
                    watchers.remove(future)
                if not watchers:
                    del self._watchers[pk]

    def instance_ended(self, pk: int) -> None:
        """Instance ``pk`` ended (finished here, or terminated from this process): wake its waiters."""
        for future in self._watchers.pop(pk, []):
            if not future.done():
                future.set_result(None)

    @property
    def is_running(self) -> bool:
        return self._started

    # -- the dispatcher --------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        assert self._nudge is not None
        claim_now = True
        last_sweep = time.monotonic()
        while True:
            try:
                if self._check_control:
                    self._check_control = False
                    await self._reconcile()
                free = self.max_concurrent - len(self._running)
                tried = False
                if claim_now and free > 0:
                    claim_now, tried = False, True
                    claimed = await self._claim(free)
                    if claimed == free:
                        claim_now = True  # there may be more; claim again when a slot frees
                # A limited claim that left instances queued for want of a slot wants one too,
                # although this worker had slots to spare: a run that ends may free the limit's.
                self._claim_wanted = claim_now or self._flow_held
                # A timer counts only while a slot is free (a finished run nudges us), and one
                # that is due although we just claimed is being handled: wait for the next tick.
                next_wake = None
                if len(self._running) < self.max_concurrent:
                    next_wake = await self.store.next_wake_at(list(self._registry))
                now = self.clock.now()
                delay = self.poll_interval
                if next_wake is not None and (next_wake > now or not tried):
                    delay = min(delay, max(0.0, next_wake - now))
                if self._flow_retry_at is not None:
                    delay = min(delay, max(0.0, self._flow_retry_at - now))
                if delay > 0 and not self._nudge.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._nudge.wait()
                if self._nudge.is_set():
                    self._nudge.clear()
                    claim_now = True
                elif next_wake is not None and next_wake <= self.clock.now():
                    claim_now = True
                elif self._flow_retry_at is not None and self._flow_retry_at <= self.clock.now():
                    claim_now = True
                elif await self.store.changed():
                    claim_now = True
                    self._check_control = True
                elif time.monotonic() - last_sweep >= self._sweep_every:
                    # A worker that died announces nothing, and an idle worker sees no write:
                    # look now and then for runs whose owner is gone (a dead process on this
                    # host at once, any other once its lease ran out) and claim them.
                    last_sweep = time.monotonic()
                    await self._expire_dead_local_owners()
                    claim_now = True
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not kill the worker
                reraise_if_cancelling()
                log.exception("perdure dispatcher error; retrying")
                await asyncio.sleep(min(1.0, self.poll_interval * 10))
                claim_now = True

    async def _claim(self, free: int) -> int:
        """Claim up to ``free`` instances and launch them; how many. Workflows with flow control
        are claimed one by one within their limits (:meth:`Store.claim_limited`), after the
        others; when one holds instances back, :attr:`_flow_retry_at` says when to look again
        (a start slot frees, or a slot may have freed on another worker)."""
        now, wall, leased_at = self.clock.now(), time.time(), time.monotonic()
        plain = [name for name, r in self._registry.items() if r.flow is None]
        count = 0
        if plain:
            claimed = await self.store.claim(
                self.owner, free, now, wall + self.lease_ttl, plain, lease_now=wall, kept=self._histories.keys()
            )
            for record in claimed:
                self._launch(record, leased_at)
                count += 1
        self._backlog = count >= free  # queued instances may be left: local starts wait their turn
        self._flow_retry_at = None
        self._flow_held = False
        for registration in self._registry.values():
            if registration.flow is None or count >= free:
                continue
            result = await self.store.claim_limited(
                self.owner,
                free - count,
                now,
                wall + self.lease_ttl,
                registration.name,
                registration.flow,
                lease_now=wall,
            )
            for record in result.claimed:
                self._launch(record, leased_at)
            count += len(result.claimed)
            self._flow_held = self._flow_held or result.held > 0
            retry = result.retry_at
            if result.held and retry is None:  # a slot may free on another worker: look again soon
                retry = now + max(self.poll_interval, _FLOW_RECHECK)
            if retry is not None:
                self._flow_retry_at = retry if self._flow_retry_at is None else min(self._flow_retry_at, retry)
        return count

    async def _reconcile(self) -> None:
        """Cancel local runs whose instance moved on (terminated, restarted, taken over)."""
        if not self._running:
            return
        # Only the runs that were here before the read: one launched while it was in flight
        # (a local start, committed after the read began) is missing from it, yet ours; it
        # was cancelled, and its instance stayed "running", leased by us, for good (seen on
        # PostgreSQL, a few runs in 60,000, before _run_ended forgot such runs).
        before = list(self._running.items())
        owned = await self.store.owned(self.owner)
        for pk, (epoch, task) in before:
            if self._running.get(pk) != (epoch, task):
                continue  # it ended, or it was launched again, meanwhile
            current = owned.get(pk)
            if current is None or current[0] != epoch:
                log.info("perdure: instance %s moved on (terminated, restarted or taken over); cancelling its run", pk)
                task.cancel()

    async def _lease_loop(self) -> None:
        """Renew the leases of running instances every third of ``lease_ttl``. A worker that
        cannot renew for half of it gives its runs up before another worker may take
        them over, so one instance never runs in two places."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if not self._running:
                renewed = time.monotonic()
                continue
            try:
                await self._renew_leases()
                renewed = time.monotonic()
            except Exception:
                reraise_if_cancelling()
                log.exception("perdure could not renew its leases; retrying")
                if time.monotonic() - renewed > self.lease_ttl / 2:
                    log.warning(
                        "perdure: leases not renewed for %.1fs; giving up %d runs",
                        time.monotonic() - renewed,
                        len(self._running),
                    )
                    for _, task in self._running.values():
                        task.cancel()

    async def _renew_leases(self) -> set[int]:
        """Renew, trying twice: after a long pause (a stopped process, a GC) the first try
        often meets a connection the server has closed, and the second gets a fresh one.
        Returns the instances still ours; their lease gates are fresh again."""
        for attempt in (1, 2):
            try:
                pks, started = list(self._running), time.monotonic()
                async with asyncio.timeout(self.lease_ttl / 3):
                    renewed = await self.store.renew_leases(self.owner, pks, time.time() + self.lease_ttl)
                break
            except Exception:
                reraise_if_cancelling()
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05)
        for pk in renewed:
            gate = self._gates.get(pk)
            if gate is not None:
                gate.renewed_at = max(gate.renewed_at, started)
        if len(renewed) < len(pks):  # some moved on: cancel those runs now
            self._check_control = True
            self.nudge()
        return renewed

    async def _refresh_leases(self) -> set[int]:
        """Renew every lease now, for a run whose gate went stale (one renewal at a time:
        after a stall, every queued attempt asks at once)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._renew_leases(), name="perdure-lease-refresh")
        return await asyncio.shield(self._refreshing)

    async def _expire_dead_local_owners(self) -> None:
        """Instances held by a process on this host that no longer exists are claimable now,
        without waiting for their lease to run out (the usual case after a crash)."""
        host = socket.gethostname()
        dead = []
        for owner in await self.store.owners():
            parts = owner.split(":")
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                dead.append(owner)
        if dead:
            await self.store.expire_leases(dead)

    def _launch(self, record: InstanceRecord, leased_at: float) -> None:
        previous = self._running.get(record.pk)
        if previous is not None:  # we reclaimed our own instance after its lease ran out
            previous[1].cancel()
        gate = LeaseGate(record.pk, self.lease_ttl, self._refresh_leases)
        gate.renewed_at = leased_at
        self._gates[record.pk] = gate
        task = asyncio.create_task(self._execute(record, gate), name=f"perdure-{record.workflow}-{record.id}")
        self._running[record.pk] = (record.epoch, task)
        task.add_done_callback(functools.partial(self._run_ended, record, gate))

    def _run_ended(self, record: InstanceRecord, gate: LeaseGate, task: asyncio.Task[None]) -> None:
        """A run's task ended, however it did: also cancelled before its first line, when no
        code of the run ran (a ``finally`` there would not), so this is where the run is
        forgotten: its lease is no longer renewed, and its waiters and the dispatcher hear."""
        if self._running.get(record.pk) == (record.epoch, task):  # not launched again meanwhile
            del self._running[record.pk]
            if self._gates.get(record.pk) is gate:
                del self._gates[record.pk]
        self.instance_ended(record.pk)
        # A freed slot is worth a claim only if the dispatcher wants one; a suspended (or
        # lost) run has a timer or a lease for it to look at. Without this, every finished
        # run of a sequence of create() calls cost a claim round that found nothing.
        if record.status not in TERMINAL or self._claim_wanted:
            self.nudge()

    # -- running one instance --------------------------------------------------------------------
    async def _execute(self, record: InstanceRecord, lease: LeaseGate) -> None:
        registration = self._registry[record.workflow]
        step: Step | None = None
        try:
            kept = self._histories.pop(record.pk, None)
            if kept is not None and kept[0] + 1 == record.epoch:
                # Claimed again by this worker and by nobody in between (every claim, control
                # call and restart bumps the epoch): the steps stored are the ones it kept.
                steps = kept[1]
            elif record.steps is not None:  # read with the claim
                steps = record.steps
            else:
                steps = await self.store.load_steps(record.pk)
            step = Step(
                store=self.store,
                pk=record.pk,
                epoch=record.epoch,
                clock=self.clock,
                steps=steps,
                step_limit=registration.step_limit,
                # a limited workflow never waits in memory: its slot goes to the next instance
                fast_wait=0.0 if registration.flow is not None else self.fast_wait,
                rate_limits=self._rate_limits,
                lease=lease,
                replay_only=record.terminating is not None,
                modifiers=modifiers_of(self.url, record.workflow, record.id, record.pk),
            )
            event = WorkflowEvent(
                payload=record.params,
                timestamp=to_datetime(record.created_at),
                instance_id=record.id,
                workflow_name=record.workflow,
                schedule=_schedule(record.schedule),
            )
            workflow = registration.cls(registration.env)
            attributes = {"perdure.workflow": record.workflow, "perdure.instance_id": record.id}
            if record.terminating is not None:
                await self._terminate_with_rollback(record, step, workflow, event)
                return
            try:
                with span(f"workflow {record.workflow}", attributes):
                    output = await workflow.run(event, step)
            except Stop as stop:
                if stop.kind == "fatal" and stop.error is not None:
                    await self._failed(record, step, rebuild_error(stop.error), stop.error)
                else:
                    await self._stopped(record, step, stop)
            except Exception as exc:
                await self._failed(record, step, exc, error_info(exc))
            else:
                step.cancel_in_flight()
                try:
                    encoded = validators.encode_json(output, f"the output of workflow {record.workflow!r}")
                except ValidationError as exc:
                    await self._finish(record, ERRORED, None, {"name": "ValidationError", "message": str(exc)})
                else:
                    await self._finish(record, COMPLETE, encoded, None)
        except asyncio.CancelledError:
            if step is not None:
                step.cancel_in_flight()
            if self._stopping:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(record.pk, record.epoch, self.clock.now()))
        except Fenced:
            pass
        except Exception:
            log.exception("perdure: instance %s/%s failed inside the engine", record.workflow, record.id)
        # what follows the run (forgetting it, waking its waiters) is _run_ended, when the task ends

    async def _failed(self, record: InstanceRecord, step: Step, exc: BaseException, error: dict[str, str]) -> None:
        """The run failed: run its rollback handlers (perdure.rollback), then end it ``errored``
        with the error that failed it. A handler's Stop (a suspend, a lost lease) ends this run
        instead; the replay fails the same way and carries on with the handlers left."""
        step.cancel_in_flight()
        try:
            await step.run_rollbacks(exc)
        except Stop as stop:
            if stop.kind != "fatal":
                await self._stopped(record, step, stop)
                return
        await self._finish(record, ERRORED, None, error)

    async def _terminate_with_rollback(
        self, record: InstanceRecord, step: Step, workflow: WorkflowEntrypoint, event: WorkflowEvent
    ) -> None:
        """``terminate(rollback=True)``: replay the run up to its first unfinished step to
        collect the rollback handlers of the finished ones, run them, then end it terminated."""
        assert record.terminating is not None
        try:
            await workflow.run(event, step)
        except Stop as stop:
            if stop.kind in ("fenced", "lost"):
                await self._stopped(record, step, stop)
                return
        except Exception:  # the replay failed the way the run did: its handlers are collected
            pass
        step.cancel_in_flight()
        try:
            await step.run_rollbacks(rebuild_error(record.terminating))
        except Stop as stop:
            if stop.kind != "fatal":
                await self._stopped(record, step, stop)
                return
        await self.store.finish(record.pk, record.epoch, TERMINATED, None, None, self.clock.now())

    async def _stopped(self, record: InstanceRecord, step: Step, stop: Stop) -> None:
        if stop.kind == "suspend":
            await step.settle()
            await self.store.suspend(
                record.pk, record.epoch, step.next_wake(), sorted(step.wait_types), self.clock.now()
            )
            steps = step.records()
            if len(steps) >= _KEPT_HISTORY_MIN_STEPS:
                self._histories[record.pk] = (record.epoch, steps)
                while len(self._histories) > _KEPT_HISTORIES:
                    self._histories.popitem(last=False)
        elif stop.kind == "fatal":
            step.cancel_in_flight()
            await self._finish(record, ERRORED, None, stop.error)
        else:  # fenced (the instance is someone else's now) or lost (the store failed under us):
            # drop the run; a lost one is claimed again once its lease, no longer renewed, runs out
            step.cancel_in_flight()
            if stop.kind == "lost":
                log.warning(
                    "perdure: lost instance %s/%s (store error); it will be retried", record.workflow, record.id
                )

    async def _finish(
        self, record: InstanceRecord, status: str, output_json: str | None, error: dict[str, str] | None
    ) -> None:
        public = None if error is None else {"name": error["name"], "message": error["message"]}
        await self.store.finish(record.pk, record.epoch, status, output_json, public, self.clock.now())
        record.status = status  # type: ignore[assignment]  # this run's copy: it ended (see _run_ended)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _schedule(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    return {"cron": stored["cron"], "scheduled_time": to_datetime(stored["scheduled_time"])}


__all__ = ["Engine", "open_store", "TERMINAL"]


async def _cancel_until_done(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for cancelled tasks to end, cancelling again those that outlive a second: a
    database driver may turn a cancellation into an error of its own that a retry loop then
    catches, and one swallowed cancellation must not keep ``stop()`` waiting forever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
