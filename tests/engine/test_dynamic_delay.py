"""Dynamic retry delays: ``retries.delay`` as a function of ``(ctx, error)`` (Cloudflare 2026-07)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, NonRetryableDelayError, WorkflowEntrypoint
from perdure import retries as retries_module

Make = Callable[..., Engine]


async def run_one(
    make_engine: Make, cls: type[WorkflowEntrypoint], **options: Any
) -> tuple[Engine, Any, dict[str, Any]]:
    engine = make_engine(**options)
    binding = engine.register(cls, name="wf")
    await engine.start()
    instance = await binding.create()
    return engine, instance, await instance.wait(20)


async def test_the_function_sets_each_base_delay_and_backoff_scales_it(make_engine: Make) -> None:
    starts: list[float] = []
    seen: list[tuple[int, str, dict[str, Any]]] = []
    configs: list[dict[str, Any]] = []

    def delay(ctx: dict[str, Any], error: Exception) -> Any:
        seen.append((ctx["attempt"], str(error), ctx["config"]))
        return {1: 50, 2: "0.1 seconds"}[ctx["attempt"]]  # milliseconds or a duration string

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def flaky(ctx: dict[str, Any]) -> str:
                starts.append(time.monotonic())
                configs.append(ctx["config"])
                if len(starts) < 3:
                    raise RuntimeError(f"boom {len(starts)}")
                return "ok"

            return await step.do("flaky", flaky, config={"retries": {"limit": 4, "delay": delay, "backoff": "linear"}})

    engine, instance, status = await run_one(make_engine, Flow)
    assert status["status"] == "complete" and status["output"] == "ok"
    assert [(a, e) for a, e, _ in seen] == [(1, "boom 1"), (2, "boom 2")]  # once per retried failure
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert 0.05 <= gaps[0] < 0.5 and 0.2 <= gaps[1] < 0.7  # 50 ms x 1, then 100 ms x 2 (linear)
    for config in [c for _, _, c in seen] + configs:  # ctx["config"] omits a callable delay
        assert config["retries"] == {"limit": 4, "backoff": "linear"}
    (record,) = await engine.store.load_steps(instance.pk)
    assert record.config is not None and record.config["retries"]["delay"] == "[dynamic]"  # what is stored


async def test_an_async_function_and_a_delay_that_suspends_the_instance(make_engine: Make) -> None:
    calls = 0

    async def delay(error: Exception) -> float:  # only the parameters it names are passed
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return 150

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def flaky(ctx: dict[str, Any]) -> int:
                if ctx["attempt"] < 3:
                    raise RuntimeError("not yet")
                return int(ctx["attempt"])

            return await step.do(
                "flaky", flaky, config={"retries": {"limit": 3, "delay": delay, "backoff": "constant"}}
            )

    # fast_wait below the delay: the retry wait suspends the run, and the replay after it reads
    # the live function from the code again (the stored config holds only a marker).
    _, _, status = await run_one(make_engine, Flow, fast_wait=0.05)
    assert status == {"status": "complete", "output": 3, "error": None}
    assert calls == 2


@pytest.mark.parametrize(
    ("delay", "says"),
    [
        (lambda ctx, error: 1 / 0, "threw an error: ZeroDivisionError"),
        (lambda ctx, error: "soon", "returned an invalid delay value 'soon'"),
        (lambda ctx, error: -5, "returned an invalid delay value -5"),
        (lambda ctx, error: None, "returned an invalid delay value None"),
    ],
)
async def test_a_broken_function_fails_the_step_without_further_retries(
    make_engine: Make, delay: Callable[..., Any], says: str
) -> None:
    attempts = 0

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def flaky() -> None:
                nonlocal attempts
                attempts += 1
                raise RuntimeError("down")

            await step.do("flaky", flaky, config={"retries": {"limit": 5, "delay": delay}})

    _, _, status = await run_one(make_engine, Flow)
    assert attempts == 1
    assert status["status"] == "errored"
    assert status["error"]["name"] == "NonRetryableDelayError"
    assert status["error"]["message"].startswith("The delay function for step 'flaky' ")
    assert says in status["error"]["message"]


async def test_a_function_that_takes_too_long_fails_the_step(
    make_engine: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retries_module, "DELAY_FUNCTION_TIMEOUT", 0.2)

    async def slow(ctx: dict[str, Any]) -> int:
        await asyncio.sleep(5)
        return 10

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            try:
                await step.do("flaky", lambda: 1 / 0, config={"retries": {"limit": 2, "delay": slow}})
            except NonRetryableDelayError as exc:  # catchable in run(), like any step error
                return str(exc)

    _, _, status = await run_one(make_engine, Flow)
    assert status["status"] == "complete"
    assert status["output"] == "The delay function for step 'flaky' did not return within 0.2 seconds"


async def test_a_function_with_parameters_the_engine_does_not_pass_is_refused(make_engine: Make) -> None:
    ran = False

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def body() -> None:
                nonlocal ran
                ran = True

            await step.do("flaky", body, config={"retries": {"delay": lambda attempt: 10}})

    _, _, status = await run_one(make_engine, Flow)
    assert not ran
    assert status["status"] == "errored" and status["error"]["name"] == "ValidationError"
    assert "parameter 'attempt' is not one the engine passes; use 'ctx' and/or 'error'" in status["error"]["message"]
