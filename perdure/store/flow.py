"""Flow control in the store, shared by both SQL backends: the claim of a workflow with limits,
rate-limit slots, and why queued instances wait.

**The limited claim.** A workflow registered with ``concurrency``, ``concurrency_per_key`` or a
start ``rate_limit`` is claimed apart from the others (which keep the one-statement claim of
their backend): in one transaction that first serialises every limited claim of that workflow
(a PostgreSQL advisory lock; SQLite's single writer already does), so two workers never both
see a free slot and both take it. The transaction counts what runs (``running`` and
``waitingForPause``: a ``waiting`` instance holds no slot) overall and per key, then takes, in
order, expired runs (already counted: their worker died), woken instances (``wake_at`` passed),
and queued ones round-robin across keys: the first of each key (by priority and age), then
the second of each..., and among firsts of equal priority the key that waited longest since it
last had an instance started (``perdure_key_turns``) goes first, so that a key with a thousand
queued instances does not starve a key with one. Rows are updated only if their status is
still the one read (``AND status = ...``): a control call that moved a row meanwhile
(PostgreSQL's READ COMMITTED re-checks the condition on the row it updates) wins, and the claim
skips it.

**Rate limits** are sliding-window logs in ``perdure_rate_slots``: a limiter allows ``limit``
slots in any window of ``period`` seconds. A step's slot is *reserved*, possibly in the future
(the earliest time its window has room), under a ``holder`` key that names the attempt, so a
run that suspends until its slot and comes back finds the slot it has, instead of taking a
second. New slots are never earlier than the latest one, which keeps the log in time order and
makes "the limit-th latest slot plus the period" the earliest free time. Slots older than a
period are deleted as new ones are taken. A workflow's start limit takes slots at the claim,
only when a window has room now (a queued instance simply stays queued).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..records import (
    PAUSED,
    QUEUED,
    RUNNING,
    WAITING,
    WAITING_FOR_PAUSE,
    FlowLimits,
    LimitedClaim,
)
from .base import Store
from .rows import INSTANCE_COLUMNS, instance_from_row

T = TypeVar("T")
Row = tuple[Any, ...]

# Candidates read per tier beyond the free slots: room for the ones a key's limit skips.
_SPARE = 200


def start_limiter(workflow: str) -> str:
    """The limiter name of ``workflow``'s start rate limit (step limiters are user names)."""
    return f"workflow-start:{workflow}"


async def _serialise(tx: Any, lock: str | None, name: str) -> None:
    if lock is not None:
        await tx.all(lock, (name,))


async def _window(tx: Any, limiter: str, period: float, now: float) -> tuple[int, float | None]:
    """How many slots ``limiter`` gave in the window ending now, and the oldest of them."""
    await tx.run("DELETE FROM {s}.perdure_rate_slots WHERE limiter = %s AND at <= %s", (limiter, now - period))
    row = await tx.one("SELECT count(*), min(at) FROM {s}.perdure_rate_slots WHERE limiter = %s", (limiter,))
    assert row is not None
    return int(row[0]), row[1]


async def _round_robin(tx: Any, workflow: str, per_key: int, limit: int) -> list[Row]:
    """Queued instances of ``workflow`` in round-robin order across keys: each key's n-th (by
    priority and age) before any key's (n+1)-th; among those, lower priority first, then the
    key served longest ago (never: first), then the oldest. A key's (per_key+1)-th and later
    cannot start in this claim anyway and are not read."""
    rows = await tx.all(
        "SELECT pk, concurrency_key, created_at, n, priority FROM (SELECT pk, concurrency_key, created_at, priority,"
        " row_number() OVER (PARTITION BY concurrency_key ORDER BY priority, pk) AS n"
        " FROM {s}.instances WHERE workflow = %s AND status = %s) ranked WHERE n <= %s",
        (workflow, QUEUED, per_key),
    )
    served = {
        key: float(at)
        for key, at in await tx.all("SELECT key, served_at FROM {s}.perdure_key_turns WHERE workflow = %s", (workflow,))
    }
    rows.sort(key=lambda r: (r[3], r[4], served.get(r[1], float("-inf")) if r[1] is not None else float("-inf"), r[0]))
    return [(pk, key, created) for pk, key, created, _, _ in rows[:limit]]


async def _served(tx: Any, workflow: str, keys: set[str], now: float) -> None:
    """Record that ``keys`` had an instance started now; forget keys idle for a day."""
    for key in sorted(keys):
        await tx.run(
            "INSERT INTO {s}.perdure_key_turns (workflow, key, served_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (workflow, key) DO UPDATE SET served_at = excluded.served_at",
            (workflow, key, now),
        )
    await tx.run("DELETE FROM {s}.perdure_key_turns WHERE workflow = %s AND served_at < %s", (workflow, now - 86400))


async def _history(tx: Any, pk: int, type_: str, ts: float) -> None:
    await tx.run("INSERT INTO {s}.history (instance_pk, type, ts, data) VALUES (%s, %s, %s, NULL)", (pk, type_, ts))


class FlowOps(Store):
    """Flow control over :class:`~perdure.store.sql.SQLStore`'s hooks (see the module doc)."""

    #: The statement that serialises a transaction on a name until it ends (None: the backend
    #: has one writer).
    flow_lock: str | None = None

    @abc.abstractmethod
    async def _read(self, sql: str, params: Any = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def _control(self, op: Callable[[Any], Awaitable[T]]) -> T: ...

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
        """Claim up to ``limit`` runnable instances of ``workflow`` within ``limits``."""

        async def op(tx: Any) -> LimitedClaim:
            await _serialise(tx, self.flow_lock, f"perdure.flow.{workflow}")
            # Expired runs first: a dead worker's instances count as running already.
            chosen: list[tuple[int, str, float]] = []  # (pk, status it had, created_at)
            for pk, status, created in await tx.all(
                "SELECT pk, status, created_at FROM {s}.instances WHERE workflow = %s AND status IN (%s, %s)"
                " AND lease_until < %s ORDER BY pk LIMIT %s",
                (workflow, RUNNING, WAITING_FOR_PAUSE, lease_now, limit),
            ):
                if status == WAITING_FOR_PAUSE:  # its worker died mid-step: the pause completes now
                    changed = await tx.run(
                        "UPDATE {s}.instances SET status = %s, paused_at = %s, owner = NULL, lease_until = NULL,"
                        " epoch = epoch + 1 WHERE pk = %s AND status = %s",
                        (PAUSED, now, pk, WAITING_FOR_PAUSE),
                    )
                    if changed:
                        await _history(tx, pk, "WORKFLOW_PAUSED", now)
                else:
                    chosen.append((pk, RUNNING, created))
            free = limit - len(chosen)
            row = await tx.one(
                "SELECT count(*) FROM {s}.instances WHERE workflow = %s AND status IN (%s, %s)",
                (workflow, RUNNING, WAITING_FOR_PAUSE),
            )
            running = int(row[0]) if row else 0
            if limits.concurrency is not None:
                free = min(free, limits.concurrency - running)
            per_key: dict[str, int] = {}
            if limits.per_key is not None:
                for key, n in await tx.all(
                    "SELECT concurrency_key, count(*) FROM {s}.instances WHERE workflow = %s"
                    " AND concurrency_key IS NOT NULL AND status IN (%s, %s) GROUP BY concurrency_key",
                    (workflow, RUNNING, WAITING_FOR_PAUSE),
                ):
                    per_key[key] = int(n)
            held = 0
            retry_at = None

            def fits(key: str | None) -> bool:
                return limits.per_key is None or key is None or per_key.get(key, 0) < limits.per_key

            def take(pk: int, status: str, created: float, key: str | None) -> None:
                chosen.append((pk, status, created))
                if key is not None:
                    per_key[key] = per_key.get(key, 0) + 1

            if free > 0:  # woken instances come before queued ones
                for pk, key, created in await tx.all(
                    "SELECT pk, concurrency_key, created_at FROM {s}.instances WHERE workflow = %s AND status = %s"
                    " AND wake_at <= %s AND (lease_until IS NULL OR lease_until < %s) ORDER BY wake_at LIMIT %s",
                    (workflow, WAITING, now, lease_now, free + _SPARE),
                ):
                    if free <= 0:
                        held += 1
                    elif fits(key):
                        take(pk, WAITING, created, key)
                        free -= 1
                    else:
                        held += 1
            starts = free
            limiter = start_limiter(workflow)
            if limits.start_limit is not None and limits.start_period is not None and free > 0:
                used, oldest = await _window(tx, limiter, limits.start_period, now)
                starts = min(free, limits.start_limit - used)
                if starts <= 0 and oldest is not None:
                    retry_at = oldest + limits.start_period
            if starts > 0:
                if limits.per_key is None:
                    queued = await tx.all(
                        "SELECT pk, concurrency_key, created_at FROM {s}.instances WHERE workflow = %s"
                        " AND status = %s ORDER BY priority, pk LIMIT %s",
                        (workflow, QUEUED, starts),
                    )
                else:
                    queued = await _round_robin(tx, workflow, limits.per_key, starts + _SPARE)
                taken = 0
                taken_keys: list[str] = []
                for pk, key, created in queued:
                    if taken < starts and fits(key):
                        take(pk, QUEUED, created, key)
                        taken += 1
                        if key is not None:
                            taken_keys.append(key)
                if limits.per_key is not None and taken:
                    await _served(tx, workflow, set(taken_keys), now)
                if limits.start_limit is not None and taken:
                    for pk, _, created in chosen[-taken:]:
                        # the slot is the start as recorded (never before the creation: an
                        # instance created just after this claim read the clock starts later)
                        await tx.run(
                            "INSERT INTO {s}.perdure_rate_slots (limiter, at, holder) VALUES (%s, %s, %s)",
                            (limiter, max(now, created), f"start:{pk}:{now!r}"),
                        )
            claimed = []
            for pk, status, created in chosen:
                started = max(now, created)
                row = await tx.one(
                    "UPDATE {s}.instances SET status = %s, owner = %s, lease_until = %s, epoch = epoch + 1,"
                    " wake_requested = FALSE, wake_at = NULL, wait_types = NULL,"
                    " started_at = COALESCE(started_at, %s)"
                    f" WHERE pk = %s AND status = %s RETURNING {INSTANCE_COLUMNS}",
                    (RUNNING, owner, lease_until, started, pk, status),
                )
                if row is None:  # a control call moved it meanwhile
                    continue
                record = instance_from_row(row)
                if record.started_at == started and status == QUEUED:
                    await _history(tx, pk, "WORKFLOW_START", started)
                claimed.append(record)
            if limits.concurrency is not None or limits.per_key is not None:
                # what stays queued now, for want of a slot (the caller looks again when one frees)
                row = await tx.one(
                    "SELECT count(*) FROM {s}.instances WHERE workflow = %s AND status = %s", (workflow, QUEUED)
                )
                held += int(row[0]) if row else 0
            return LimitedClaim(claimed, retry_at, held)

        result: LimitedClaim = await self._control(op)
        return result

    async def reserve_rate_slot(
        self, limiter: str, holder: str, limit: int, period: float, now: Callable[[], float]
    ) -> float:
        """The time of ``holder``'s slot of ``limiter`` (``limit`` per ``period`` seconds): the
        one it reserved before, or a new one, at ``now()`` (read under the limiter's lock) or the
        earliest time after it that the window has room."""

        async def op(tx: Any) -> float:
            await _serialise(tx, self.flow_lock, f"perdure.rate.{limiter}")
            present = now()
            mine = await tx.one(
                "SELECT at FROM {s}.perdure_rate_slots WHERE limiter = %s AND holder = %s", (limiter, holder)
            )
            if mine is not None:
                return float(mine[0])
            await tx.run(
                "DELETE FROM {s}.perdure_rate_slots WHERE limiter = %s AND at <= %s", (limiter, present - period)
            )
            latest = [
                float(r[0])
                for r in await tx.all(
                    "SELECT at FROM {s}.perdure_rate_slots WHERE limiter = %s ORDER BY at DESC LIMIT %s",
                    (limiter, limit),
                )
            ]
            at = max([present, *latest[:1]])
            if len(latest) >= limit:
                at = max(at, latest[limit - 1] + period)
            await tx.run(
                "INSERT INTO {s}.perdure_rate_slots (limiter, at, holder) VALUES (%s, %s, %s)", (limiter, at, holder)
            )
            return at

        result: float = await self._control(op)
        return result

    async def rate_slots(self, limiter: str, since: float) -> list[float]:
        """The times of ``limiter``'s slots after ``since`` (the oldest first)."""
        rows = await self._read(
            "SELECT at FROM {s}.perdure_rate_slots WHERE limiter = %s AND at > %s ORDER BY at", (limiter, since)
        )
        return [float(r[0]) for r in rows]

    async def queued_reasons(self, workflow: str, limits: FlowLimits, now: float) -> dict[str, int]:
        """Why ``workflow``'s queued instances are not running: counts by reason, one of
        ``concurrency`` (the workflow's limit is reached), ``concurrency_key`` (their key's is),
        ``rate_limit`` (the start rate limit's window is full) and ``ready`` (a worker takes
        them at its next claim)."""
        running = await self._read(
            "SELECT concurrency_key, count(*) FROM {s}.instances WHERE workflow = %s AND status IN (%s, %s)"
            " GROUP BY concurrency_key",
            (workflow, RUNNING, WAITING_FOR_PAUSE),
        )
        total = sum(int(n) for _, n in running)
        by_key = {k: int(n) for k, n in running if k is not None}
        queued = await self._read(
            "SELECT concurrency_key, count(*) FROM {s}.instances WHERE workflow = %s AND status = %s"
            " GROUP BY concurrency_key",
            (workflow, QUEUED),
        )
        reasons: dict[str, int] = {}

        def add(reason: str, n: int) -> None:
            if n > 0:
                reasons[reason] = reasons.get(reason, 0) + n

        full = limits.concurrency is not None and total >= limits.concurrency
        rate_full = False
        if limits.start_limit is not None and limits.start_period is not None:
            used = len(await self.rate_slots(start_limiter(workflow), now - limits.start_period))
            rate_full = used >= limits.start_limit
        for key, n in queued:
            count = int(n)
            if limits.per_key is not None and key is not None and by_key.get(key, 0) >= limits.per_key:
                add("concurrency_key", count)
            elif full:
                add("concurrency", count)
            elif rate_full:
                add("rate_limit", count)
            else:
                add("ready", count)
        return reasons
