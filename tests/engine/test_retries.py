"""Retries, backoff, timeouts and errors (SPEC §1.2, §1.5)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from perdure import Engine, NonRetryableError, StepError, WorkflowEntrypoint, WorkflowTimeoutError
from tests.engine.util import until_no_runs

Make = Callable[..., Engine]


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:  # cannot be rebuilt from a message alone
        super().__init__(f"{code}: {detail}")


async def start(make_engine: Make, cls: type[WorkflowEntrypoint], **options: Any) -> tuple[Engine, Any]:
    engine = make_engine(**options)
    binding = engine.register(cls, name="wf")
    await engine.start()
    return engine, binding


async def test_limit_counts_retries_and_delays_follow_backoff(make_engine: Make) -> None:
    starts: list[float] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def flaky() -> None:
                starts.append(time.monotonic())
                raise RuntimeError(f"attempt {len(starts)} failed")

            await step.do("flaky", flaky, config={"retries": {"limit": 3, "delay": 100, "backoff": "exponential"}})

    engine, binding = await start(make_engine, Flow)
    instance = await binding.create()
    status = await instance.wait(10)
    assert len(starts) == 4  # limit 3 = one attempt + three retries
    assert status["status"] == "errored"
    assert status["error"] == {"name": "RuntimeError", "message": "attempt 4 failed"}
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Never early; the third gap tells exponential (0.4 s) from linear (0.3 s).
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert expected <= gap < expected + 0.5
    (record,) = await engine.store.load_steps(instance.pk)
    assert len(record.attempts) == 4 and all(a["error"]["name"] == "RuntimeError" for a in record.attempts)


async def test_limit_zero_means_one_attempt_and_linear_and_constant_backoff(make_engine: Make) -> None:
    calls: Counter[str] = Counter()
    starts: dict[str, list[float]] = {"linear": [], "constant": []}

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            out = []
            for name, config in [
                ("once", {"retries": {"limit": 0}}),
                ("linear", {"retries": {"limit": 2, "delay": 40, "backoff": "linear"}}),
                ("constant", {"retries": {"limit": 2, "delay": 200, "backoff": "constant"}}),
            ]:

                def fail(name: str = name) -> None:
                    calls[name] += 1
                    if name in starts:
                        starts[name].append(time.monotonic())
                    raise ValueError(name)

                try:
                    await step.do(name, fail, config=config)
                except ValueError as exc:
                    out.append(str(exc))
            return out

    engine, binding = await start(make_engine, Flow)
    status = await (await binding.create()).wait(10)
    assert status["output"] == ["once", "linear", "constant"]
    assert calls == Counter({"once": 1, "linear": 3, "constant": 3})
    linear = [b - a for a, b in zip(starts["linear"], starts["linear"][1:], strict=False)]
    constant = [b - a for a, b in zip(starts["constant"], starts["constant"][1:], strict=False)]
    assert 0.04 <= linear[0] and 0.08 <= linear[1] < 0.5  # linear: delay, then 2 x delay
    assert len(constant) == 2 and all(0.2 <= gap < 0.35 for gap in constant)  # linear would give 0.4


async def test_succeeds_after_failures(make_engine: Make) -> None:
    attempts: list[int] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("eventually", config={"retries": {"limit": 5, "delay": 10}})
            async def eventually(ctx: dict[str, Any]) -> int:
                attempts.append(ctx["attempt"])
                if ctx["attempt"] < 3:
                    raise ConnectionError("flaky network")
                return ctx["attempt"]

            return await eventually()

    engine, binding = await start(make_engine, Flow)
    assert (await (await binding.create()).wait(10))["output"] == 3
    assert attempts == [1, 2, 3]


async def test_timeout_cancels_the_attempt_and_counts_as_a_failure(make_engine: Make) -> None:
    cancelled: list[int] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("slow", config={"retries": {"limit": 1, "delay": 10}, "timeout": 100})
            async def slow(ctx: dict[str, Any]) -> str:
                if ctx["attempt"] == 1:
                    try:
                        await asyncio.sleep(5)
                    except asyncio.CancelledError:
                        cancelled.append(ctx["attempt"])
                        raise
                return "second attempt finished"

            return await slow()

    engine, binding = await start(make_engine, Flow)
    instance = await binding.create()
    assert (await instance.wait(10))["output"] == "second attempt finished"
    assert cancelled == [1]
    (record,) = await engine.store.load_steps(instance.pk)
    assert record.attempts[0]["error"]["name"] == WorkflowTimeoutError.__name__


async def test_non_retryable_error_stops_retries_and_keeps_its_message(make_engine: Make) -> None:
    calls: list[int] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def moderate() -> None:
                calls.append(1)
                raise NonRetryableError("Pun 7 failed moderation")

            await step.do("content-moderation", moderate)

    engine, binding = await start(make_engine, Flow)
    status = await (await binding.create()).wait(10)
    assert calls == [1]
    assert status == {
        "status": "errored",
        "output": None,
        "error": {"name": "NonRetryableError", "message": "Pun 7 failed moderation"},
    }


async def test_caught_failures_are_memoised_and_rebuilt_on_replay(make_engine: Make) -> None:
    calls: Counter[str] = Counter()
    seen: list[tuple[str, str, str]] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def value_error() -> None:
                calls["value"] += 1
                raise ValueError("bad value")

            def custom() -> None:
                calls["custom"] += 1
                raise CustomError(42, "teapot")

            def non_retryable() -> None:
                calls["nre"] += 1
                raise NonRetryableError("stop")

            for name, fn in [("value", value_error), ("custom", custom), ("nre", non_retryable)]:
                try:
                    await step.do(name, fn, config={"retries": {"limit": 0}})
                except ValueError as exc:
                    seen.append((name, "ValueError", str(exc)))
                except NonRetryableError as exc:
                    seen.append((name, "NonRetryableError", str(exc)))
                except StepError as exc:
                    seen.append((name, f"StepError:{exc.name}", exc.message))
                except CustomError as exc:
                    seen.append((name, "CustomError", str(exc)))
            await step.sleep("replay-me", 200)
            return "done"

    engine, binding = await start(make_engine, Flow, fast_wait=0.05)
    assert (await (await binding.create()).wait(10))["output"] == "done"
    assert calls == Counter({"value": 1, "custom": 1, "nre": 1})  # never run again on replay
    first, replay = seen[:3], seen[3:]
    assert first == [
        ("value", "ValueError", "bad value"),
        ("custom", "CustomError", "42: teapot"),
        ("nre", "NonRetryableError", "stop"),
    ]
    assert replay == [
        ("value", "ValueError", "bad value"),
        ("custom", "StepError:CustomError", "42: teapot"),
        ("nre", "NonRetryableError", "stop"),
    ]


async def test_uncaught_error_in_run_errors_the_instance(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.do("fine", lambda: 1)
            raise KeyError("missing")

    engine, binding = await start(make_engine, Flow)
    status = await (await binding.create()).wait(10)
    assert status["status"] == "errored" and status["error"]["name"] == "KeyError"


async def test_long_retry_delay_holds_no_worker(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("later", config={"retries": {"limit": 1, "delay": 400, "backoff": "constant"}})
            async def later(ctx: dict[str, Any]) -> int:
                if ctx["attempt"] == 1:
                    raise RuntimeError("try again later")
                return ctx["attempt"]

            return await later()

    engine, binding = await start(make_engine, Flow, fast_wait=0.05)
    instance = await binding.create()
    for _ in range(100):
        if (await instance.status())["status"] == "waiting":
            break
        await asyncio.sleep(0.01)
    assert (await instance.status())["status"] == "waiting"
    await until_no_runs(engine)  # no coroutine is kept for a waiting instance
    assert (await instance.status())["status"] == "waiting"
    assert (await instance.wait(5))["output"] == 2
