"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def until_status(instance: Any, wanted: str, timeout: float = 5) -> None:
    """Poll ``instance.status()`` until it reads ``wanted``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (await instance.status())["status"] != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"status is {(await instance.status())['status']}, wanted {wanted}")
        await asyncio.sleep(0.01)


async def until_no_runs(engine: Any, timeout: float = 0.5) -> None:
    """Wait until ``engine`` holds no run in memory. A run ends just after its suspend commits,
    and on PostgreSQL another connection may read the new status a moment before the run has
    heard back from its own commit; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while engine._running:
        if time.monotonic() > deadline:
            raise AssertionError(f"runs still in memory: {list(engine._running)}")
        await asyncio.sleep(0.005)
