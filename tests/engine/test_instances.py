"""Bindings and instance control (SPEC §2, §3)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from perdure import (
    Engine,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    WorkflowEntrypoint,
)
from perdure.cron import firing_id
from perdure.records import NewInstance
from tests.engine.util import until_status

Make = Callable[..., Engine]


class Echo(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload)


async def test_create_get_and_status_before_start(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Echo, name="echo")
    generated = await binding.create()
    named = await binding.create(id="order-42", params={"n": 42})
    mapping = await binding.create({"id": "from-mapping", "params": [1, 2]})
    assert len(generated.id) == 36 and binding.name == "echo"
    assert await named.status() == {"status": "queued", "output": None, "error": None}
    assert (await binding.get("order-42")).id == "order-42"
    async with engine:
        assert (await named.wait(5))["output"] == {"n": 42}
        assert (await mapping.wait(5))["output"] == [1, 2]
        assert (await generated.wait(5))["output"] == {}  # params default to {}


async def test_duplicate_ids_unknown_ids_and_bad_input(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Echo, name="echo")
    await binding.create(id="once")
    with pytest.raises(InstanceAlreadyExistsError):
        await binding.create(id="once")
    with pytest.raises(InstanceNotFoundError):
        await binding.get("never-created")
    with pytest.raises(ValueError, match="instance id"):
        await binding.create(id="has space")
    with pytest.raises(ValueError, match="1 MiB"):
        await binding.create(params={"blob": "x" * (1024 * 1024)})
    with pytest.raises(ValueError, match="not JSON"):
        await binding.create(params={"when": object()})
    with pytest.raises(ValueError, match="unknown key"):
        await binding.create({"id": "x", "parms": {}})
    page = await engine.store.list_instances("echo")
    assert [i.id for i in page.items] == ["once"]  # nothing else was stored


async def test_create_batch_skips_existing_ids_and_checks_its_size(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Echo, name="echo")
    await binding.create(id="a")
    created = await binding.create_batch([{"id": "a"}, {"id": "b", "params": 1}, {"params": 2}])
    assert [i.id for i in created][:1] == ["b"] and len(created) == 2
    with pytest.raises(ValueError, match="1-100 items"):
        await binding.create_batch([])
    with pytest.raises(ValueError, match="1-100 items"):
        await binding.create_batch([{} for _ in range(101)])
    with pytest.raises(ValueError, match="instance id"):
        await binding.create_batch([{"id": "ok"}, {"id": "not ok"}])
    assert await engine.store.get_instance("echo", "ok") is None  # a bad item stores nothing


async def test_register_validates_its_arguments(make_engine: Make) -> None:
    engine = make_engine()
    with pytest.raises(ValueError, match="workflow name"):
        engine.register(Echo, name="bad name")
    with pytest.raises(ValueError, match="cron"):
        engine.register(Echo, name="c", schedules=["every day"])
    with pytest.raises(ValueError, match="steps"):
        engine.register(Echo, name="l", limits={"steps": 0})
    with pytest.raises(ValueError, match="WorkflowEntrypoint"):
        engine.register(object, name="o")  # type: ignore[arg-type]
    engine.register(Echo, name="e")
    with pytest.raises(ValueError, match="already registered"):
        engine.register(Echo, name="e")


class Gate(WorkflowEntrypoint):
    """Step one blocks until the test opens the gate; counts executions per step."""

    gate: asyncio.Event
    runs: Counter[str]

    async def run(self, event: Any, step: Any) -> Any:
        async def one() -> str:
            Gate.runs["one"] += 1
            await Gate.gate.wait()
            return "one"

        async def two() -> str:
            Gate.runs["two"] += 1
            return "two"

        return [await step.do("one", one), await step.do("two", two)]


@pytest.fixture
def gate() -> type[Gate]:
    Gate.gate = asyncio.Event()
    Gate.runs = Counter()
    return Gate


async def test_pause_waits_for_the_in_flight_step(make_engine: Make, gate: type[Gate]) -> None:
    engine = make_engine()
    binding = engine.register(gate, name="gate")
    async with engine:
        instance = await binding.create()
        await until_status(instance, "running")
        while gate.runs["one"] == 0:
            await asyncio.sleep(0.01)
        await instance.pause()
        assert (await instance.status())["status"] == "waitingForPause"
        gate.gate.set()
        await until_status(instance, "paused")
        assert gate.runs == Counter({"one": 1})  # step two did not start
        await instance.pause()  # pausing a paused instance is a no-op
        await instance.resume()
        assert (await instance.wait(5))["output"] == ["one", "two"]
        assert gate.runs == Counter({"one": 1, "two": 1})
        await instance.resume()  # resuming a complete instance is a no-op
        assert (await instance.status())["status"] == "complete"


async def test_pause_and_resume_a_queued_instance(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Echo, name="echo")
    instance = await binding.create(params="p")
    await instance.pause()
    assert (await instance.status())["status"] == "paused"
    async with engine:
        await asyncio.sleep(0.2)
        assert (await instance.status())["status"] == "paused"
        await instance.resume()
        assert (await instance.wait(5))["output"] == "p"


async def test_terminate_cancels_the_in_flight_attempt(make_engine: Make, gate: type[Gate]) -> None:
    engine = make_engine()
    binding = engine.register(gate, name="gate")
    async with engine:
        instance = await binding.create()
        while gate.runs["one"] == 0:
            await asyncio.sleep(0.01)
        await instance.terminate()
        status = await instance.wait(5)
        assert status == {"status": "terminated", "output": None, "error": None}
        await asyncio.sleep(0.1)
        assert engine._running == {}
        with pytest.raises(InvalidStateError):
            await instance.terminate()
        await instance.resume()  # a terminated instance cannot be resumed
        assert (await instance.status())["status"] == "terminated"
        gate.gate.set()
        await asyncio.sleep(0.1)
        assert gate.runs["two"] == 0


async def test_restart_runs_again_from_the_start_or_from_a_step(make_engine: Make) -> None:
    runs: Counter[str] = Counter()

    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            out = []
            for name in ("a", "b", "c"):

                def work(name: str = name) -> str:
                    runs[name] += 1
                    return f"{name}{runs[name]}"

                out.append(await step.do(name, work))
            return out

    engine = make_engine()
    binding = engine.register(Flow, name="wf")
    async with engine:
        instance = await binding.create(id="again", params={"x": 1})
        assert (await instance.wait(5))["output"] == ["a1", "b1", "c1"]
        await instance.restart()
        assert (await instance.wait(5))["output"] == ["a2", "b2", "c2"]
        await instance.restart(from_step={"name": "b"})
        assert (await instance.wait(5))["output"] == ["a2", "b3", "c3"]
        with pytest.raises(ValueError, match="no do step 'zzz'"):
            await instance.restart(from_step={"name": "zzz"})
        with pytest.raises(ValueError, match="type"):
            await instance.restart(from_step={"name": "a", "type": "run"})
        assert (await instance.record()).params == {"x": 1}


async def test_wait_raises_timeout_error(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Echo, name="echo")
    instance = await binding.create()  # never runs: the engine is not started
    with pytest.raises(TimeoutError):
        await instance.wait(timeout=0.1)


async def test_child_workflow_started_from_a_step(make_engine: Make) -> None:
    class Parent(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            async def start_child() -> str:
                child = await self.env["child"].create(id=f"child-of-{event.instance_id}", params={"from": "parent"})
                return str(child.id)

            return await step.do("start-child", start_child)

    engine = make_engine()
    env: dict[str, Any] = {}
    parent = engine.register(Parent, name="parent", env=env)
    env["child"] = engine.register(Echo, name="child")
    async with engine:
        child_id = (await (await parent.create(id="p1")).wait(5))["output"]
        assert child_id == "child-of-p1"
        assert (await (await env["child"].get(child_id)).wait(5))["output"] == {"from": "parent"}


async def test_cron_schedule_creates_one_instance_per_firing(make_engine: Make) -> None:
    class Scheduled(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            return {"cron": event.schedule["cron"], "at": event.schedule["scheduled_time"].timestamp()}

    engine = make_engine()
    binding = engine.register(Scheduled, name="tick", schedules=["* * * * * */1"])  # every second
    twin = make_engine()  # a second worker on the same database fires the same schedule
    twin.register(Scheduled, name="tick", schedules=["* * * * * */1"])
    async with engine, twin:
        await asyncio.sleep(2.5)
    page = await engine.store.list_instances("tick")
    firings = sorted(i.schedule["scheduled_time"] for i in page.items if i.schedule)
    assert 2 <= len(firings) <= 3
    assert len(set(firings)) == len(firings)  # exactly one instance per firing across both workers
    assert all(i.trigger == "cron" for i in page.items)
    first = page.items[-1]
    assert first.id == firing_id("* * * * * */1", first.schedule["scheduled_time"])  # type: ignore[index]
    done = await (await binding.get(first.id)).status()
    assert done["status"] == "complete" and done["output"]["cron"] == "* * * * * */1"


async def test_running_instances_are_bounded_by_max_concurrent(make_engine: Make) -> None:
    active = 0
    peak = 0

    class Busy(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            async def work() -> None:
                nonlocal active, peak
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.02)
                active -= 1

            await step.do("work", work)

    engine = make_engine(max_concurrent=3)
    binding = engine.register(Busy, name="busy")
    async with engine:
        instances = await binding.create_batch([{} for _ in range(20)])
        for instance in instances:
            await instance.wait(10)
    assert peak == 3


async def test_engine_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        Engine("sqlite:///x.db", max_concurrent=0)
    with pytest.raises(ValueError, match="unsupported database url"):
        Engine("mysql://localhost/db")
    with pytest.raises(ValueError, match="durability"):
        Engine("sqlite:///x.db", durability="sometimes")


async def test_resume_cancels_a_pending_pause(make_engine: Make, gate: type[Gate]) -> None:
    engine = make_engine()
    binding = engine.register(gate, name="gate")
    async with engine:
        instance = await binding.create()
        while gate.runs["one"] == 0:
            await asyncio.sleep(0.01)
        await instance.pause()
        assert (await instance.status())["status"] == "waitingForPause"
        await instance.resume()
        assert (await instance.status())["status"] == "running"
        gate.gate.set()
        assert (await instance.wait(5))["output"] == ["one", "two"]  # step two ran: no pause


async def test_a_due_timer_waits_for_a_free_slot_without_blocking_the_loop(make_engine: Make) -> None:
    class Napper(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            await step.sleep("nap", 200)
            return "napped"

    class Busy(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            return await step.do("busy", lambda: asyncio.sleep(0.6, result="busy"))

    engine = make_engine(max_concurrent=1, fast_wait=0.05)
    napper = engine.register(Napper, name="napper")
    busy = engine.register(Busy, name="busy")
    # Another app's instance, due long ago, that no worker here may run: it must not keep us busy.
    store = await engine.ensure_store()
    await store.create_instances("elsewhere", [NewInstance("due", "{}")], now=1.0, skip_existing=False)
    (other,) = await store.claim("gone", 1, now=2.0, lease_until=3.0, workflows=["elsewhere"])
    await store.suspend(other.pk, other.epoch, wake_at=4.0, wait_types=[], now=3.0)
    async with engine:
        sleeping = await napper.create()
        await until_status(sleeping, "waiting")
        running = await busy.create()
        ticks = 0

        async def tick() -> None:  # proves the event loop keeps turning while the timer is due
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        assert (await running.wait(5))["output"] == "busy"
        assert (await sleeping.wait(5))["output"] == "napped"
        ticker.cancel()
    assert ticks > 30
