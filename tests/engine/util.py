"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def start_worker(module: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m module args...`` (a test worker process) and wait for its "ready" line."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


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


def record_claims(engine: Any, monkeypatch: Any) -> list[list[Any]]:
    """Wrap ``engine.store.claim``: the records of every claim round, one list per round."""
    rounds: list[list[Any]] = []
    original = engine.store.claim

    async def claim(*args: Any, **kwargs: Any) -> Any:
        records = await original(*args, **kwargs)
        rounds.append(list(records))
        return records

    monkeypatch.setattr(engine.store, "claim", claim)
    return rounds
