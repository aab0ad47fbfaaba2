"""The embedded SQLite backend: one file, zero set-up.

Writes go through **one writer thread** that owns the only writing connection. It drains every
write that is waiting, runs them in one transaction (each inside a savepoint, so one failing
write does not undo the others) and commits once: many instances' step results share one fsync
(group commit). A caller awaiting a write resumes only after its commit, so a step result is
durable before its workflow moves on. Reads use a separate connection in WAL mode, so they never
wait for the writer. Other processes (a web server, the CLI) may open the same file; SQLite's
file locks serialise their writers with ours.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    PerdureError,
    ValidationError,
)
from .base import (
    COMPLETE,
    PAUSED,
    QUEUED,
    RUNNING,
    TERMINAL,
    TERMINATED,
    WAITING,
    WAITING_FOR_PAUSE,
    Fenced,
    InstanceRecord,
    NewInstance,
    Page,
    StepRecord,
    Store,
    WorkflowRecord,
)
from .rows import (
    INSTANCE_COLUMNS,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    WORKFLOW_UPSERT,
    dumps,
    instance_from_row,
    loads,
    prefix_bounds,
    step_from_row,
    step_row,
    workflow_from_row,
    workflow_rows,
)

# The layout is created in place (``IF NOT EXISTS``): a file from an older version gains the
# tables it lacks when opened. 2 added ``workflows``; the prefix search of instance ids needs no
# index of its own, since the UNIQUE (workflow, id) index is in binary order. 3 added
# ``instance_counts`` and the triggers that keep it (see _COUNTS below; created apart from
# _SCHEMA, because a file that predates them needs its counts taken in the same transaction).
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS perdure_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    pk INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    trigger TEXT NOT NULL,
    schedule TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    output TEXT,
    error TEXT,
    wake_at REAL,
    wait_types TEXT,
    wake_requested INTEGER NOT NULL DEFAULT 0,
    paused_at REAL,
    epoch INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    UNIQUE (workflow, id)
);
CREATE INDEX IF NOT EXISTS ix_instances_runnable ON instances (status, wake_at);
CREATE INDEX IF NOT EXISTS ix_instances_list ON instances (workflow, status, pk);
CREATE INDEX IF NOT EXISTS ix_instances_newest ON instances (workflow, pk);
CREATE INDEX IF NOT EXISTS ix_instances_owner ON instances (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    count INTEGER NOT NULL,
    status TEXT NOT NULL,
    config TEXT,
    attempts TEXT NOT NULL,
    result TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    wake_at REAL,
    UNIQUE (instance_pk, kind, name, count)
);
CREATE TABLE IF NOT EXISTS events (
    pk INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    consumed_by INTEGER
);
CREATE INDEX IF NOT EXISTS ix_events_pending ON events (instance_pk, type, consumed_by, pk);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS ix_history_instance ON history (instance_pk, seq);
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT PRIMARY KEY,
    class_name TEXT NOT NULL,
    schedules TEXT NOT NULL,
    step_limit INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

# The number of instances of each (workflow, status), kept by triggers on instances, so that
# count_by_status reads a few rows instead of an index of every instance. SQLite has one writer
# at a time, so one row per (workflow, status) updated in place costs no contention. The
# triggers live in the file: every writer keeps the counts, an older Perdure's too. Rows whose
# n fell to 0 stay (they are read past). The update trigger also covers a change of workflow,
# which the store never makes. One kind of write escapes triggers: the rows an INSERT OR
# REPLACE deletes, unless recursive_triggers is on, which _connect turns on (the store never
# replaces instances; a tool that does so on its own connection would skew the counts).
_COUNT_TRIGGERS = ("instance_counts_insert", "instance_counts_update", "instance_counts_delete")
_ADD = (
    "INSERT INTO instance_counts (workflow, status, n) VALUES ({wf}, {st}, {n})"
    " ON CONFLICT (workflow, status) DO UPDATE SET n = n + excluded.n;"
)
_COUNTS = (
    """CREATE TABLE IF NOT EXISTS instance_counts (
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (workflow, status)
) WITHOUT ROWID""",
    "CREATE TRIGGER instance_counts_insert AFTER INSERT ON instances BEGIN "
    + _ADD.format(wf="NEW.workflow", st="NEW.status", n=1)
    + " END",
    "CREATE TRIGGER instance_counts_update AFTER UPDATE OF workflow, status ON instances"
    " WHEN OLD.status IS NOT NEW.status OR OLD.workflow IS NOT NEW.workflow BEGIN "
    + _ADD.format(wf="OLD.workflow", st="OLD.status", n=-1)
    + " "
    + _ADD.format(wf="NEW.workflow", st="NEW.status", n=1)
    + " END",
    "CREATE TRIGGER instance_counts_delete AFTER DELETE ON instances BEGIN "
    + _ADD.format(wf="OLD.workflow", st="OLD.status", n=-1)
    + " END",
)


def _ensure_counts(conn: sqlite3.Connection) -> None:
    """Create the counts and their triggers if the file lacks them, counting the instances it
    has. Run inside a write transaction: no other writer (of this process or another) can
    change an instance between the count and the triggers taking over."""
    present = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'instances'")
    }
    if present.issuperset(_COUNT_TRIGGERS):
        return
    for name in _COUNT_TRIGGERS:  # a partial set (never made by Perdure): start over
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute(_COUNTS[0])
    conn.execute("DELETE FROM instance_counts")
    conn.execute(
        "INSERT INTO instance_counts (workflow, status, n)"
        " SELECT workflow, status, COUNT(*) FROM instances GROUP BY workflow, status"
    )
    for trigger in _COUNTS[1:]:
        conn.execute(trigger)


def _history(conn: sqlite3.Connection, pk: int, type_: str, ts: float, data: Any = None) -> None:
    conn.execute("INSERT INTO history (instance_pk, type, ts, data) VALUES (?, ?, ?, ?)", (pk, type_, ts, dumps(data)))


def _row(conn: sqlite3.Connection, columns: str, pk: int) -> tuple[Any, ...]:
    """Columns of one instance, for a control call; an unknown pk is InstanceNotFoundError."""
    row = conn.execute(f"SELECT {columns} FROM instances WHERE pk = ?", (pk,)).fetchone()
    if row is None:
        raise InstanceNotFoundError(f"no instance with internal id {pk}")
    return tuple(row)


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


class _Op:
    """One write waiting for the next commit.

    ``atomic`` asks for a savepoint, for a write that may fail after it changed something.
    ``key`` names what the write replaces: of several writes with one key in a batch, only the
    last one needs to run when the earlier ones have nobody waiting on them.
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


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _Unexpected(Exception):
    """A write failed in a way that may have left part of it behind."""


class SQLiteStore(Store):
    """SQLite in WAL mode with group commit on the event loop.

    Writes are queued; the first one queued in a loop iteration schedules a *flush* for right
    after the coroutines that are ready now have run, so every write they make joins one
    transaction and one commit. The flush runs on the event loop thread: handing work to a
    thread and back costs about 250 µs on a small VM, more than the commit itself.

    ``durability="full"`` (the default) fsyncs every commit, so a finished step survives power
    loss; ``"normal"`` survives a crash of the process but not of the machine, and is faster.
    """

    def __init__(self, path: str, *, durability: str = "full", busy_timeout_ms: int = 10_000) -> None:
        if durability not in ("full", "normal"):
            raise ValidationError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = path
        self.url = f"sqlite:///{path}"
        self.durability = durability
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._pending: list[tuple[_Op, asyncio.AbstractEventLoop | None]] = []
        self._flush_scheduled = False
        self._lazy_flush: asyncio.TimerHandle | None = None
        self._data_version: int | None = None
        self.lazy_delay = 0.005
        self.batches = 0  # commits made, and the writes they carried
        self.batched_ops = 0

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

    def _open_sync(self) -> None:
        with self._lock:
            if self._writer is not None:
                return
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.executescript(_SCHEMA)  # each statement on its own (executescript commits first)
                conn.execute("BEGIN IMMEDIATE")
                _ensure_counts(conn)
                conn.execute(  # the newest layout the file has had (an older Perdure may open it too)
                    "INSERT INTO perdure_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE"
                    " SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                    (str(SCHEMA_VERSION),),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
                raise
            self._writer = conn
            self._reader = self._connect()

    async def open(self) -> None:
        self._open_sync()

    async def close(self) -> None:
        with self._lock:
            if self._writer is None:
                return
            self._flush()
            assert self._writer is not None and self._reader is not None
            self._writer.close()
            self._reader.close()
            self._writer = self._reader = None

    # -- the writer ------------------------------------------------------------------------------
    def _submit(self, op: _Op, *, lazy: bool = False) -> None:
        if self._writer is None:
            self._open_sync()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append((op, loop))
            if loop is None:
                self._flush()
            elif not lazy and not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
            elif lazy and self._lazy_flush is None and not self._flush_scheduled:
                # Nobody waits on this write (an attempt start): if a write that must commit
                # comes soon, this one rides along, or is skipped when that write replaces it.
                self._lazy_flush = loop.call_later(self.lazy_delay, self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if self._lazy_flush is not None:
                self._lazy_flush.cancel()
                self._lazy_flush = None
            pending, self._pending = self._pending, []
            if not pending or self._writer is None:
                return
            last = {op.key: i for i, (op, _) in enumerate(pending) if op.key is not None}
            pending = [
                (op, loop)
                for i, (op, loop) in enumerate(pending)
                if op.key is None or op.future is not None or last[op.key] == i
            ]
            ops = [op for op, _ in pending]
            try:
                outcomes = self._execute(self._writer, ops, savepoints=False)
            except _Unexpected:  # something failed half-way: redo the batch, each write on its own
                outcomes = self._execute(self._writer, ops, savepoints=True)
            except Exception as exc:  # the commit itself failed: nobody's write is durable
                outcomes = [(None, exc) for _ in ops]
            self.batches += 1
            self.batched_ops += len(ops)
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for (op, loop), (value, error) in zip(pending, outcomes, strict=True):
            if op.future is None or loop is None:
                continue
            if loop is current:
                _settle(op.future, value, error)
            else:
                try:
                    loop.call_soon_threadsafe(_settle, op.future, value, error)
                except RuntimeError:  # that loop is closed; nobody is waiting any more
                    pass

    def _execute(
        self, conn: sqlite3.Connection, ops: list[_Op], *, savepoints: bool
    ) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = []
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
                        raise _Unexpected from exc
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

    async def _write(self, fn: Callable[..., Any], *args: Any, atomic: bool = False, key: Any = None) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Op(fn, args, future, atomic, key))
        return await future

    def _write_nowait(self, fn: Callable[..., Any], *args: Any, key: Any = None) -> None:
        self._submit(_Op(fn, args, None, False, key), lazy=True)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._reader is None:
            self._open_sync()
        assert self._reader is not None
        with self._lock:
            return self._reader.execute(sql, params).fetchall()

    # -- instances -------------------------------------------------------------------------------
    async def create_instances(
        self, workflow: str, items: list[NewInstance], now: float, *, skip_existing: bool
    ) -> list[InstanceRecord]:
        def op(conn: sqlite3.Connection) -> list[InstanceRecord]:
            created = []
            for item in items:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO instances (workflow, id, status, params, trigger, schedule, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (workflow, item.id, QUEUED, item.params_json, item.trigger, dumps(item.schedule), now),
                )
                if cur.rowcount == 0:
                    if skip_existing:
                        continue
                    raise InstanceAlreadyExistsError(
                        f"an instance with id {item.id!r} already exists in workflow {workflow!r}"
                    )
                pk = int(cur.lastrowid or 0)
                _history(conn, pk, "WORKFLOW_QUEUED", now, {"trigger": item.trigger})
                created.append(
                    InstanceRecord(
                        pk=pk,
                        workflow=workflow,
                        id=item.id,
                        status=QUEUED,
                        params=json.loads(item.params_json),
                        trigger=item.trigger,
                        created_at=now,
                        schedule=item.schedule,
                    )
                )
            return created

        result: list[InstanceRecord] = await self._write(op, atomic=True)
        return result

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord | None:
        rows = self._read(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE workflow = ? AND id = ?", (workflow, instance_id)
        )
        return instance_from_row(rows[0]) if rows else None

    async def get_by_pk(self, pk: int) -> InstanceRecord | None:
        rows = self._read(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE pk = ?", (pk,))
        return instance_from_row(rows[0]) if rows else None

    async def list_instances(
        self,
        workflow: str,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        id_prefix: str | None = None,
    ) -> Page:
        # With a prefix, the range of ids on the UNIQUE (workflow, id) index (binary-collated),
        # then a sort of the matches by pk. The unary + keeps the planner off the (workflow,
        # pk) and (workflow, status, pk) indexes, which it prefers without statistics and which
        # would read every instance of the workflow to find a few ids.
        plus = "+" if id_prefix else ""
        where, params = f"workflow = ? AND {plus}pk < ?", [workflow, int(cursor) if cursor else 2**62]
        if status:
            where += f" AND {plus}status = ?"
            params.append(status)
        if id_prefix:
            where += " AND id >= ? AND id < ?"
            params.extend(prefix_bounds(id_prefix))
        rows = self._read(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {where} ORDER BY pk DESC LIMIT ?", (*params, limit + 1)
        )
        items = [instance_from_row(r) for r in rows[:limit]]
        next_cursor = str(items[-1].pk) if len(rows) > limit and items else None
        return Page(items, next_cursor)

    async def count_by_status(self, workflow: str | None = None) -> dict[str, dict[str, int]]:
        """Read from ``instance_counts``, which the triggers keep (see _COUNTS)."""
        if workflow is None:
            rows = self._read("SELECT workflow, status, n FROM instance_counts WHERE n != 0")
        else:
            rows = self._read(
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
                f"INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) {WORKFLOW_UPSERT}", rows
            )

        if rows:
            await self._write(op)

    async def known_workflows(self) -> list[WorkflowRecord]:
        return [workflow_from_row(r) for r in self._read(f"SELECT {WORKFLOW_COLUMNS} FROM workflows ORDER BY name")]

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
    ) -> list[InstanceRecord]:
        if not workflows:
            return []
        expired_before = now if lease_now is None else lease_now
        names = ",".join("?" * len(workflows))

        def op(conn: sqlite3.Connection) -> list[InstanceRecord]:
            pks = [
                r[0]
                for r in conn.execute(
                    f"SELECT pk FROM instances WHERE status = ? AND wake_at <= ? AND workflow IN ({names})"
                    " ORDER BY wake_at LIMIT ?",
                    (WAITING, now, *workflows, limit),
                )
            ]
            if len(pks) < limit:
                pks += [
                    r[0]
                    for r in conn.execute(
                        f"SELECT pk FROM instances WHERE status = ? AND workflow IN ({names}) ORDER BY pk LIMIT ?",
                        (QUEUED, *workflows, limit - len(pks)),
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
            return claimed

        result: list[InstanceRecord] = await self._write(op)
        return result

    async def renew_leases(self, owner: str, pks: list[int], lease_until: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE instances SET lease_until = ? WHERE owner = ? AND pk = ?",
                [(lease_until, owner, pk) for pk in pks],
            )

        await self._write(op)

    async def expire_leases(self, owners: list[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for owner in owners:
                conn.execute("UPDATE instances SET lease_until = 0 WHERE owner = ?", (owner,))

        await self._write(op)

    async def owners(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT owner FROM instances WHERE owner IS NOT NULL")]

    async def load_steps(self, pk: int) -> list[StepRecord]:
        rows = self._read(f"SELECT {STEP_COLUMNS} FROM steps WHERE instance_pk = ? ORDER BY seq", (pk,))
        return [step_from_row(r) for r in rows]

    async def save_step(self, pk: int, epoch: int, step: StepRecord, *, durable: bool = True) -> str:
        def op(conn: sqlite3.Connection) -> str:
            status = _fence(conn, pk, epoch)
            # Encoded at commit time, on the loop thread: a write that waited in the batch
            # stores the step's newest state, which is what a later write would store anyway.
            conn.execute(_UPSERT_STEP, step_row(pk, step))
            return status

        key = (pk, step.kind, step.name, step.count)
        if not durable:
            self._write_nowait(op, key=key)
            return ""
        result: str = await self._write(op, key=key)
        return result

    async def take_event(
        self, pk: int, epoch: int, step: StepRecord, event_type: str, now: float
    ) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            _fence(conn, pk, epoch)
            row = conn.execute(
                "SELECT pk, payload, created_at FROM events WHERE instance_pk = ? AND type = ?"
                " AND consumed_by IS NULL ORDER BY pk LIMIT 1",
                (pk, event_type),
            ).fetchone()
            event = None
            if row is not None:
                event = {"type": event_type, "payload": json.loads(row[1]), "timestamp": row[2]}
                step.status, step.result, step.ended_at, step.wake_at = COMPLETE, event, now, None
            conn.execute(_UPSERT_STEP, step_row(pk, step))
            if row is not None:
                seq = conn.execute(
                    "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? AND count = ?",
                    (pk, step.kind, step.name, step.count),
                ).fetchone()[0]
                conn.execute("UPDATE events SET consumed_by = ? WHERE pk = ?", (seq, row[0]))
            return event

        result: dict[str, Any] | None = await self._write(op)
        return result

    async def suspend(self, pk: int, epoch: int, wake_at: float | None, wait_types: list[str], now: float) -> str:
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
            return new_status

        result: str = await self._write(op)
        return result

    async def release(self, pk: int, epoch: int, now: float) -> None:
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

        await self._write(op)

    async def finish(
        self, pk: int, epoch: int, status: str, output_json: str | None, error: dict[str, str] | None, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _fence(conn, pk, epoch)
            conn.execute(
                "UPDATE instances SET status = ?, output = ?, error = ?, ended_at = ?, owner = NULL,"
                " lease_until = NULL, wake_at = NULL, wait_types = NULL WHERE pk = ?",
                (status, output_json, dumps(error), now, pk),
            )
            if status == COMPLETE:
                _history(conn, pk, "WORKFLOW_SUCCESS", now, {"output": loads(output_json)})
            else:
                _history(conn, pk, "WORKFLOW_FAILURE", now, {"error": error})

        await self._write(op)

    async def owned(self, owner: str) -> dict[int, tuple[int, str]]:
        rows = self._read("SELECT pk, epoch, status FROM instances WHERE owner = ?", (owner,))
        return {pk: (epoch, status) for pk, epoch, status in rows}

    # -- control ---------------------------------------------------------------------------------
    async def pause(self, pk: int, now: float) -> str:
        def op(conn: sqlite3.Connection) -> str:
            (status,) = _row(conn, "status", pk)
            if status == RUNNING:
                status = WAITING_FOR_PAUSE
                conn.execute("UPDATE instances SET status = ? WHERE pk = ?", (status, pk))
            elif status in (QUEUED, WAITING):
                status = PAUSED
                conn.execute("UPDATE instances SET status = ?, paused_at = ? WHERE pk = ?", (status, now, pk))
            return str(status)

        result: str = await self._write(op)
        return result

    async def resume(self, pk: int, now: float) -> str:
        def op(conn: sqlite3.Connection) -> str:
            status, wake_at, paused_at, wake_requested = _row(conn, "status, wake_at, paused_at, wake_requested", pk)
            if status == WAITING_FOR_PAUSE:
                status = RUNNING
                conn.execute("UPDATE instances SET status = ? WHERE pk = ?", (status, pk))
            elif status == PAUSED:
                paused_for = max(0.0, now - (paused_at or now))
                # Timers do not run while paused: every pending deadline moves by the paused time.
                conn.execute(
                    "UPDATE steps SET wake_at = wake_at + ? WHERE instance_pk = ? AND wake_at IS NOT NULL"
                    " AND status IN ('waiting', 'retrying')",
                    (paused_for, pk),
                )
                if wake_at is None:
                    status, due = QUEUED, None
                else:
                    status, due = WAITING, (now if wake_requested else wake_at + paused_for)
                conn.execute(
                    "UPDATE instances SET status = ?, wake_at = ?, paused_at = NULL WHERE pk = ?", (status, due, pk)
                )
            return str(status)

        result: str = await self._write(op)
        return result

    async def terminate(self, pk: int, now: float) -> str:
        def op(conn: sqlite3.Connection) -> str:
            (status,) = _row(conn, "status", pk)
            if status in TERMINAL:
                raise InvalidStateError(f"cannot terminate an instance that is already {status}")
            conn.execute(
                "UPDATE instances SET status = ?, ended_at = ?, epoch = epoch + 1, owner = NULL, lease_until = NULL,"
                " wake_at = NULL, wait_types = NULL WHERE pk = ?",
                (TERMINATED, now, pk),
            )
            _history(conn, pk, "WORKFLOW_TERMINATED", now)
            return TERMINATED

        result: str = await self._write(op)
        return result

    async def restart(self, pk: int, now: float, from_step: tuple[str, str, int] | None) -> str:
        def op(conn: sqlite3.Connection) -> str:
            if from_step is None:
                conn.execute("DELETE FROM steps WHERE instance_pk = ?", (pk,))
                conn.execute("UPDATE events SET consumed_by = NULL WHERE instance_pk = ?", (pk,))
                conn.execute("DELETE FROM history WHERE instance_pk = ?", (pk,))
                started = None
            else:
                kind, name, count = from_step
                row = conn.execute(
                    "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? AND count = ?",
                    (pk, kind, name, count),
                ).fetchone()
                if row is None:
                    raise ValidationError(f"restart from_step: this instance has no {kind} step {name!r} #{count}")
                conn.execute("DELETE FROM steps WHERE instance_pk = ? AND seq >= ?", (pk, row[0]))
                conn.execute(
                    "UPDATE events SET consumed_by = NULL WHERE instance_pk = ? AND consumed_by >= ?", (pk, row[0])
                )
                started = conn.execute("SELECT started_at FROM instances WHERE pk = ?", (pk,)).fetchone()[0]
            conn.execute(
                "UPDATE instances SET status = ?, epoch = epoch + 1, owner = NULL, lease_until = NULL, output = NULL,"
                " error = NULL, ended_at = NULL, wake_at = NULL, wait_types = NULL, paused_at = NULL,"
                " wake_requested = 0, started_at = ? WHERE pk = ?",
                (QUEUED, started, pk),
            )
            _history(
                conn, pk, "WORKFLOW_QUEUED", now, {"trigger": "restart", "from_step": list(from_step or []) or None}
            )
            return QUEUED

        result: str = await self._write(op)
        return result

    async def send_event(self, pk: int, event_type: str, payload_json: str, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            status, wait_types = _row(conn, "status, wait_types", pk)
            if status in TERMINAL:
                raise InvalidStateError(f"cannot send an event to an instance that is {status}")
            conn.execute(
                "INSERT INTO events (instance_pk, type, payload, created_at) VALUES (?, ?, ?, ?)",
                (pk, event_type, payload_json, now),
            )
            waiting_for_it = status == WAITING and event_type in (wait_types or "").split(",")
            conn.execute(
                "UPDATE instances SET wake_requested = 1, wake_at = CASE WHEN ? THEN ? ELSE wake_at END WHERE pk = ?",
                (waiting_for_it, now, pk),
            )

        await self._write(op)

    # -- timers, history, change detection -------------------------------------------------------
    async def next_wake_at(self, workflows: list[str] | None = None) -> float | None:
        if workflows is None:
            rows = self._read("SELECT MIN(wake_at) FROM instances WHERE status = ?", (WAITING,))
        else:
            names = ",".join("?" * len(workflows))
            rows = self._read(
                f"SELECT MIN(wake_at) FROM instances WHERE status = ? AND workflow IN ({names})", (WAITING, *workflows)
            )
        return rows[0][0] if rows else None

    async def history(self, pk: int) -> list[dict[str, Any]]:
        rows = self._read("SELECT type, ts, data FROM history WHERE instance_pk = ? ORDER BY seq", (pk,))
        return [{"type": t, "timestamp": ts, "data": loads(d)} for t, ts, d in rows]

    async def changed(self) -> bool:
        (version,) = self._read("PRAGMA data_version")[0]
        changed = bool(version != self._data_version)
        self._data_version = version
        return changed
