"""``terminate(rollback=True)``: the rollback handlers of the finished steps run (newest first,
with a ``Terminated`` error) on a worker that has the code, then the instance ends terminated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, ValidationError, WorkflowEntrypoint
from tests.engine.util import until_status

Make = Callable[..., Engine]
undone: list[tuple[str, Any, str, str]] = []
ran_after: list[str] = []


def undo(ctx: dict[str, Any], error: Exception, output: Any) -> None:
    undone.append(
        (
            ctx["step"]["name"],
            output,
            getattr(error, "name", type(error).__name__),
            getattr(error, "message", str(error)),
        )
    )


class Order(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("reserve", lambda: "seat", rollback=undo)
        await step.do("charge", lambda: 500, rollback=undo)
        if event.payload.get("slow"):
            await step.do("slow", lambda: asyncio.sleep(30), rollback=undo)
        await step.wait_for_event("approval", "approval", timeout="1 hour")
        await step.do("ship", lambda: ran_after.append("ship"), rollback=undo)


async def test_a_waiting_instance_rolls_back_then_ends_terminated(make_engine: Make) -> None:
    undone.clear()
    worker = make_engine(fast_wait=0.05)
    worker.register(Order, name="order")
    await worker.start()
    client = make_engine()  # another process's view: it has no code to run handlers with
    client.register(Order, name="order")
    instance = await client.binding("order").create(id="o-1", params={})
    await until_status(instance, "waiting")
    await instance.terminate(rollback=True)
    status = await instance.wait(10)
    assert status["status"] == "terminated"
    assert undone == [
        ("charge", 500, "Terminated", "Instance terminated during rollback"),
        ("reserve", "seat", "Terminated", "Instance terminated during rollback"),
    ]
    assert ran_after == []  # the replay stopped at the wait; nothing after it ran
    history = [h["type"] for h in await client.store.history(instance.pk)]
    assert history[-1] == "WORKFLOW_TERMINATED"
    record = await client.store.get_instance("order", "o-1")
    assert record is not None and record.terminating is None


async def test_a_running_instance_is_fenced_and_the_step_in_flight_has_no_handler_to_run(make_engine: Make) -> None:
    undone.clear()
    worker = make_engine(fast_wait=0.05)
    binding = worker.register(Order, name="order")
    await worker.start()
    instance = await binding.create(id="o-2", params={"slow": True})
    deadline = asyncio.get_running_loop().time() + 5
    while not any(s.name == "slow" for s in await worker.store.load_steps(instance.pk)):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await instance.terminate(rollback=True)
    status = await instance.wait(10)
    assert status["status"] == "terminated"
    assert [name for name, *_ in undone] == ["charge", "reserve"]  # "slow" never finished


async def test_without_finished_steps_or_rollback_it_terminates_at_once(make_engine: Make) -> None:
    undone.clear()
    client = make_engine()
    binding = client.register(Order, name="order")
    queued = await binding.create(id="o-3", params={})
    await queued.terminate(rollback=True)  # no worker runs: nothing to roll back, so no need of one
    assert (await queued.status())["status"] == "terminated"
    worker = make_engine(fast_wait=0.05)
    worker.register(Order, name="order")
    await worker.start()
    plain = await binding.create(id="o-4", params={})
    await until_status(plain, "waiting")
    await plain.terminate()
    assert (await plain.wait(5))["status"] == "terminated"
    await asyncio.sleep(0.2)
    assert undone == []


async def test_rollback_must_be_a_bool_and_a_refused_terminate_changes_nothing(make_engine: Make) -> None:
    client = make_engine()
    binding = client.register(Order, name="order")
    instance = await binding.create(id="o-5", params={})
    for bad in ("no", 1, None):
        with pytest.raises(ValidationError, match=r"terminate\(rollback=\) must be True or False"):
            await instance.terminate(rollback=bad)  # type: ignore[arg-type]
    assert (await instance.status())["status"] == "queued"
