"""Group commit and transaction running for the PostgreSQL store.

A :class:`Write` is one change the store wants committed. :class:`GroupCommit` queues the writes
of a worker's running instances and has one task commit them in batches: every write queued
while the previous commit was in flight goes into the next transaction, so many instances
finishing steps at once share one commit (one WAL flush) and one connection.

Round trips are the cost to fight on a busy machine (each one is a wake-up of the server and of
us), so :class:`Transactions` runs a batch in as few statements as it can:

* writes that name the same ``group`` function run together in one statement (a hundred step
  results are one ``INSERT ... SELECT FROM unnest(...)``);
* a batch that is a single statement runs in autocommit, without ``BEGIN`` and ``COMMIT``:
  one round trip, commit included.

Failures, and which of them are retried:

* a write refused by the data (:class:`~perdure.store.base.Fenced`, a ``PerdureError``) fails
  alone; the batch commits the others (a write that may fail *after* writing asks for a
  savepoint with ``atomic``);
* any other SQL error aborts the transaction in PostgreSQL, so the batch is redone with a
  savepoint around each write and only the faulty one fails (as in the SQLite backend);
* a lost connection or a deadlock before ``COMMIT`` was sent means nothing was committed: the
  batch is retried on a fresh connection after a pause;
* a lost connection *during* ``COMMIT`` (or during a lone autocommit statement) leaves the
  outcome unknown: the batch is retried only if every write in it is ``idempotent``, and
  otherwise the error is reported to each write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from .._cancel import reraise_if_cancelling
from ..errors import Fenced, PerdureError
from .batching import Unexpected, last_per_key, settle
from .sql import Tx

log = logging.getLogger("perdure.postgres")

Conn = AsyncConnection[tuple[Any, ...]]
Outcome = tuple[Any, BaseException | None]
WriteFn = Callable[[Conn], Awaitable[Any]]
GroupFn = Callable[[Conn, Sequence["Write"]], Awaitable[list[Outcome]]]


class Write:
    """One write waiting for a commit.

    * ``fn(conn)`` performs it alone and returns its value (raising ``Fenced`` or a
      ``PerdureError`` to refuse it).
    * ``group(conn, writes)``, when set, performs several writes of the same kind in one
      statement and returns one outcome per write; ``fn`` still serves when the write must run
      on its own (inside a savepoint). ``data`` is what ``group`` reads.
    * ``key`` names what the write replaces: of several writes with one key in a batch, only
      the last one runs when nobody waits on the earlier ones.
    * ``single``: ``fn`` is one SQL statement, so alone it needs no transaction block.
    * ``atomic``: ``fn`` may refuse after it wrote something: run it inside a savepoint.
    * ``idempotent``: running it twice leaves what running it once leaves.
    * ``phase``: groups of a later phase run after every group of an earlier one in the same
      batch (a finish after the step saves of its run that rode along unawaited).
    * ``future`` receives the outcome; None for a write nobody waits on.
    """

    __slots__ = ("fn", "group", "data", "key", "single", "atomic", "idempotent", "phase", "future")

    def __init__(
        self,
        fn: WriteFn,
        *,
        group: GroupFn | None = None,
        data: Any = None,
        key: Any = None,
        single: bool = False,
        atomic: bool = False,
        idempotent: bool = False,
        phase: int = 0,
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        self.fn = fn
        self.group = group
        self.data = data
        self.key = key
        self.single = single
        self.atomic = atomic
        self.idempotent = idempotent
        self.phase = phase
        self.future = future


class _Transient(Exception):
    """The connection failed or PostgreSQL aborted the transaction (a deadlock): try again.
    ``ambiguous``: it failed while committing, so the commit may have happened."""

    def __init__(self, error: BaseException, ambiguous: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.ambiguous = ambiguous


def is_transient(exc: BaseException) -> bool:
    """Lost connections, admin shutdowns, pool timeouts, deadlocks, serialisation failures:
    everything where the same statements may well succeed a moment later."""
    return isinstance(exc, psycopg.OperationalError)


def _closed_by_server(conn: Conn) -> bool:
    """Whether an idle pooled connection was closed by the server (``pg_terminate_backend``,
    a restart) while it sat in the pool.

    An idle connection has nothing to read; if the server wrote to it, it was almost surely to
    say goodbye before closing, and reading that reveals the closed socket. Finding out here,
    before sending anything, costs one ``select`` and turns what would be an *ambiguous*
    failure (did our statement commit before the connection died?) into a plain retry."""
    pgconn = conn.pgconn
    try:
        for _ in range(2):  # the goodbye message, then the end of the stream
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return False
            pgconn.consume_input()
    except (psycopg.OperationalError, OSError, ValueError):
        return True
    return conn.broken


class Transactions:
    """Runs lists of writes in one transaction each, with the retries described above."""

    def __init__(self, pool: Callable[[], Awaitable[AsyncConnectionPool[Conn]]], retry_delays: Sequence[float]) -> None:
        self._pool = pool
        self.retry_delays = tuple(retry_delays)
        self._checking: asyncio.Task[None] | None = None

    async def commit(self, writes: list[Write]) -> list[Outcome]:
        """Run ``writes`` in one transaction; one outcome per write, in order."""
        savepoints = False
        tries = 0
        while True:
            try:
                return await self._attempt(writes, savepoints=savepoints)
            except Unexpected:
                savepoints = True  # rolled back: redo it with each write on its own
            except _Transient as exc:
                reraise_if_cancelling()
                retry = not exc.ambiguous or all(w.idempotent for w in writes)
                if not retry or tries >= len(self.retry_delays):
                    return [(None, exc.error)] * len(writes)
                await self.recover(self.retry_delays[tries])
                tries += 1
            except Exception as exc:
                reraise_if_cancelling()
                return [(None, exc)] * len(writes)

    async def read(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Run one query in autocommit and return its rows, retrying on lost connections."""
        tries = 0
        while True:
            pool = await self._pool()
            try:
                async with pool.connection() as conn:
                    if _closed_by_server(conn):
                        raise psycopg.OperationalError("the server closed this pooled connection")
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()
            except psycopg.OperationalError:
                reraise_if_cancelling()
                if tries >= len(self.retry_delays):
                    raise
                await self.recover(self.retry_delays[tries])
                tries += 1

    async def recover(self, delay: float) -> None:
        """After a connection failure: have the pool test its idle connections in the
        background (a server restart leaves every one of them dead), and wait."""
        if self._checking is None or self._checking.done():
            pool = await self._pool()
            self._checking = asyncio.get_running_loop().create_task(pool.check())
        await asyncio.sleep(delay)

    def cancel(self) -> None:
        if self._checking is not None:
            self._checking.cancel()

    async def _attempt(self, writes: list[Write], *, savepoints: bool) -> list[Outcome]:
        pool = await self._pool()
        try:
            async with pool.connection() as conn:
                if _closed_by_server(conn):  # nothing sent yet: not ambiguous
                    raise _Transient(psycopg.OperationalError("the server closed this pooled connection"), False)
                if not savepoints and _one_statement(writes):
                    return await self._autocommit(conn, writes)
                return await self._transaction(conn, writes, savepoints)
        except _Transient:
            raise
        except psycopg.OperationalError as exc:  # no connection at all (pool timeout)
            raise _Transient(exc, ambiguous=False) from exc

    async def _autocommit(self, conn: Conn, writes: list[Write]) -> list[Outcome]:
        """One statement in its own implicit transaction: one round trip, commit included."""
        try:
            return await _run_unguarded(conn, writes)
        except Unexpected:
            raise  # nothing was committed: commit() redoes it with savepoints
        except Exception as exc:
            if is_transient(exc):
                # The statement may have committed just before the connection died.
                raise _Transient(exc, ambiguous=conn.broken) from exc
            raise

    async def _transaction(self, conn: Conn, writes: list[Write], savepoints: bool) -> list[Outcome]:
        committing = False
        try:
            await conn.execute("BEGIN")
            if savepoints:
                outcomes = [await _run_guarded(conn, w) for w in writes]
            else:
                outcomes = await _run_unguarded(conn, writes)
            if all(error is not None for _, error in outcomes):
                # Every write was refused: a lone control call that refused after writing
                # (a duplicate id in a batch create) must leave nothing behind.
                await conn.execute("ROLLBACK")
                return outcomes
            committing = True
            await conn.execute("COMMIT")
            return outcomes
        except Exception as exc:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            if isinstance(exc, (Unexpected, _Transient)):
                raise
            if is_transient(exc):
                raise _Transient(exc, ambiguous=committing and conn.broken) from exc
            raise


def _one_statement(writes: list[Write]) -> bool:
    if len(writes) == 1 and writes[0].single:
        return True
    group = writes[0].group
    return group is not None and all(w.group is group for w in writes) and _distinct_keys(writes)


def _distinct_keys(writes: Sequence[Write]) -> bool:
    keys = [w.key for w in writes]
    return None not in keys and len(set(keys)) == len(keys)


async def _run_unguarded(conn: Conn, writes: list[Write]) -> list[Outcome]:
    """Grouped writes first (one statement per group, groups by ``phase``, then in the order
    they first appear), then the others in order.

    Running a group's writes ahead of the batch's other writes is a valid order: the writes of
    one batch were all queued concurrently, and within one instance a run's step results are
    always queued before the suspend or finish that follows them (the finish group has a later
    phase than the step saves, so an unawaited step save that rode along still runs first)."""
    outcomes: list[Outcome | None] = [None] * len(writes)
    groups: dict[GroupFn, list[int]] = {}
    keys: set[Any] = set()
    alone: list[int] = []
    for i, write in enumerate(writes):
        if write.group is not None and write.key is not None and write.key not in keys:
            keys.add(write.key)
            groups.setdefault(write.group, []).append(i)
        else:  # ungrouped, or a second write of one key (a statement may touch a row once)
            alone.append(i)
    for group, indexes in sorted(groups.items(), key=lambda item: writes[item[1][0]].phase):
        if len(indexes) == 1:  # a group of one: its own statement is the simpler one
            outcomes[indexes[0]] = await _run_alone(writes[indexes[0]], conn)
            continue
        try:
            results = await group(conn, [writes[i] for i in indexes])
        except Exception as exc:
            if is_transient(exc):
                raise
            raise Unexpected from exc
        for i, outcome in zip(indexes, results, strict=True):
            outcomes[i] = outcome
    for i in alone:
        outcomes[i] = await _run_alone(writes[i], conn)
    return [outcome if outcome is not None else (None, RuntimeError("write not run")) for outcome in outcomes]


async def _run_alone(write: Write, conn: Conn) -> Outcome:
    try:
        return (await write.fn(conn), None)
    except (Fenced, PerdureError) as exc:  # refused before writing
        return (None, exc)
    except Exception as exc:
        if is_transient(exc):
            raise
        raise Unexpected from exc


async def _run_guarded(conn: Conn, write: Write) -> Outcome:
    """One write inside a savepoint, so its failure undoes only its own changes."""
    await conn.execute("SAVEPOINT write")
    try:
        outcome: Outcome = (await write.fn(conn), None)
    except Exception as exc:
        if is_transient(exc):
            raise
        await conn.execute("ROLLBACK TO SAVEPOINT write")
        outcome = (None, exc)
    await conn.execute("RELEASE SAVEPOINT write")
    return outcome


class GroupCommit:
    """Queues writes and commits them in batches from one task (see the module doc)."""

    def __init__(self, transactions: Transactions, *, lazy_delay: float, max_batch: int) -> None:
        self._transactions = transactions
        self.lazy_delay = lazy_delay
        self.max_batch = max_batch
        self._pending: list[Write] = []
        self._wake = asyncio.Event()
        self._lazy: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # commits made, and the writes they carried
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="perdure-pg-writer")

    def submit(self, write: Write, *, lazy: bool = False) -> None:
        """Queue ``write``. ``lazy``: nobody waits on it (an attempt start), so it does not wake
        the writer: it rides along with the next write that must commit, or is skipped when
        that write replaces it, or commits after ``lazy_delay``."""
        if self._task is None or self._task.done():
            raise RuntimeError("the PostgreSQL store is not open")
        self._pending.append(write)
        if lazy:
            self._arm_lazy()
        else:
            self._wake.set()

    async def wait(self, write: Write) -> Any:
        """Queue ``write`` and return its value once committed (or raise its error)."""
        write.future = asyncio.get_running_loop().create_future()
        self.submit(write)
        return await write.future

    async def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued (waiting at most ``timeout`` seconds), then stop."""
        if self._task is None:
            return
        marker = Write(_marker, future=asyncio.get_running_loop().create_future())
        self.submit(marker)
        assert marker.future is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(marker.future), timeout=timeout)
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        for write in self._pending:
            settle(write.future, None, RuntimeError("the PostgreSQL store was closed before this write committed"))
        self._pending.clear()

    def _arm_lazy(self) -> None:
        if self._lazy is None and not self._wake.is_set():
            self._lazy = asyncio.get_running_loop().call_later(self.lazy_delay, self._wake.set)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._lazy is not None:
                self._lazy.cancel()
                self._lazy = None
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: len(batch)]
                await self._commit(batch)
                if self._pending and all(w.future is None for w in self._pending):
                    self._arm_lazy()  # only lazy writes left: let them wait for company
                    break

    async def _commit(self, batch: list[Write]) -> None:
        for write in batch:
            if write.fn is _marker:  # everything queued before it has been committed
                settle(write.future, None, None)
        batch = [w for w in batch if w.fn is not _marker]
        writes = last_per_key(batch, key=lambda w: w.key, waited=lambda w: w.future is not None)
        if not writes:
            return
        try:
            outcomes = await self._transactions.commit(writes)
        except Exception as exc:  # a bug, not a database error: fail these writes, keep the writer
            log.exception("perdure: group commit failed")
            outcomes = [(None, exc)] * len(writes)
        self.batches += 1
        self.writes += len(writes)
        for write, (value, error) in zip(writes, outcomes, strict=True):
            settle(write.future, value, error)


async def _marker(conn: Conn) -> None:
    return None


class PgTx(Tx):
    """The shared operations' view (:mod:`perdure.store.sql`) of one of our connections, inside
    its transaction: ``q`` spells a statement for this schema, ``notify`` wakes other workers."""

    __slots__ = ("conn", "_q", "_notify")

    def __init__(self, conn: Conn, q: Callable[[str], str], notify: Callable[[Conn], Awaitable[None]]) -> None:
        self.conn = conn
        self._q = q
        self._notify = notify

    async def all(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        cur = await self.conn.execute(self._q(sql), params)
        return await cur.fetchall() if cur.description else []

    async def run(self, sql: str, params: Any = ()) -> int:
        cur = await self.conn.execute(self._q(sql), params)
        return cur.rowcount

    async def notify(self) -> None:
        await self._notify(self.conn)


async def open_pool(
    conninfo: str,
    name: str,
    min_size: int,
    max_size: int,
    *,
    timeout: float,
    connect_timeout: int,
    idle_in_transaction_timeout: float,
) -> AsyncConnectionPool[Conn]:
    """An open pool of autocommit connections with the store's session settings.

    A worker frozen in the middle of a transaction (SIGSTOP, a long GC pause, a laptop lid)
    would keep its instance rows locked, and ``SKIP LOCKED`` claims would skip them for as
    long as it stays frozen: the server ends such a session after
    ``idle_in_transaction_timeout`` seconds, which releases the locks and lets the lease
    expire normally. Our own transactions never sit idle."""
    ms = int(idle_in_transaction_timeout * 1000)

    async def configure(conn: Conn) -> None:
        await conn.execute(f"SET idle_in_transaction_session_timeout = {ms}")

    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "connect_timeout": connect_timeout},
        timeout=timeout,
        name=name,
        configure=configure,
        open=False,
    )
    await pool.open()
    return pool
