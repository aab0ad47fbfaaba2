"""The SQLite store's writer: group commit on the event loop thread.

Every write is queued; the first one queued in a loop iteration schedules a *flush* for right
after the coroutines that are ready now have run, so every write they make joins one
transaction and one commit (one fsync with ``durability="full"``). A caller awaiting a write
resumes only after its commit: a step result is durable before its workflow moves on. The
flush runs on the event loop thread: handing work to a thread and back costs about 250 µs on a
small VM, more than the commit itself.

Each write runs unguarded for speed; when one fails in a way that may have left part of it
behind, the batch is rolled back and redone with a savepoint around each write, so only that
one fails. A write refused by the data (:class:`~perdure.errors.Fenced`, a ``PerdureError``)
raises before it changes anything, and fails alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Fenced, PerdureError
from .batching import Unexpected, last_per_key, settle

Outcome = tuple[Any, BaseException | None]


class Op:
    """One write waiting for the next commit: ``fn(conn, *args)``.

    ``atomic`` asks for a savepoint, for a write that may fail after it changed something.
    ``key`` names what the write replaces (see :func:`~perdure.store.batching.last_per_key`).
    """

    __slots__ = ("fn", "args", "future", "atomic", "key")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any] | None,
        atomic: bool = False,
        key: Any = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.atomic = atomic
        self.key = key


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Writer:
    """Queues writes and commits them in batches on ``connection()`` (see the module doc).

    ``connection`` returns the writing connection (None once the store closed), ``open``
    opens the store when a write is queued on a closed one (it reopens on use), and ``lock``
    guards the connection (and the store's reader) against other threads."""

    def __init__(
        self, connection: Callable[[], sqlite3.Connection | None], open: Callable[[], None], lock: threading.RLock
    ) -> None:
        self._connection = connection
        self._open = open
        self._lock = lock
        self._pending: list[tuple[Op, asyncio.AbstractEventLoop | None]] = []
        self._flush_scheduled = False
        self._lazy_flush: asyncio.TimerHandle | None = None
        self.lazy_delay = 0.005
        self.batches = 0  # commits made, and the writes they carried
        self.batched_ops = 0

    async def write(self, fn: Callable[..., Any], *args: Any, atomic: bool = False, key: Any = None) -> Any:
        """Queue ``fn(conn, *args)`` and return its value once committed (or raise its error)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submit(Op(fn, args, future, atomic, key))
        return await future

    def write_nowait(self, fn: Callable[..., Any], *args: Any, key: Any = None) -> None:
        """Queue a write nobody waits on (an attempt's start): it rides along with the next
        write that must commit, is skipped when that write replaces it, or commits after
        ``lazy_delay``."""
        self.submit(Op(fn, args, None, False, key), lazy=True)

    def submit(self, op: Op, *, lazy: bool = False) -> None:
        if self._connection() is None:
            self._open()
        loop = _loop()
        with self._lock:
            self._pending.append((op, loop))
            if loop is None:  # no event loop (a synchronous caller): commit now
                self.flush()
            elif not lazy and not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self.flush)
            elif lazy and self._lazy_flush is None and not self._flush_scheduled:
                self._lazy_flush = loop.call_later(self.lazy_delay, self.flush)

    def flush(self) -> None:
        """Commit everything queued now, and hand each waiter its outcome."""
        with self._lock:
            self._flush_scheduled = False
            if self._lazy_flush is not None:
                self._lazy_flush.cancel()
                self._lazy_flush = None
            pending, self._pending = self._pending, []
            conn = self._connection()
            if not pending or conn is None:
                return
            pending = last_per_key(pending, key=lambda p: p[0].key, waited=lambda p: p[0].future is not None)
            ops = [op for op, _ in pending]
            try:
                outcomes = _execute(conn, ops, savepoints=False)
            except Unexpected:  # something failed half-way: redo the batch, each write on its own
                outcomes = _execute(conn, ops, savepoints=True)
            except Exception as exc:  # the commit itself failed: nobody's write is durable
                outcomes = [(None, exc) for _ in ops]
            self.batches += 1
            self.batched_ops += len(ops)
        current = _loop()
        for (op, loop), (value, error) in zip(pending, outcomes, strict=True):
            if op.future is None or loop is None:
                continue
            if loop is current:
                settle(op.future, value, error)
            else:
                try:
                    loop.call_soon_threadsafe(settle, op.future, value, error)
                except RuntimeError:  # that loop is closed; nobody is waiting any more
                    pass


def _execute(conn: sqlite3.Connection, ops: list[Op], *, savepoints: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            guarded = savepoints or op.atomic
            if guarded:
                conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn, *op.args)
            except (Fenced, PerdureError) as exc:  # refused before writing, or undone below
                if guarded:
                    conn.execute("ROLLBACK TO op")
                outcomes.append((None, exc))
            except Exception as exc:
                if not guarded:
                    raise Unexpected from exc
                conn.execute("ROLLBACK TO op")
                outcomes.append((None, exc))
            else:
                outcomes.append((value, None))
            if guarded:
                conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes
