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

A transaction never spans an await: a flush begins, runs every queued write (plain functions
of the connection; the shared operations of :mod:`.sql` are driven to their end by
:func:`~perdure.store.sql.run_now`, which refuses one that suspends) and commits in one call.
SQLite lets one process write a file at a time. When another process holds the write lock,
``BEGIN IMMEDIATE`` fails at once (the writing connection's busy timeout is 0) and the flush
tries again later, from a timer on the event loop: the loop goes on meanwhile (reads, HTTP
requests, other work of the process), and writes queued in the meantime join the batch. A
write that waited ``lock_wait`` seconds fails with a
:class:`~perdure.errors.DatabaseLockedError` that names the holder's pid when ``/proc/locks``
tells (:func:`locked_error`). A caller without an event loop (and :meth:`Writer.flush` with
``wait=True``, on close) waits in place.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DatabaseLockedError, Fenced, PerdureError, ReadOnlyStoreError
from . import _test_hooks
from .batching import Unexpected, last_per_key, settle

Outcome = tuple[Any, BaseException | None]


class Op:
    """One write waiting for the next commit: ``fn(conn, *args)``.

    ``atomic`` asks for a savepoint, for a write that may fail after it changed something.
    ``key`` names what the write replaces (see :func:`~perdure.store.batching.last_per_key`).
    """

    __slots__ = ("fn", "args", "future", "atomic", "key", "blocked_since")

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
        self.blocked_since: float | None = None  # when it first met another process's lock


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Writer:
    """Queues writes and commits them in batches on ``connection()`` (see the module doc).

    ``connection`` returns the writing connection (None once the store closed), ``open``
    opens the store when a write is queued on a closed one (it reopens on use), and ``lock``
    guards the connection (and the store's reader) against other threads; ``error`` turns
    the exception a write failed with into the one its caller gets, and ``lock_wait`` is how
    long (seconds) a write waits for another process's write lock before it fails."""

    def __init__(
        self,
        connection: Callable[[], sqlite3.Connection | None],
        open: Callable[[], None],
        lock: threading.RLock,
        error: Callable[[Exception], Exception] | None = None,
        lock_wait: float = 10.0,
    ) -> None:
        self._connection = connection
        self._open = open
        self._lock = lock
        self._error = error or (lambda exc: exc)  # what a failed write raises (see locked_error)
        self._pending: list[tuple[Op, asyncio.AbstractEventLoop | None]] = []
        self._flush_scheduled = False
        self._lazy_flush: asyncio.TimerHandle | None = None
        self.lazy_delay = 0.005
        self.lock_wait = lock_wait
        self._retry: asyncio.TimerHandle | None = None  # the next try while another process writes
        self._tries = 0  # tries since the lock was last free (the pause between them grows)
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

    def flush(self, *, wait: bool = False) -> None:
        """Commit everything queued now, and hand each waiter its outcome. While another process
        holds the write lock, the writes stay queued and a timer tries again (``wait=True``, or
        no event loop: the call waits for the lock itself)."""
        current = None if wait else _loop()
        with self._lock:
            self._flush_scheduled = False
            if self._lazy_flush is not None:
                self._lazy_flush.cancel()
                self._lazy_flush = None
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            pending, self._pending = self._pending, []
            conn = self._connection()
            if not pending or conn is None:
                return
            pending = last_per_key(pending, key=lambda p: p[0].key, waited=lambda p: p[0].future is not None)
            while True:
                ops = [op for op, _ in pending]
                try:
                    try:
                        outcomes = _execute(conn, ops, savepoints=False)
                    except Unexpected:  # something failed half-way: redo the batch, each write on its own
                        outcomes = _execute(conn, ops, savepoints=True)
                except _Busy as busy:  # another process writes: nothing ran
                    pending, expired, pause = self._expired(pending)
                    if expired:
                        self._settle(expired, [(None, busy.error) for _ in expired], current)
                    if not pending:
                        return
                    if current is not None:  # try again later; the loop goes on meanwhile
                        self._pending[:0] = pending
                        self._retry = current.call_later(pause, self.flush)
                        return
                    time.sleep(pause)
                    continue
                except Exception as exc:  # BEGIN or COMMIT failed (the disk, ...): nothing is durable
                    outcomes = [(None, exc) for _ in ops]
                break
            self._tries = 0
            self.batches += 1
            self.batched_ops += len(ops)
        self._settle(pending, outcomes, current)

    def _expired(
        self, pending: list[tuple[Op, asyncio.AbstractEventLoop | None]]
    ) -> tuple[
        list[tuple[Op, asyncio.AbstractEventLoop | None]], list[tuple[Op, asyncio.AbstractEventLoop | None]], float
    ]:
        """Split writes that met the lock into those that may wait on and those that waited
        ``lock_wait``; and how long to pause before the next try."""
        now = time.monotonic()
        waiting, expired = [], []
        left = self.lock_wait
        for item in pending:
            op = item[0]
            if op.blocked_since is None:
                op.blocked_since = now
            waited = now - op.blocked_since
            if waited >= self.lock_wait:
                expired.append(item)
            else:
                waiting.append(item)
                left = min(left, self.lock_wait - waited)
        self._tries += 1
        return waiting, expired, max(0.0, min(0.001 * 2 ** min(self._tries, 6), left))

    def _settle(
        self,
        pending: list[tuple[Op, asyncio.AbstractEventLoop | None]],
        outcomes: list[Outcome],
        current: asyncio.AbstractEventLoop | None,
    ) -> None:
        current = current or _loop()
        told: dict[int, Exception] = {}  # each error translated once (a lock's holder is looked up once)
        for (op, loop), (value, error) in zip(pending, outcomes, strict=True):
            if op.future is None or loop is None:
                continue
            if isinstance(error, Exception):
                if id(error) not in told:
                    told[id(error)] = self._error(error)
                error = told[id(error)]
            if loop is current:
                settle(op.future, value, error)
            else:
                try:
                    loop.call_soon_threadsafe(settle, op.future, value, error)
                except RuntimeError:  # that loop is closed; nobody is waiting any more
                    pass


class _Busy(Exception):
    """``BEGIN IMMEDIATE`` (or ``COMMIT``, with a rollback journal) met another connection's
    lock (``SQLITE_BUSY``): nothing was written."""

    def __init__(self, error: sqlite3.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


def _execute(conn: sqlite3.Connection, ops: list[Op], *, savepoints: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise _Busy(exc) from exc
        raise
    try:
        if _test_hooks.in_write_transaction is not None:
            _test_hooks.in_write_transaction()
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
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
            raise _Busy(exc) from exc
        raise
    return outcomes


# -- who holds the lock -------------------------------------------------------------------------
# SQLite's unix VFS takes POSIX byte-range locks, which Linux lists in /proc/locks with the pid
# of their owner and the file's device and inode. In WAL mode a writer holds byte 120 of the
# -shm file (WAL_WRITE_LOCK); with a rollback journal it holds RESERVED (byte 0x40000001 of the
# database file), then PENDING and EXCLUSIVE over the bytes from 0x40000000.
_WAL_WRITE_BYTES = (120, 120)
_ROLLBACK_WRITE_BYTES = (0x40000000, 0x40000001 + 510)
_STATES = {"T": "stopped", "t": "stopped by a debugger", "Z": "a zombie", "D": "waiting on the disk"}


def is_busy(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (``SQLITE_BUSY``)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(exc)


def lock_holder(path: str) -> int | None:
    """The pid of the process that holds the write lock of the SQLite file at ``path``, when
    ``/proc/locks`` tells (Linux, a process of this pid namespace), else None."""
    targets: list[tuple[int, int, int, int, int]] = []  # (major, minor, inode, first byte, last byte)
    for suffix, (first, last) in (("-shm", _WAL_WRITE_BYTES), ("", _ROLLBACK_WRITE_BYTES)):
        try:
            st = os.stat(path + suffix)
        except OSError:
            continue
        targets.append((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, first, last))
    if not targets:
        return None
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    held: list[tuple[int, int, int, int, float, int]] = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 7767 fe:00:2147962 120 120" (a waiter's line reads "1: -> POSIX ...")
        fields = line.split()
        if len(fields) < 8 or fields[1] not in ("POSIX", "OFDLCK") or fields[3] != "WRITE":
            continue
        try:
            dev_major, dev_minor, ino = fields[5].split(":")
            pid, start = int(fields[4]), int(fields[6])
            end = float("inf") if fields[7] == "EOF" else int(fields[7])
            held.append((int(dev_major, 16), int(dev_minor, 16), int(ino), start, end, pid))
        except ValueError:
            continue
    for major, minor, inode, first, last in targets:  # the WAL write lock first
        for l_major, l_minor, l_inode, start, end, pid in held:
            if (l_major, l_minor, l_inode) == (major, minor, inode) and start <= last and end >= first and pid > 0:
                return pid
    return None


def describe_process(pid: int) -> tuple[str, bool]:
    """``(how the process reads, whether it is stopped)``: its command line and state."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = ""
    if len(command) > 120:
        command = command[:117] + "..."
    parts = [part for part in (command, _STATES.get(state, "")) if part]
    return ", ".join(parts) or "no longer running", state in ("T", "t")


def locked_error(path: str, waited_ms: int) -> DatabaseLockedError:
    """The error for a write that waited ``waited_ms`` for another process's lock on ``path``."""
    pid = lock_holder(path)
    holder = None
    if pid is None:
        who = (
            "another process holds its write lock (which one is unknown: /proc/locks names none here;"
            " it may run in another container or on another host, or have just let go)"
        )
        advice = "find the process that has the file open (fuser, lsof) if this persists"
    else:
        holder, stopped = describe_process(pid)
        who = f"process {pid} ({holder}) holds its write lock"
        advice = (
            f"resume it (kill -CONT {pid}) or end it"
            if stopped
            else f"if process {pid} is stuck, end it; if it is busy, retry later"
        )
    message = (
        f"database file {path} is locked: {who}; waited {waited_ms / 1000:g} s. {advice[0].upper()}{advice[1:]}."
        " SQLite lets one process write at a time, so a writer stopped while it holds the lock blocks every"
        " other writer (readers go on); for many writers use PostgreSQL"
    )
    return DatabaseLockedError(message, path=path, pid=pid, holder=holder)


def is_read_only(exc: BaseException) -> bool:
    """Whether SQLite refused to write a file this process may not write (``SQLITE_READONLY``)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_READONLY)
    return "readonly database" in str(exc)


def database_error(exc: Exception, path: str, waited_ms: int) -> Exception:
    """``exc``, or the clear error for SQLite's busy (:class:`~perdure.errors.DatabaseLockedError`)
    and read-only (:class:`~perdure.errors.ReadOnlyStoreError`) errors."""
    error: Exception
    if is_busy(exc):
        error = locked_error(path, waited_ms)
    elif is_read_only(exc):
        error = ReadOnlyStoreError(
            f"database file {path} cannot be written by this process ({exc}): check the permissions of the file,"
            " its -wal and -shm files and its directory; commands that only read open it read-only"
        )
    else:
        return exc
    error.__cause__ = exc
    return error
