"""An instance reads ``waiting`` during every sleep and retry delay, also one short enough to be
waited in memory (``fast_wait``), and pause() / terminate() then act at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from tests.engine.util import until_status

Make = Callable[..., Engine]
attempts: list[float] = []


class Napper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("before", lambda: 1)
        await step.sleep("nap", event.payload.get("nap", 600))
        return await step.do("after", lambda: "done")


class Flaky(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def flaky() -> None:
            attempts.append(time.monotonic())
            raise RuntimeError("down")

        await step.do("flaky", flaky, config={"retries": {"limit": 3, "delay": 700, "backoff": "constant"}})


async def test_a_short_sleep_reads_waiting_while_the_worker_keeps_the_run(make_engine: Make) -> None:
    engine = make_engine(fast_wait=1.0)
    binding = engine.register(Napper, name="nap")
    await engine.start()
    instance = await binding.create(params={"nap": 600})
    await until_status(instance, "waiting", timeout=2)
    assert engine._running  # kept in memory, not suspended
    record = await engine.store.get_instance("nap", instance.id)
    assert record is not None and record.owner == engine.owner and record.wake_at is not None
    assert (await instance.wait(5))["status"] == "complete"


async def test_pause_during_a_short_sleep_takes_effect_at_once(make_engine: Make) -> None:
    engine = make_engine(fast_wait=1.0)
    binding = engine.register(Napper, name="nap")
    await engine.start()
    instance = await binding.create(params={"nap": 800})
    await until_status(instance, "waiting", timeout=2)
    paused_at = time.monotonic()
    await instance.pause()
    assert (await instance.status())["status"] == "paused"
    deadline = time.monotonic() + 1
    while engine._running:  # the run in memory is dropped, as for a suspended instance
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # past the sleep's end: a paused instance does not wake
    assert (await instance.status())["status"] == "paused"
    await instance.resume()
    status = await instance.wait(5)
    assert status["status"] == "complete"
    assert time.monotonic() - paused_at >= 1.0


async def test_terminate_during_a_short_retry_delay_stops_the_retries(make_engine: Make) -> None:
    attempts.clear()
    engine = make_engine(fast_wait=1.0)
    binding = engine.register(Flaky, name="flaky")
    await engine.start()
    instance = await binding.create()
    await until_status(instance, "waiting", timeout=2)  # the retry delay after attempt 1
    assert len(attempts) == 1
    await instance.terminate()
    assert (await instance.status())["status"] == "terminated"
    await asyncio.sleep(1.0)
    assert len(attempts) == 1  # no attempt after the terminate
