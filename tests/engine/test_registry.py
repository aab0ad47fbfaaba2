"""What the store knows beyond instances: the workflows engines registered, and instance id
prefix search (every backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from perdure.records import QUEUED, NewInstance, WorkflowRecord
from perdure.store import open_store
from perdure.store.base import Store
from perdure.testing import ManualClock

Make = Callable[..., Engine]


class Greet(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("greet", lambda: "hi")


class Tally(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return 0


async def known(engine: Engine) -> dict[str, WorkflowRecord]:
    return {w.name: w for w in await (await engine.ensure_store()).known_workflows()}


async def test_a_started_engine_records_its_workflows_and_a_later_one_updates_them(make_engine: Make) -> None:
    first = make_engine(clock=ManualClock(1000.0))
    first.register(Greet, name="greet", schedules=["0 6 * * *"])
    first.register(Tally, name="tally", limits={"steps": 7})
    assert await known(first) == {}  # a client (never started) records nothing
    await first.start()
    assert await known(first) == {
        "greet": WorkflowRecord("greet", "Greet", ["0 6 * * *"], 10_000, registered_at=1000.0, updated_at=1000.0),
        "tally": WorkflowRecord("tally", "Tally", [], 7, registered_at=1000.0, updated_at=1000.0),
    }
    await first.stop()

    # A new deploy: the schedule changed. The row is replaced, except when it was first seen.
    second = make_engine(clock=ManualClock(2000.0))
    second.register(Greet, name="greet", schedules=["30 7 * * 1-5"], limits={"steps": 50})
    await second.start()
    records = await known(second)
    assert records["greet"] == WorkflowRecord(
        "greet", "Greet", ["30 7 * * 1-5"], 50, registered_at=1000.0, updated_at=2000.0
    )
    assert records["tally"].updated_at == 1000.0  # not registered by this engine: left as it was

    # Registered after start: recorded too (in the background).
    second.register(Tally, name="late")
    for _ in range(200):
        if "late" in await known(second):
            break
        await asyncio.sleep(0.01)
    assert (await known(second))["late"].updated_at == 2000.0

    # Another engine on the database, with no workflows of its own, sees them all.
    bystander = make_engine()
    await bystander.start()  # registers nothing, writes nothing
    assert sorted(await known(bystander)) == ["greet", "late", "tally"]
    assert (await known(bystander))["greet"].schedules == ["30 7 * * 1-5"]


async def _ids(store: Store, prefix: str, **options: Any) -> list[str]:
    page = await store.list_instances("wf", id_prefix=prefix, **options)
    return [record.id for record in page.items]


async def test_instances_are_found_by_id_prefix_newest_first(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        ids = ["ab", "a_b", "axb", "a%c", "abc", "A-1", "b-ab", "abd", "ab-1"]
        for n, instance_id in enumerate(ids):  # one at a time: pk order is creation order
            await store.create_instances("wf", [NewInstance(instance_id, "{}")], now=float(n), skip_existing=False)
        await store.create_instances("other", [NewInstance("abz", "{}")], now=99.0, skip_existing=False)

        assert await _ids(store, "ab") == ["ab-1", "abd", "abc", "ab"]  # not b-ab, not other's abz
        assert await _ids(store, "a_") == ["a_b"]  # '_' is no wildcard
        assert await _ids(store, "a%") == ["a%c"]  # nor is '%'
        assert await _ids(store, "A") == ["A-1"]  # case-sensitive
        assert await _ids(store, "abc") == ["abc"]
        assert await _ids(store, "abcd") == []
        assert await _ids(store, "") == list(reversed(ids))  # no prefix: the whole list

        # pages, newest first, exactly the matches
        pages, cursor = [], None
        while True:
            page = await store.list_instances("wf", id_prefix="a", limit=2, cursor=cursor)
            pages.append([record.id for record in page.items])
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == [["ab-1", "abd"], ["abc", "a%c"], ["axb", "a_b"], ["ab"]]

        # with a status filter
        (claimed,) = await store.claim("w1", 1, now=100.0, lease_until=200.0, workflows=["wf"])
        assert claimed.id == "ab"
        assert await _ids(store, "ab", status=QUEUED) == ["ab-1", "abd", "abc"]
        assert await _ids(store, "ab", status="running") == ["ab"]
    finally:
        await store.close()
