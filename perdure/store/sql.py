"""What the SQL backends share: one dialect of SQL text, one transaction interface, and every
operation whose logic does not depend on the database, written once.

The statements here are written in PostgreSQL's spelling with three holes a :class:`Dialect`
fills: ``{s}.`` (the schema, or nothing on SQLite), ``{lock}`` (``FOR UPDATE``, or nothing:
SQLite's writer holds the whole database) and ``{skip_locked}``; ``%s`` and ``%(name)s``
placeholders become ``?`` and ``:name`` on SQLite. An operation is a coroutine over a
:class:`Tx`; on SQLite it never suspends (the connection is synchronous), so the writer runs
it to completion inside its batch (:func:`run_now`).

:class:`SQLStore` implements the plain reads, the control state machine (pause, resume,
terminate, restart, send_event) and the durable queues on top of three hooks a backend
provides: :meth:`~SQLStore._read`, :meth:`~SQLStore._control` (a control call's transaction)
and :meth:`~SQLStore._queue_write`. The hot paths that rightly differ (claim, batched step
saves, suspend and finish, creation, counts) stay in each backend.
"""

from __future__ import annotations

import abc
import functools
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from ..errors import Fenced, InstanceNotFoundError, InvalidStateError, ValidationError
from ..records import (
    PAUSED,
    QUEUED,
    RUNNING,
    TERMINAL,
    TERMINATED,
    TERMINATED_ERROR,
    WAITING,
    WAITING_FOR_PAUSE,
    DeadLetter,
    HistoryRow,
    InstanceRecord,
    Page,
    QueueDepth,
    QueueMessage,
    StepRecord,
    WorkflowRecord,
)
from .flow import FlowOps
from .housekeeping import Housekeeping
from .rows import (
    INSTANCE_COLUMNS,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    attach_steps,
    dumps,
    instance_from_row,
    loads,
    prefix_bounds,
    step_from_row,
    workflow_from_row,
)

T = TypeVar("T")
Row = tuple[Any, ...]
_NAMED = re.compile(r"%\((\w+)\)s")


class Dialect:
    """How one backend spells the holes of the shared statements (see the module doc)."""

    def __init__(self, *, schema: str | None, lock: str, skip_locked: str, collate_binary: str, plan_hint: str) -> None:
        self.schema = schema  # quoted, or None for no schema prefix
        self.lock = lock
        self.skip_locked = skip_locked
        self.collate_binary = collate_binary  # makes `id >= x` compare code points, as the index does
        self.plan_hint = plan_hint  # a unary + that keeps SQLite's planner on the id index
        self._cache: dict[str, str] = {}

    def q(self, text: str) -> str:
        """``text`` in this dialect (cached: the statements are a small, fixed set)."""
        query = self._cache.get(text)
        if query is None:
            query = text.replace("{lock}", self.lock).replace("{skip_locked}", self.skip_locked)
            if self.schema is None:
                query = query.replace("{s}.", "")
                query = _NAMED.sub(r":\1", query).replace("%s", "?").replace("%%", "%")
            else:
                query = query.replace("{s}", self.schema)
            self._cache[text] = query
        return query

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """``column IN (...)`` and its parameters: one placeholder a value on SQLite, one array
        on PostgreSQL (one statement text, whatever the number)."""
        if self.schema is None:
            return f"{column} IN ({','.join(['%s'] * len(values))})", tuple(values)
        return f"{column} = ANY(%s)", (list(values),)


SQLITE = Dialect(schema=None, lock="", skip_locked="", collate_binary="", plan_hint="+")


def postgres_dialect(quoted_schema: str) -> Dialect:
    return Dialect(
        schema=quoted_schema,
        lock=" FOR UPDATE",
        skip_locked=" FOR UPDATE SKIP LOCKED",
        collate_binary=' COLLATE "C"',
        plan_hint="",
    )


class Tx(abc.ABC):
    """One open transaction, whatever the backend; statements are in the shared spelling."""

    @abc.abstractmethod
    async def all(self, sql: str, params: Any = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def run(self, sql: str, params: Any = ()) -> int:
        """Execute; the number of rows it changed."""

    async def one(self, sql: str, params: Any = ()) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def notify(self) -> None:  # noqa: B027 - a no-op where nobody listens
        """Tell other processes' workers to look again, when the transaction commits."""


async def resume_claimed(
    tx: Tx, dialect: Dialect, claimed: Sequence[InstanceRecord], kept: Collection[int], now: float
) -> None:
    """The rest of a claim, for the instances it took, in its transaction (both backends):

    * the sleeps they wake from (deadline passed) end now, in one statement, as their replays
      would one write each (``Step._sleep``), which then find them complete (a paused
      instance's deadlines moved when it resumed);
    * each gets its stored steps (``record.steps``), read in one query instead of one per
      replay, except those in ``kept``: histories the engine holds itself."""
    if not claimed:
        return
    where, pks = dialect.in_list("instance_pk", [record.pk for record in claimed])
    await tx.run(
        "UPDATE {s}.steps SET status = 'complete', ended_at = %s, wake_at = NULL"
        f" WHERE kind = 'sleep' AND status = 'waiting' AND wake_at <= %s AND {where}",
        (now, now, *pks),
    )
    unread = [record for record in claimed if record.pk not in kept]
    if unread:
        where, pks = dialect.in_list("instance_pk", [record.pk for record in unread])
        rows = await tx.all(
            f"SELECT instance_pk, {STEP_COLUMNS} FROM {{s}}.steps WHERE {where} ORDER BY instance_pk, seq", pks
        )
        attach_steps(unread, rows)


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a shared operation over a synchronous connection to its end, in this call.

    Its awaits are on a :class:`Tx` whose methods finish at once, so the coroutine never
    suspends; one that does is a bug (it would stall the SQLite writer), and is refused."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a SQLite store operation suspended; it must not await anything but its Tx")


_SEND_CHUNK = 500  # messages a statement (SQLite allows < 32,766 values; 4 a message)


@functools.lru_cache(maxsize=64)
def _send_statement(rows: int) -> str:
    """The multi-row INSERT of ``rows`` queue messages (cached: a batch size repeats)."""
    return (
        "INSERT INTO {s}.perdure_queue_messages (queue, body, attempts, created_at, visible_at) VALUES "
        + ", ".join(["(%s, %s, 0, %s, %s)"] * rows)
        + " RETURNING id"
    )


def _cursor_pk(cursor: str | None) -> int:
    """The pk a page cursor continues below (cursors are the last pk of the previous page)."""
    if not cursor:
        return 2**62
    try:
        pk = int(cursor)
    except ValueError:
        raise ValidationError(f"page cursor {cursor[:40]!r} is not a number") from None
    if not 0 < pk <= 2**62:
        raise ValidationError(f"page cursor {cursor[:40]!r} is out of range")
    return pk


async def lock_instance(tx: Tx, pk: int, columns: str) -> Row:
    """Lock an instance's row for a control call and read ``columns``; unknown: not found."""
    row = await tx.one(f"SELECT {columns} FROM {{s}}.instances WHERE pk = %s{{lock}}", (pk,))
    if row is None:
        raise InstanceNotFoundError(f"no instance with internal id {pk}")
    return row


async def add_history(tx: Tx, pk: int, type_: str, ts: float, data: Any = None) -> None:
    await tx.run(
        "INSERT INTO {s}.history (instance_pk, type, ts, data) VALUES (%s, %s, %s, %s)", (pk, type_, ts, dumps(data))
    )


class SQLStore(Housekeeping, FlowOps):
    """A :class:`~perdure.store.base.Store` over SQL: the shared operations (module doc)."""

    dialect: Dialect

    # -- the hooks a backend provides ------------------------------------------------------------
    @abc.abstractmethod
    async def _read(self, sql: str, params: Any = ()) -> list[Row]:
        """Run one query (shared spelling) outside any write; its rows."""

    @abc.abstractmethod
    async def _control(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run a control call's ``op`` in a transaction and commit it. A ``PerdureError`` it
        raises before writing is raised to the caller and leaves nothing behind."""

    async def _queue_write(self, op: Callable[[Tx], Awaitable[T]], *, single: bool = False) -> T:
        """Run a queue's ``op`` (a few statements, atomic; ``single``: exactly one statement,
        which needs no transaction block); by default like a control call."""
        return await self._control(op)

    # -- plain reads -------------------------------------------------------------------------------
    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord | None:
        rows = await self._read(
            f"SELECT {INSTANCE_COLUMNS} FROM {{s}}.instances WHERE workflow = %s AND id = %s", (workflow, instance_id)
        )
        return instance_from_row(rows[0]) if rows else None

    async def get_by_pk(self, pk: int) -> InstanceRecord | None:
        rows = await self._read(f"SELECT {INSTANCE_COLUMNS} FROM {{s}}.instances WHERE pk = %s", (pk,))
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
        # With a prefix: the range of ids on the UNIQUE (workflow, id) index, then a sort of the
        # matches by pk. Ids compare code point by code point (SQLite's binary collation;
        # PostgreSQL's COLLATE "C", the order of migration 3's index). On SQLite a unary + keeps
        # the planner off the (workflow, pk) and (workflow, status, pk) indexes, which it
        # prefers without statistics and which would read every instance of the workflow.
        hint = self.dialect.plan_hint if id_prefix else ""
        where, params = f"workflow = %s AND {hint}pk < %s", [workflow, _cursor_pk(cursor)]
        if status:
            where += f" AND {hint}status = %s"
            params.append(status)
        if id_prefix:
            binary = self.dialect.collate_binary
            where += f" AND id{binary} >= %s AND id{binary} < %s"
            params.extend(prefix_bounds(id_prefix))
        rows = await self._read(
            f"SELECT {INSTANCE_COLUMNS} FROM {{s}}.instances WHERE {where} ORDER BY pk DESC LIMIT %s",
            (*params, limit + 1),
        )
        items = [instance_from_row(r) for r in rows[:limit]]
        next_cursor = str(items[-1].pk) if len(rows) > limit and items else None
        return Page(items, next_cursor)

    async def known_workflows(self) -> list[WorkflowRecord]:
        rows = await self._read(f"SELECT {WORKFLOW_COLUMNS} FROM {{s}}.workflows ORDER BY name")
        return [workflow_from_row(r) for r in rows]

    async def owners(self) -> list[str]:
        return [r[0] for r in await self._read("SELECT DISTINCT owner FROM {s}.instances WHERE owner IS NOT NULL")]

    async def owned(self, owner: str) -> dict[int, tuple[int, str]]:
        rows = await self._read("SELECT pk, epoch, status FROM {s}.instances WHERE owner = %s", (owner,))
        return {int(pk): (int(epoch), str(status)) for pk, epoch, status in rows}

    async def load_steps(self, pk: int) -> list[StepRecord]:
        rows = await self._read(f"SELECT {STEP_COLUMNS} FROM {{s}}.steps WHERE instance_pk = %s ORDER BY seq", (pk,))
        return [step_from_row(r) for r in rows]

    async def has_event(self, pk: int, event_type: str) -> bool:
        rows = await self._read(
            "SELECT 1 FROM {s}.events WHERE instance_pk = %s AND type = %s AND consumed_by IS NULL LIMIT 1",
            (pk, event_type),
        )
        return bool(rows)

    async def next_wake_at(self, workflows: list[str] | None = None) -> float | None:
        where, params = "status = %s", (WAITING,)
        if workflows is not None:
            names, values = self.dialect.in_list("workflow", workflows)
            where, params = f"{where} AND {names}", (*params, *values)
        rows = await self._read(f"SELECT MIN(wake_at) FROM {{s}}.instances WHERE {where}", params)
        return rows[0][0] if rows else None

    async def history(self, pk: int) -> list[dict[str, Any]]:
        rows = await self._read("SELECT type, ts, data FROM {s}.history WHERE instance_pk = %s ORDER BY seq", (pk,))
        return [{"type": t, "timestamp": ts, "data": loads(d)} for t, ts, d in rows]

    # -- reads for metrics ---------------------------------------------------------------------------
    async def history_since(self, after: int, types: Sequence[str], limit: int = 2000) -> list[HistoryRow]:
        names, values = self.dialect.in_list("h.type", types)
        rows = await self._read(
            "SELECT h.seq, h.type, h.ts, i.pk, i.workflow, i.created_at, i.id FROM {s}.history h"
            f" JOIN {{s}}.instances i ON i.pk = h.instance_pk WHERE h.seq > %s AND {names}"
            " ORDER BY h.seq LIMIT %s",
            (after, *values, limit),
        )
        return [
            HistoryRow(int(s), str(t), float(ts), int(pk), str(wf), float(c), str(i)) for s, t, ts, pk, wf, c, i in rows
        ]

    async def last_history_seq(self) -> int:
        rows = await self._read("SELECT MAX(seq) FROM {s}.history")
        return int(rows[0][0] or 0) if rows else 0

    async def oldest_queued_at(self, workflow: str) -> float | None:
        rows = await self._read(
            "SELECT created_at FROM {s}.instances WHERE workflow = %s AND status = %s ORDER BY pk LIMIT 1",
            (workflow, QUEUED),
        )
        return float(rows[0][0]) if rows else None

    # -- control: the state machine of SPEC §2, once for every backend --------------------------------
    async def pause(self, pk: int, now: float) -> str:
        async def op(tx: Tx) -> str:
            (status,) = await lock_instance(tx, pk, "status")
            if status == RUNNING:  # the run pauses after its step (engine.py notices)
                status = WAITING_FOR_PAUSE
                await tx.run("UPDATE {s}.instances SET status = %s WHERE pk = %s", (status, pk))
                await tx.notify()
            elif status in (QUEUED, WAITING):
                # A waiting instance may be one a worker waits on in memory (a short sleep or
                # retry delay): the new epoch ends that run now, as if it had been suspended.
                status = PAUSED
                await tx.run(
                    "UPDATE {s}.instances SET status = %s, paused_at = %s, owner = NULL, lease_until = NULL,"
                    " epoch = CASE WHEN owner IS NULL THEN epoch ELSE epoch + 1 END WHERE pk = %s",
                    (status, now, pk),
                )
                await add_history(tx, pk, "WORKFLOW_PAUSED", now)
                await tx.notify()
            return str(status)

        return await self._control(op)

    async def resume(self, pk: int, now: float) -> str:
        async def op(tx: Tx) -> str:
            status, wake_at, paused_at, wake_requested = await lock_instance(
                tx, pk, "status, wake_at, paused_at, wake_requested"
            )
            if status == WAITING_FOR_PAUSE:
                status = RUNNING
                await tx.run("UPDATE {s}.instances SET status = %s WHERE pk = %s", (status, pk))
                await tx.notify()
            elif status == "paused":
                paused_for = max(0.0, now - (paused_at or now))
                # Timers do not run while paused: every pending deadline moves by the paused time.
                await tx.run(
                    "UPDATE {s}.steps SET wake_at = wake_at + %s WHERE instance_pk = %s AND wake_at IS NOT NULL"
                    " AND status IN ('waiting', 'retrying')",
                    (paused_for, pk),
                )
                if wake_at is None:
                    status, due = QUEUED, None
                else:
                    status, due = WAITING, (now if wake_requested else wake_at + paused_for)
                await tx.run(
                    "UPDATE {s}.instances SET status = %s, wake_at = CAST(%s AS DOUBLE PRECISION), paused_at = NULL"
                    " WHERE pk = %s",
                    (status, due, pk),
                )
                await tx.notify()
            return str(status)

        return await self._control(op)

    async def mark_waiting(self, pk: int, epoch: int, wake_at: float | None) -> str:
        """A run waits in memory until ``wake_at`` (a short sleep or retry delay): show the
        instance ``waiting`` while its worker keeps it (owner and lease stay, so no other worker
        claims it); ``None`` when the wait is over: ``running`` again. Returns the status it has
        now; raises :class:`~perdure.errors.Fenced` if the epoch moved on (paused, terminated)."""

        async def op(tx: Tx) -> str:
            # One conditional UPDATE each way: a pause or terminate committed in between wins.
            if wake_at is not None:
                row = await tx.one(
                    "UPDATE {s}.instances SET status = %s, wake_at = %s WHERE pk = %s AND epoch = %s AND status = %s"
                    " RETURNING status",
                    (WAITING, wake_at, pk, epoch, RUNNING),
                )
            else:
                row = await tx.one(
                    "UPDATE {s}.instances SET status = %s, wake_at = NULL WHERE pk = %s AND epoch = %s AND status = %s"
                    " RETURNING status",
                    (RUNNING, pk, epoch, WAITING),
                )
            if row is None:
                row = await tx.one("SELECT status FROM {s}.instances WHERE pk = %s AND epoch = %s", (pk, epoch))
            if row is None:
                raise Fenced(f"instance {pk} moved past epoch {epoch}")
            return str(row[0])

        return await self._control(op)

    async def terminate(self, pk: int, now: float, *, rollback: bool = False) -> str:
        async def op(tx: Tx) -> str:
            (status,) = await lock_instance(tx, pk, "status")
            if status in TERMINAL:
                raise InvalidStateError(f"cannot terminate an instance that is already {status}")
            finished = await tx.one(
                "SELECT 1 FROM {s}.steps WHERE instance_pk = %s AND kind = 'do' AND status IN ('complete', 'failed')"
                " LIMIT 1",
                (pk,),
            )
            if rollback and finished is not None:
                # Its handlers live in the workflow's code: the next worker that claims it (now:
                # it is due at once, and the epoch fences the current run) replays the run to
                # collect them, runs them newest first, and then ends it terminated.
                await tx.run(
                    "UPDATE {s}.instances SET status = %s, wake_at = %s, epoch = epoch + 1, owner = NULL,"
                    " lease_until = NULL, wait_types = NULL, paused_at = NULL, terminating = %s WHERE pk = %s",
                    (WAITING, now, dumps(TERMINATED_ERROR), pk),
                )
                await tx.notify()
                return WAITING
            await tx.run(
                "UPDATE {s}.instances SET status = %s, ended_at = %s, epoch = epoch + 1, owner = NULL,"
                " lease_until = NULL, wake_at = NULL, wait_types = NULL, terminating = NULL,"
                " expires_at = %s + error_retention WHERE pk = %s",
                (TERMINATED, now, now, pk),
            )
            await add_history(tx, pk, "WORKFLOW_TERMINATED", now)
            await tx.notify()
            return TERMINATED

        return await self._control(op)

    async def restart(self, pk: int, now: float, from_step: tuple[str, str, int] | None) -> str:
        async def op(tx: Tx) -> str:
            (started,) = await lock_instance(tx, pk, "started_at")  # before touching its steps
            if from_step is None:
                await tx.run("DELETE FROM {s}.steps WHERE instance_pk = %s", (pk,))
                await tx.run("UPDATE {s}.events SET consumed_by = NULL WHERE instance_pk = %s", (pk,))
                await tx.run("DELETE FROM {s}.history WHERE instance_pk = %s", (pk,))
                started = None
            else:
                kind, name, count = from_step
                row = await tx.one(
                    "SELECT seq FROM {s}.steps WHERE instance_pk = %s AND kind = %s AND name = %s AND count = %s",
                    (pk, kind, name, count),
                )
                if row is None:
                    raise ValidationError(f"restart from_step: this instance has no {kind} step {name!r} #{count}")
                await tx.run("DELETE FROM {s}.steps WHERE instance_pk = %s AND seq >= %s", (pk, row[0]))
                await tx.run(
                    "UPDATE {s}.events SET consumed_by = NULL WHERE instance_pk = %s AND consumed_by >= %s",
                    (pk, row[0]),
                )
            await tx.run(
                "UPDATE {s}.instances SET status = %s, epoch = epoch + 1, owner = NULL, lease_until = NULL,"
                " output = NULL, error = NULL, ended_at = NULL, wake_at = NULL, wait_types = NULL,"
                " paused_at = NULL, wake_requested = FALSE, terminating = NULL, expires_at = NULL,"
                " started_at = CAST(%s AS DOUBLE PRECISION) WHERE pk = %s",
                (QUEUED, started, pk),
            )
            trigger = {"trigger": "restart", "from_step": list(from_step or []) or None}
            await add_history(tx, pk, "WORKFLOW_QUEUED", now, trigger)
            await tx.notify()
            return QUEUED

        return await self._control(op)

    async def send_event(self, pk: int, event_type: str, payload_json: str, now: float) -> None:
        async def op(tx: Tx) -> None:
            status, wait_types = await lock_instance(tx, pk, "status, wait_types")
            if status in TERMINAL:
                raise InvalidStateError(f"cannot send an event to an instance that is {status}")
            await tx.run(
                "INSERT INTO {s}.events (instance_pk, type, payload, created_at) VALUES (%s, %s, %s, %s)",
                (pk, event_type, payload_json, now),
            )
            waiting_for_it = status == WAITING and event_type in (wait_types or "").split(",")
            await tx.run(
                "UPDATE {s}.instances SET wake_requested = TRUE,"
                " wake_at = CASE WHEN %s THEN %s ELSE wake_at END WHERE pk = %s",
                (waiting_for_it, now, pk),
            )
            await tx.notify()

        await self._control(op)

    # -- secrets ----------------------------------------------------------------------------------------
    async def secret(self, name: str) -> bytes:
        key = f"secret:{name}"
        rows = await self._read("SELECT value FROM {s}.perdure_meta WHERE key = %s", (key,))
        if rows:
            return bytes.fromhex(str(rows[0][0]))
        fresh = secrets.token_hex(32)

        async def op(tx: Tx) -> str:
            # DO NOTHING, then read: when two processes make the key at once, the second insert
            # waits for the first to commit and loses; both read back the winner's key.
            await tx.run(
                "INSERT INTO {s}.perdure_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, fresh)
            )
            row = await tx.one("SELECT value FROM {s}.perdure_meta WHERE key = %s", (key,))
            assert row is not None
            return str(row[0])

        return bytes.fromhex(await self._control(op))

    # -- durable queues ---------------------------------------------------------------------------------
    async def queue_send(self, queue: str, bodies_json: Sequence[str], now: float, delay: float) -> list[int]:
        async def op(tx: Tx) -> list[int]:
            if len(bodies_json) == 1:  # the common case, kept lean: one send is one short statement
                rows = await tx.all(_send_statement(1), (queue, bodies_json[0], now, now + delay))
                return [int(rows[0][0])]
            ids: list[int] = []
            for start in range(0, len(bodies_json), _SEND_CHUNK):
                chunk = bodies_json[start : start + _SEND_CHUNK]
                params = tuple(value for body in chunk for value in (queue, body, now, now + delay))
                rows = await tx.all(_send_statement(len(chunk)), params)
                ids += sorted(int(r[0]) for r in rows)  # ids grow in the order of the values
            return ids

        return await self._queue_write(op, single=len(bodies_json) <= _SEND_CHUNK)

    async def queue_receive(
        self, queue: str, limit: int, now: float, *, visibility_timeout: float, max_attempts: int, lease: str
    ) -> list[QueueMessage]:
        async def op(tx: Tx) -> list[QueueMessage]:
            # A message whose lease ran out on its last delivery is dead-lettered, not redelivered.
            exhausted = "queue = %s AND visible_at <= %s AND lease IS NOT NULL AND attempts >= %s"
            await tx.run(
                "INSERT INTO {s}.perdure_queue_dead (queue, message_id, body, attempts, created_at, failed_at, error)"
                " SELECT queue, id, body, attempts, created_at, %s, COALESCE(last_error, %s)"
                f" FROM {{s}}.perdure_queue_messages WHERE {exhausted}",
                (now, "the consumer's lease ran out on the last attempt", queue, now, max_attempts),
            )
            await tx.run(f"DELETE FROM {{s}}.perdure_queue_messages WHERE {exhausted}", (queue, now, max_attempts))
            rows = await tx.all(
                "UPDATE {s}.perdure_queue_messages SET attempts = attempts + 1, lease = %s, visible_at = %s"
                " WHERE id IN (SELECT id FROM {s}.perdure_queue_messages WHERE queue = %s AND visible_at <= %s"
                " ORDER BY visible_at, id LIMIT %s{skip_locked})"
                " RETURNING id, body, attempts, created_at",
                (lease, now + visibility_timeout, queue, now, limit),
            )
            messages = [QueueMessage(int(r[0]), json.loads(r[1]), int(r[2]), float(r[3]), lease) for r in rows]
            return sorted(messages, key=lambda m: m.id)

        return await self._queue_write(op)

    async def queue_ack(self, leased: Sequence[tuple[int, str]]) -> int:
        by_lease: dict[str, list[int]] = {}
        for message_id, lease in leased:  # one receive leases its whole batch with one lease
            by_lease.setdefault(lease, []).append(message_id)

        async def op(tx: Tx) -> int:
            acked = 0
            for lease, ids in by_lease.items():
                names, values = self.dialect.in_list("id", ids)
                acked += await tx.run(
                    f"DELETE FROM {{s}}.perdure_queue_messages WHERE lease = %s AND {names}", (lease, *values)
                )
            return acked

        return await self._queue_write(op, single=len(by_lease) == 1)

    async def queue_retry(self, message_id: int, lease: str, visible_at: float, error: str | None) -> bool:
        async def op(tx: Tx) -> bool:
            changed = await tx.run(
                "UPDATE {s}.perdure_queue_messages SET visible_at = %s, lease = NULL, last_error = %s"
                " WHERE id = %s AND lease = %s",
                (visible_at, error, message_id, lease),
            )
            return changed > 0

        return await self._queue_write(op, single=True)

    async def queue_dead_letter(self, message_id: int, lease: str, error: str, now: float) -> bool:
        async def op(tx: Tx) -> bool:
            match = "id = %s AND lease = %s"
            await tx.run(
                "INSERT INTO {s}.perdure_queue_dead (queue, message_id, body, attempts, created_at, failed_at, error)"
                " SELECT queue, id, body, attempts, created_at, %s, %s FROM {s}.perdure_queue_messages"
                f" WHERE {match}",
                (now, error, message_id, lease),
            )
            return await tx.run(f"DELETE FROM {{s}}.perdure_queue_messages WHERE {match}", (message_id, lease)) > 0

        return await self._queue_write(op)

    async def queue_redrive(self, queue: str, now: float) -> int:
        async def op(tx: Tx) -> int:
            moved = await tx.run(
                "INSERT INTO {s}.perdure_queue_messages (queue, body, attempts, created_at, visible_at)"
                " SELECT queue, body, 0, created_at, %s FROM {s}.perdure_queue_dead WHERE queue = %s ORDER BY id",
                (now, queue),
            )
            await tx.run("DELETE FROM {s}.perdure_queue_dead WHERE queue = %s", (queue,))
            return moved

        return await self._queue_write(op)

    async def queue_depths(self, now: float, queue: str | None = None) -> dict[str, QueueDepth]:
        where, params = ("WHERE queue = %s", (queue,)) if queue is not None else ("", ())
        depths: dict[str, QueueDepth] = {}
        for name, ready, delayed, in_flight, oldest in await self._read(
            "SELECT queue, SUM(CASE WHEN visible_at <= %s THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN visible_at > %s AND lease IS NULL THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN visible_at > %s AND lease IS NOT NULL THEN 1 ELSE 0 END), MIN(created_at)"
            f" FROM {{s}}.perdure_queue_messages {where} GROUP BY queue",
            (now, now, now, *params),
        ):
            depths[name] = QueueDepth(int(ready or 0), int(delayed or 0), int(in_flight or 0), 0, oldest)
        for name, dead in await self._read(
            f"SELECT queue, COUNT(*) FROM {{s}}.perdure_queue_dead {where} GROUP BY queue", params
        ):
            depths.setdefault(name, QueueDepth()).dead = int(dead)
        return depths

    async def queue_dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        rows = await self._read(
            "SELECT id, message_id, body, attempts, error, failed_at FROM {s}.perdure_queue_dead WHERE queue = %s"
            " ORDER BY id DESC LIMIT %s",
            (queue, limit),
        )
        return [DeadLetter(int(r[0]), int(r[1]), json.loads(r[2]), int(r[3]), r[4], float(r[5])) for r in rows]
