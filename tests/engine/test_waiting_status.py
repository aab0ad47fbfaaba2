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


class Ticks(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        first = await step.wait_for_event("tick 1", "tick", timeout="1 hour")
        second = await step.wait_for_event("tick 2", "tick", timeout="1 hour")  # in memory: a stream
        return [first["payload"], second["payload"]]


async def _in_memory(engine: Engine, instance: Any) -> None:
    """Until the run of ``instance`` is in this worker's memory and the instance reads waiting."""
    deadline = time.monotonic() + 2
    while not (engine._running and (await instance.status())["status"] == "waiting"):
        assert time.monotonic() < deadline, await instance.status()
        await asyncio.sleep(0.01)


async def test_an_event_wait_in_memory_reads_waiting_and_terminate_acts_at_once(make_engine: Make) -> None:
    """The second wait for an event type this run already took is kept in memory for up to
    fast_wait (a fan-in's stream of events): the instance reads waiting meanwhile, an event
    ends it in place, and terminate during such a wait drops the run at once."""
    engine = make_engine(fast_wait=2.0)
    binding = engine.register(Ticks, name="ticks")
    await engine.start()
    streamed = await binding.create(id="streamed")
    await until_status(streamed, "waiting", timeout=2)
    await streamed.send_event("tick", 1)
    await _in_memory(engine, streamed)  # the second wait, in this worker's memory
    await streamed.send_event("tick", 2)
    assert (await streamed.wait(5)) == {"status": "complete", "output": [1, 2], "error": None}

    gone = await binding.create(id="gone")
    await until_status(gone, "waiting", timeout=2)
    await gone.send_event("tick", 1)
    await _in_memory(engine, gone)
    await gone.terminate()
    deadline = time.monotonic() + 1
    while engine._running:  # dropped at once, not when the 2 s in memory are over
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert (await gone.status())["status"] == "terminated"
