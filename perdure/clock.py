"""The one source of time for an engine.

Every deadline the engine keeps (sleeps, retry delays, event timeouts, attempt timeouts, cron
firings) reads :meth:`Clock.now` and waits with :meth:`Clock.sleep`. A test toolkit can hand the
engine a clock whose time jumps forward, and workflow code does not change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """Wall-clock time and real sleeps."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def run_with_timeout(clock: Clock, awaitable: Awaitable[T], seconds: float) -> T:
    """Await ``awaitable``; cancel it and raise ``TimeoutError`` once ``seconds`` pass on ``clock``."""
    if isinstance(clock, SystemClock):
        async with asyncio.timeout(seconds):  # no extra task: the cheap path for real time
            return await awaitable
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        timer.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise TimeoutError
