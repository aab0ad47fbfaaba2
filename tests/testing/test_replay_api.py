"""``perdure.testing.replay``: the replay checker from a test. A code change that breaks replay is
caught; the same change behind ``step.patched()`` replays. Both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, WorkflowEntrypoint
from perdure.testing import ManualClock, introspect_workflow_instance, replay

Make = Callable[..., Engine]


class Before(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("charge", lambda: 10)
        await step.sleep("wait for shipping", "3 days")
        return await step.do("ship", lambda: "shipped")


class Unguarded(WorkflowEntrypoint):  # a new step before the sleep: asleep instances diverge
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("charge", lambda: 10)
        await step.do("fraud check", lambda: True)
        await step.sleep("wait for shipping", "3 days")
        return await step.do("ship", lambda: "shipped")


class Guarded(WorkflowEntrypoint):  # the same change behind patched()
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("charge", lambda: 10)
        if await step.patched("fraud-check"):
            await step.do("fraud check", lambda: True)
        await step.sleep("wait for shipping", "3 days")
        return await step.do("ship", lambda: "shipped")


async def asleep(make_engine: Make) -> Engine:
    """An instance of the old code asleep for three days, its engine stopped (a deploy)."""
    old = make_engine(clock=ManualClock())
    orders = old.register(Before, name="orders")
    await old.start()
    async with introspect_workflow_instance(orders, "o-1") as instance:
        await orders.create(id="o-1")
        await instance.wait_for_status("waiting")
    await old.stop()
    return old


@pytest.mark.parametrize(("code", "ok"), [(Before, True), (Unguarded, False), (Guarded, True)])
async def test_a_breaking_change_is_caught_and_the_patched_one_replays(
    make_engine: Make, db_url: str, code: type[WorkflowEntrypoint], ok: bool
) -> None:
    await asleep(make_engine)
    new = make_engine()
    new.register(code, name="orders")
    (report,) = await replay(new)  # the engine's own database
    assert report.ok is ok and report.id == "o-1" and report.status == "waiting"
    if not ok:
        assert report.divergence is not None and report.divergence.kind == "missing_step"
        assert "fraud check" in report.divergence.message
    elsewhere = Engine("sqlite:///unused.db" if db_url.startswith("sqlite") else db_url)
    elsewhere.register(code, name="orders")
    (same,) = await replay(elsewhere, db=db_url, workflow="orders", instances=["o-1"])  # another database
    assert same.as_dict() == report.as_dict()


async def test_replay_refuses_bad_input(make_engine: Make) -> None:
    engine = make_engine()
    engine.register(Before, name="orders")
    with pytest.raises(ValueError, match="instances needs workflow"):
        await replay(engine, instances=["o-1"])
    with pytest.raises(ValueError, match="not one string"):
        await replay(engine, workflow="orders", instances="o-1")
    with pytest.raises(ValueError, match="no workflow named 'shipping'; it has orders"):
        await replay(engine, workflow="shipping")
    with pytest.raises(ValueError, match="takes the Engine"):
        await replay("app:engine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no instance 'o-9'"):
        await replay(engine, workflow="orders", instances=["o-9"])
