"""The PostgreSQL backend: any number of worker processes, on any number of machines, share one
database.

It keeps the SQLite backend's tables and semantics (:mod:`perdure.store.sqlite` is the
reference; each operation below says what it mirrors) and adds what many writers need:

**Claims without contention.** ``claim`` selects runnable rows ``FOR UPDATE SKIP LOCKED``: two
workers claiming at once lock disjoint rows instead of waiting for each other, and each claim
bumps the instance's ``epoch``.

**Fencing.** Every write a worker makes for a running instance names the epoch it claimed, and
first locks the instance row *where the epoch still matches*. A takeover (or a terminate or
restart) bumps the epoch under the same row lock, so the two are serialised: once the new epoch
is committed, no write of the old one can land, however late it arrives (the old worker may have
been SIGSTOPped for a minute). A refused write raises :class:`~perdure.store.base.Fenced`::

    worker A (epoch 7)        instances.pk=42             worker B
    ------------------        ---------------             --------
    runs step "charge"        epoch 7, lease A to t+5
        (stalls, lease not renewed)
                              lease_until < now     <--   claim: SKIP LOCKED, epoch := 8
                                                          replays, records "charge" (epoch 8)
    save "charge" (epoch 7) -> WHERE epoch = 7 finds nothing -> Fenced, nothing written

**Group commit.** Writes of running instances (step results, claims, suspends, lease renewals)
go through one writer task with a connection of its own: every write queued while the previous
commit was in flight joins the next transaction, and the step results among them are one
statement (:mod:`perdure.store.pg_commit`). Control calls (create, pause, terminate, events...)
run in transactions of their own on the pool.

**Notifications.** Creating an instance, sending an event, pause/resume/terminate/restart, and
a suspend or release that makes an instance due within a second ``NOTIFY perdure_<schema>``.
A worker's store keeps one ``LISTEN`` connection (:mod:`perdure.store.pg_listen`) and turns
notifications from *other* stores into :meth:`PostgresStore.changed` and ``on_change``
callbacks. Expired leases are announced by nobody (a dead worker cannot ``NOTIFY``), so
``changed()`` also says True every ``safety_poll`` seconds: that bounds takeover time to about
``lease_ttl + safety_poll``, and covers notifications missed while the listener reconnects.

**Counts.** ``count_by_status`` reads counts that triggers keep, not the instances
(:mod:`perdure.store.pg_counts`).

**Connection loss.** Every method raises when the database stays unreachable; the engine
treats a failed step write as a lost run (claimed again once its lease expires) and retries
its loops. Before raising, writes and reads are retried on fresh connections when that is safe
(see :mod:`perdure.store.pg_commit`); the pools replace broken connections and the listener
reconnects with backoff.

Connection URL: ``postgresql://user:pw@host:5432/db?schema=perdure&application_name=...``.
``schema`` (default ``perdure``) is ours and selects the PostgreSQL schema holding the tables;
every other parameter goes to libpq unchanged. One store is used from one event loop.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ..errors import Fenced, InstanceAlreadyExistsError, ValidationError
from ..records import COMPLETE, InstanceRecord, LocalStart, NewInstance, StepRecord, WorkflowRecord
from .migrations.postgres import migrate
from .pg_commit import Conn, GroupCommit, Outcome, PgTx, Transactions, Write, WriteFn
from .pg_counts import CountFolder
from .pg_listen import Changes, Listener
from .pg_pools import PoolOptions, Pools
from .pg_sql import (
    CLAIM,
    CREATE,
    CREATE_GROUP,
    FINISH_GROUP,
    GIVE_UP,
    REGISTER_WORKFLOWS,
    SAVE_STEP,
    SAVE_STEPS,
    UPSERT_STEP,
)
from .pg_url import parse_url
from .rows import (
    created_record,
    dumps,
    finish_history,
    instance_from_row,
    step_row,
    workflow_rows,
)
from .sql import SQLStore, Tx, postgres_dialect, resume_claimed

log = logging.getLogger("perdure.postgres")
T = TypeVar("T")

__all__ = ["PostgresStore", "parse_url"]

# -- the store ----------------------------------------------------------------------------------


class PostgresStore(SQLStore):
    """PostgreSQL via psycopg 3 (async) and a connection pool.

    Options (also accepted as ``Engine("postgresql://…", option=value)``):

    * ``schema`` (``"perdure"``, or ``?schema=`` in the URL): the PostgreSQL schema holding the
      tables; created and migrated on :meth:`open`.
    * ``pool_min`` / ``pool_max`` (1 / 10): pooled connections (plus one for LISTEN in workers).
    * ``pool_timeout`` (10 s): how long a call waits for a connection before it fails.
    * ``connect_timeout`` (10 s): for each new connection.
    * ``safety_poll`` (1 s): ``changed()`` says True at least this often (see the module doc).
    * ``lazy_delay`` (5 ms): how long a ``durable=False`` write waits for company.
    * ``max_batch`` (500): writes per group commit.
    * ``retry_delays`` ((0.05, 0.2, 0.5) s): pauses between tries of a write or read whose
      connection failed; after the last one the error is raised.
    * ``idle_in_transaction_timeout`` (5 s): the server ends a session frozen inside a
      transaction after this long, releasing its row locks (see :func:`~perdure.store.pg_commit.open_pool`).
    * ``compact_every`` (1 s): how often a worker folds the deltas of the instance counts
      (see :meth:`compact_counts`); ``compact_after`` (1,000): a count that read more deltas
      than this folds them.
    """

    flow_lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"  # see perdure.store.flow

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 10.0,
        connect_timeout: int = 10,
        safety_poll: float = 1.0,
        lazy_delay: float = 0.005,
        max_batch: int = 500,
        retry_delays: tuple[float, ...] = (0.05, 0.2, 0.5),
        idle_in_transaction_timeout: float = 5.0,
        compact_every: float = 1.0,
        compact_after: int = 1000,
    ) -> None:
        if not (isinstance(pool_min, int) and isinstance(pool_max, int) and 0 <= pool_min <= pool_max >= 1):
            raise ValidationError(
                f"pool sizes need 0 <= pool_min <= pool_max, pool_max >= 1; got {pool_min}, {pool_max}"
            )
        self.url = url
        self.conninfo, self.schema = parse_url(url, schema)
        self._pools = Pools(
            self.conninfo,
            self.schema,
            PoolOptions(pool_min, pool_max, pool_timeout, connect_timeout, idle_in_transaction_timeout),
        )
        self.connect_timeout = connect_timeout
        self.safety_poll = safety_poll
        self.channel = f"perdure_{self.schema}"[:63]  # identifiers are at most 63 bytes
        self.token = uuid.uuid4().hex  # the payload of our NOTIFYs, so our listener skips them
        self._lone_creates = 0  # lone creates under way (create_instances joins them in a group commit)
        self.dialect = postgres_dialect(sql.Identifier(self.schema).as_string())
        self._q = self.dialect.q  # ``{s}`` -> the quoted schema name, cached
        self._counts = CountFolder(
            self.schema,
            self._q,
            self._read,
            lambda writes: self._transactions.commit(writes),
            every=compact_every,
            after=compact_after,
        )
        self.retry_delays = tuple(retry_delays)
        self.lazy_delay = lazy_delay
        self.max_batch = max_batch
        self._changes = Changes(safety_poll)
        self._reset()

    def _reset(self) -> None:
        """Forget connections and tasks (closed, or left behind in an event loop that ended)."""
        self._pools = Pools(self._pools.conninfo, self._pools.schema, self._pools.options)
        self._transactions = Transactions(self._ready, self.retry_delays)
        # The writer has a connection of its own: behind a hundred instances loading their
        # steps it would otherwise queue for a pooled one, and every step waits on it.
        self._writes = Transactions(self._ready_writer, self.retry_delays)
        self._writer = GroupCommit(self._writes, lazy_delay=self.lazy_delay, max_batch=self.max_batch)
        self._listener = Listener(
            self.conninfo,
            self.channel,
            ignore=self.token,
            on_notify=self._changes.signal,
            connect_timeout=self.connect_timeout,
        )
        self._changes.reset()
        if hasattr(self, "_counts"):
            self._counts.forget()

    @property
    def batches(self) -> int:
        """Group commits made so far (with :attr:`batched_ops`, the writes they carried)."""
        return self._writer.batches

    @property
    def batched_ops(self) -> int:
        return self._writer.writes

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up now."""
        return self._listener.connected

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create or migrate the schema, then open the pools and the writer."""
        if await self._pools.open(lambda conn: migrate(conn, self.schema)):
            self._writer.start()
            if self._changes.callback is not None:
                self._listener.start()

    async def close(self) -> None:
        """Commit queued writes, stop listening and close every connection."""
        if not self._pools.is_open:
            return
        await self._counts.close()
        await self._writer.close()
        await self._listener.stop()
        self._transactions.cancel()
        self._writes.cancel()
        pools = self._pools
        self._reset()
        await pools.close()

    async def drop(self) -> None:
        """Remove this store's schema with every row in it, and close (for throw-away test
        schemas: the pytest plugin's ``perdure_postgres_engine`` drops its own afterwards)."""
        pool = await self._ready()
        async with pool.connection() as conn:
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
        await self.close()

    async def _ready(self) -> AsyncConnectionPool[Conn]:
        """The pool, opening the store first when needed: like the SQLite store, a closed
        store reopens on use (a client may read a status after its engine stopped), also from
        another event loop (a script may ``asyncio.run`` several times with one engine)."""
        if self._pools.stale():
            self._reset()  # its pools and tasks belong to a loop that has ended
        if not self._pools.is_open:
            await self.open()
        assert self._pools.pool is not None
        return self._pools.pool

    async def _ready_writer(self) -> AsyncConnectionPool[Conn]:
        await self._ready()
        assert self._pools.writer is not None
        return self._pools.writer

    # -- how operations reach the database -------------------------------------------------------
    async def _write(self, fn: WriteFn, *, single: bool = False, idempotent: bool = False) -> Any:
        """Queue a write of a running instance for the next group commit; wait for it."""
        await self._ready()
        return await self._writer.wait(Write(fn, single=single, idempotent=idempotent))

    async def _transact(self, fn: WriteFn, *, single: bool = False) -> Any:
        """Run ``fn`` in a transaction of its own, now (control calls, from any process).

        These lock their instance row first (``FOR UPDATE``) and stay out of the writer's
        shared transactions, so they never hold a lock while waiting for one a worker's batch
        holds: no deadlock cycle between a control call and a worker."""
        ((value, error),) = await self._transactions.commit([Write(fn, single=single)])
        if error is not None:
            raise error
        return value

    async def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return await self._transactions.read(self._q(sql), params)

    async def _control(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        result: T = await self._transact(lambda conn: op(PgTx(conn, self._q, self._notify)))
        return result

    async def _queue_write(self, op: Callable[[Tx], Awaitable[T]], *, single: bool = False) -> T:
        """Queue writes join the worker's group commit, like step results (on the writer's
        connection): a consumer acking a batch shares a commit with the steps it started."""
        result: T = await self._write(lambda conn: op(PgTx(conn, self._q, self._notify)), single=single)
        return result

    async def _notify(self, conn: Conn) -> None:
        """Tell the other workers to look (PostgreSQL delivers it when the transaction commits)."""
        await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, self.token))

    async def _fence(self, conn: Conn, pk: int, epoch: int) -> str:
        """Lock the instance row if it is still at ``epoch`` (sqlite's ``_fence``)."""
        cur = await conn.execute(
            self._q("SELECT status FROM {s}.instances WHERE pk = %s AND epoch = %s FOR NO KEY UPDATE"), (pk, epoch)
        )
        row = await cur.fetchone()
        if row is None:
            raise Fenced(f"instance {pk} moved past epoch {epoch}")
        return str(row[0])

    async def history_horizon(self) -> tuple[int, int, int]:
        """Commits may become visible out of ``seq`` order here: the snapshot's bounds tell when
        every transaction that could still add a row up to ``top`` has ended (subscriptions)."""
        rows = await self._read(
            "SELECT (SELECT MAX(seq) FROM {s}.history), pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        top, xmax, xmin = rows[0]
        return int(top or 0), int(xmax), int(xmin)

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
        """Mirrors sqlite's create_instances in one statement: :data:`CREATE` for several items,
        inserting in the given order (so pks, hence the claim order, follow it), and
        :data:`CREATE_GROUP` for one (see below). An id that exists, or that repeats an earlier
        item, is skipped or raises; raising leaves nothing behind."""
        if len(items) == 1:
            # A lone create commits on its own connection at once, unless other lone creates
            # are under way: then it joins the group commit, so that creates arriving together
            # (REST POSTs at concurrency 50) share one statement and one commit. (Always
            # joining made a caller creating one instance after another wait for the commit in
            # flight first: 0.76x -> 0.43x of the batch path in bench_client_path.)
            await self._ready()

            async def alone(conn: Conn) -> list[InstanceRecord]:  # the batch redone write by write
                ((value, error),) = await self._create_group(conn, [write])
                if error is not None:
                    raise error
                done: list[InstanceRecord] = value
                return done

            write = Write(
                alone,
                group=self._create_group,
                data=(workflow, items[0], now, start),
                key=("create", workflow, items[0].id),  # without a key a write never joins its group
                single=True,
            )
            self._lone_creates += 1
            try:
                if self._lone_creates == 1:
                    created: list[InstanceRecord] = await self._transact(alone, single=True)
                else:
                    created = await self._writer.wait(write)
            finally:
                self._lone_creates -= 1
            if not created and not skip_existing:
                raise InstanceAlreadyExistsError(
                    f"an instance with id {items[0].id!r} already exists in workflow {workflow!r}"
                )
            return created
        if start is not None:
            raise ValueError("a local start creates one instance")
        params = {
            "workflow": workflow,
            "now": now,
            "ids": [item.id for item in items],
            "params": [item.params_json for item in items],
            "triggers": [item.trigger for item in items],
            "schedules": [dumps(item.schedule) for item in items],
            "kept": [item.success_retention for item in items],
            "kept_failed": [item.error_retention for item in items],
            "keys": [item.concurrency_key for item in items],
            "priorities": [item.priority for item in items],
            "channel": self.channel,
            "token": self.token,
        }

        async def op(conn: Conn) -> list[InstanceRecord]:
            cur = await conn.execute(self._q(CREATE), params)
            inserted = {row[0]: int(row[1]) for row in await cur.fetchall()}
            created = []
            for item in items:
                pk = inserted.pop(item.id, None)
                if pk is None:
                    if skip_existing:
                        continue
                    raise InstanceAlreadyExistsError(
                        f"an instance with id {item.id!r} already exists in workflow {workflow!r}"
                    )
                created.append(created_record(workflow, pk, item, now))
            return created

        # Alone in autocommit unless a refusal must undo other items' inserts: with
        # skip_existing nothing is refused.
        result: list[InstanceRecord] = await self._transact(op, single=skip_existing)
        return result

    async def _create_group(self, conn: Conn, writes: Sequence[Write]) -> list[Outcome]:
        """Lone creates in one statement (:data:`CREATE_GROUP`): each write's outcome is the
        list of what it created, empty when its id existed (or an earlier write took it)."""
        items: list[tuple[str, NewInstance, float, LocalStart | None]] = [w.data for w in writes]
        params = {
            "workflows": [workflow for workflow, _, _, _ in items],
            "ids": [item.id for _, item, _, _ in items],
            "params": [item.params_json for _, item, _, _ in items],
            "triggers": [item.trigger for _, item, _, _ in items],
            "schedules": [dumps(item.schedule) for _, item, _, _ in items],
            "kept": [item.success_retention for _, item, _, _ in items],
            "kept_failed": [item.error_retention for _, item, _, _ in items],
            "keys": [item.concurrency_key for _, item, _, _ in items],
            "priorities": [item.priority for _, item, _, _ in items],
            "nows": [now for _, _, now, _ in items],
            "owners": [None if start is None else start.owner for *_, start in items],
            "leases": [None if start is None else start.lease_until for *_, start in items],
            "channel": self.channel,
            "token": self.token,
        }
        cur = await conn.execute(self._q(CREATE_GROUP), params)
        inserted = {(row[0], row[1]): int(row[2]) for row in await cur.fetchall()}
        outcomes: list[Outcome] = []
        for workflow, item, now, start in items:
            pk = inserted.pop((workflow, item.id), None)  # the first write of an id gets its row
            if pk is None:
                outcomes.append(([], None))
                continue
            outcomes.append(([created_record(workflow, pk, item, now, start)], None))
        return outcomes

    async def count_by_status(self, workflow: str | None = None) -> dict[str, dict[str, int]]:
        """The counts the triggers keep (:mod:`perdure.store.pg_counts`)."""
        return await self._counts.counts(workflow)

    async def compact_counts(self) -> int | None:
        """Fold the counts' deltas now; how many, or None when another store was folding them."""
        return await self._counts.fold()

    def _maybe_fold(self) -> None:
        if self._pools.is_open:
            self._counts.maybe_fold()

    # -- workflows -------------------------------------------------------------------------------
    async def register_workflows(self, workflows: list[WorkflowRecord], now: float) -> None:
        """One statement (:data:`REGISTER_WORKFLOWS`) on the pool, like a control call."""
        rows = workflow_rows(workflows, now)
        if not rows:
            return
        columns = [list(column) for column in zip(*rows, strict=True)]

        async def op(conn: Conn) -> None:
            await conn.execute(self._q(REGISTER_WORKFLOWS), columns)

        ((_, error),) = await self._transactions.commit([Write(op, single=True, idempotent=True)])
        if error is not None:
            raise error

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
        """Mirrors sqlite's claim, in one statement (:data:`CLAIM`), then
        :func:`~perdure.store.sql.resume_claimed` for what it took. Every candidate is locked
        ``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint rows without waiting."""
        if not workflows:
            return []
        params = {
            "now": now,
            "lease_now": now if lease_now is None else lease_now,
            "workflows": workflows,
            "limit": limit,
            "owner": owner,
            "lease": lease_until,
        }

        async def op(conn: Conn) -> list[InstanceRecord]:
            cur = await conn.execute(self._q(CLAIM), params)
            claimed = [instance_from_row(row) for row in await cur.fetchall()]
            await resume_claimed(PgTx(conn, self._q, self._notify), self.dialect, claimed, kept, now)
            return claimed

        result: list[InstanceRecord] = await self._write(op, single=True)
        self._maybe_fold()
        return result

    async def renew_leases(self, owner: str, pks: list[int], lease_until: float) -> set[int]:
        async def op(conn: Conn) -> set[int]:
            cur = await conn.execute(
                self._q(
                    "UPDATE {s}.instances SET lease_until = %s WHERE owner = %s AND pk = ANY(%s::bigint[]) RETURNING pk"
                ),
                (lease_until, owner, pks),
            )
            return {int(pk) for (pk,) in await cur.fetchall()}

        result: set[int] = await self._write(op, single=True, idempotent=True)
        return result

    async def expire_leases(self, owners: list[str]) -> None:
        async def op(conn: Conn) -> None:
            cur = await conn.execute(
                self._q("UPDATE {s}.instances SET lease_until = 0 WHERE owner = ANY(%s::text[])"), (owners,)
            )
            if cur.rowcount:
                await self._notify(conn)

        await self._write(op, idempotent=True)

    async def save_step(self, pk: int, epoch: int, step: StepRecord, *, durable: bool = True) -> str:
        """Fence and upsert; the step saves of one group commit share one statement
        (:meth:`_save_steps`), and a lone one is :data:`SAVE_STEP`."""

        async def alone(conn: Conn) -> str:
            cur = await conn.execute(self._q(SAVE_STEP), (pk, epoch, *step_row(pk, step)))
            row = await cur.fetchone()
            if row is None:
                raise Fenced(f"instance {pk} moved past epoch {epoch}")
            return str(row[0])

        await self._ready()
        write = Write(
            alone,
            group=self._save_steps,
            data=(pk, epoch, step),
            key=(pk, step.kind, step.name, step.count),
            single=True,
            idempotent=True,
        )
        if not durable:
            self._writer.submit(write, lazy=True)
            return ""
        result: str = await self._writer.wait(write)
        return result

    async def _save_steps(self, conn: Conn, writes: Sequence[Write]) -> list[Outcome]:
        """Many step saves in one statement (see :data:`SAVE_STEPS`): one outcome per write,
        the instance's status, or ``Fenced`` for a step whose instance moved past its epoch."""
        # Encoded now, at commit time: a write that waited in the batch stores the step's
        # newest state, which is what a later write would store anyway.
        rows = [(epoch, *step_row(pk, step)) for pk, epoch, step in (w.data for w in writes)]
        columns = [list(column) for column in zip(*rows, strict=True)]
        cur = await conn.execute(self._q(SAVE_STEPS), columns)
        saved = {(pk, kind, name, count): status for pk, kind, name, count, status in await cur.fetchall()}
        outcomes: list[Outcome] = []
        for pk, epoch, step in (w.data for w in writes):
            status = saved.get((pk, step.kind, step.name, step.count))
            if status is None:
                outcomes.append((None, Fenced(f"instance {pk} moved past epoch {epoch}")))
            else:
                outcomes.append((str(status), None))
        return outcomes

    async def take_event(
        self, pk: int, epoch: int, step: StepRecord, event_type: str, now: float
    ) -> dict[str, Any] | None:
        async def op(conn: Conn) -> dict[str, Any] | None:
            await self._fence(conn, pk, epoch)
            cur = await conn.execute(
                self._q(
                    "SELECT pk, payload, created_at FROM {s}.events WHERE instance_pk = %s AND type = %s"
                    " AND consumed_by IS NULL ORDER BY pk LIMIT 1 FOR UPDATE"
                ),
                (pk, event_type),
            )
            row = await cur.fetchone()
            event = None
            if row is not None:
                event = {"type": event_type, "payload": json.loads(row[1]), "timestamp": row[2]}
                step.status, step.result, step.ended_at, step.wake_at = COMPLETE, event, now, None
            cur = await conn.execute(self._q(UPSERT_STEP), step_row(pk, step))
            seq_row = await cur.fetchone()
            if row is not None and seq_row is not None:
                await conn.execute(
                    self._q("UPDATE {s}.events SET consumed_by = %s WHERE pk = %s"), (seq_row[0], row[0])
                )
            return event

        result: dict[str, Any] | None = await self._write(op)
        return result

    async def _give_up(self, set_clause: str, params: dict[str, Any], *, when: str = "TRUE") -> str | None:
        """Run :data:`GIVE_UP`; the new status, or None when ``when`` did not hold."""
        query = GIVE_UP.replace("{set}", set_clause).replace("{when}", when)
        params = {**params, "soon": params["now"] + 1.0, "channel": self.channel, "token": self.token}

        async def op(conn: Conn) -> str | None:
            cur = await conn.execute(self._q(query), params)
            row = await cur.fetchone()
            if row is None:
                raise Fenced(f"instance {params['pk']} moved past epoch {params['epoch']}")
            return None if row[1] is None else str(row[1])

        result: str | None = await self._write(op, single=True)
        return result

    async def suspend(self, pk: int, epoch: int, wake_at: float | None, wait_types: list[str], now: float) -> str:
        """Mirrors sqlite's suspend in one statement: ``SET`` expressions see the old row, so
        the CASEs branch on the status and ``wake_requested`` the fence found."""
        status = await self._give_up(
            "status = CASE WHEN status = 'waitingForPause' THEN 'paused' ELSE 'waiting' END,"
            " wake_at = CASE WHEN status = 'waitingForPause' THEN %(wake)s::float8"
            " WHEN (wake_requested AND %(typed)s) OR %(wake)s::float8 IS NULL THEN %(now)s::float8"
            " ELSE %(wake)s::float8 END,"
            " wait_types = %(types)s::text,"
            " paused_at = CASE WHEN status = 'waitingForPause' THEN %(now)s::float8 END,"
            " owner = NULL, lease_until = NULL",
            {
                "pk": pk,
                "epoch": epoch,
                "wake": wake_at,
                "typed": bool(wait_types),
                "types": ",".join(wait_types) or None,
                "now": now,
            },
        )
        assert status is not None
        return status

    async def release(self, pk: int, epoch: int, now: float) -> None:
        """Mirrors sqlite's release: paused if a pause was requested, else due at once and ahead
        of queued instances (it was already running); left alone if it finished or suspended
        meanwhile."""
        await self._give_up(
            "status = CASE WHEN status = 'waitingForPause' THEN 'paused' ELSE 'waiting' END,"
            " wake_at = CASE WHEN status = 'waitingForPause' THEN NULL ELSE 0.0 END,"
            " paused_at = CASE WHEN status = 'waitingForPause' THEN %(now)s::float8 END,"
            " owner = NULL, lease_until = NULL",
            {"pk": pk, "epoch": epoch, "now": now},
            when="fence.found IN ('running', 'waitingForPause')",
        )

    async def finish(
        self, pk: int, epoch: int, status: str, output_json: str | None, error: dict[str, str] | None, now: float
    ) -> None:
        """Mirrors sqlite's finish: fenced update plus its history row, in one statement
        (:data:`FINISH_GROUP`), which the finishes of one group commit share."""
        kind, data = finish_history(status, output_json, error)

        async def alone(conn: Conn) -> None:  # the group statement for this one write
            ((_, refused),) = await self._finish_group(conn, [write])
            if refused is not None:
                raise refused

        await self._ready()
        row = (pk, epoch, status, output_json, dumps(error), now, kind, dumps(data))
        write = Write(alone, group=self._finish_group, data=row, key=("finish", pk), single=True, phase=1)
        await self._writer.wait(write)

    async def _finish_group(self, conn: Conn, writes: Sequence[Write]) -> list[Outcome]:
        """Many finishes in one statement (:data:`FINISH_GROUP`); ``Fenced`` for an instance
        that moved past its epoch."""
        columns = [list(column) for column in zip(*(w.data for w in writes), strict=True)]
        cur = await conn.execute(self._q(FINISH_GROUP), columns)
        finished = {int(row[0]) for row in await cur.fetchall()}
        outcomes: list[Outcome] = []
        for pk, epoch, *_ in (w.data for w in writes):
            if pk in finished:
                outcomes.append((None, None))
            else:
                outcomes.append((None, Fenced(f"instance {pk} moved past epoch {epoch}")))
        return outcomes

    # -- change detection (see :class:`~perdure.store.pg_listen.Changes`) -----------------------
    async def changed(self) -> bool:
        """True after a notification from another store, and at least every ``safety_poll``
        seconds (expired leases and missed notifications are found by looking)."""
        if self._pools.is_open:
            self._listener.start()
            self._maybe_fold()
        return self._changes.take()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on notifications from other stores (it replaces an earlier one:
        an engine registers one each time it starts)."""
        self._changes.callback = callback
        if self._pools.is_open:
            self._listener.start()
