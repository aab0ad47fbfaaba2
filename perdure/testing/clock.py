""":class:`ManualClock`: workflow time that moves only when a test moves it, or, with
``auto_advance=True``, jumps to the next deadline whenever every instance waits on time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..records import QUEUED, RUNNING, WAITING_FOR_PAUSE

if TYPE_CHECKING:
    from ..engine import Engine

# Statuses of an instance that is runnable or running: time stands still while one exists.
_BUSY = (QUEUED, RUNNING, WAITING_FOR_PAUSE)


class ManualClock:
    """A :class:`perdure.Clock` that moves only when :meth:`advance` is called.

    With ``auto_advance=True`` it also moves by itself (time skipping): when, for ``quiet``
    seconds of real time in a row, nothing changed and every instance of every started engine
    on this clock waits on time (none is ``queued``, ``running`` or ``waitingForPause``; none is
    due; a short in-memory wait shows ``waiting`` too), time jumps to the earliest deadline: a
    suspended instance's ``wake_at`` (sleep, retry delay, event timeout) or a coroutine sleeping
    on this clock (an in-memory wait, a cron schedule, a test's own ``clock.sleep``). Time never
    jumps while a step attempt runs, so a running step is not timed out by a jump. Set
    ``clock.auto_advance = False`` to hold time (for example to send an event first).
    """

    def __init__(self, start: float | None = None, *, auto_advance: bool = False, quiet: float = 0.01) -> None:
        if not isinstance(quiet, (int, float)) or quiet <= 0:
            raise ValueError(f"quiet must be a number of seconds > 0, got {quiet!r}")
        self.t = time.time() if start is None else start
        self.quiet = float(quiet)
        self.jumps = 0  # how many times auto_advance moved time
        self._auto = bool(auto_advance)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._version = 0  # bumped on every change a jump must wait for
        self._engines: list[Engine] = []
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.t + seconds, future)
        self._sleepers.append(entry)
        self._version += 1
        try:
            await future
        finally:
            with contextlib.suppress(ValueError):
                self._sleepers.remove(entry)
            self._version += 1

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        self.t += seconds
        self._version += 1
        due = [(t, f) for t, f in self._sleepers if t <= self.t]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.t]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        for engine in self._engines:  # claim woken instances now, not at the next poll
            if engine.is_running:
                engine.nudge()

    # -- time skipping ---------------------------------------------------------------------------
    @property
    def auto_advance(self) -> bool:
        return self._auto

    @auto_advance.setter
    def auto_advance(self, value: bool) -> None:
        self._auto = bool(value)
        if self._auto:
            self._ensure_task()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold time still inside the block (``with clock.held(): await instance.send_event(...)``),
        so that a jump cannot time a wait out while the test is about to answer it."""
        previous, self._auto = self._auto, False
        try:
            yield
        finally:
            self.auto_advance = previous

    def close(self) -> None:
        """Stop time skipping now, without waiting (see :meth:`aclose`)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop closed already: it is gone with it
                task.cancel()

    async def aclose(self) -> None:
        """Stop time skipping (it also stops by itself once no watched engine runs)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def watch(self, engine: Engine) -> None:
        """Called by :meth:`perdure.Engine.start`: the engines whose instances time skipping waits for."""
        self._engines = [e for e in self._engines if e.is_running and e is not engine]
        self._engines.append(engine)
        if self._auto:
            self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next watch() starts it
                self._task = asyncio.get_running_loop().create_task(self._skip_time(), name="perdure-time-skipping")

    async def _skip_time(self) -> None:
        seen: tuple[int, float] | None = None
        while True:
            await asyncio.sleep(self.quiet)
            self._engines = [e for e in self._engines if e.is_running]
            if not self._engines:
                return
            if not self._auto:
                seen = None
                continue
            version = self._version
            try:
                target = await self._next_deadline()
            except Exception:  # a store closing under us (an engine stopping): look again
                target = None
            if target is None or version != self._version:
                seen = None
                continue
            if seen == (version, target):  # idle for a whole quiet period and nothing moved
                seen = None
                self.jumps += 1
                self.advance(target - self.t)
            else:
                seen = (version, target)

    async def _next_deadline(self) -> float | None:
        """The earliest deadline if every instance waits on time, else None."""
        deadlines = [t for t, f in self._sleepers if not f.done()]
        for engine in list(self._engines):
            names = list(engine.workflows)
            if not names:
                continue
            counts = await engine.store.count_by_status()
            if any(counts.get(name, {}).get(status, 0) for name in names for status in _BUSY):
                return None
            wake = await engine.store.next_wake_at(names)
            if wake is not None:
                if wake <= self.t:  # due: the dispatcher is about to claim it
                    return None
                deadlines.append(wake)
        future = [t for t in deadlines if t > self.t]
        return min(future) if future else None
