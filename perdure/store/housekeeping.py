"""The store's housekeeping, shared by both SQL backends: deleting instances with every row they
own (``binding.delete_batch`` and the retention sweep), background roles one worker holds at a
time, and the cursors of lifecycle subscriptions.

Deleting an instance deletes its steps, events and history with it, in one transaction; the
kept counts follow by themselves (``AFTER DELETE`` triggers on ``instances``). The retention
sweep deletes in bounded batches (``limit``) so that one sweep never holds the write lock (SQLite)
or many row locks (PostgreSQL) for long: step commits go on between two batches.

A *role* (``"retention"``, ``"subscriptions"``) is a lease kept in ``perdure_meta`` under
``role:<name>``: whoever holds it and renews it before ``until`` keeps it; when it lapses (the
holder died or stalled) the next worker that asks takes it over.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..records import TERMINAL
from .base import Store

T = TypeVar("T")
Row = tuple[Any, ...]


_OWNED = ("steps", "events", "history")  # the tables whose rows belong to one instance


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


async def _delete_rows(tx: Any, pks: Sequence[int]) -> None:
    marks = _marks(len(pks))
    for table in _OWNED:
        await tx.run(f"DELETE FROM {{s}}.{table} WHERE instance_pk IN ({marks})", tuple(pks))
    await tx.run(f"DELETE FROM {{s}}.instances WHERE pk IN ({marks})", tuple(pks))


class Housekeeping(Store):
    """Deletion, retention, roles and subscription cursors over :class:`~perdure.store.sql.SQLStore`'s
    two hooks (``_read`` and ``_control``)."""

    @abc.abstractmethod
    async def _read(self, sql: str, params: Any = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def _control(self, op: Callable[[Any], Awaitable[T]]) -> T: ...

    async def delete_instances(self, workflow: str, ids: Sequence[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(ids))

        async def op(tx: Any) -> dict[str, str]:
            rows = await tx.all(
                f"SELECT pk, id, status FROM {{s}}.instances WHERE workflow = %s AND id IN ({_marks(len(ids))})"
                " ORDER BY pk{lock}",
                (workflow, *ids),
            )
            outcome = dict.fromkeys(ids, "missing")
            finished = []
            for pk, instance_id, status in rows:
                if status in TERMINAL:
                    finished.append(int(pk))
                    outcome[str(instance_id)] = "deleted"
                else:
                    outcome[str(instance_id)] = "unfinished"
            if finished:
                await _delete_rows(tx, finished)
            return outcome

        return await self._control(op)

    async def any_expired(self, now: float) -> bool:
        rows = await self._read(
            "SELECT 1 FROM {s}.instances WHERE expires_at IS NOT NULL AND expires_at <= %s LIMIT 1", (now,)
        )
        return bool(rows)

    async def delete_expired(self, now: float, limit: int) -> int:
        async def op(tx: Any) -> int:
            rows = await tx.all(
                "SELECT pk FROM {s}.instances WHERE expires_at IS NOT NULL AND expires_at <= %s"
                " ORDER BY expires_at LIMIT %s{skip_locked}",
                (now, limit),
            )
            pks = [int(pk) for (pk,) in rows]
            if pks:
                await _delete_rows(tx, pks)
            return len(pks)

        return await self._control(op)

    async def hold_role(self, role: str, owner: str, until: float, now: float) -> bool:
        key = f"role:{role}"
        mine = json.dumps({"owner": owner, "until": until})

        async def op(tx: Any) -> bool:
            await tx.run(
                "INSERT INTO {s}.perdure_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, mine)
            )
            rows = await tx.all("SELECT value FROM {s}.perdure_meta WHERE key = %s{lock}", (key,))
            held = json.loads(rows[0][0])
            if held.get("owner") != owner and float(held.get("until", 0)) > now:
                return False
            await tx.run("UPDATE {s}.perdure_meta SET value = %s WHERE key = %s", (mine, key))
            return True

        return await self._control(op)

    async def release_role(self, role: str, owner: str) -> None:
        key = f"role:{role}"

        async def op(tx: Any) -> None:
            rows = await tx.all("SELECT value FROM {s}.perdure_meta WHERE key = %s{lock}", (key,))
            if rows and json.loads(rows[0][0]).get("owner") == owner:
                await tx.run("DELETE FROM {s}.perdure_meta WHERE key = %s", (key,))

        await self._control(op)

    async def history_horizon(self) -> tuple[int, int, int]:
        # SQLite commits one writer at a time: a row is visible in seq order (xmax 0)
        rows = await self._read("SELECT MAX(seq) FROM {s}.history")
        return (int(rows[0][0] or 0) if rows else 0), 0, 0

    async def subscription_cursor(self, name: str, start: int) -> int:
        async def op(tx: Any) -> int:
            await tx.run(
                "INSERT INTO {s}.perdure_subscriptions (name, seq) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, start),
            )
            rows = await tx.all("SELECT seq FROM {s}.perdure_subscriptions WHERE name = %s", (name,))
            return int(rows[0][0])

        return await self._control(op)

    async def advance_subscription(self, name: str, seq: int) -> None:
        async def op(tx: Any) -> None:
            await tx.run("UPDATE {s}.perdure_subscriptions SET seq = %s WHERE name = %s AND seq < %s", (seq, name, seq))

        await self._control(op)
