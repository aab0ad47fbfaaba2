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

Storage: the queue's two tables belong to the engine's database and schema, and every read
and write is a method of the engine's store (``queue_send``, ``queue_receive``...), so its
writes join the store's own group commit on either backend.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from .. import validators
from .._cancel import reraise_if_cancelling
from ..binding import WorkflowBinding
from ..engine import Engine
from ..errors import ValidationError
from ..records import DeadLetter, QueueDepth
from ..retries import retry_delay
from ..store import Store

log = logging.getLogger("perdure.queues")

_NAME_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_-]{0,63}$")


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

    async def _store(self) -> Store:
        return await self.engine.ensure_store()

    def _now(self) -> float:
        return self.engine.clock.now()

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait before delivery ``attempts + 1``: a step's retry delay
        (:func:`perdure.retries.retry_delay`) with this queue's delay and backoff, capped."""
        config = {"retries": {"delay": self.retry_delay * 1000, "backoff": self.backoff}}
        return float(min(self.max_retry_delay, retry_delay(config, max(1, attempts))))

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
        store = await self._store()
        ids = await store.queue_send(self.name, encoded, self._now(), float(delay))
        return [str(i) for i in ids]

    # consuming
    async def receive(self, max_messages: int = 10) -> list[Message]:
        """Lease up to ``max_messages`` ready messages, oldest first.

        A message whose lease ran out ``max_attempts`` times is dead-lettered here instead of
        being delivered again."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or not 1 <= max_messages <= 1000:
            raise ValidationError(f"max_messages must be an integer from 1 to 1000, got {max_messages!r}")
        store = await self._store()
        leased = await store.queue_receive(
            self.name,
            max_messages,
            self._now(),
            visibility_timeout=self.visibility_timeout,
            max_attempts=self.max_attempts,
            lease=uuid.uuid4().hex,
        )
        return [Message(str(m.id), m.body, m.attempts, m.created_at, self.name, m.lease) for m in leased]

    async def ack(self, messages: Sequence[Message]) -> int:
        """Delete messages that were handled; returns how many still held their lease."""
        if not messages:
            return 0
        store = await self._store()
        return await store.queue_ack([(int(m.id), m.lease or "") for m in messages])

    async def retry(self, message: Message, *, delay: float | None = None, error: str | None = None) -> str:
        """Deliver ``message`` again after ``delay`` (default: backoff), or dead-letter it when it
        has had ``max_attempts`` deliveries. Returns ``"retry"``, ``"dead"`` or ``"lost"`` (the
        lease had run out and someone else holds the message now)."""
        if message.attempts >= self.max_attempts:
            return await self.dead_letter(message, error or f"failed {message.attempts} times")
        wait = self.backoff_delay(message.attempts) if delay is None else max(0.0, float(delay))
        store = await self._store()
        retried = await store.queue_retry(int(message.id), message.lease or "", self._now() + wait, error)
        return "retry" if retried else "lost"

    async def dead_letter(self, message: Message, error: str) -> str:
        """Move ``message`` to the dead-letter table now."""
        store = await self._store()
        moved = await store.queue_dead_letter(int(message.id), message.lease or "", error, self._now())
        return "dead" if moved else "lost"

    # inspecting
    async def stats(self) -> dict[str, Any]:
        """``{"ready", "delayed", "in_flight", "dead", "oldest_age"}`` (age in seconds of the
        oldest message not yet acknowledged, or None)."""
        store = await self._store()
        now = self._now()
        depth = (await store.queue_depths(now, self.name)).get(self.name, QueueDepth())
        return depth_view(depth, now)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead-lettered messages: ``{id, message_id, body, attempts, error, failed_at}``."""
        store = await self._store()
        return [_dead_view(d) for d in await store.queue_dead_letters(self.name, limit)]

    async def redrive(self) -> int:
        """Send every dead-lettered message back to the queue (attempts reset); returns how many."""
        store = await self._store()
        return await store.queue_redrive(self.name, self._now())


def depth_view(depth: QueueDepth, now: float) -> dict[str, Any]:
    """A queue's depth as JSON: counts, and the age in seconds of its oldest message."""
    oldest = depth.oldest_created_at
    return {
        "ready": depth.ready,
        "delayed": depth.delayed,
        "in_flight": depth.in_flight,
        "dead": depth.dead,
        "oldest_age": None if oldest is None else max(0.0, now - float(oldest)),
    }


def _dead_view(dead: DeadLetter) -> dict[str, Any]:
    return {
        "id": dead.id,
        "message_id": str(dead.message_id),
        "body": dead.body,
        "attempts": dead.attempts,
        "error": dead.error,
        "failed_at": dead.failed_at,
    }


async def queue_names(engine: Engine) -> list[str]:
    """Names of the queues that hold messages or dead letters."""
    store = await engine.ensure_store()
    return sorted(await store.queue_depths(engine.clock.now()))


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
                reraise_if_cancelling()
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
            await binding.create_many([item for _, item in items], skip_existing=True, trigger="queue")
        except ValidationError:
            for message, item in items:  # find the bad ones; the others are created one by one
                try:
                    await binding.create_many([item], skip_existing=True, trigger="queue")
                except ValidationError as exc:
                    message.dead_letter(f"invalid instance: {exc}")

    return handle
