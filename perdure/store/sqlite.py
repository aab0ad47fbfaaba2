"""The embedded SQLite backend: one file, zero set-up.

Writes go through one writing connection and its group commit (:mod:`.sqlite_writer`): many
instances' step results share one transaction and one fsync, and a caller resumes only after
its commit. Reads use a second connection in WAL mode, so they never wait for the writer.
Other processes (a web server, the CLI) may open the same file; SQLite's file locks serialise
their writers with ours, and ``PRAGMA data_version`` tells a worker that one of them wrote. A
writer that waited past ``busy_timeout_ms`` for another process's lock gets a
:class:`~perdure.errors.DatabaseLockedError` naming that process when it can be found.

``read_only=True`` opens the file with ``mode=ro``: no connection that may write, no layout
upgrade, no journal-mode change, no checkpoint on close; it reads while another process holds
the write lock (WAL readers never wait for the writer), and reads a file it may not write. A
write through it raises :class:`~perdure.errors.ReadOnlyStoreError`.

The layout lives in :mod:`perdure.store.migrations.sqlite`; the operations whose SQL is the
same on PostgreSQL (reads, control calls, queues) in :mod:`perdure.store.sql`. This module
keeps what a worker does on every step, written for SQLite: claim, save a step, consume an
event, suspend, release and finish.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from ..errors import Fenced, InstanceAlreadyExistsError, ReadOnlyStoreError, ValidationError
from ..records import (
    COMPLETE,
    PAUSED,
    QUEUED,
    RUNNING,
    WAITING,
    WAITING_FOR_PAUSE,
    InstanceRecord,
    LocalStart,
    NewInstance,
    StepRecord,
    WorkflowRecord,
)
from .event_prefetch import AHEAD, Prefetched
from .migrations.sqlite import SCHEMA_VERSION, check_layout, create_or_upgrade
from .rows import (
    INSTANCE_COLUMNS,
    WORKFLOW_COLUMNS,
    WORKFLOW_UPSERT,
    created_record,
    dumps,
    finish_history,
    instance_from_row,
    step_row,
    workflow_rows,
)
from .sql import SQLITE, SQLStore, Tx, resume_claimed, run_now
from .sqlite_writer import Writer, database_error, is_busy, locked_error

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "SQLiteStore"]

# when a finished instance is deleted: its end plus the retention of its outcome (NULL: never)
EXPIRES = "CASE WHEN ? = 'complete' THEN success_retention ELSE error_retention END"

T = TypeVar("T")
# How long a write waits for another process's write lock, unless the store says otherwise.
DEFAULT_BUSY_TIMEOUT_MS = 10_000


def _history(conn: sqlite3.Connection, pk: int, type_: str, ts: float, data: Any = None) -> None:
    conn.execute("INSERT INTO history (instance_pk, type, ts, data) VALUES (?, ?, ?, ?)", (pk, type_, ts, dumps(data)))


def _consume_event(conn: sqlite3.Connection, pk: int, step: StepRecord, event_pk: int) -> None:
    """Store ``step`` complete with the event ``event_pk`` and mark the event consumed by it."""
    conn.execute(_UPSERT_STEP, step_row(pk, step))
    seq = conn.execute(
        "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? AND count = ?",
        (pk, step.kind, step.name, step.count),
    ).fetchone()[0]
    conn.execute("UPDATE events SET consumed_by = ? WHERE pk = ?", (seq, event_pk))


def _fence(conn: sqlite3.Connection, pk: int, epoch: int) -> str:
    row = conn.execute("SELECT status FROM instances WHERE pk = ? AND epoch = ?", (pk, epoch)).fetchone()
    if row is None:
        raise Fenced(f"instance {pk} moved past epoch {epoch}")
    return str(row[0])


_UPSERT_STEP = (
    "INSERT INTO steps (instance_pk, kind, name, count, status, config, attempts, result, error,"
    " started_at, ended_at, wake_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (instance_pk, kind, name, count) DO UPDATE SET status = excluded.status,"
    " config = excluded.config, attempts = excluded.attempts, result = excluded.result,"
    " error = excluded.error, ended_at = excluded.ended_at, wake_at = excluded.wake_at"
)


class _Tx(Tx):
    """The shared operations' view of the writer's connection, inside its transaction."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def all(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(SQLITE.q(sql), params).fetchall()

    async def run(self, sql: str, params: Any = ()) -> int:
        return self.conn.execute(SQLITE.q(sql), params).rowcount


def _run_shared(conn: sqlite3.Connection, op: Callable[[Tx], Awaitable[Any]]) -> Any:
    """A shared operation (:mod:`.sql`) on the writer's connection, inside its transaction."""
    return run_now(op(_Tx(conn)))  # type: ignore[arg-type]


class SQLiteStore(SQLStore):
    """SQLite in WAL mode with group commit on the event loop.

    ``durability="full"`` (the default) fsyncs every commit, so a finished step survives power
    loss; ``"normal"`` survives a crash of the process but not of the machine, and is faster.
    ``busy_timeout_ms`` is how long a write waits for another process's write lock before it
    fails with :class:`~perdure.errors.DatabaseLockedError`; ``read_only=True`` opens the file
    for reading only (see the module doc).
    """

    dialect = SQLITE

    def __init__(
        self,
        path: str,
        *,
        durability: str = "full",
        busy_timeout_ms: int | None = None,
        read_only: bool = False,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValidationError(f"durability must be 'full' or 'normal', got {durability!r}")
        if busy_timeout_ms is None:
            busy_timeout_ms = DEFAULT_BUSY_TIMEOUT_MS
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ValidationError(f"busy_timeout_ms must be an integer >= 0, got {busy_timeout_ms!r}")
        if read_only and path == ":memory:":
            raise ValidationError("read_only=True needs a database file, not :memory:")
        self.path = path
        self.url = f"sqlite:///{path}"
        self.durability = durability
        self.busy_timeout_ms = busy_timeout_ms
        self.read_only = bool(read_only)
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._prefetched = Prefetched()  # events read ahead by takes (perdure.store.event_prefetch)
        self._writer = Writer(
            lambda: self._conn,
            self._open_for_write,
            self._lock,
            lambda exc: database_error(exc, self.path, self.busy_timeout_ms),
            lock_wait=busy_timeout_ms / 1000,
        )
        self._data_version: int | None = None

    @property
    def batches(self) -> int:
        """Commits made so far (with :attr:`batched_ops`, the writes they carried)."""
        return self._writer.batches

    @property
    def batched_ops(self) -> int:
        return self._writer.batched_ops

    # -- lifecycle -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("PRAGMA recursive_triggers = ON")  # so that a REPLACE's deletes are counted
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """A ``mode=ro`` connection; its only pragma (busy_timeout) is the connection's own.
        SQLite never checkpoints the WAL from a read-only connection, so closing it writes
        nothing either."""
        path = Path(self.path)
        if not path.is_file():
            raise ReadOnlyStoreError(f"no database file at {self.path!r} to open read-only")
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=self.busy_timeout_ms / 1000,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            check_layout(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> None:
        with self._lock:
            if self.read_only:
                if self._reader is None:
                    try:
                        self._reader = self._connect_read_only()
                    except sqlite3.OperationalError as exc:
                        if is_busy(exc):
                            raise locked_error(self.path, self.busy_timeout_ms) from exc
                        raise
                return
            if self._conn is not None:
                return
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = reader = None
            try:
                conn = self._connect()
                create_or_upgrade(conn)
                reader = self._connect()
                # From now on the writer waits for another process's lock itself, on a timer,
                # so that the event loop goes on meanwhile (see sqlite_writer).
                conn.execute("PRAGMA busy_timeout = 0")
            except BaseException as exc:
                for opened in (conn, reader):
                    if opened is not None:
                        opened.close()
                # another process holds the write lock an upgrade needs, or the file is read-only
                error = database_error(exc, self.path, self.busy_timeout_ms) if isinstance(exc, Exception) else exc
                if error is not exc:
                    raise error from exc
                raise
            self._conn, self._reader = conn, reader

    def _open_for_write(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"the store of {self.path!r} was opened read-only: it cannot write (open it without read_only)"
            )
        self._open_sync()

    async def open(self) -> None:
        self._open_sync()

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._writer.flush(wait=True)
                self._conn.close()
                self._conn = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- how operations reach the database -------------------------------------------------------
    async def _write(self, fn: Callable[..., Any], *args: Any, atomic: bool = False, key: Any = None) -> Any:
        """Queue ``fn(conn, *args)`` for the next group commit; its value once committed."""
        return await self._writer.write(fn, *args, atomic=atomic, key=key)

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._reader is None:
            self._open_sync()
        assert self._reader is not None
        with self._lock:
            return self._reader.execute(sql, params).fetchall()

    async def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._fetch(SQLITE.q(sql), tuple(params))

    async def _control(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        # In the writer's batch like every write: SQLite has one writer, so a control call
        # cannot deadlock with a worker's writes.
        result: T = await self._writer.write(_run_shared, op)
        return result

    async def _queue_write(self, op: Callable[[Tx], Awaitable[T]], *, single: bool = False) -> T:
        # A queue's statements may fail after an earlier one wrote: a savepoint keeps them whole.
        result: T = await self._writer.write(_run_shared, op, atomic=True)
        return result

    # -- instances -------------------------------------------------------------------------------
    async def create_instances(
        self,
        workflow: str,
        items: list[NewInstance],
        now: float,
        *,
        skip_existing: bool,
        start: LocalStart | None = None,
    ) -> list[InstanceRecord]:
        status, owner, lease, epoch, started = QUEUED, None, None, 0, None
        if start is not None:  # created claimed (Engine.local_start): one item
            status, owner, lease, epoch, started = RUNNING, start.owner, start.lease_until, 1, now

        def op(conn: sqlite3.Connection) -> list[InstanceRecord]:
            created = []
            for item in items:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO instances (workflow, id, status, params, trigger, schedule, created_at,"
                    " success_retention, error_retention, concurrency_key, priority, owner, lease_until, epoch,"
                    " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        workflow,
                        item.id,
                        status,
                        item.params_json,
                        item.trigger,
                        dumps(item.schedule),
                        now,
                        item.success_retention,
                        item.error_retention,
                        item.concurrency_key,
                        item.priority,
                        owner,
                        lease,
                        epoch,
                        started,
                    ),
                )
                if cur.rowcount == 0:
                    if skip_existing:
                        continue
                    raise InstanceAlreadyExistsError(
                        f"an instance with id {item.id!r} already exists in workflow {workflow!r}"
                    )
                pk = int(cur.lastrowid or 0)
                _history(conn, pk, "WORKFLOW_QUEUED", now, {"trigger": item.trigger})
                if start is not None:
                    _history(conn, pk, "WORKFLOW_START", now)
                created.append(created_record(workflow, pk, item, now, start))
            return created

        result: list[InstanceRecord] = await self._write(op, atomic=True)
        return result

    async def count_by_status(self, workflow: str | None = None) -> dict[str, dict[str, int]]:
        """Read from ``instance_counts``, which triggers keep (:mod:`perdure.store.migrations.sqlite`)."""
        if workflow is None:
            rows = self._fetch("SELECT workflow, status, n FROM instance_counts WHERE n != 0")
        else:
            rows = self._fetch(
                "SELECT workflow, status, n FROM instance_counts WHERE workflow = ? AND n != 0", (workflow,)
            )
        counts: dict[str, dict[str, int]] = {}
        for wf, status, n in rows:
            counts.setdefault(wf, {})[status] = n
        return counts

    # -- workflows -------------------------------------------------------------------------------
    async def register_workflows(self, workflows: list[WorkflowRecord], now: float) -> None:
        rows = workflow_rows(workflows, now)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                f"INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) {WORKFLOW_UPSERT}", rows
            )

        if rows:
            await self._write(op)

    # -- running instances -----------------------------------------------------------------------
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
        if not workflows:
            return []
        expired_before = now if lease_now is None else lease_now
        names = ",".join("?" * len(workflows))

        def op(conn: sqlite3.Connection) -> list[InstanceRecord]:
            pks = [
                r[0]
                for r in conn.execute(
                    # a waiting instance may still be held by the worker waiting on it in memory
                    f"SELECT pk FROM instances WHERE status = ? AND wake_at <= ? AND workflow IN ({names})"
                    " AND (lease_until IS NULL OR lease_until < ?) ORDER BY wake_at LIMIT ?",
                    (WAITING, now, *workflows, expired_before, limit),
                )
            ]
            if len(pks) < limit:
                pks += [
                    r[0]
                    for r in conn.execute(
                        # by priority, oldest first, reading the queued index in order (without
                        # INDEXED BY the planner sorts every queued instance of the workflows)
                        "SELECT pk FROM instances INDEXED BY ix_instances_queued WHERE status = 'queued'"
                        f" AND workflow IN ({names}) ORDER BY priority, pk LIMIT ?",
                        (*workflows, limit - len(pks)),
                    )
                ]
            for pk, status in conn.execute(
                f"SELECT pk, status FROM instances WHERE status IN (?, ?) AND lease_until < ?"
                f" AND workflow IN ({names}) LIMIT ?",
                (RUNNING, WAITING_FOR_PAUSE, expired_before, *workflows, limit),
            ).fetchall():
                if status == WAITING_FOR_PAUSE:  # its worker died mid-step: the pause completes now
                    conn.execute(
                        "UPDATE instances SET status = ?, paused_at = ?, owner = NULL, lease_until = NULL,"
                        " epoch = epoch + 1 WHERE pk = ?",
                        (PAUSED, now, pk),
                    )
                    _history(conn, pk, "WORKFLOW_PAUSED", now)
                elif len(pks) < limit:
                    pks.append(pk)
            claimed = []
            for pk in pks:
                row = conn.execute(
                    "UPDATE instances SET status = ?, owner = ?, lease_until = ?, epoch = epoch + 1,"
                    " wake_requested = 0, wake_at = NULL, wait_types = NULL,"
                    # never before its creation: a claim may read the clock just before a
                    # create that the same group commit then writes first
                    " started_at = COALESCE(started_at, MAX(?, created_at))"
                    f" WHERE pk = ? RETURNING {INSTANCE_COLUMNS}",
                    (RUNNING, owner, lease_until, now, pk),
                ).fetchone()
                record = instance_from_row(row)
                if record.started_at == max(now, record.created_at):
                    _history(conn, pk, "WORKFLOW_START", record.started_at)
                claimed.append(record)
            run_now(resume_claimed(_Tx(conn), SQLITE, claimed, kept, now))
            return claimed

        result: list[InstanceRecord] = await self._write(op)
        return result

    async def renew_leases(self, owner: str, pks: list[int], lease_until: float) -> set[int]:
        def op(conn: sqlite3.Connection) -> set[int]:
            renewed: set[int] = set()
            for start in range(0, len(pks), 500):  # SQLite's limit on bound parameters
                chunk = pks[start : start + 500]
                rows = conn.execute(
                    f"UPDATE instances SET lease_until = ? WHERE owner = ? AND pk IN ({','.join('?' * len(chunk))})"
                    " RETURNING pk",
                    (lease_until, owner, *chunk),
                ).fetchall()
                renewed.update(int(pk) for (pk,) in rows)
            return renewed

        result: set[int] = await self._write(op)
        return result

    async def expire_leases(self, owners: list[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for owner in owners:
                conn.execute("UPDATE instances SET lease_until = 0 WHERE owner = ?", (owner,))

        await self._write(op)

    async def save_step(self, pk: int, epoch: int, step: StepRecord, *, durable: bool = True) -> str:
        def op(conn: sqlite3.Connection) -> str:
            status = _fence(conn, pk, epoch)
            # Encoded at commit time, on the loop thread: a write that waited in the batch
            # stores the step's newest state, which is what a later write would store anyway.
            conn.execute(_UPSERT_STEP, step_row(pk, step))
            return status

        key = (pk, step.kind, step.name, step.count)
        if not durable:
            self._writer.write_nowait(op, key=key)
            return ""
        result: str = await self._write(op, key=key)
        return result

    async def take_event(
        self, pk: int, epoch: int, step: StepRecord, event_type: str, now: float
    ) -> dict[str, Any] | None:
        ahead = self._prefetched.pop(pk, epoch, event_type)
        if ahead is not None:  # read ahead by an earlier take: consumed in the next commit
            event_pk, event = ahead
            step.status, step.result, step.ended_at, step.wake_at = COMPLETE, event, now, None

            def consume(conn: sqlite3.Connection) -> None:
                _fence(conn, pk, epoch)
                _consume_event(conn, pk, step, event_pk)

            self._writer.write_nowait(consume)
            return event

        def op(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
            _fence(conn, pk, epoch)
            rows = conn.execute(
                "SELECT pk, payload, created_at FROM events WHERE instance_pk = ? AND type = ?"
                " AND consumed_by IS NULL ORDER BY pk LIMIT ?",
                (pk, event_type, 1 + AHEAD),
            ).fetchall()
            if not rows:
                conn.execute(_UPSERT_STEP, step_row(pk, step))
                return None, []
            found = [(r[0], {"type": event_type, "payload": json.loads(r[1]), "timestamp": r[2]}) for r in rows]
            event_pk, event = found[0]
            step.status, step.result, step.ended_at, step.wake_at = COMPLETE, event, now, None
            _consume_event(conn, pk, step, event_pk)
            return event, found[1:]

        event, rest = await self._write(op)
        self._prefetched.fill(pk, epoch, event_type, rest)
        return event  # type: ignore[no-any-return]

    async def suspend(self, pk: int, epoch: int, wake_at: float | None, wait_types: list[str], now: float) -> str:
        self._prefetched.forget(pk)

        def op(conn: sqlite3.Connection) -> str:
            _fence(conn, pk, epoch)
            row = conn.execute("SELECT status, wake_requested FROM instances WHERE pk = ?", (pk,)).fetchone()
            status, wake_requested = row
            if status == WAITING_FOR_PAUSE:
                new_status, paused_at, due = PAUSED, now, wake_at
            else:
                new_status, paused_at = WAITING, None
                due = now if (wake_requested and wait_types) or wake_at is None else wake_at
            conn.execute(
                "UPDATE instances SET status = ?, wake_at = ?, wait_types = ?, paused_at = ?, owner = NULL,"
                " lease_until = NULL WHERE pk = ?",
                (new_status, due, ",".join(wait_types) or None, paused_at, pk),
            )
            if new_status == PAUSED:
                _history(conn, pk, "WORKFLOW_PAUSED", now)
            return new_status

        result: str = await self._write(op)
        return result

    async def release(self, pk: int, epoch: int, now: float) -> None:
        self._prefetched.forget(pk)

        def op(conn: sqlite3.Connection) -> None:
            status = _fence(conn, pk, epoch)
            if status not in (RUNNING, WAITING_FOR_PAUSE):  # it finished or suspended meanwhile
                return
            if status == WAITING_FOR_PAUSE:
                new_status, due, paused_at = PAUSED, None, now
            else:  # due at once, and ahead of queued instances: it was already running
                new_status, due, paused_at = WAITING, 0.0, None
            conn.execute(
                "UPDATE instances SET status = ?, wake_at = ?, paused_at = ?, owner = NULL, lease_until = NULL"
                " WHERE pk = ?",
                (new_status, due, paused_at, pk),
            )
            if new_status == PAUSED:
                _history(conn, pk, "WORKFLOW_PAUSED", now)

        await self._write(op)

    async def finish(
        self, pk: int, epoch: int, status: str, output_json: str | None, error: dict[str, str] | None, now: float
    ) -> None:
        self._prefetched.forget(pk)

        def op(conn: sqlite3.Connection) -> None:
            finished = conn.execute(  # fenced by its WHERE: one statement, not a SELECT first
                "UPDATE instances SET status = ?, output = ?, error = ?, ended_at = ?, owner = NULL,"
                " lease_until = NULL, wake_at = NULL, wait_types = NULL, terminating = NULL,"
                f" expires_at = ? + {EXPIRES} WHERE pk = ? AND epoch = ?",
                (status, output_json, dumps(error), now, now, status, pk, epoch),
            )
            if finished.rowcount != 1:  # nothing changed yet: the error needs no rollback
                raise Fenced(f"instance {pk} moved past epoch {epoch}")
            kind, data = finish_history(status, output_json, error)
            _history(conn, pk, kind, now, data)

        await self._write(op)

    # -- change detection ------------------------------------------------------------------------
    async def changed(self) -> bool:
        (version,) = self._fetch("PRAGMA data_version")[0]
        changed = bool(version != self._data_version)
        self._data_version = version
        return changed
