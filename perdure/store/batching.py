"""What both backends' group commits share: settling a waiter, and which queued writes to run.

Each backend has its own writer (SQLite's runs on the event loop thread and commits with one
fsync; PostgreSQL's is a task with a connection of its own that folds step saves into one
statement), but they agree on two rules, kept here once:

* a write whose caller is waiting gets its value or its error, exactly once, however late;
* of several queued writes with the same ``key`` (the same step saved again before the batch
  ran), only the last one runs, unless an earlier one has a caller waiting on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

W = TypeVar("W")


class Unexpected(Exception):
    """An unguarded write failed in SQL and may have left part of itself behind: the batch
    is redone with a savepoint around each write, so only the faulty one fails."""


def settle(future: asyncio.Future[Any] | None, value: Any, error: BaseException | None) -> None:
    """Give ``future`` its outcome, unless nobody waits (None) or it was settled (cancelled)."""
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def last_per_key(writes: Sequence[W], key: Callable[[W], Any], waited: Callable[[W], bool]) -> list[W]:
    """``writes`` without those a later write of the same key replaces (and nobody awaits)."""
    last = {key(w): i for i, w in enumerate(writes) if key(w) is not None}
    return [w for i, w in enumerate(writes) if key(w) is None or waited(w) or last[key(w)] == i]
