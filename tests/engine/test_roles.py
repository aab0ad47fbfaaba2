"""Background roles (perdure.roles): one worker at a time, renewed during long work."""

from __future__ import annotations

from collections.abc import Callable

from perdure import Engine
from perdure.retention import RetentionSweep
from perdure.roles import Role

Make = Callable[..., Engine]


class Clock:
    """A test double for wall-clock time, moved by hand."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_a_role_is_one_workers_until_its_lease_lapses(make_engine: Make) -> None:
    engine = make_engine()
    store = await engine.ensure_store()
    clock = Clock()
    a, b = Role(store, "chores", "a", 10.0, clock), Role(store, "chores", "b", 10.0, clock)
    assert await a.hold() and a.held
    assert not await b.hold() and not b.held
    clock.t += 6  # past half of a's lease: a renews it
    assert await a.hold()
    clock.t += 9  # 15 s after a first took it, but 9 s after the renewal
    assert not await b.hold()
    clock.t += 2  # a stopped renewing: its lease lapsed
    assert not a.held
    assert await b.hold()
    assert not await a.hold()


async def test_a_long_sweep_renews_its_role_and_stops_when_another_worker_took_it(make_engine: Make) -> None:
    """The sweep holds the role before each batch: a sweep longer than the lease renews it (so
    no second worker sweeps beside it), and a sweep whose role was taken stops at its next batch."""
    engine = make_engine()
    store = await engine.ensure_store()
    clock = Clock()
    sweep = RetentionSweep(store, "a", clock, every=1.0, batch=10)  # a 3 s lease
    rival = Role(store, "retention", "b", 3.0, clock)
    batches: list[str] = []

    async def delete_expired(now: float, limit: int) -> int:
        batches.append("a" if sweep.role.held else "lost")
        clock.t += 2.0  # each batch takes 2 s: the sweep outlives its first lease
        assert not await rival.hold() or len(batches) > 3
        return limit if len(batches) < 6 else 0

    store.delete_expired = delete_expired  # type: ignore[method-assign]
    assert await sweep.sweep_once() == 50
    assert batches == ["a"] * 6
    # now the sweep lapses while another worker holds the role: the next sweep does nothing
    clock.t += 10
    assert await rival.hold()
    batches.clear()
    assert await sweep.sweep_once() == 0
    assert batches == []
