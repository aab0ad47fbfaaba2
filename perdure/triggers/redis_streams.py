"""Start workflow instances from a Redis Stream (consumer groups).

Why Redis Streams: Redis is the broker most Python job systems already run (Celery, RQ, arq,
Dramatiq and Huey all use it, several only it), and Streams give exactly the delivery model
of a Cloudflare Queue consumer: a consumer group shares the work, each entry is acknowledged
on its own (``XACK``), and entries a dead consumer left unacknowledged are taken over after an
idle time (``XAUTOCLAIM``) with a per-entry delivery count for dead-lettering.

How the consumer works, per batch:

1. ``XAUTOCLAIM`` entries other consumers (or this one, before a crash) left pending for
   ``claim_idle_ms``; their delivery counts come from ``XPENDING``. An entry delivered more
   than ``max_deliveries`` times is copied to the dead-letter stream (``<stream>:dead``) and
   acknowledged.
2. Otherwise ``XREADGROUP`` new entries (blocking up to ``block_ms``).
3. The handler (the same :data:`~perdure.triggers.queues.Handler` as for durable queues, e.g.
   :func:`~perdure.triggers.queues.workflow_trigger`) runs on the batch; entries it did not mark are
   acknowledged, entries marked for retry stay pending and are re-claimed later, entries
   marked dead are dead-lettered.

An entry's body is its ``body`` field (JSON) when present, else all its fields as a mapping.
The default instance id is ``<stream>-<entry id>`` (with characters an id cannot hold replaced
by ``_``), so a redelivered entry never starts a second instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from typing import Any

from .._cancel import reraise_if_cancelling
from .queues import BackgroundConsumer, Handler, Message

log = logging.getLogger("perdure.redis")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamConsumer(BackgroundConsumer):
    """Consume ``stream`` as member ``consumer`` of ``group`` and hand batches to ``handler``.

    ``redis``: a ``redis.asyncio.Redis`` client or a URL (``redis://127.0.0.1:6379/0``)."""

    def __init__(
        self,
        redis: Any,
        stream: str,
        handler: Handler,
        *,
        group: str = "perdure",
        consumer: str | None = None,
        batch_size: int = 10,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_letter_stream: str | None = None,
    ) -> None:
        if isinstance(redis, str):
            from .._optional import require

            redis = require("redis.asyncio", "redis", "the Redis Streams trigger").from_url(redis)
        self.redis = redis
        self.stream = stream
        self.handler = handler
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.source = _UNSAFE.sub("_", stream)[:50] or "stream"
        self._group_ready = False

    @property
    def task_name(self) -> str:
        return f"perdure-redis-{self.stream}"

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist."""
        if self._group_ready:
            return
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _message(self, entry_id: Any, fields: dict[Any, Any], deliveries: int) -> Message:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        body: Any
        if "body" in decoded:
            try:
                body = json.loads(decoded["body"])
            except ValueError:
                body = decoded["body"]
        else:
            body = decoded
        ident = _text(entry_id)
        return Message(id=ident, body=body, attempts=deliveries, created_at=_entry_time(ident), source=self.source)

    async def _claim(self) -> list[Message]:
        result = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch_size
        )
        entries = [(eid, fields) for eid, fields in result[1] if fields is not None]
        if not entries:
            return []
        pending = await self.redis.xpending_range(
            self.stream, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries) + 100,
            consumername=self.consumer,
        )  # fmt: skip
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        messages = []
        for eid, fields in entries:
            message = self._message(eid, fields, counts.get(_text(eid), 2))
            if message.attempts > self.max_deliveries:
                await self._dead_letter(message, f"delivered {message.attempts} times without being acknowledged")
            else:
                messages.append(message)
        return messages

    async def _read(self) -> list[Message]:
        result = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        messages = []
        for _stream, entries in result or []:
            for eid, fields in entries:
                messages.append(self._message(eid, fields, 1))
        return messages

    async def _dead_letter(self, message: Message, error: str) -> None:
        await self.redis.xadd(
            self.dead_letter_stream,
            {
                "body": json.dumps(message.body),
                "source_id": message.id,
                "deliveries": str(message.attempts),
                "error": error[:2000],
            },
        )
        await self.redis.xack(self.stream, self.group, message.id)

    async def run_once(self) -> int:
        """Claim or read one batch, run the handler, settle it; returns the batch size."""
        await self.ensure_group()
        messages = await self._claim()
        if not messages:
            messages = await self._read()
        if not messages:
            return 0
        try:
            await self.handler(messages)
        except Exception as exc:
            log.warning("stream %s: handler failed on %d entries: %s", self.stream, len(messages), exc)
            for message in messages:
                if message.outcome is None:
                    message.retry(error=f"{type(exc).__name__}: {exc}")
        done = [m.id for m in messages if m.outcome is None]
        if done:
            await self.redis.xack(self.stream, self.group, *done)
        for message in messages:
            if message.outcome is not None and message.outcome[0] == "dead":
                await self._dead_letter(message, message.outcome[2] or "dead-lettered by the handler")
            # a retry leaves the entry pending: XAUTOCLAIM hands it out again after claim_idle_ms
        return len(messages)

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                reraise_if_cancelling()
                log.exception("stream %s: consumer error; retrying", self.stream)
                await asyncio.sleep(1.0)


def _entry_time(entry_id: str) -> float:
    """Stream ids start with the milliseconds at which Redis stored the entry."""
    try:
        return int(entry_id.split("-")[0]) / 1000
    except ValueError:
        return 0.0
