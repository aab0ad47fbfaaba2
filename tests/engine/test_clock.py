"""All time goes through the engine's clock: perdure.testing.ManualClock makes hours pass at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from perdure.testing import ManualClock
from tests.engine.util import until_status

Make = Callable[..., Engine]


async def test_an_hour_long_sleep_and_ten_minute_retry_delay_pass_when_the_clock_jumps(make_engine: Make) -> None:
    attempts: list[float] = []

    class Slow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.sleep("an-hour", "1 hour")

            @step.do("flaky", config={"retries": {"limit": 1, "delay": "10 minutes", "backoff": "constant"}})
            async def flaky(ctx: dict[str, Any]) -> int:
                attempts.append(clock.now())
                if ctx["attempt"] == 1:
                    raise RuntimeError("later")
                return ctx["attempt"]

            return await flaky()

    clock = ManualClock(start=1_800_000_000.0)
    start = clock.now()
    engine = make_engine(clock=clock)
    binding = engine.register(Slow, name="slow")
    async with engine:
        instance = await binding.create()
        await until_status(instance, "waiting")
        await asyncio.sleep(0.2)
        assert (await instance.status())["status"] == "waiting"  # real time alone does not wake it
        clock.advance(3600)
        while len(attempts) < 1:
            await asyncio.sleep(0.01)
        await until_status(instance, "waiting")
        clock.advance(600)
        status = await instance.wait(5)
    assert status["output"] == 2
    assert attempts == [start + 3600, start + 4200]
    record = await binding.get(instance.id)
    assert (await record.record()).created_at == start


async def test_a_clock_jump_does_not_expire_the_leases_of_running_steps(make_engine: Make) -> None:
    """Leases measure whether a process is alive, in real time: jumping the engine's clock by a
    day (to end another instance's sleep) must not let the engine take over, and so restart,
    the step that one instance is running right now."""
    release = asyncio.Event()
    starts: list[int] = []

    class Busy(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("busy", config={"timeout": "1 week"})  # the jumps stay inside one attempt
            async def busy(ctx: dict[str, Any]) -> int:
                starts.append(ctx["attempt"])
                await release.wait()
                return 1

            return await busy()

    clock = ManualClock(start=1_800_000_000.0)
    engine = make_engine(clock=clock, lease_ttl=1.0)
    binding = engine.register(Busy, name="busy")
    async with engine:
        instance = await binding.create()
        while not starts:
            await asyncio.sleep(0.01)
        for _ in range(10):  # a day passes on the engine's clock, real time barely moves
            clock.advance(8640)
            await asyncio.sleep(0.05)
        release.set()
        status = await instance.wait(5)
        (step,) = await engine.store.load_steps((await binding.get(instance.id)).pk)
    assert status["status"] == "complete"
    assert starts == [1]  # started once: the engine never reclaimed its own running instance
    assert [a.get("error") for a in step.attempts] == [None]  # no attempt recorded as lost
