"""A retry loop must not swallow a cancellation that a driver turned into an error of its own.

psycopg answers a task cancelled in the middle of a query by cancelling the query on the
server, and what reaches the caller can be ``QueryCanceled`` (an ``OperationalError``) rather
than ``CancelledError``. A background loop that logs errors and tries again would then carry on
after ``task.cancel()``, and whoever waits for it (``Engine.stop``, a store's ``close``, the
event loop's shutdown) waits forever. Every ``except Exception`` of a loop that retries calls
:func:`reraise_if_cancelling` first.
"""

from __future__ import annotations

import asyncio


def reraise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
