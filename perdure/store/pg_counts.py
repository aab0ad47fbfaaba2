"""The PostgreSQL store's kept counts of instances by workflow and status (migration 4).

Triggers on ``instances`` append deltas (no shared row to lock, so workers never wait for each
other); ``count_by_status`` adds the folded counts and the deltas not yet folded, in one
statement. A :class:`CountFolder` folds the deltas into the counts, one store at a time (under
an advisory lock taken without waiting): a worker's store every ``compact_every`` seconds (from
its claims and polls, in the background), and a reader that came across more than
``compact_after`` deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._cancel import reraise_if_cancelling
from ..errors import ValidationError
from .pg_commit import Conn, Outcome, Write
from .pg_sql import COMPACT_COUNTS, COUNTS

log = logging.getLogger("perdure.postgres")

Read = Callable[..., Awaitable[list[tuple[Any, ...]]]]
Commit = Callable[[list[Write]], Awaitable[list[Outcome]]]


class CountFolder:
    """Reads the kept counts of one schema and folds their deltas (see the module doc).

    ``read(sql, params)`` and ``commit(writes)`` are the store's; ``q`` fills in the schema."""

    def __init__(
        self, schema: str, q: Callable[[str], str], read: Read, commit: Commit, *, every: float, after: int
    ) -> None:
        if not (isinstance(every, (int, float)) and every > 0):
            raise ValidationError(f"compact_every must be a number of seconds > 0, got {every!r}")
        if not (isinstance(after, int) and after >= 0):
            raise ValidationError(f"compact_after must be an integer >= 0, got {after!r}")
        self.lock = f"perdure.counts.{schema}"  # not the migrations' lock
        self.every = every
        self.after = after
        self._q = q
        self._read = read
        self._commit = commit
        self._warned = False
        self._task: asyncio.Task[None] | None = None
        self._last = time.monotonic()

    async def counts(self, workflow: str | None) -> dict[str, dict[str, int]]:
        """``{workflow: {status: n}}``: a few rows per workflow, however many instances there
        are. When the read came across more than ``after`` deltas (no worker is folding them),
        it folds them, so the next read is short again."""
        if workflow is None:
            rows = await self._read(COUNTS.replace("{where}", ""))
        else:
            rows = await self._read(COUNTS.replace("{where}", "WHERE workflow = %(w)s"), {"w": workflow})
        counts: dict[str, dict[str, int]] = {}
        deltas = 0
        for wf, status, n, read in rows:
            deltas += int(read)
            if n:
                counts.setdefault(wf, {})[status] = int(n)
        if deltas > self.after:
            await self._fold_quietly()
        return counts

    async def fold(self) -> int | None:
        """Fold the deltas into the counts (:data:`~perdure.store.pg_sql.COMPACT_COUNTS`);
        return how many were folded, or None when another store was folding them."""

        async def op(conn: Conn) -> int | None:
            cur = await conn.execute(self._q(COMPACT_COUNTS), {"lock": self.lock})
            row = await cur.fetchone()
            assert row is not None
            return int(row[1]) if row[0] else None

        # Idempotent: folding again after a commit whose outcome was lost folds what is left.
        ((value, error),) = await self._commit([Write(op, single=True, idempotent=True)])
        if error is not None:
            raise error
        result: int | None = value
        return result

    async def _fold_quietly(self) -> None:
        """A fold whose failure is only logged: the counts stay exact without it (the deltas
        wait for the next one), and a read must not fail because a write did."""
        try:
            await self.fold()
        except Exception as exc:
            reraise_if_cancelling()
            if not self._warned:
                self._warned = True
                log.warning("perdure: cannot fold the instance counts' deltas (retried later): %s", exc)

    def maybe_fold(self) -> None:
        """Start a fold in the background when the last one began ``every`` seconds ago (a
        worker's claims and polls call this; a busy worker may never poll)."""
        now = time.monotonic()
        if now - self._last < self.every or (self._task is not None and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(self._fold_quietly(), name="perdure-pg-compact-counts")

    async def close(self) -> None:
        """Let a fold under way finish (one short statement: cancelling would only undo it)."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5.0)

    def forget(self) -> None:
        """Drop a fold left behind in an event loop that ended."""
        self._task = None
