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
