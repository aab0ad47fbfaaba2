"""Lifecycle event subscriptions: each status change of a workflow's instances, delivered to a
durable queue or an async callback, at least once and in order per instance (Cloudflare's
``cf.workflows.workflow.instance.{queued, started, paused, errored, terminated, completed}``
events)::

    async def audit(message):              # or a Perdure queue's name: subscriptions=["lifecycle"]
        print(message["type"], message["payload"]["instanceId"])

    engine.register(Publish, name="publish", subscriptions=[audit])

A message has Cloudflare's shape::

    {"type": "cf.workflows.workflow.instance.completed",
     "source": {"type": "workflow", "workflowName": "publish"},
     "payload": {"instanceId": "pun-1"},
     "metadata": {"eventTimestamp": "2026-12-03T23:59:01.250Z"}}

How it cannot lose an event: the history table is the outbox. Every lifecycle change writes its
history row in the same transaction as the status change, so a crash between the change and the
delivery loses nothing; each subscription keeps a durable cursor (``perdure_subscriptions``), the
history ``seq`` up to which everything was delivered, advanced only after delivery. A crash after
a delivery and before the cursor moved delivers that event again (at least once). One worker of
a database delivers each subscription at a time: it holds the role ``subscription:<key>`` of
that subscription (:class:`~perdure.roles.Role`), renewed before each delivery; another worker
that registered the same subscription takes over within a few seconds when it stops. Each
worker delivers the subscriptions it registered, so workers that register different workflows
(or a new release that adds a subscription beside workers still on the old one) each deliver
their own.

On PostgreSQL, a row with a smaller ``seq`` can become visible after one with a larger ``seq``
(two transactions commit in the other order). The cursor therefore only moves past a ``seq``
once every transaction that was running when that ``seq`` was the newest has ended
(:meth:`~perdure.store.base.Store.history_horizon`); rows above the cursor that were already
delivered are remembered, so a late row is delivered without repeating its neighbours. Rows of
one instance are written under that instance's lock, so their ``seq`` order is their order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._cancel import reraise_if_cancelling
from .errors import ValidationError
from .roles import Role

if TYPE_CHECKING:
    from .records import HistoryRow
    from .store import Store

log = logging.getLogger("perdure.subscriptions")

PREFIX = "cf.workflows.workflow.instance."
# the history row each lifecycle event is read from
EVENTS = {
    "WORKFLOW_QUEUED": "queued",
    "WORKFLOW_START": "started",
    "WORKFLOW_PAUSED": "paused",
    "WORKFLOW_FAILURE": "errored",
    "WORKFLOW_TERMINATED": "terminated",
    "WORKFLOW_SUCCESS": "completed",
}
ALL = tuple(EVENTS.values())
Callback = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Subscription:
    """Where one workflow's lifecycle events go: ``target`` is a Perdure queue's name (the
    message is its body) or an async callable taking the message. ``types`` picks events
    (short names: ``"completed"``, ``"errored"``...; default all); ``name`` keys its durable
    cursor (default: the queue's name, or the callable's qualified name)."""

    target: str | Callback
    types: tuple[str, ...] = ALL
    name: str | None = None

    def key(self, workflow: str) -> str:
        if self.name is not None:
            return f"{workflow}:{self.name}"
        if isinstance(self.target, str):
            return f"{workflow}:queue:{self.target}"
        return f"{workflow}:{getattr(self.target, '__module__', '?')}.{getattr(self.target, '__qualname__', '?')}"


def parse_subscriptions(value: object) -> list[Subscription]:
    """``register(subscriptions=...)``: a list of queue names, async callables or
    :class:`Subscription`; anything else is a ``ValueError`` naming it."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValidationError("subscriptions must be a list of queue names, async callables or Subscription")
    out = []
    for item in value:
        sub = item if isinstance(item, Subscription) else Subscription(item)
        target = sub.target
        if isinstance(target, str):
            if not target:
                raise ValidationError("a subscription's queue name must not be empty")
        elif not (callable(target) and asyncio.iscoroutinefunction(target)):
            raise ValidationError(
                f"a subscription target must be a queue name or an async callable (async def), got {target!r}"
            )
        types = tuple(sub.types)
        bad = [t for t in types if t not in ALL]
        if bad or not types:
            raise ValidationError(f"unknown subscription event type(s) {bad or types!r}; allowed: {', '.join(ALL)}")
        out.append(Subscription(target, types, sub.name))
    return out


def message(row: HistoryRow) -> dict[str, Any]:
    """The Cloudflare-shaped message of one lifecycle history row."""
    stamp = datetime.fromtimestamp(row.ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": PREFIX + EVENTS[row.type],
        "source": {"type": "workflow", "workflowName": row.workflow},
        "payload": {"instanceId": row.instance_id},
        "metadata": {"eventTimestamp": stamp},
    }


@dataclass
class _Cursor:
    workflow: str
    sub: Subscription
    role: Role
    seq: int = -1  # durable: everything up to it was delivered (-1: not read yet)
    anchor: int | None = None  # where a new durable cursor starts (None: the newest event then)
    delivered: set[int] = field(default_factory=set)  # seqs above it already delivered
    horizons: deque[tuple[float, int, int]] = field(default_factory=deque)  # (monotonic, top, xmax)
    retry_at: float = 0.0
    failures: int = 0
    blocked: int | None = None  # the seq whose delivery failed: the cursor stays below it


class Deliveries:
    """Delivers every registered subscription from one worker (see the module doc)."""

    def __init__(
        self,
        store: Store,
        owner: str,
        subscriptions: dict[str, list[Subscription]],
        send: Callable[[str, Sequence[str]], Awaitable[Any]],
        *,
        poll: float = 0.2,
        role_ttl: float = 5.0,
        settle: float = 0.5,
        idle: float = 5.0,
    ) -> None:
        self._store = store
        self._owner = owner
        self._send = send  # queue_send(queue, [body json]) of the engine's store
        self.poll = poll
        self.idle = idle  # with no subscription yet: how often the newest event's seq is read
        self.role_ttl = role_ttl
        self._top: int | None = None  # the newest history seq at the last round (or prepare)
        self._wake = asyncio.Event()
        self._cursors: list[_Cursor] = []
        for workflow, subs in subscriptions.items():
            self.add(workflow, subs)
        self.settle = settle  # how long a horizon must be old before the cursor passes it
        self.delivered = 0

    def add(self, workflow: str, subscriptions: Sequence[Subscription]) -> None:
        """Deliver ``subscriptions`` of ``workflow`` too (a workflow registered after start). A
        new one starts at the newest event of the last round, which is at most ``poll`` seconds
        old (``idle`` while nothing was subscribed): it misses nothing that follows its
        registration, and may also get the events of the instants before it."""
        for sub in subscriptions:
            role = Role(self._store, f"subscription:{sub.key(workflow)}", self._owner, self.role_ttl)
            self._cursors.append(_Cursor(workflow, sub, role, anchor=self._top))
        self._wake.set()

    def nudge(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.deliver_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                reraise_if_cancelling()
                log.exception("perdure subscriptions: delivery failed; retrying")
            try:
                async with asyncio.timeout(self.poll if self._cursors else self.idle):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def prepare(self) -> None:
        """Read each subscription's durable cursor; a new one starts at the newest event now."""
        top = self._top = (await self._store.history_horizon())[0]
        for cursor in self._cursors:
            cursor.seq = await self._store.subscription_cursor(cursor.sub.key(cursor.workflow), top)

    async def deliver_once(self) -> None:
        """One round: deliver what is new to every subscription, and move the cursors."""
        top, xmax, xmin = await self._store.history_horizon()
        self._top = top
        mono = time.monotonic()
        for cursor in list(self._cursors):
            if not await cursor.role.hold():  # another worker delivers this one
                self._forget(cursor)
                continue
            if cursor.seq < 0:  # first round of this subscription here: its durable cursor
                start = top if cursor.anchor is None else cursor.anchor
                cursor.seq = await self._store.subscription_cursor(cursor.sub.key(cursor.workflow), start)
                cursor.anchor = None
            cursor.horizons.append((mono, top, xmax))
            if mono >= cursor.retry_at:
                await self._deliver(cursor)
            if cursor.role.held:
                await self._advance(cursor, mono, xmin)

    @staticmethod
    def _forget(cursor: _Cursor) -> None:
        """Drop what this worker knew of a subscription another worker now delivers: when the
        role comes back, it starts from the durable cursor that worker moved."""
        cursor.seq, cursor.blocked, cursor.failures, cursor.retry_at = -1, None, 0, 0.0
        cursor.delivered.clear()
        cursor.horizons.clear()

    async def _deliver(self, cursor: _Cursor) -> None:
        wanted = {t for t, short in EVENTS.items() if short in cursor.sub.types}
        after = cursor.seq
        while True:
            rows = await self._store.history_since(after, sorted(wanted), limit=500)
            for row in rows:
                if row.workflow != cursor.workflow or row.seq in cursor.delivered:
                    continue
                if not await cursor.role.hold():  # lost it during a long round: the taker goes on
                    self._forget(cursor)
                    return
                try:
                    await self._to_target(cursor.sub, message(row))
                except Exception:
                    reraise_if_cancelling()
                    cursor.failures += 1
                    pause = min(30.0, 0.1 * 2**cursor.failures)
                    cursor.retry_at = time.monotonic() + pause
                    log.exception(
                        "perdure subscription %s: delivering %s failed; retrying in %.1fs (later events wait)",
                        cursor.sub.key(cursor.workflow),
                        row.type,
                        pause,
                    )
                    cursor.blocked = row.seq
                    return
                cursor.failures, cursor.blocked = 0, None
                cursor.delivered.add(row.seq)
                self.delivered += 1
            if len(rows) < 500:
                return
            after = rows[-1].seq

    async def _to_target(self, sub: Subscription, body: dict[str, Any]) -> None:
        if isinstance(sub.target, str):
            await self._send(sub.target, [json.dumps(body)])
        else:
            await sub.target(body)

    async def _advance(self, cursor: _Cursor, mono: float, xmin: int) -> None:
        """Move the durable cursor past the newest horizon every transaction of which ended
        (``xmax`` 0: a backend whose commits are visible in ``seq`` order), and never past a
        row whose delivery failed."""
        safe = cursor.seq
        while cursor.horizons:
            at, top, xmax = cursor.horizons[0]
            if xmax and (xmin < xmax or mono - at < self.settle):
                break
            cursor.horizons.popleft()
            safe = max(safe, top)
        if cursor.blocked is not None:
            safe = min(safe, cursor.blocked - 1)
        if safe > cursor.seq:
            await self._store.advance_subscription(cursor.sub.key(cursor.workflow), safe)
            cursor.seq = safe
            cursor.delivered = {s for s in cursor.delivered if s > safe}
