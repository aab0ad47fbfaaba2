"""Helpers for testing workflows.

:class:`ManualClock` is a clock whose time stands still until the test moves it: give it to
``Engine(clock=...)`` and an hour-long ``step.sleep``, a ten-minute retry delay or a day-long
``wait_for_event`` timeout passes the moment the test calls :meth:`ManualClock.advance`,
without changing the workflow's code.
"""

from __future__ import annotations

import asyncio
import time


class ManualClock:
    """A :class:`perdure.Clock` that moves only when :meth:`advance` is called."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        self.t += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.t]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.t]
        for _, future in due:
            if not future.done():
                future.set_result(None)
