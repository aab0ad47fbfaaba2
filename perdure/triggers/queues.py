"""Durable queues in the engine's own database, and consumers that start instances from them.

A :class:`Queue` is the Cloudflare Queues model kept in two tables next to the engine's:

* :meth:`Queue.send` stores a JSON message (optionally delayed);
* :meth:`Queue.receive` leases up to ``n`` ready messages: each becomes invisible for
  ``visibility_timeout`` seconds and its ``attempts`` goes up by one; a consumer that dies
  lets the lease run out and the message is delivered again;
* :meth:`Queue.ack` deletes leased messages; :meth:`Queue.retry` makes one visible again
  after a backoff delay, or moves it to the dead-letter table once it has had
  ``max_attempts`` deliveries.

A :class:`QueueConsumer` runs a handler over batches (like a Worker's ``queue()`` handler):
messages the handler does not mark are acknowledged when it returns, all are retried when it
raises. :func:`workflow_trigger` is the handler that starts one workflow instance per message
with ``create_batch``; the instance id defaults to ``<queue>-<message id>``, so a message
delivered twice still starts one instance.

Storage: on SQLite the queue's writes join the engine's own writer (one connection, group
commit); on PostgreSQL it opens its own psycopg connection to the same database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from .. import validators
from ..errors import ValidationError

if TYPE_CHECKING:
    from ..binding import WorkflowBinding
    from ..engine import Engine

log = logging.getLogger("perdure.queues")

Statement = tuple[str, Sequence[Any]]
_NAME_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_-]{0,63}$")


# -- database access ----------------------------------------------------------------------------
class Database:
    """Run SQL against the engine's database, whatever the backend.

    SQL is written with ``?`` placeholders; :meth:`transaction` runs statements atomically and
    returns each one's rows (for ``RETURNING`` and ``SELECT``)."""

    dialect: str

    @staticmethod
    async def for_engine(engine: Engine) -> Database:
        store = await engine.ensure_store()
        cached = getattr(engine, "_perdure_ops_database", None)
        if isinstance(cached, Database):
            return cached
        from ..store.sqlite import SQLiteStore

        database: Database
        if isinstance(store, SQLiteStore):
            database = _SQLiteDatabase(store)
        elif hasattr(store, "conninfo") and hasattr(store, "schema"):  # the PostgreSQL store
            database = _PostgresDatabase(str(store.conninfo), str(store.schema))
        else:  # pragma: no cover - only two backends exist
            raise ValidationError(f"queues do not support the database {store.url!r}")
        engine._perdure_ops_database = database  # type: ignore[attr-defined]
        return database

    @staticmethod
    async def release(engine: Engine) -> None:
        """Close the connection :meth:`for_engine` opened for ``engine``, if it did
        (stopping the engine does not)."""
        cached = getattr(engine, "_perdure_ops_database", None)
        if isinstance(cached, Database):
            del engine._perdure_ops_database  # type: ignore[attr-defined]
            await cached.close()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def transaction(self, statements: list[Statement]) -> list[list[tuple[Any, ...]]]:
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections this object opened (not the store's)."""


class _SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, store: Any) -> None:
        self.store = store

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.store._read(sql, tuple(params))
        return rows

    async def transaction(self, statements: list[Statement]) -> list[list[tuple[Any, ...]]]:
        def op(conn: Any) -> list[list[tuple[Any, ...]]]:
            return [conn.execute(sql, tuple(params)).fetchall() for sql, params in statements]

        result: list[list[tuple[Any, ...]]] = await self.store._write(op, atomic=True)
        return result


class _PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, conninfo: str, schema: str) -> None:
        self.conninfo = conninfo
        self.schema = schema  # the store's tables live there; the queue's tables go there too
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Any:
        import psycopg
        from psycopg import sql

        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._conn = conn
        return self._conn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            conn = await self._connection()
            cur = await conn.execute(self._sql(sql), tuple(params))
            rows: list[tuple[Any, ...]] = await cur.fetchall() if cur.description else []
            return rows

    async def transaction(self, statements: list[Statement]) -> list[list[tuple[Any, ...]]]:
        async with self._lock:
            conn = await self._connection()
            results = []
            async with conn.transaction():
                for sql, params in statements:
                    cur = await conn.execute(self._sql(sql), tuple(params))
                    results.append(await cur.fetchall() if cur.description else [])
            return results

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _schema(dialect: str) -> list[str]:
    pk = "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY"
    real = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    return [
        f"CREATE TABLE IF NOT EXISTS perdure_queue_messages (id {pk}, queue TEXT NOT NULL, body TEXT NOT NULL,"
        f" attempts INTEGER NOT NULL DEFAULT 0, created_at {real} NOT NULL, visible_at {real} NOT NULL,"
        " lease TEXT, last_error TEXT)",
        "CREATE INDEX IF NOT EXISTS ix_perdure_queue_ready ON perdure_queue_messages (queue, visible_at, id)",
        f"CREATE TABLE IF NOT EXISTS perdure_queue_dead (id {pk}, queue TEXT NOT NULL, message_id BIGINT NOT NULL,"
        f" body TEXT NOT NULL, attempts INTEGER NOT NULL, created_at {real} NOT NULL, failed_at {real} NOT NULL,"
        " error TEXT)",
        "CREATE INDEX IF NOT EXISTS ix_perdure_queue_dead ON perdure_queue_dead (queue, id)",
    ]


async def ensure_queue_tables(database: Database) -> None:
    if getattr(database, "_queue_tables", False):
        return
    await database.transaction([(sql, ()) for sql in _schema(database.dialect)])
    database._queue_tables = True  # type: ignore[attr-defined]


# -- messages -------------------------------------------------------------------------------------
@dataclass
class Message:
    """One delivered message. ``attempts`` counts deliveries, this one included.

    A handler may call :meth:`retry` or :meth:`dead_letter` on it; unmarked messages are
    acknowledged when the handler returns."""

    id: str
    body: Any
    attempts: int
    created_at: float
    source: str
    lease: str | None = None
    outcome: tuple[str, float | None, str | None] | None = field(default=None, repr=False)

    def retry(self, *, delay: float | None = None, error: str | None = None) -> None:
        """Deliver again later (after ``delay`` seconds, default: the queue's backoff)."""
        self.outcome = ("retry", delay, error)

    def dead_letter(self, error: str) -> None:
        """Give up on this message at once: it goes to the dead-letter store."""
        self.outcome = ("dead", None, error)

    @property
    def default_instance_id(self) -> str:
        """``<source>-<id>``: an instance id that is the same on every delivery."""
        return f"{self.source}-{self.id}"[: validators.MAX_INSTANCE_ID]


Handler = Callable[[list[Message]], Awaitable[None]]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValidationError(
            f"queue name {name!r} must be 1-64 characters of letters, digits, '_' and '-', not starting with '-'"
        )
    return name


class Queue:
    """A durable queue named ``name`` in ``engine``'s database.

    ``max_attempts`` deliveries (5) before a message is dead-lettered; ``visibility_timeout``
    seconds (30) a received message stays leased; retries wait ``retry_delay`` seconds (5)
    times ``2**(attempts-1)`` (``backoff="exponential"``), ``* attempts`` (``"linear"``) or
    not growing (``"constant"``), at most ``max_retry_delay`` (3600).
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        max_attempts: int = 5,
        visibility_timeout: float = 30.0,
        retry_delay: float = 5.0,
        backoff: str = "exponential",
        max_retry_delay: float = 3600.0,
    ) -> None:
        self.engine = engine
        self.name = _check_name(name)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValidationError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if backoff not in ("constant", "linear", "exponential"):
            raise ValidationError(f"backoff must be constant, linear or exponential, got {backoff!r}")
        for label, value in (("visibility_timeout", visibility_timeout), ("retry_delay", retry_delay)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValidationError(f"{label} must be a number of seconds >= 0, got {value!r}")
        self.max_attempts = max_attempts
        self.visibility_timeout = float(visibility_timeout)
        self.retry_delay = float(retry_delay)
        self.backoff = backoff
        self.max_retry_delay = float(max_retry_delay)

    async def _db(self) -> Database:
        database = await Database.for_engine(self.engine)
        await ensure_queue_tables(database)
        return database

    def _now(self) -> float:
        return self.engine.clock.now()

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait before delivery ``attempts + 1``."""
        n = max(1, attempts)
        factor = {"constant": 1, "linear": n, "exponential": 2 ** (n - 1)}[self.backoff]
        return float(min(self.max_retry_delay, self.retry_delay * factor))

    # producing
    async def send(self, body: Any, *, delay: float = 0.0) -> str:
        """Store one message (any JSON value up to 1 MiB); returns its id."""
        (message_id,) = await self.send_batch([body], delay=delay)
        return message_id

    async def send_batch(self, bodies: Sequence[Any], *, delay: float = 0.0) -> list[str]:
        if isinstance(bodies, (str, bytes)) or not isinstance(bodies, Sequence):
            raise ValidationError("send_batch takes a list of message bodies")
        if not 1 <= len(bodies) <= 1000:
            raise ValidationError(f"send_batch takes 1-1000 messages (got {len(bodies)})")
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValidationError(f"delay must be a number of seconds >= 0, got {delay!r}")
        encoded = [validators.encode_json(b, "queue message") for b in bodies]
        now = self._now()
        database = await self._db()
        rows = await database.transaction(
            [
                (
                    "INSERT INTO perdure_queue_messages (queue, body, attempts, created_at, visible_at)"
                    " VALUES (?, ?, 0, ?, ?) RETURNING id",
                    (self.name, text, now, now + delay),
                )
                for text in encoded
            ]
        )
        return [str(r[0][0]) for r in rows]

    # consuming
    async def receive(self, max_messages: int = 10) -> list[Message]:
        """Lease up to ``max_messages`` ready messages, oldest first.

        A message whose lease ran out ``max_attempts`` times is dead-lettered here instead of
        being delivered again."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or not 1 <= max_messages <= 1000:
            raise ValidationError(f"max_messages must be an integer from 1 to 1000, got {max_messages!r}")
        database = await self._db()
        now = self._now()
        lease = uuid.uuid4().hex
        skip_locked = " FOR UPDATE SKIP LOCKED" if database.dialect == "postgresql" else ""
        exhausted = "queue = ? AND visible_at <= ? AND lease IS NOT NULL AND attempts >= ?"
        results = await database.transaction(
            [
                (
                    "INSERT INTO perdure_queue_dead (queue, message_id, body, attempts, created_at, failed_at, error)"
                    " SELECT queue, id, body, attempts, created_at, ?, COALESCE(last_error, ?)"
                    f" FROM perdure_queue_messages WHERE {exhausted}",
                    (now, "the consumer's lease ran out on the last attempt", self.name, now, self.max_attempts),
                ),
                (f"DELETE FROM perdure_queue_messages WHERE {exhausted}", (self.name, now, self.max_attempts)),
                (
                    "UPDATE perdure_queue_messages SET attempts = attempts + 1, lease = ?, visible_at = ?"
                    " WHERE id IN (SELECT id FROM perdure_queue_messages WHERE queue = ? AND visible_at <= ?"
                    f" ORDER BY visible_at, id LIMIT ?{skip_locked})"
                    " RETURNING id, body, attempts, created_at",
                    (lease, now + self.visibility_timeout, self.name, now, max_messages),
                ),
            ]
        )
        messages = [Message(str(r[0]), json.loads(r[1]), int(r[2]), float(r[3]), self.name, lease) for r in results[2]]
        messages.sort(key=lambda m: int(m.id))
        return messages

    async def ack(self, messages: Sequence[Message]) -> int:
        """Delete messages that were handled; returns how many still held their lease."""
        if not messages:
            return 0
        database = await self._db()
        results = await database.transaction(
            [
                ("DELETE FROM perdure_queue_messages WHERE id = ? AND lease = ? RETURNING id", (int(m.id), m.lease))
                for m in messages
            ]
        )
        return sum(len(r) for r in results)

    async def retry(self, message: Message, *, delay: float | None = None, error: str | None = None) -> str:
        """Deliver ``message`` again after ``delay`` (default: backoff), or dead-letter it when it
        has had ``max_attempts`` deliveries. Returns ``"retry"``, ``"dead"`` or ``"lost"`` (the
        lease had run out and someone else holds the message now)."""
        if message.attempts >= self.max_attempts:
            return await self.dead_letter(message, error or f"failed {message.attempts} times")
        wait = self.backoff_delay(message.attempts) if delay is None else max(0.0, float(delay))
        database = await self._db()
        (rows,) = await database.transaction(
            [
                (
                    "UPDATE perdure_queue_messages SET visible_at = ?, lease = NULL, last_error = ?"
                    " WHERE id = ? AND lease = ? RETURNING id",
                    (self._now() + wait, error, int(message.id), message.lease),
                )
            ]
        )
        return "retry" if rows else "lost"

    async def dead_letter(self, message: Message, error: str) -> str:
        """Move ``message`` to the dead-letter table now."""
        database = await self._db()
        match = "id = ? AND lease = ?"
        results = await database.transaction(
            [
                (
                    "INSERT INTO perdure_queue_dead (queue, message_id, body, attempts, created_at, failed_at, error)"
                    f" SELECT queue, id, body, attempts, created_at, ?, ? FROM perdure_queue_messages WHERE {match}",
                    (self._now(), error, int(message.id), message.lease),
                ),
                (f"DELETE FROM perdure_queue_messages WHERE {match} RETURNING id", (int(message.id), message.lease)),
            ]
        )
        return "dead" if results[1] else "lost"

    # inspecting
    async def stats(self) -> dict[str, Any]:
        """``{"ready", "delayed", "in_flight", "dead", "oldest_age"}`` (age in seconds of the
        oldest message not yet acknowledged, or None)."""
        database = await self._db()
        now = self._now()
        rows = await database.fetch(
            "SELECT COALESCE(SUM(CASE WHEN visible_at <= ? THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN visible_at > ? AND lease IS NULL THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN visible_at > ? AND lease IS NOT NULL THEN 1 ELSE 0 END), 0),"
            " MIN(created_at) FROM perdure_queue_messages WHERE queue = ?",
            (now, now, now, self.name),
        )
        ready, delayed, in_flight, oldest = rows[0]
        dead = await database.fetch("SELECT COUNT(*) FROM perdure_queue_dead WHERE queue = ?", (self.name,))
        return {
            "ready": int(ready),
            "delayed": int(delayed),
            "in_flight": int(in_flight),
            "dead": int(dead[0][0]),
            "oldest_age": None if oldest is None else max(0.0, now - float(oldest)),
        }

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead-lettered messages: ``{id, message_id, body, attempts, error, failed_at}``."""
        database = await self._db()
        rows = await database.fetch(
            "SELECT id, message_id, body, attempts, error, failed_at FROM perdure_queue_dead WHERE queue = ?"
            " ORDER BY id DESC LIMIT ?",
            (self.name, limit),
        )
        return [
            {
                "id": r[0],
                "message_id": str(r[1]),
                "body": json.loads(r[2]),
                "attempts": r[3],
                "error": r[4],
                "failed_at": r[5],
            }  # fmt: skip
            for r in rows
        ]

    async def redrive(self) -> int:
        """Send every dead-lettered message back to the queue (attempts reset); returns how many."""
        database = await self._db()
        now = self._now()
        results = await database.transaction(
            [
                (
                    "INSERT INTO perdure_queue_messages (queue, body, attempts, created_at, visible_at)"
                    " SELECT queue, body, 0, created_at, ? FROM perdure_queue_dead WHERE queue = ? RETURNING id",
                    (now, self.name),
                ),
                ("DELETE FROM perdure_queue_dead WHERE queue = ?", (self.name,)),
            ]
        )
        return len(results[0])


async def queue_names(engine: Engine) -> list[str]:
    """Names of the queues that hold messages or dead letters."""
    database = await Database.for_engine(engine)
    await ensure_queue_tables(database)
    rows = await database.fetch(
        "SELECT queue FROM perdure_queue_messages UNION SELECT queue FROM perdure_queue_dead ORDER BY 1"
    )
    return [str(r[0]) for r in rows]


# -- consumers ------------------------------------------------------------------------------------
class BackgroundConsumer:
    """``async with consumer:`` runs :meth:`run` in a background task named :attr:`task_name`,
    and cancels it when the block ends (shared by this module's and the brokers' consumers)."""

    _task: asyncio.Task[None] | None = None

    @property
    def task_name(self) -> str:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=self.task_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class QueueConsumer(BackgroundConsumer):
    """Feed batches of ``queue`` to ``handler`` until stopped.

    ``async with QueueConsumer(queue, handler):`` runs it in the background; or call
    :meth:`run_once` (one batch) or :meth:`run` (forever). An empty queue is polled every
    ``poll_interval`` seconds."""

    def __init__(self, queue: Queue, handler: Handler, *, batch_size: int = 10, poll_interval: float = 0.5) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100:
            raise ValidationError(f"batch_size must be an integer from 1 to 100, got {batch_size!r}")
        self.queue = queue
        self.handler = handler
        self.batch_size = batch_size
        self.poll_interval = poll_interval

    @property
    def task_name(self) -> str:
        return f"perdure-queue-{self.queue.name}"

    async def run_once(self) -> int:
        """Receive one batch, hand it over, settle every message; returns the batch size."""
        messages = await self.queue.receive(self.batch_size)
        if not messages:
            return 0
        try:
            await self.handler(messages)
        except Exception as exc:
            log.warning("queue %s: handler failed on %d message(s): %s", self.queue.name, len(messages), exc)
            for message in messages:
                if message.outcome is None or message.outcome[0] != "dead":
                    message.retry(error=f"{type(exc).__name__}: {exc}")
        await settle(self.queue, messages)
        return len(messages)

    async def run(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue %s: consumer error; retrying", self.queue.name)
                handled = 0
            if handled == 0:
                await asyncio.sleep(self.poll_interval)


async def settle(queue: Queue, messages: list[Message]) -> None:
    """Apply the handler's verdicts: ack the unmarked, retry or dead-letter the marked."""
    await queue.ack([m for m in messages if m.outcome is None])
    for message in messages:
        if message.outcome is None:
            continue
        kind, delay, error = message.outcome
        if kind == "dead":
            await queue.dead_letter(message, error or "dead-lettered by the handler")
        else:
            await queue.retry(message, delay=delay, error=error)


def create_item(message: Message) -> dict[str, Any]:
    """How a message becomes a ``create`` item: a body ``{"id"?, "params"?}`` (only those keys)
    is used as is; any other body is the params. The id defaults to the message's
    :attr:`~Message.default_instance_id`, so redelivery never starts a second instance."""
    body = message.body
    if isinstance(body, Mapping) and body and set(body) <= {"id", "params"}:
        item = dict(body)
    else:
        item = {"params": body}
    item.setdefault("id", message.default_instance_id)
    return item


def workflow_trigger(
    binding: WorkflowBinding, *, to_item: Callable[[Message], Mapping[str, Any]] = create_item
) -> Handler:
    """A handler that starts one instance of ``binding``'s workflow per message, with one
    ``create_batch`` call per batch (ids that exist already are skipped: redelivery is safe).

    A message that can never make a valid instance (bad id, params over 1 MiB, ...) is
    dead-lettered at once; a database failure retries the whole batch."""
    from ..server.operations import _create

    async def handle(messages: list[Message]) -> None:
        items: list[tuple[Message, Mapping[str, Any]]] = []
        for message in messages:
            try:
                items.append((message, to_item(message)))
            except Exception as exc:
                message.dead_letter(f"cannot make an instance from this message: {type(exc).__name__}: {exc}")
        if not items:
            return
        try:
            await _create(binding, [item for _, item in items], skip_existing=True, trigger="queue")
        except ValidationError:
            for message, item in items:  # find the bad ones; the others are created one by one
                try:
                    await _create(binding, [item], skip_existing=True, trigger="queue")
                except ValidationError as exc:
                    message.dead_letter(f"invalid instance: {exc}")

    return handle
