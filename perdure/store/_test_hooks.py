"""Test hooks of the SQLite writer, kept apart from it: nothing here runs unless a test sets
its environment variable before the process starts.

``PERDURE_TEST_SIGSTOP_IN_WRITE=N``: the process stops itself (``SIGSTOP``) inside its N-th
write transaction, right after ``BEGIN IMMEDIATE`` took SQLite's write lock, so that a test
gets a real worker process frozen while it holds the lock (``tests/ops/test_sqlite_locks.py``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_ENV = "PERDURE_TEST_SIGSTOP_IN_WRITE"


def _stop_in_write(nth: int) -> Callable[[], None]:
    seen = 0

    def hook() -> None:
        nonlocal seen
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGSTOP)

    return hook


# Called by the writer inside each write transaction; None (the writer skips it) unless set.
in_write_transaction: Callable[[], None] | None = (
    _stop_in_write(int(os.environ[_ENV])) if os.environ.get(_ENV, "").isdigit() else None
)
