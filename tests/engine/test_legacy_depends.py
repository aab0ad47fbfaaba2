"""The legacy DAG form of Cloudflare's Python API: ``@step.do(name, depends=[a, b])``, results
passed positionally in ``depends`` order (before compatibility date 2026-02-25)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, WorkflowEntrypoint

Make = Callable[..., Engine]


async def run_one(make_engine: Make, cls: type[WorkflowEntrypoint]) -> tuple[Engine, Any, dict[str, Any]]:
    engine = make_engine()
    binding = engine.register(cls, name="wf")
    await engine.start()
    instance = await binding.create()
    return engine, instance, await instance.wait(10)


async def test_depends_passes_results_in_its_order_whatever_the_parameter_names(make_engine: Make) -> None:
    running: list[str] = []
    overlap = False

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            async def work(label: str) -> str:
                nonlocal overlap
                running.append(label)
                overlap = overlap or len(running) > 1
                await asyncio.sleep(0.05)
                running.remove(label)
                return label

            @step.do("step a")
            async def step_a() -> str:
                return await work("a")

            @step.do("step b")
            async def step_b() -> str:
                return await work("b")

            @step.do("final step", depends=[step_b, step_a], concurrent=True)
            async def final(first: str, second: str, ctx: dict[str, Any]) -> str:
                return f"{first}{second} in {ctx['step']['name']}"

            @step.do("again", [step_a], False, {"retries": {"limit": 0}})  # the positional form
            async def again(x: str) -> str:
                return x * 3

            return [await final(), await again()]

    engine, instance, status = await run_one(make_engine, Flow)
    assert status == {"status": "complete", "output": ["ba in final step", "aaa"], "error": None}
    assert overlap  # concurrent=True gathered the two dependencies
    steps = {s.name: s for s in await engine.store.load_steps(instance.pk)}
    assert set(steps) == {"step a", "step b", "final step", "again"}  # step a ran once, reused after
    assert steps["again"].config is not None and steps["again"].config["retries"]["limit"] == 0


async def test_concurrent_false_runs_dependencies_one_after_another(make_engine: Make) -> None:
    order: list[str] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("a")
            async def a() -> int:
                order.append("a start")
                await asyncio.sleep(0.02)
                order.append("a end")
                return 1

            @step.do("b")
            async def b() -> int:
                order.append("b start")
                return 2

            @step.do("sum", depends=[a, b])
            async def total(x: int, y: int) -> int:
                return x * 10 + y

            return await total()

    _, _, status = await run_one(make_engine, Flow)
    assert status["output"] == 12
    assert order == ["a start", "a end", "b start"]


@pytest.mark.parametrize(
    ("declare", "says"),
    [
        ("too_few", "depends lists 2 step function(s) (a, b) but final takes 1 parameter(s) besides ctx (x)"),
        ("not_steps", "depends must be a list of step functions (made with @step.do)"),
        ("call_form", "depends= goes with the decorator form"),
    ],
)
async def test_a_mismatch_is_a_type_error_naming_both(make_engine: Make, declare: str, says: str) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("a")
            async def a() -> int:
                return 1

            @step.do("b")
            async def b() -> int:
                return 2

            try:
                if declare == "too_few":

                    @step.do("final", depends=[a, b])
                    async def final(x: int) -> int:
                        return x

                elif declare == "not_steps":
                    step.do("final", depends=[len])
                else:
                    await step.do("final", lambda: 1, depends=[a])
            except TypeError as exc:
                return str(exc)
            return "no error"

    _, _, status = await run_one(make_engine, Flow)
    assert says in status["output"]
