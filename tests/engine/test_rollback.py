"""Rollback (saga) handlers: run in reverse step order when an instance fails (Cloudflare's
``rollback`` / ``rollbackConfig``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, NonRetryableError, WorkflowEntrypoint
from perdure.server.operations import event_history

Make = Callable[..., Engine]
FAST = {"retries": {"limit": 2, "delay": 10, "backoff": "constant"}}


async def run_one(
    make_engine: Make, cls: type[WorkflowEntrypoint], **options: Any
) -> tuple[Engine, Any, dict[str, Any]]:
    engine = make_engine(**options)
    binding = engine.register(cls, name="wf")
    await engine.start()
    instance = await binding.create(params={"n": 1})
    return engine, instance, await instance.wait(20)


async def test_handlers_run_newest_first_with_ctx_error_and_output(make_engine: Make) -> None:
    calls: list[tuple[str, Any, str, str]] = []

    def undo(ctx: dict[str, Any], error: Exception, output: Any) -> None:
        calls.append((ctx["step"]["name"], output, type(error).__name__, str(error)))

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.do("reserve", lambda: "seat-7", rollback=undo, rollback_config=FAST)
            await step.do("no handler", lambda: 2)

            @step.do("charge", rollback=undo, rollback_config=FAST)  # the decorator form
            async def charge() -> dict[str, int]:
                return {"cents": 500}

            await charge()

            def ship() -> None:
                raise NonRetryableError("courier refused")

            await step.do("ship", ship, rollback=undo, rollback_config=FAST)

    engine, instance, status = await run_one(make_engine, Flow)
    assert status["status"] == "errored"
    assert status["error"] == {"name": "NonRetryableError", "message": "courier refused"}  # the original error
    assert calls == [
        ("ship", None, "NonRetryableError", "courier refused"),  # failed step: output None
        ("charge", {"cents": 500}, "NonRetryableError", "courier refused"),
        ("reserve", "seat-7", "NonRetryableError", "courier refused"),
    ]
    kinds = sorted((s.kind, s.name, s.status) for s in await engine.store.load_steps(instance.pk))
    assert ("rollback", "charge", "complete") in kinds and ("rollback", "no handler", "complete") not in kinds
    record = await engine.store.get_instance("wf", instance.id)
    assert record is not None
    events = event_history(record, await engine.store.load_steps(instance.pk), await engine.store.history(instance.pk))
    rollback = [(e["type"], e.get("step", {}).get("name")) for e in events if e["type"].startswith("ROLLBACK")]
    assert rollback[0] == ("ROLLBACK_START", None) and rollback[-1] == ("ROLLBACK_COMPLETE", None)
    assert [name for kind, name in rollback if kind == "ROLLBACK_STEP_SUCCESS"] == ["ship", "charge", "reserve"]
    assert [e["type"] for e in events][-1] == "WORKFLOW_FAILURE"


async def test_a_handler_is_retried_and_one_that_fails_for_good_stops_the_chain(make_engine: Make) -> None:
    tries: dict[str, int] = {}

    def flaky_undo(ctx: dict[str, Any]) -> None:
        name = ctx["step"]["name"]
        tries[name] = tries.get(name, 0) + 1
        if name == "b" and tries[name] < 3:
            raise RuntimeError("refund service down")
        if name == "c":
            raise NonRetryableError("cannot undo c")

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            for name in ("a", "b", "c"):
                await step.do(name, lambda name=name: name, rollback=flaky_undo, rollback_config=FAST)
            raise RuntimeError("the order is void")

    _, _, status = await run_one(make_engine, Flow)
    assert status["error"] == {"name": "RuntimeError", "message": "the order is void"}
    assert tries == {"c": 1}  # NonRetryableError: no retry, and b and a never ran

    tries.clear()

    class Flow2(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            for name in ("a", "b"):
                await step.do(name, lambda name=name: name, rollback=flaky_undo, rollback_config=FAST)
            raise RuntimeError("void")

    engine = make_engine()
    binding = engine.register(Flow2, name="wf2")
    await engine.start()
    instance = await binding.create()
    assert (await instance.wait(10))["status"] == "errored"
    assert tries == {"b": 3, "a": 1}  # b failed twice, then succeeded, then a ran


async def test_handlers_of_steps_read_back_on_replay_run_too(make_engine: Make) -> None:
    undone: list[Any] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            made = await step.do("make", lambda: "thing", rollback=lambda output: undone.append(output))
            await step.sleep("nap", 120)  # longer than fast_wait: the run suspends and replays
            await step.do("use", lambda: 1 / 0, config={"retries": {"limit": 0}})
            return made

    _, _, status = await run_one(make_engine, Flow, fast_wait=0.05)
    assert status["status"] == "errored" and status["error"]["name"] == "ZeroDivisionError"
    assert undone == ["thing"]


async def test_a_caught_failure_does_not_roll_back_and_success_runs_no_handler(make_engine: Make) -> None:
    undone: list[str] = []

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.do("a", lambda: 1, rollback=lambda: undone.append("a"))
            try:
                await step.do("b", lambda: 1 / 0, config={"retries": {"limit": 0}}, rollback=lambda: undone.append("b"))
            except ZeroDivisionError:
                pass
            return "fine"

    _, _, status = await run_one(make_engine, Flow)
    assert status["status"] == "complete" and undone == []


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"rollback": "refund"}, "rollback must be a function, got str"),
        ({"rollback": lambda amount: None}, "parameter 'amount' is not one the engine passes"),
        ({"rollback": lambda: None, "rollback_config": {"retries": {"limit": -1}}}, "'retries.limit' must be"),
        ({"rollback": lambda: None, "rollback_config": {"sensitive": "x"}}, "unknown rollback_config key"),
        ({"rollback_config": {"timeout": "1 minute"}}, "rollback_config needs a rollback handler"),
    ],
)
async def test_bad_rollback_options_are_value_errors_before_the_step_runs(
    make_engine: Make, kwargs: dict[str, Any], says: str
) -> None:
    ran = False

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def body() -> None:
                nonlocal ran
                ran = True

            try:
                await step.do("charge", body, **kwargs)
            except ValueError as exc:
                return str(exc)

    _, _, status = await run_one(make_engine, Flow)
    assert not ran
    assert says in status["output"]
