"""Sleeps, sleep_until and events (SPEC §1.4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from perdure import Engine, EventTimeoutError, InvalidStateError, WorkflowEntrypoint
from tests.engine.util import until_no_runs, until_status

Make = Callable[..., Engine]


class Sleeper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        before = await step.do("before", time.time)
        await step.sleep("nap", event.payload["ms"])
        after = await step.do("after", time.time)
        return after - before


async def test_short_sleep_waits_in_memory(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Sleeper, name="wf")
    async with engine:
        status = await (await binding.create(params={"ms": 200})).wait(5)
    assert 0.2 <= status["output"] < 1.0


async def test_long_sleep_suspends_and_a_timer_wakes_it(make_engine: Make) -> None:
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Sleeper, name="wf")
    async with engine:
        instance = await binding.create(params={"ms": 400})
        await until_status(instance, "waiting")
        await until_no_runs(engine)  # nothing in memory while it sleeps ...
        assert (await instance.status())["status"] == "waiting"  # ... and it does still sleep
        status = await instance.wait(5)
    assert status["status"] == "complete" and 0.4 <= status["output"] < 1.4


async def test_sleep_keeps_its_deadline_across_an_engine_restart(make_engine: Make) -> None:
    first = make_engine(fast_wait=0.05)
    binding = first.register(Sleeper, name="wf")
    await first.start()
    instance = await binding.create(params={"ms": 700})
    await until_status(instance, "waiting")
    started = time.monotonic()
    await first.stop()
    await asyncio.sleep(1.2)  # longer than the sleep: its deadline passes while no engine runs
    second = make_engine(fast_wait=0.05)
    binding2 = second.register(Sleeper, name="wf")
    async with second:
        status = await (await binding2.get(instance.id)).wait(5)
    elapsed = time.monotonic() - started
    assert status["status"] == "complete"
    # Started over at the restart, the sleep would have ended 0.7 s after it (>= 1.9 s in all).
    assert 0.7 <= status["output"] < 1.8
    assert elapsed < 1.8


async def test_sleep_until_past_returns_at_once_and_future_waits(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            t0 = await step.do("t0", time.time)
            await step.sleep_until("past", datetime(2000, 1, 1, tzinfo=UTC))
            t1 = await step.do("t1", time.time)
            await step.sleep_until("soon", (t1 + 0.3) * 1000)
            t2 = await step.do("t2", time.time)
            return [t1 - t0, t2 - t1]

    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Flow, name="wf")
    async with engine:
        quick, slow = (await (await binding.create()).wait(5))["output"]
    assert quick < 0.2 and 0.29 <= slow < 1.2


class Approval(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        got = []
        for i in range(event.payload.get("n", 1)):
            ev = await step.wait_for_event(f"wait-{i}", "approval", timeout=event.payload.get("timeout", "1 hour"))
            assert isinstance(ev["timestamp"], datetime)
            got.append([ev["type"], ev["payload"]])
        return got


async def test_event_sent_while_waiting_is_delivered(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Approval, name="wf")
    async with engine:
        instance = await binding.create()
        await until_status(instance, "waiting")
        await instance.send_event(type="approval", payload={"ok": True})
        assert (await instance.wait(5))["output"] == [["approval", {"ok": True}]]


async def test_events_sent_before_the_wait_are_buffered_in_order(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Approval, name="wf")
    instance = await binding.create(params={"n": 3})  # queued: the engine is not running yet
    await instance.send_event("approval", 1)
    await instance.send_event({"type": "other", "payload": "ignored"})
    await instance.send_event(type="approval", payload=2)
    await instance.send_event("approval", 3)
    async with engine:
        assert (await instance.wait(5))["output"] == [["approval", 1], ["approval", 2], ["approval", 3]]


async def test_wait_timeout_raises_event_timeout_error_which_can_be_caught(make_engine: Make) -> None:
    class Flow(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            try:
                await step.wait_for_event("approval", "approval", timeout=150)
            except EventTimeoutError as exc:
                return f"timed out: {exc}"
            return "approved"

    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Flow, name="wf")
    async with engine:
        started = time.monotonic()
        status = await (await binding.create()).wait(5)
    assert status["output"].startswith("timed out") and "approval" in status["output"]
    assert 0.15 <= time.monotonic() - started < 1.5


async def test_uncaught_wait_timeout_errors_the_instance(make_engine: Make) -> None:
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Approval, name="wf")
    async with engine:
        status = await (await binding.create(params={"timeout": 100})).wait(5)
    assert status["status"] == "errored" and status["error"]["name"] == "EventTimeoutError"


async def test_send_event_to_terminal_instance_is_invalid_state(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Sleeper, name="wf")
    async with engine:
        instance = await binding.create(params={"ms": 0})
        await instance.wait(5)
        with pytest.raises(InvalidStateError):
            await instance.send_event("approval", {})
        with pytest.raises(ValueError, match="event type"):
            await instance.send_event("not valid!", {})


async def test_pause_keeps_remaining_sleep_time(make_engine: Make) -> None:
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Sleeper, name="wf")
    async with engine:
        instance = await binding.create(params={"ms": 1000})
        await until_status(instance, "waiting")
        await asyncio.sleep(0.5)
        await instance.pause()
        assert (await instance.status())["status"] == "paused"
        await asyncio.sleep(1.1)  # longer than the sleep: a timer that ran while paused would fire
        assert (await instance.status())["status"] == "paused"
        resumed = time.monotonic()
        await instance.resume()
        status = await instance.wait(5)
        remaining = time.monotonic() - resumed
    assert status["status"] == "complete"
    assert 0.4 <= remaining < 0.9  # about 0.5 s of the 1 s sleep were left (not 0, not all of it)
    assert status["output"] >= 2.0  # wall time includes the pause


async def test_many_sleeping_instances_hold_no_coroutines(make_engine: Make) -> None:
    engine = make_engine(fast_wait=0.05, max_concurrent=50)
    binding = engine.register(Sleeper, name="wf")
    async with engine:
        for _ in range(10):
            await binding.create_batch(
                [{"params": {"ms": timedelta(hours=1).total_seconds() * 1000}} for _ in range(100)]
            )
        deadline = time.monotonic() + 20
        while (await engine.store.count_by_status("wf"))["wf"].get("waiting", 0) < 1000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await until_no_runs(engine)
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("perdure-wf")]
        assert tasks == []
