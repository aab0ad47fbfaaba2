"""An instance created in a process whose engine runs its workflow and has a free slot is created
claimed and starts there at once, without a claim round (Engine.local_start)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, InstanceAlreadyExistsError, WorkflowEntrypoint
from tests.engine.util import record_claims

Make = Callable[..., Engine]


class Quick(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("one", lambda: event.payload.get("n", 0) + 1)


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def nap() -> str:
            await asyncio.sleep(event.payload.get("s", 0.5))
            return "rested"

        return await step.do("nap", nap)


async def history_types(engine: Engine, pk: int) -> list[str]:
    return [h["type"] for h in await (await engine.ensure_store()).history(pk)]


async def test_a_create_where_the_workflow_runs_starts_at_once(make_engine: Make) -> None:
    engine = make_engine()
    quick = engine.register(Quick, name="quick")
    async with engine:
        await asyncio.sleep(0.05)  # the first claim ran: no backlog
        instance = await quick.create(id="q", params={"n": 1})
        assert instance.created is not None and instance.created.status == "running"
        assert instance.created.owner == engine.owner and instance.created.epoch == 1
        assert (await instance.wait(5))["output"] == 2
        types = await history_types(engine, instance.pk)
        assert types[:2] == ["WORKFLOW_QUEUED", "WORKFLOW_START"] and types.count("WORKFLOW_START") == 1
        with pytest.raises(InstanceAlreadyExistsError):
            await quick.create(id="q")
        assert engine._starting == 0  # the refused create gave its slot back


async def test_a_full_engine_a_limited_workflow_and_a_client_queue_instead(make_engine: Make) -> None:
    engine = make_engine(max_concurrent=1)
    slow = engine.register(Slow, name="slow")
    limited = engine.register(Quick, name="limited", concurrency=5)
    client = make_engine()  # never started: it only creates
    client.register(Quick, name="quick")
    async with engine:
        await asyncio.sleep(0.05)
        busy = await slow.create(id="busy", params={"s": 0.5})
        assert busy.created is not None and busy.created.status == "running"
        queued = await slow.create(id="next", params={"s": 0.01})  # the only slot is taken
        assert queued.created is not None and queued.created.status == "queued"
        await busy.wait(5)
        await queued.wait(5)
        flowing = await limited.create(id="l")  # flow control: only the claim starts it
        assert flowing.created is not None and flowing.created.status == "queued"
        assert (await flowing.wait(5))["output"] == 1
    from_client = await client.binding("quick").create(id="c")
    assert from_client.created is not None and from_client.created.status == "queued"


async def test_concurrent_creates_of_one_id_make_one_instance(make_engine: Make) -> None:
    """Lone creates share a statement on PostgreSQL (CREATE_GROUP): the first of an id wins."""
    engine = make_engine()
    quick = engine.register(Quick, name="quick")
    async with engine:
        results = await asyncio.gather(
            *[quick.create(id="same", params={"n": n}) for n in range(20)],
            *[quick.create(id=f"other-{n}") for n in range(20)],
            return_exceptions=True,
        )
        same, others = results[:20], results[20:]
        assert sum(1 for r in same if isinstance(r, InstanceAlreadyExistsError)) == 19
        assert not any(isinstance(r, BaseException) for r in others)
        assert await quick.create_batch([{"id": "same"}]) == []  # skipped, not refused
        for instance in [r for r in results if not isinstance(r, BaseException)]:
            assert (await instance.wait(5))["status"] == "complete"  # type: ignore[union-attr]
    page = await (await engine.ensure_store()).list_instances("quick", limit=100)
    assert len(page.items) == 21
    assert engine._starting == 0


class Counted(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def one() -> int:
            return 1

        return await step.do("one", one)


async def test_a_run_that_finishes_nudges_the_dispatcher_only_when_it_wants_a_slot(
    make_engine: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create() + wait() in turn: each instance starts where it is created, and its end does
    not cost a claim round that finds nothing (one per run before); instances queued behind
    full slots still start as soon as one frees, not at the next poll (10 s here)."""
    engine = make_engine(poll_interval=10.0, max_concurrent=1)
    counted = engine.register(Counted, name="counted")
    async with engine:
        await asyncio.sleep(0.05)  # the first claim ran: no backlog
        claims = record_claims(engine, monkeypatch)
        for _ in range(30):
            assert (await (await counted.create()).wait(5))["output"] == 1
        assert len(claims) <= 3, claims  # the local starts needed none
        queued = await counted.create_batch([{} for _ in range(5)])  # one slot: four wait in the queue
        done = await asyncio.wait_for(asyncio.gather(*(i.wait() for i in queued)), 5)
        assert [d["output"] for d in done] == [1] * 5


async def test_a_run_started_while_the_control_check_reads_is_left_alone(
    make_engine: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control check (Engine._reconcile) reads which instances are still this worker's and
    cancels the other runs. A run started here while that read was in flight is missing from
    it: it must not be cancelled (it was, and its instance stayed ``running`` for good)."""
    engine = make_engine()
    slow = engine.register(Slow, name="slow")
    quick = engine.register(Quick, name="quick")
    async with engine:
        await asyncio.sleep(0.05)  # the first claim ran: no backlog
        await slow.create(params={"s": 1.0})  # a run in flight, so that the check reads
        original = engine.store.owned
        reading, answer = asyncio.Event(), asyncio.Event()

        async def owned(owner: str) -> Any:
            result = await original(owner)  # read before the create below commits
            reading.set()
            await answer.wait()
            return result

        monkeypatch.setattr(engine.store, "owned", owned)
        engine.control_changed()
        await asyncio.wait_for(reading.wait(), 5)
        instance = await quick.create(params={"n": 41})  # started here, during the read
        answer.set()
        assert (await instance.wait(3))["output"] == 42
