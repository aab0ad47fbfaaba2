"""A worker keeps a long history in memory when a run suspends and replays from it when it claims
the instance next, unless anything else touched the instance in between (Engine._histories)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, WorkflowEntrypoint
from tests.engine.util import record_claims, until_status

Make = Callable[..., Engine]


class Long(WorkflowEntrypoint):
    """250 steps, a sleep (it suspends), 10 more steps; returns their sum."""

    async def run(self, event: Any, step: Any) -> Any:
        total = 0
        for i in range(250):
            total += await step.do(f"s{i}", lambda i=i: i)
        await step.sleep("nap", event.payload["nap_ms"])
        for i in range(10):
            total += await step.do(f"t{i}", lambda i=i: i)
        return total


def count_loads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    original = engine.store.load_steps

    async def load_steps(pk: int) -> Any:
        loads.append(pk)
        return await original(pk)

    monkeypatch.setattr(engine.store, "load_steps", load_steps)
    return loads


async def test_a_long_history_is_replayed_from_memory_after_a_suspend(
    make_engine: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(fast_wait=0.05)
    long = engine.register(Long, name="long")
    loads = count_loads(engine, monkeypatch)
    rounds = record_claims(engine, monkeypatch)
    async with engine:
        instance = await long.create(params={"nap_ms": 300})
        status = await instance.wait(20)
    assert status["output"] == sum(range(250)) + sum(range(10))
    assert loads == []  # the first run started from a new row (empty history), the wake from memory
    claims = [(r.pk, r.steps is not None) for records in rounds for r in records]
    assert claims == [(instance.pk, False)]  # nor did the wake's claim: the kept history replayed
    steps = await engine.store.load_steps(instance.pk)
    assert len(steps) == 261 and all(s.status == "complete" for s in steps)


async def test_a_history_touched_meanwhile_is_read_again(make_engine: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(fast_wait=0.05)
    long = engine.register(Long, name="long")
    loads = count_loads(engine, monkeypatch)
    rounds = record_claims(engine, monkeypatch)
    async with engine:
        instance = await long.create(params={"nap_ms": 60_000})
        await until_status(instance, "waiting", timeout=20)
        await instance.pause()  # a control call bumps the epoch: the kept history is not used
        await instance.resume()
        await until_status(instance, "waiting", timeout=20)
        await instance.restart()  # steps erased: the kept history would be wrong
        await until_status(instance, "waiting", timeout=20)
        # the restarted run read its history from the store (in the claim or at the replay);
        # from memory it would skip the erased steps, and the check below would fail
        reads = loads + [r.pk for records in rounds for r in records if r.steps is not None]
        assert len(reads) >= 1 and all(pk == instance.pk for pk in reads), (loads, rounds)
        await instance.terminate()
    steps = await engine.store.load_steps(instance.pk)
    assert sorted(s.name for s in steps if s.name.startswith("s")) == sorted(f"s{i}" for i in range(250))
