"""All time goes through the engine's clock: a test double that jumps makes hours pass at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from tests.engine.util import until_status

Make = Callable[..., Engine]


class JumpingClock:
    """Test double: time stands still until ``advance`` moves it (and wakes due sleepers)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
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
        self.t += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.t]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.t]
        for _, future in due:
            if not future.done():
                future.set_result(None)


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

    clock = JumpingClock()
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
