"""step.do in both forms, dependencies, ctx, results and memoisation (SPEC §1, §1.1, §1.6)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint

Make = Callable[..., Engine]


async def run_one(
    make_engine: Make, cls: type[WorkflowEntrypoint], params: Any = None, **options: Any
) -> dict[str, Any]:
    engine = make_engine(**options)
    binding = engine.register(cls, name="wf")
    async with engine:
        instance = await binding.create(params=params)
        return await instance.wait(timeout=20)


async def test_call_form_decorator_form_and_event(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            first = await step.do("first", lambda: event.payload["n"] + 1)

            @step.do("second")
            async def second() -> int:
                return first * 10

            return {"first": first, "second": await second(), "id": event.instance_id, "name": event["workflowName"]}

    status = await run_one(make_engine, Flow, {"n": 1})
    assert status["status"] == "complete"
    assert status["output"]["first"] == 2 and status["output"]["second"] == 20
    assert status["output"]["name"] == "wf" and status["error"] is None


async def test_the_decorator_alone_does_not_run_the_step(make_engine: Make) -> None:
    ran: list[str] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("never-awaited")
            async def never_awaited() -> None:
                ran.append("x")

            return "done"

    assert (await run_one(make_engine, Flow))["output"] == "done"
    assert ran == []


async def test_decorator_name_defaults_to_function_name(make_engine: Make) -> None:
    engine = make_engine()

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do()
            async def fetch_user() -> str:
                return "u"

            @step.do
            async def bare() -> str:
                return "b"

            return [await fetch_user(), await bare()]

    binding = engine.register(Flow, name="wf")
    async with engine:
        instance = await binding.create()
        assert (await instance.wait(10))["output"] == ["u", "b"]
        steps = await engine.store.load_steps(instance.pk)
    assert [(s.kind, s.name, s.count) for s in steps] == [("do", "fetch_user", 1), ("do", "bare", 1)]


async def test_dependencies_by_parameter_name_run_once_and_in_order(make_engine: Make) -> None:
    calls: list[str] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("a")
            async def dep_a() -> int:
                calls.append("a")
                return 1

            @step.do("b")
            async def dep_b() -> int:
                calls.append("b")
                return 2

            @step.do("final")
            async def final(dep_a: int, dep_b: int, ctx: dict[str, Any]) -> Any:
                calls.append("final")
                return [dep_a, dep_b, ctx["step"]]

            @step.do("again")
            async def again(dep_a: int) -> int:
                return dep_a * 100

            return [await final(), await again()]

    status = await run_one(make_engine, Flow)
    assert status["output"] == [[1, 2, {"name": "final", "count": 1}], 100]
    assert calls == ["a", "b", "final"]  # a finished dependency is reused, not run again


async def test_concurrent_dependencies_run_together(make_engine: Make) -> None:
    started: list[str] = []
    both_started = asyncio.Event()

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("left")
            async def left() -> str:
                started.append("left")
                if len(started) == 2:
                    both_started.set()
                await asyncio.wait_for(both_started.wait(), 5)
                return "L"

            @step.do("right")
            async def right() -> str:
                started.append("right")
                if len(started) == 2:
                    both_started.set()
                await asyncio.wait_for(both_started.wait(), 5)
                return "R"

            @step.do("join", concurrent=True)
            async def join(left: str, right: str) -> str:
                return left + right

            return await join()

    status = await run_one(make_engine, Flow)
    assert status["output"] == "LR"  # sequential resolution would have timed out in left()


async def test_unexpected_parameter_is_a_type_error_naming_it(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("bad")
            async def bad(mystery: int) -> int:
                return mystery

            try:
                await bad()
            except TypeError as exc:
                return str(exc)
            return "no error"

    output = (await run_one(make_engine, Flow))["output"]
    assert "mystery" in output and "unexpected parameter" in output


async def test_step_context_has_name_count_attempt_and_resolved_config(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            seen = []
            for _ in range(2):

                @step.do("ctx-step", config={"retries": {"limit": 2}})
                async def ctx_step(ctx: dict[str, Any]) -> Any:
                    return ctx

                seen.append(await ctx_step())
            return seen

    output = (await run_one(make_engine, Flow))["output"]
    assert output[0]["step"] == {"name": "ctx-step", "count": 1}
    assert output[1]["step"] == {"name": "ctx-step", "count": 2}
    assert output[0]["attempt"] == 1
    assert output[0]["config"] == {
        "retries": {"limit": 2, "delay": "10 seconds", "backoff": "exponential"},
        "timeout": "10 minutes",
    }


async def test_plain_functions_run_in_a_worker_thread(make_engine: Make) -> None:
    loop_thread = threading.get_ident()

    async def fetch() -> str:
        return "fetched"

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            thread = await step.do("where", threading.get_ident)
            awaited = await step.do("lambda-returning-awaitable", lambda: fetch())
            return [thread != loop_thread, awaited]

    assert (await run_one(make_engine, Flow))["output"] == [True, "fetched"]


async def test_same_name_twice_is_two_steps_and_replay_returns_stored_values(make_engine: Make) -> None:
    executions: Counter[str] = Counter()

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            values = []
            for i in range(3):

                def work(i: int = i) -> Any:
                    executions[f"work-{i}"] += 1
                    return {"i": i, "t": (i, "tuple")}

                values.append(await step.do("work", work))
            await step.sleep("force-a-replay", 300)  # longer than fast_wait: suspends and replays
            return values

    status = await run_one(make_engine, Flow, fast_wait=0.05)
    # Tuples come back as lists the first time too: first value equals replayed value.
    assert status["output"] == [{"i": i, "t": [i, "tuple"]} for i in range(3)]
    assert executions == Counter({"work-0": 1, "work-1": 1, "work-2": 1})


async def test_gathered_steps_run_concurrently_and_are_each_memoised(make_engine: Make) -> None:
    running = 0
    peak = 0

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            async def one(i: int) -> int:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.05)
                running -= 1
                return i

            results = await asyncio.gather(*(step.do(f"part-{i}", lambda i=i: one(i)) for i in range(5)))
            return list(results)

    engine = make_engine()
    binding = engine.register(Flow, name="wf")
    async with engine:
        instance = await binding.create()
        assert (await instance.wait(10))["output"] == [0, 1, 2, 3, 4]
        steps = await engine.store.load_steps(instance.pk)
    assert peak == 5
    assert sorted(s.name for s in steps) == [f"part-{i}" for i in range(5)]


async def test_non_serialisable_result_errors_the_instance_naming_the_step(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.do("returns-object", lambda: object())
            return "unreachable"

    status = await run_one(make_engine, Flow)
    assert status["status"] == "errored"
    assert "returns-object" in status["error"]["message"] and "JSON" in status["error"]["message"]


async def test_result_over_one_mebibyte_errors_the_instance(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            try:
                await step.do("too-big", lambda: "x" * (1024 * 1024 + 1))
            except Exception:  # the size error is not a step failure user code can swallow
                return "swallowed"
            return "unreachable"

    status = await run_one(make_engine, Flow)
    assert status["status"] == "errored"
    assert "too-big" in status["error"]["message"] and "1 MiB" in status["error"]["message"]


async def test_step_limit_is_enforced_per_workflow(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            for _ in range(4):
                await step.do("s", lambda: 1)
                await step.sleep("sleeps-do-not-count", 0)
            return "done"

    engine = make_engine()
    ok = engine.register(Flow, name="ok", limits={"steps": 4})
    capped = engine.register(Flow, name="capped", limits={"steps": 3})
    async with engine:
        assert (await (await ok.create()).wait(10))["status"] == "complete"
        status = await (await capped.create()).wait(10)
    assert status["status"] == "errored"
    assert status["error"]["name"] == "StepLimitExceeded" and "3" in status["error"]["message"]


async def test_invalid_step_inputs_raise_value_error_before_any_attempt(make_engine: Make) -> None:
    attempts: list[int] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            errors = []
            for call in (
                lambda: step.do("bad\x00name", lambda: attempts.append(1)),
                lambda: step.do("cfg", lambda: attempts.append(1), config={"retries": {"limit": -1}}),
                lambda: step.sleep("nap", "soon"),
                lambda: step.sleep("nap", "400 days"),
                lambda: step.wait_for_event("w", "bad.type"),
            ):
                try:
                    await call()
                except ValueError as exc:
                    errors.append(str(exc))
            return errors

    output = (await run_one(make_engine, Flow))["output"]
    assert len(output) == 5
    assert "control" in output[0] and "cfg" in output[1] and "soon" in output[2] and "365 days" in output[3]
    assert "event type" in output[4]
    assert attempts == []
