"""``binding.delete_batch`` (Cloudflare's ``deleteBatch``) and retention: finished instances are
deleted with every row they own, unfinished ones are terminated first, kept counts stay exact,
and bad input is refused before anything is deleted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, ValidationError, WorkflowEntrypoint
from perdure.retention import Retention, parse_retention

Make = Callable[..., Engine]


class Quick(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        if event.payload.get("fail"):
            await step.do("boom", _boom, config={"retries": {"limit": 0}})
        await step.do("one", lambda: 1)
        if event.payload.get("wait"):
            await step.wait_for_event("go", "go", timeout="1 hour")
        return "done"


def _boom() -> None:
    raise RuntimeError("boom")


async def _rows(engine: Engine, pk: int) -> dict[str, int]:
    store: Any = engine.store
    out = {}
    for table in ("steps", "events", "history", "instances"):
        column = "pk" if table == "instances" else "instance_pk"
        rows = await store._read(f"SELECT COUNT(*) FROM {{s}}.{table} WHERE {column} = %s", (pk,))
        out[table] = int(rows[0][0])
    return out


async def test_delete_batch_deletes_finished_and_terminates_unfinished(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Quick, name="quick")
    async with engine:
        done = await binding.create(id="done")
        held = await binding.create(id="held", params={"wait": True})
        await done.wait(5)
        await held.send_event("other", {})  # an event row, which must go with it
        deadline = time.monotonic() + 5
        while (await held.status())["status"] != "waiting":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await _rows(engine, done.pk))["steps"] == 1
        result = await binding.delete_batch(["done", "held", "done", "nope"])
        assert result == {
            "deleted": [{"id": "done"}, {"id": "held"}],
            "errors": [{"id": "nope", "code": 10400, "message": "workflows.api.error.instance.not_found"}],
        }
        for pk in (done.pk, held.pk):
            assert await _rows(engine, pk) == {"steps": 0, "events": 0, "history": 0, "instances": 0}
        counts = await engine.store.count_by_status("quick")
        assert sum(counts.get("quick", {}).values()) == 0  # kept counts follow the deletions
        again = await binding.create(id="done")  # the id is free again
        assert (await again.wait(5))["status"] == "complete"


async def test_delete_batch_refuses_bad_input(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Quick, name="quick")
    for bad, says in (
        ([], "1-100"),
        ([f"i{n}" for n in range(101)], "1-100"),
        ("abc", "list"),
        ([1], "list"),
        (["bad id with spaces!"], "id"),
    ):
        with pytest.raises(ValidationError, match=says):
            await binding.delete_batch(bad)


def test_retention_is_validated() -> None:
    assert parse_retention({"success_retention": "7 days"}) == Retention(7 * 86400, None)
    assert parse_retention({"error_retention": 60_000}) == Retention(None, 60)  # a number is milliseconds
    for bad, says in (
        ({"success": "1 day"}, "unknown key"),
        ({"success_retention": "soon"}, "success_retention"),
        ({"error_retention": -5}, "error_retention"),
        ("7 days", "mapping"),
    ):
        with pytest.raises(ValidationError, match=says):
            parse_retention(bad)


async def test_create_refuses_a_bad_retention(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Quick, name="quick")
    with pytest.raises(ValidationError, match="success_retention"):
        await binding.create(id="x", retention={"success_retention": "forever"})
    with pytest.raises(ValidationError, match="register"):
        engine.register(Quick, name="other", retention={"bogus": 1})
    assert await engine.store.get_instance("quick", "x") is None  # nothing was stored


async def test_finished_instances_are_deleted_after_their_retention(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Quick, name="quick", retention={"error_retention": "1 hour"})
    async with engine:
        assert engine.retention is not None
        engine.retention.every = 0.05
        short = await binding.create(id="short", retention={"success_retention": "1 second"})
        kept = await binding.create(id="kept")  # success kept for ever (the default has no success_retention)
        failed = await binding.create(id="failed", params={"fail": True})  # kept an hour (the default)
        for instance in (short, kept, failed):
            await instance.wait(5)
        record = await engine.store.get_instance("quick", "failed")
        assert record is not None and record.status == "errored"
        deadline = time.monotonic() + 5
        while await engine.store.get_instance("quick", "short") is not None:
            assert time.monotonic() < deadline, "the sweep did not delete the expired instance"
            await asyncio.sleep(0.05)
        assert await _rows(engine, short.pk) == {"steps": 0, "events": 0, "history": 0, "instances": 0}
        assert await engine.store.get_instance("quick", "kept") is not None
        assert await engine.store.get_instance("quick", "failed") is not None
        counts = (await engine.store.count_by_status("quick"))["quick"]
        assert counts == {"complete": 1, "errored": 1}


async def test_a_restart_clears_the_expiry(make_engine: Make) -> None:
    engine = make_engine()
    binding = engine.register(Quick, name="quick")
    async with engine:
        instance = await binding.create(id="r", retention={"success_retention": "1 hour"})
        await instance.wait(5)
        expires: Any = engine.store
        (row,) = await expires._read("SELECT expires_at FROM {s}.instances WHERE pk = %s", (instance.pk,))
        assert row[0] is not None and row[0] > time.time() + 3500
        await instance.restart()
        (row,) = await expires._read("SELECT expires_at FROM {s}.instances WHERE pk = %s", (instance.pk,))
        assert row[0] is None
        await instance.wait(5)


async def test_the_sweep_deletes_in_bounded_batches_while_steps_commit(make_engine: Make) -> None:
    """2,000 expired instances are swept in batches of 200 while new instances run: the new ones
    complete meanwhile and the kept counts are exact at the end."""
    engine = make_engine()
    binding = engine.register(Quick, name="quick")
    async with engine:
        assert engine.retention is not None
        engine.retention.every = 3600  # swept below, by hand, beside the load
        old = []
        for start in range(0, 2000, 100):
            old += await binding.create_batch(
                [{"id": f"old-{n}", "retention": {"success_retention": 500}} for n in range(start, start + 100)]
            )
        for instance in old[-5:]:
            await instance.wait(30)
        deadline = time.monotonic() + 60
        while (await engine.store.count_by_status("quick"))["quick"].get("complete", 0) < 2000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.6)
        engine.retention.batch = 200
        sweep = asyncio.create_task(engine.retention.sweep_once())
        while (await engine.store.count_by_status("quick"))["quick"].get("complete", 0) == 2000:
            await asyncio.sleep(0.001)  # until its first batch is deleted
        first = await binding.create(id="new-0")
        assert (await first.wait(30))["status"] == "complete"
        # an instance started, ran its step and finished between two batches of the sweep:
        # the sweep does not hold the database for its whole length (10 batches, 9 pauses)
        assert not sweep.done()
        fresh = [first] + [await binding.create(id=f"new-{n}") for n in range(1, 20)]
        deleted = await sweep
        for instance in fresh:
            assert (await instance.wait(30))["status"] == "complete"
        assert deleted == 2000
        assert (await engine.store.count_by_status("quick"))["quick"] == {"complete": 20}


def test_a_duration_too_large_for_a_float_is_a_validation_error() -> None:
    from perdure.durations import parse_duration

    with pytest.raises(ValidationError, match="finite"):
        parse_duration(10**400)  # JSON allows such an integer; float() of it overflows
