"""Runs that take many events: a backlog is read ahead and consumed without a commit per event
(SQLite, perdure.store.event_prefetch), and a stream of events is waited for in memory instead of
suspending and replaying for each one (perdure.context: Step._event_in_memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from tests.engine.util import until_no_runs, until_status

Make = Callable[..., Engine]
RUNS: list[str] = []  # one entry per run() call (a claim replays from the start)


class Collect(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        RUNS.append(event.instance_id)
        got = []
        for i in range(event.payload["n"]):
            got.append((await step.wait_for_event(f"item-{i}", "item", timeout="1 minute"))["payload"])
        return got


async def test_a_backlog_of_events_is_taken_in_order_with_few_commits(make_engine: Make, db_url: str) -> None:
    engine = make_engine()
    collect = engine.register(Collect, name="collect")
    instance = await collect.create(id="c", params={"n": 300})
    for i in range(300):
        await instance.send_event("item", {"i": i})
    store = await engine.ensure_store()
    writer = getattr(store, "_writer", None)
    before = writer.batches if writer is not None else 0
    async with engine:
        status = await instance.wait(20)
    assert status["output"] == [{"i": i} for i in range(300)]
    steps = await store.load_steps(instance.pk)
    assert sorted(s.result["payload"]["i"] for s in steps) == list(range(300))
    assert all(s.status == "complete" for s in steps) and not await store.has_event(instance.pk, "item")
    if db_url.startswith("sqlite"):  # the read-ahead: one commit per 65 takes, not one per take
        assert writer is not None and writer.batches - before < 60


async def test_a_stream_of_events_is_waited_for_in_memory(make_engine: Make) -> None:
    RUNS.clear()
    engine = make_engine(fast_wait=1.0)
    collect = engine.register(Collect, name="collect")
    async with engine:
        instance = await collect.create(id="s", params={"n": 12})
        await until_status(instance, "waiting")
        for i in range(12):
            await instance.send_event("item", i)
            await asyncio.sleep(0.03)
        status = await instance.wait(10)
    assert status["output"] == list(range(12))
    # claimed for the first event (the first wait suspends at once), then it took the rest as
    # they came, never suspending and replaying again
    assert RUNS == ["s", "s"]


async def test_a_first_wait_for_an_event_suspends_at_once(make_engine: Make) -> None:
    RUNS.clear()
    engine = make_engine(fast_wait=1.0)
    collect = engine.register(Collect, name="collect")
    async with engine:
        instance = await collect.create(id="w", params={"n": 1})
        await until_status(instance, "waiting")
        await until_no_runs(engine)  # it holds no worker while it waits
        await instance.send_event("item", "x")
        assert (await instance.wait(5))["output"] == ["x"]
