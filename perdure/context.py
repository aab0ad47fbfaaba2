"""The ``step`` object that ``run()`` receives: durable steps, sleeps and event waits.

Every call is identified by ``(kind, name, count)``, where ``count`` says how many times that
name was used so far in this run (SPEC §1.6). On every wake-up the engine runs ``run()`` again
from the top with the stored steps in :attr:`Step._memo`: a finished step returns its stored
result (or raises its stored error) without running.

When a run must wait longer than a moment (a long sleep, a retry delay, an event that has not
arrived) the step records its deadline and raises :class:`Suspend`, a ``BaseException`` that
user code does not catch. The engine then lets in-flight steps finish, stores the earliest
deadline on the instance and forgets the run: a waiting instance holds no coroutine and no
memory, only rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, overload

from . import validators
from .clock import Clock, run_with_timeout
from .dag import Declarations, DoOptions, StepFunction, check_depends, parameters
from .durations import Duration, parse_duration, parse_timestamp
from .errors import (
    EventTimeoutError,
    Fenced,
    NonRetryableDelayError,
    NonRetryableError,
    ValidationError,
    WorkflowTimeoutError,
)
from .event import to_datetime
from .leases import AlwaysFresh, LeaseGate, LeaseLost
from .modifiers import NOT_MOCKED, Hooks
from .records import COMPLETE, DO, PATCH, ROLLBACK, SLEEP, WAIT, WAITING_FOR_PAUSE, StepRecord, StopKind
from .retries import (
    DEFAULT_CONFIG,
    DYNAMIC_DELAY,
    dynamic_base_delay,
    public_config,
    resolve_config,
    retry_delay,
    stored_config,
    timeout_seconds,
)
from .rollback import Handler, Registry, check_handler
from .serde import error_info, rebuild_error
from .tracing import span

if TYPE_CHECKING:
    from .flow import RateLimit
    from .store.base import Store


class ReplayObserver(Protocol):
    """What a replay checker (:mod:`perdure.replay`) hears from the step it replays with."""

    def missing(self, step: Step, kind: str, name: str, count: int) -> None:
        """The code asks for a step the history does not have."""

    def sleep(self, step: Step, record: StepRecord, config: Mapping[str, Any]) -> None:
        """The code reaches a stored sleep, asking for ``config``."""


_LOST_ATTEMPT = {"name": "WorkerLost", "message": "the process running this attempt stopped before it finished"}


class Stop(BaseException):
    """Ends a run early without letting user code catch it.

    ``kind`` is ``"suspend"`` (wait for a deadline or an event), ``"fenced"`` (another worker
    or a control call took the instance), ``"lost"`` (the database failed under the run) or
    ``"fatal"`` (the instance errors with ``error``).
    """

    def __init__(self, kind: StopKind, error: dict[str, str] | None = None) -> None:
        super().__init__(kind)
        self.kind: StopKind = kind
        self.error = error


class Step:
    """The step API. One is made per run of an instance; ``run()`` receives it as ``step``."""

    def __init__(
        self,
        *,
        store: Store,
        pk: int,
        epoch: int,
        clock: Clock,
        steps: list[StepRecord],
        step_limit: int,
        fast_wait: float,
        rate_limits: Mapping[str, RateLimit] | None = None,
        lease: LeaseGate | None = None,
        replay_only: bool = False,
        observer: ReplayObserver | None = None,
        modifiers: Hooks | None = None,
    ) -> None:
        self._store = store
        self._lease = lease if lease is not None else AlwaysFresh()
        # Replay only (terminate with rollback): stored steps come back, and the first step
        # that did not finish ends the run (Stop("replayed")) instead of running.
        self._replay_only = replay_only or observer is not None
        self._observer = observer  # the replay checker (perdure.replay), if one is looking
        self._modifiers = modifiers  # a test's modifiers (perdure.testing), almost always None
        # the history this run started from, in stored order
        self._stored: tuple[tuple[str, str, int], ...] = tuple(s.key for s in steps)
        self._visited: set[tuple[str, str, int]] = set()  # the steps this run asked for
        self._waits = 0  # short waits in memory now (sleeps, retry delays)
        self._marked = False  # the instance reads ``waiting`` for them
        self._pk = pk
        self._epoch = epoch
        self._clock = clock
        self._memo = {s.key: s for s in steps}
        self._counts: dict[tuple[str, str], int] = {}
        self._do_calls = 0
        self._step_limit = step_limit
        self._fast_wait = fast_wait
        self._rate_limits = rate_limits or {}  # engine.rate_limit()'s named limits (perdure.flow)
        self._streams: set[str] = set()  # event types this run has taken an event of
        self._dag = Declarations(self._run_do)
        self._rollbacks = Registry()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping: Stop | None = None
        self.pause_requested = False
        self.wakes: list[float] = []
        self.wait_types: set[str] = set()

    # -- step.do -------------------------------------------------------------------------------
    @overload
    def do(self, name: Callable[..., Any], /) -> StepFunction: ...

    @overload
    def do(
        self,
        name: str | None = None,
        /,
        *,
        config: Mapping[str, Any] | None = None,
        concurrent: bool = False,
        rollback: Callable[..., Any] | None = None,
        rollback_config: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], StepFunction]: ...

    @overload
    def do(
        self,
        name: str | None = None,
        /,
        *,
        depends: Sequence[StepFunction],
        config: Mapping[str, Any] | None = None,
        concurrent: bool = False,
        rollback: Callable[..., Any] | None = None,
        rollback_config: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], StepFunction]: ...

    @overload
    def do(
        self,
        name: str,
        depends: Sequence[StepFunction],
        concurrent: bool = False,
        config: Mapping[str, Any] | None = None,
        /,
    ) -> Callable[[Callable[..., Any]], StepFunction]: ...

    @overload
    def do(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *,
        config: Mapping[str, Any] | None = None,
        concurrent: bool = False,
        rollback: Callable[..., Any] | None = None,
        rollback_config: Mapping[str, Any] | None = None,
    ) -> Awaitable[Any]: ...

    def do(
        self,
        name: Any = None,
        fn: Any = None,
        legacy_concurrent: bool | None = None,
        legacy_config: Mapping[str, Any] | None = None,
        /,
        *,
        config: Mapping[str, Any] | None = None,
        concurrent: bool = False,
        depends: Sequence[StepFunction] | None = None,
        rollback: Callable[..., Any] | None = None,
        rollback_config: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``fn`` as a durable, retried step.

        * ``await step.do("name", fn, config=...)`` runs it now (call form).
        * ``@step.do("name", config=...)`` over a function returns a :class:`StepFunction`;
          ``await fn()`` runs it. Its parameters named like earlier step functions receive
          their results (run first if need be, concurrently with ``concurrent=True``); a
          parameter named ``ctx`` receives ``{"step": {"name", "count"}, "attempt", "config"}``.
        * ``@step.do("name", depends=[a, b])`` (or ``step.do("name", [a, b], concurrent, config)``)
          is the legacy form of Cloudflare's Python API: the results of ``a`` and ``b`` are
          passed positionally, in that order, to the parameters other than ``ctx``.
        * ``rollback=handler`` (with ``rollback_config={"retries": ..., "timeout": ...}``)
          registers a saga handler, run if the instance fails (see :mod:`perdure.rollback`).
        """
        if isinstance(fn, (list, tuple)):  # legacy positional form: do(name, depends, concurrent, config)
            depends, fn = fn, None
            concurrent = bool(legacy_concurrent) if legacy_concurrent is not None else concurrent
            config = legacy_config if legacy_config is not None else config
        elif legacy_concurrent is not None or legacy_config is not None:
            raise TypeError("step.do(name, fn): concurrent and config are keyword arguments here")
        if callable(name) and fn is None:  # bare @step.do
            return self._declare(name, name.__name__, DoOptions(config, concurrent))
        if name is not None:
            validators.step_name(name)
        if rollback is None and rollback_config is not None:
            raise ValidationError(f"step {name!r}: rollback_config needs a rollback handler (rollback=...)")
        if rollback is not None:
            check_handler(str(name), rollback, rollback_config)  # before anything runs or is stored
        checked = None if depends is None else check_depends(name, depends)
        options = DoOptions(config, concurrent, checked, rollback, rollback_config)
        if fn is None:

            def decorator(func: Callable[..., Any]) -> StepFunction:
                return self._declare(func, name or func.__name__, options)

            return decorator
        if checked is not None:
            raise TypeError(f"step {name!r}: depends= goes with the decorator form, @step.do(name, depends=[...])")
        if not callable(fn):
            raise TypeError(f"step.do({name!r}, fn): fn must be callable, got {type(fn).__name__}")
        return self._run_do(name, fn, options)

    def _declare(self, fn: Callable[..., Any], name: str, options: DoOptions) -> StepFunction:
        validators.step_name(name)
        return self._dag.declare(fn, name, options)

    async def _run_do(self, name: str, fn: Callable[..., Any], options: DoOptions) -> Any:
        self._check_continue()
        self._do_calls += 1
        if self._do_calls > self._step_limit:
            raise Stop(
                "fatal",
                {
                    "name": "StepLimitExceeded",
                    "message": f"this instance called step.do more than its limit of {self._step_limit} steps "
                    "(set register(..., limits={'steps': n}))",
                },
            )
        config = options.config
        kwargs = await self._dag.resolve(name, fn, options)  # before our count: a stable order
        count = self._next_count(DO, name)
        record = self._memo.get((DO, name, count))
        if record is not None and record.status == COMPLETE:
            self._register_rollback(record, options, record.result)
            return record.result
        if record is not None and record.status == "failed":
            assert record.error is not None
            self._register_rollback(record, options, None)
            raise rebuild_error(record.error)
        if self._replay_only:
            if self._observer is not None:
                self._observer.missing(self, DO, name, count)
            raise Stop("replayed")
        if record is None:
            resolved = resolve_config(name, config)  # raises ValueError before any attempt
            record = StepRecord(DO, name, count, "running", self._clock.now(), config=stored_config(resolved))
            self._memo[record.key] = record
        else:
            resolved = record.config or resolve_config(name, config)
            if resolved["retries"]["delay"] == DYNAMIC_DELAY:  # the live function comes from the code
                live = resolve_config(name, config)
                if callable(live["retries"]["delay"]):
                    resolved = {**resolved, "retries": {**resolved["retries"], "delay": live["retries"]["delay"]}}
            if record.attempts and record.attempts[-1].get("end") is None:
                record.attempts[-1].update(end=self._clock.now(), error=_LOST_ATTEMPT, lost=True)
        if options.rollback is None:
            return await self._attempts(record, fn, resolved, kwargs, "ctx" in parameters(fn))
        try:
            result = await self._attempts(record, fn, resolved, kwargs, "ctx" in parameters(fn))
        except Exception:
            if record.status == "failed":  # failed for good: its handler runs with output=None
                self._register_rollback(record, options, None)
            raise
        self._register_rollback(record, options, result)
        return result

    # -- rollbacks -----------------------------------------------------------------------------
    def _register_rollback(self, record: StepRecord, options: DoOptions, output: Any) -> None:
        if options.rollback is None:
            return
        config = check_handler(record.name, options.rollback, options.rollback_config)
        step_config = record.config or resolve_config(record.name, options.config)
        ctx = {
            "step": {"name": record.name, "count": record.count},
            "attempt": len(record.attempts),
            "config": public_config(step_config),
        }
        self._rollbacks.register(
            Handler(record.name, record.count, record.started_at, options.rollback, config, ctx, output)
        )

    async def run_rollbacks(self, error: BaseException) -> None:
        """Run the registered rollback handlers, newest step first, as durable steps; the first
        that fails for good stops the chain. Raises :class:`Stop` like any step (a handler's
        long retry delay suspends the instance; the replay comes back here)."""
        for handler in self._rollbacks.in_order():
            record = self._memo.get((ROLLBACK, handler.name, handler.count))
            if record is not None and record.status == COMPLETE:
                continue  # it finished before a crash or a suspend: never again
            if record is not None and record.status == "failed":
                return  # the chain stopped here already
            if record is None:
                record = StepRecord(
                    ROLLBACK,
                    handler.name,
                    handler.count,
                    "running",
                    self._clock.now(),
                    config=stored_config(handler.config),
                )
                self._memo[record.key] = record
            elif record.attempts and record.attempts[-1].get("end") is None:
                record.attempts[-1].update(end=self._clock.now(), error=_LOST_ATTEMPT, lost=True)
            try:
                await self._attempts(record, handler.fn, handler.config, handler.arguments(error), False)
            except Exception:
                return  # a handler that failed for good stops the chain (as on Cloudflare)

    async def _attempts(
        self,
        record: StepRecord,
        fn: Callable[..., Any],
        config: dict[str, Any],
        kwargs: dict[str, Any],
        wants_ctx: bool,
    ) -> Any:
        limit = config["retries"]["limit"]
        timeout = timeout_seconds(config)
        shown = public_config(config)
        delay = config["retries"]["delay"]
        while True:
            if record.wake_at is not None:  # a retry delay is pending
                await self._wait_until(record.wake_at)
                record.wake_at = None
            number = len(record.attempts) + 1
            if config.get("rate_limit") is not None:
                await self._take_rate_slot(record, config["rate_limit"], number)
            ctx = {"step": {"name": record.name, "count": record.count}, "attempt": number, "config": shown}
            if self._marked:  # a concurrent branch waits in memory: the instance runs again
                await self._mark_waiting(None)
            record.status = "running"
            record.attempts.append({"start": self._clock.now(), "end": None, "error": None})
            await self._save(record, durable=False)
            self._enter()
            try:
                if wants_ctx:
                    kwargs["ctx"] = ctx
                with span(
                    f"step {record.name}",
                    {"perdure.step.name": record.name, "perdure.step.count": record.count, "perdure.attempt": number},
                ):
                    mocked = NOT_MOCKED if self._modifiers is None else self._modifiers.attempt(*record.key, number)
                    if mocked is NOT_MOCKED:
                        result = await run_with_timeout(self._clock, self._call(fn, kwargs), timeout)
                    else:
                        result = mocked
            except TimeoutError:
                failure: Exception = WorkflowTimeoutError(
                    f"step {record.name!r} attempt {number} timed out after {config['timeout']}"
                )
            except (Stop, asyncio.CancelledError):
                raise
            except Exception as exc:
                failure = exc
            else:
                return await self._complete(record, result)
            finally:
                self._leave()
            now = self._clock.now()
            record.attempts[-1].update(end=now, error=error_info(failure))
            failures = sum(1 for a in record.attempts if a.get("error") and not a.get("lost"))
            if isinstance(failure, NonRetryableError) or failures > limit:
                record.status, record.error, record.ended_at = "failed", error_info(failure), now
                await self._save(record)
                raise failure
            base = None
            if callable(delay):
                try:
                    base = await dynamic_base_delay(record.name, delay, ctx, failure)
                except NonRetryableDelayError as exc:
                    now = self._clock.now()
                    record.status, record.error, record.ended_at = "failed", error_info(exc), now
                    await self._save(record)
                    raise exc from failure
            elif delay == DYNAMIC_DELAY:  # the code no longer gives a function: the default delay
                base = parse_duration(DEFAULT_CONFIG["retries"]["delay"])
            record.status = "retrying"
            wait = retry_delay(config, failures, base)
            if self._modifiers is not None and self._modifiers.skip_retry_delay(record.name, record.count):
                wait = 0.0
            record.wake_at = self._clock.now() + wait
            await self._save(record)

    async def _take_rate_slot(self, record: StepRecord, name: str, number: int) -> None:
        """Take attempt ``number``'s slot of the rate limit ``name``, or suspend the instance
        until the slot it reserved (perdure.flow): it waits holding no worker, and finds the
        same slot when it comes back (the holder names the step, its start and the attempt)."""
        limit = self._rate_limits.get(name)
        if limit is None:
            known = ", ".join(repr(n) for n in sorted(self._rate_limits)) or "none"
            raise ValidationError(
                f"step {record.name!r}: config 'rate_limit' names {name!r}, which no engine.rate_limit() defined"
                f" (defined: {known})"
            )
        holder = f"{self._pk}:{record.name}:{record.count}:{record.started_at!r}:{number}"
        try:
            at = await self._store.reserve_rate_slot(name, holder, limit.limit, limit.period, self._clock.now)
        except Exception as exc:
            self.stopping = Stop("lost")
            raise self.stopping from exc
        if at <= self._clock.now():
            return
        record.status = "waiting"  # for its slot; the history shows it, the instance is waiting
        await self._save(record)  # durable: the holder (its started_at) must survive a crash
        self._suspend(at)

    async def _call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        # An attempt starts only under a fresh lease (see perdure.leases): after a stall the
        # instance may be another worker's, and its side effects must not run out of order.
        try:
            await self._lease.ensure()
            if inspect.iscoroutinefunction(fn):
                return await fn(**kwargs)
            while True:  # plain functions run in a thread, never blocking the event loop
                started, result = await asyncio.to_thread(self._lease.call_if_fresh, fn, kwargs)
                if started:
                    break
                await self._lease.ensure()  # it waited in the pool past its lease: renew first
        except LeaseLost as lost:  # start nothing; a lost run is claimed again once its lease runs out
            raise Stop("lost" if lost.store_failed else "fenced") from None
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _complete(self, record: StepRecord, result: Any) -> Any:
        now = self._clock.now()
        record.attempts[-1]["end"] = now
        try:
            encoded = validators.encode_json(result, f"step {record.name!r} result")
        except ValidationError as exc:
            record.status, record.ended_at = "failed", now
            record.error = {"name": "ValidationError", "message": str(exc)}
            record.attempts[-1]["error"] = record.error
            await self._save(record)
            raise Stop("fatal", {"name": "ValidationError", "message": str(exc)}) from None
        value = json.loads(encoded)  # callers get the same value now as on every replay
        record.status, record.result, record.result_json, record.ended_at = COMPLETE, value, encoded, now
        await self._save(record)
        return value

    # -- sleeps --------------------------------------------------------------------------------
    async def sleep(self, name: str, duration: Duration) -> None:
        """Sleep durably for ``duration`` (at most 365 days). Long sleeps hold no worker."""
        validators.step_name(name)
        seconds = validators.sleep_seconds(parse_duration(duration, what=f"sleep {name!r} duration"), f"sleep {name!r}")
        await self._sleep(name, lambda now: now + seconds, {"duration": seconds})

    async def sleep_until(self, name: str, when: Any) -> None:
        """Sleep until an aware ``datetime`` or epoch milliseconds; a past time returns at once."""
        validators.step_name(name)
        deadline = parse_timestamp(when, what=f"sleep_until {name!r} time")
        validators.sleep_seconds(deadline - self._clock.now(), f"sleep_until {name!r}")
        await self._sleep(name, lambda now: deadline, {"until": deadline})

    async def _sleep(self, name: str, deadline: Callable[[float], float], config: dict[str, Any]) -> None:
        self._check_continue()
        count = self._next_count(SLEEP, name)
        record = self._memo.get((SLEEP, name, count))
        if self._observer is not None and record is not None:
            self._observer.sleep(self, record, config)
        if record is not None and record.status == COMPLETE:
            return
        if self._replay_only:
            if self._observer is not None and record is None:
                self._observer.missing(self, SLEEP, name, count)
            raise Stop("replayed")
        now = self._clock.now()
        if record is None:
            wake = now if self._modifiers is not None and self._modifiers.skip_sleep(name, count) else deadline(now)
            record = StepRecord(SLEEP, name, count, "waiting", now, config=config, wake_at=wake)
            self._memo[record.key] = record
            # A short sleep needs no commit to wait on: after a crash it would simply restart.
            await self._save(record, durable=record.wake_at is not None and record.wake_at - now > self._fast_wait)
        assert record.wake_at is not None
        await self._wait_until(record.wake_at)
        record.status, record.ended_at, record.wake_at = COMPLETE, self._clock.now(), None
        await self._save(record, durable=False)

    async def _wait_until(self, deadline: float) -> None:
        remaining = deadline - self._clock.now()
        if remaining <= 0:
            return
        if remaining > self._fast_wait:
            self._suspend(deadline)
        async with self._waiting_in_memory(deadline):
            await self._clock.sleep(remaining)

    @contextlib.asynccontextmanager
    async def _waiting_in_memory(self, deadline: float) -> AsyncIterator[None]:
        """A short wait kept in memory: the instance reads ``waiting`` meanwhile (unless a
        concurrent step is running), so that pause() and terminate() act at once, and
        ``running`` again after the last such wait ends."""
        self._waits += 1
        try:
            if self._waits == 1 and self._active == 0:
                await self._mark_waiting(deadline)
            yield
        finally:
            self._waits -= 1
        if self._waits == 0 and self._marked:
            await self._mark_waiting(None)

    async def _mark_waiting(self, wake_at: float | None) -> None:
        try:
            status = await self._store.mark_waiting(self._pk, self._epoch, wake_at)
        except Fenced:
            self.stopping = Stop("fenced")
            raise self.stopping from None
        except Exception as exc:
            self.stopping = Stop("lost")
            raise self.stopping from exc
        self._marked = wake_at is not None and status == "waiting"
        if status == WAITING_FOR_PAUSE:
            self.pause_requested = True

    # -- events --------------------------------------------------------------------------------
    async def wait_for_event(self, name: str, event_type: str, /, timeout: Duration = "24 hours") -> dict[str, Any]:
        """Wait for an event of ``event_type`` sent with ``send_event``; returns
        ``{"type", "payload", "timestamp"}``. Events sent earlier are kept and delivered in
        order. Raises :class:`EventTimeoutError` after ``timeout`` (default 24 hours)."""
        validators.step_name(name)
        validators.event_type(event_type)
        seconds = validators.sleep_seconds(
            parse_duration(timeout, what=f"wait_for_event {name!r} timeout"), f"wait_for_event {name!r} timeout"
        )
        self._check_continue()
        count = self._next_count(WAIT, name)
        record = self._memo.get((WAIT, name, count))
        if record is not None and record.status == COMPLETE:
            self._streams.add(event_type)
            return _event_value(record.result)
        if record is not None and record.status == "failed":
            raise EventTimeoutError(record.error["message"] if record.error else "timed out")
        if self._replay_only:
            if self._observer is not None and record is None:
                self._observer.missing(self, WAIT, name, count)
            raise Stop("replayed")
        now = self._clock.now()
        if record is None:
            record = StepRecord(
                WAIT,
                name,
                count,
                "waiting",
                now,
                config={"type": event_type, "timeout": seconds},
                wake_at=now + seconds,
            )
            self._memo[record.key] = record
        forced = False  # force_event_timeout (perdure.testing)
        try:
            if self._modifiers is not None:
                forced, mocked = self._modifiers.wait(name, count, event_type)
                for mocked_type, payload_json in mocked:  # mock_event: sent as if before the wait
                    await self._store.send_event(self._pk, mocked_type, payload_json, now)
            event = None if forced else await self._store.take_event(self._pk, self._epoch, record, event_type, now)
        except Fenced:
            raise Stop("fenced") from None
        except Exception as exc:
            self.stopping = Stop("lost")
            raise self.stopping from exc
        if event is not None:
            self._streams.add(event_type)
            return _event_value(event)
        assert record.wake_at is not None
        if forced or now >= record.wake_at:
            waited = record.config["timeout"] if record.config else seconds
            message = f"wait_for_event {name!r} timed out after {waited}s without a {event_type!r} event"
            record.status, record.ended_at, record.wake_at = "failed", now, None
            record.error = {"name": "EventTimeoutError", "message": message}
            await self._save(record)
            raise EventTimeoutError(message)
        if event_type in self._streams:  # this run took one already: more are likely on the way
            event = await self._event_in_memory(record, event_type, now)
            if event is not None:
                return _event_value(event)
        self.wait_types.add(event_type)
        self._suspend(record.wake_at)

    async def _event_in_memory(self, record: StepRecord, event_type: str, now: float) -> dict[str, Any] | None:
        """Wait up to ``fast_wait`` in memory for an event of ``event_type`` before suspending,
        looking for it with a growing pause (2 ms to 50 ms, real time: the pause is about when
        the event is sent, not workflow time). Only for a type this run has taken an event of
        already: a fan-in whose events arrive as a stream (a parent waiting for 10,000
        children) then takes each as it comes, instead of suspending and replaying its whole
        history for each one, while a first wait (an approval) suspends at once and holds no
        worker. The instance reads ``waiting`` meanwhile."""
        assert record.wake_at is not None
        budget = min(self._fast_wait, record.wake_at - now)
        if budget <= 0:
            return None
        event = None
        pause, waited = 0.002, 0.0
        async with self._waiting_in_memory(record.wake_at):
            while waited < budget and event is None:
                await asyncio.sleep(pause)
                waited += pause
                pause = min(pause * 2, 0.05)
                self._check_continue()
                try:
                    if await self._store.has_event(self._pk, event_type):
                        event = await self._store.take_event(
                            self._pk, self._epoch, record, event_type, self._clock.now()
                        )
                except Fenced:
                    raise Stop("fenced") from None
                except Exception as exc:
                    self.stopping = Stop("lost")
                    raise self.stopping from exc
        return event

    # -- bookkeeping ---------------------------------------------------------------------------
    def _next_count(self, kind: str, name: str) -> int:
        count = self._counts.get((kind, name), 0) + 1
        self._counts[(kind, name)] = count
        self._visited.add((kind, name, count))
        return count

    def unvisited(self) -> list[tuple[str, str, int]]:
        """Stored steps (not rollbacks) this run has not asked for yet, in the order stored."""
        return [k for k in self._stored if k not in self._visited and k[0] != ROLLBACK]

    # -- in-code versioning ----------------------------------------------------------------------
    async def patched(self, patch_id: str) -> bool:
        """Whether this instance takes the new code path marked ``patch_id``.

        True for an instance that reaches this point for the first time under code that has the
        patch, False for one whose recorded history went past this point without it (it started
        under the old code and must keep its old branch to replay). The answer is stored, so an
        instance answers the same on every replay. Like Temporal's ``workflow.patched()``."""
        validators.step_name(patch_id)
        count = self._next_count(PATCH, patch_id)
        record = self._memo.get((PATCH, patch_id, count))
        if record is not None:
            return bool(record.result)
        value = not self.unvisited()  # the history has steps beyond this point: old code made it
        if self._replay_only:  # a replay that records nothing
            return value
        now = self._clock.now()
        record = StepRecord(PATCH, patch_id, count, COMPLETE, now, result=value, ended_at=now)
        record.result_json = json.dumps(value)
        self._memo[record.key] = record
        await self._save(record, durable=False)
        return value

    def deprecate_patch(self, patch_id: str) -> None:
        """The patch ``patch_id`` is the only code now (no instance from before it is left):
        call it where ``patched()`` was, so histories that recorded the patch still replay."""
        validators.step_name(patch_id)
        self._next_count(PATCH, patch_id)

    def _check_continue(self) -> None:
        if self.stopping is not None:
            raise self.stopping
        if self.pause_requested:
            self._suspend(None)

    def _suspend(self, deadline: float | None) -> NoReturn:
        if deadline is not None:
            self.wakes.append(deadline)
        if self.stopping is None:
            self.stopping = Stop("suspend")
        raise self.stopping

    async def _save(self, record: StepRecord, *, durable: bool = True) -> None:
        try:
            status = await self._store.save_step(self._pk, self._epoch, record, durable=durable)
        except Fenced:
            self.stopping = Stop("fenced")
            raise self.stopping from None
        except Exception as exc:  # the database failed: this run cannot record anything more
            self.stopping = Stop("lost")
            raise self.stopping from exc
        if status == WAITING_FOR_PAUSE:
            self.pause_requested = True

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)

    def _leave(self) -> None:
        self._active -= 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)
        if self._active == 0:
            self._idle.set()

    async def settle(self) -> None:
        """Wait until no attempt is in flight (concurrent branches finishing their steps)."""
        await self._idle.wait()

    def cancel_in_flight(self) -> None:
        """Cancel attempts still running in concurrent branches after the run ended."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and not task.done():
                task.cancel()

    def records(self) -> list[StepRecord]:
        """Every step this run knows, stored or new, in the order stored (for the engine to keep
        after a suspend, when every one of them is saved)."""
        return list(self._memo.values())

    def next_wake(self) -> float | None:
        return min(self.wakes) if self.wakes else None


def _event_value(stored: Any) -> dict[str, Any]:
    timestamp = stored.get("timestamp")
    return {
        "type": stored.get("type"),
        "payload": stored.get("payload"),
        "timestamp": to_datetime(timestamp)
        if isinstance(timestamp, (int, float)) and math.isfinite(timestamp)
        else timestamp,
    }
