"""``ManualClock(auto_advance=True)``: when every instance waits on time, time jumps to the next
deadline. Measured in real time, on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from perdure import Engine, EventTimeoutError, WorkflowEntrypoint
from perdure.testing import ManualClock

Make = Callable[..., Engine]
DAY = 24 * 3600


class Month(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("a month", "30 days")
        try:
            await step.wait_for_event("answer", "answer", timeout="1 hour")
        except EventTimeoutError:
            return "no answer"
        return "answered"


class SlowStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def slow() -> str:
            await asyncio.sleep(0.3)  # real time, while the clock has a 10-minute timeout pending
            return "finished"

        return await step.do("slow", slow, config={"timeout": "10 minutes", "retries": {"limit": 0}})


async def test_a_30_day_sleep_and_an_hour_timeout_take_well_under_a_second(make_engine: Make) -> None:
    clock = ManualClock(auto_advance=True)
    engine = make_engine(clock=clock)
    binding = engine.register(Month, name="month")
    await engine.start()
    started_at, real = clock.now(), time.perf_counter()
    instance = await binding.create(id="m")
    result = await instance.wait(timeout=10)
    elapsed = time.perf_counter() - real
    print(f"\n30 days + 1 hour of workflow time in {elapsed * 1000:.0f} ms of real time")
    assert result == {"status": "complete", "output": "no answer", "error": None}
    assert clock.now() - started_at >= 30 * DAY + 3600
    assert clock.jumps == 2  # to the end of the sleep, then to the end of the event wait
    assert elapsed < 1.0
    await clock.aclose()


async def test_time_does_not_jump_while_a_step_runs(make_engine: Make) -> None:
    clock = ManualClock(auto_advance=True)
    engine = make_engine(clock=clock)
    binding = engine.register(SlowStep, name="slow")
    await engine.start()
    instance = await binding.create(id="s")
    assert (await instance.wait(timeout=10))["output"] == "finished"  # not timed out by a jump
    assert clock.jumps == 0
    await clock.aclose()


async def test_held_time_lets_the_test_answer_a_wait(make_engine: Make) -> None:
    clock = ManualClock(auto_advance=True, quiet=0.005)
    engine = make_engine(clock=clock)
    binding = engine.register(Month, name="month")
    await engine.start()
    with clock.held():
        instance = await binding.create(id="m")
        await until(lambda steps: any(s.kind == "sleep" for s in steps), engine, instance.pk)
        clock.advance(30 * DAY)
        await until(lambda steps: any(s.kind == "waitForEvent" for s in steps), engine, instance.pk)
        await asyncio.sleep(0.05)  # ten quiet periods: without held() the hour would have passed
        await instance.send_event("answer", None)
    assert clock.auto_advance
    assert (await instance.wait(timeout=10))["output"] == "answered"
    await clock.aclose()


async def until(test: Callable[[Any], bool], engine: Engine, pk: int) -> None:
    deadline = time.monotonic() + 5
    while not test(await engine.store.load_steps(pk)):
        assert time.monotonic() < deadline, "the instance did not get there"
        await asyncio.sleep(0.01)


def test_quiet_must_be_positive() -> None:
    import pytest

    with pytest.raises(ValueError, match="quiet"):
        ManualClock(quiet=0)
