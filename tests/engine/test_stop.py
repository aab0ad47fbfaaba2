"""Engine.stop ends even when a driver swallows a cancellation (psycopg can answer a cancelled
query with its own QueryCanceled error, which a retry loop then catches)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from perdure.engine import _cancel_until_done
from perdure.retention import RetentionSweep
from perdure.store.base import Store


class SwallowingStoreDouble:
    """Test double: a store whose read turns the first cancellation into an ordinary error."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    async def any_expired(self, now: float) -> bool:
        self.reading.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("canceling statement due to user request") from None
        return False


async def test_the_retention_loop_stops_when_its_cancellation_was_turned_into_an_error() -> None:
    store = SwallowingStoreDouble()
    sweep = RetentionSweep(cast(Store, store), "owner", lambda: 0.0, every=30.0)
    task = asyncio.create_task(sweep.run())
    await store.reading.wait()
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2.0)
    assert task.cancelled()


async def test_cancel_until_done_cancels_again_a_task_that_swallowed_the_first_cancel() -> None:
    swallowed: list[int] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.append(1)
        await asyncio.sleep(60)  # carries on as if nothing happened

    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(60))]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.wait_for(_cancel_until_done(tasks), 5.0)
    assert swallowed == [1] and all(task.cancelled() for task in tasks)


async def test_the_listener_stops_when_a_driver_turns_its_cancellation_into_an_error() -> None:
    from perdure.store.pg_listen import Listener

    listening = asyncio.Event()

    class ListenerDouble(Listener):
        """Test double: LISTEN that raises an ordinary error when cancelled, as psycopg can."""

        async def _listen(self) -> None:
            listening.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise OSError("connection closed while cancelling") from None

    listener = ListenerDouble("host=nowhere", "channel", ignore="token", on_notify=lambda: None)
    listener.start()
    await listening.wait()
    await asyncio.wait_for(listener.stop(), 2.0)


async def test_stop_closes_a_store_that_opened_itself_on_first_use(make_engine: Any) -> None:
    """A read through ``engine.store`` on an engine never started opens the store's pools (and,
    on PostgreSQL, its listener); ``stop()`` must close them, or the test's event loop waits at
    teardown for tasks nobody stops (CI hung here once)."""
    engine = make_engine()
    assert await engine.store.get_instance("nothing", "x") is None  # opens the store itself
    await engine.stop()
    if hasattr(engine.store, "_pools"):
        assert not engine.store._pools.is_open
    else:
        assert engine.store._conn is None
