"""The storage interface's own rules: claim order, fencing and durable queues (every backend)."""

from __future__ import annotations

import json

import pytest

from perdure.errors import Fenced
from perdure.records import DO, SLEEP, NewInstance, StepRecord
from perdure.store import open_store


async def test_woken_instances_are_claimed_before_queued_ones_and_writes_are_fenced(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        created = await store.create_instances(
            "wf", [NewInstance(f"i{n}", "{}") for n in range(3)], now=100.0, skip_existing=False
        )
        (first,) = await store.claim("w1", 1, now=101.0, lease_until=200.0, workflows=["wf"])
        assert first.id == "i0"  # oldest queued first
        await store.suspend(first.pk, first.epoch, wake_at=102.0, wait_types=[], now=101.0)
        (woken,) = await store.claim("w1", 1, now=103.0, lease_until=200.0, workflows=["wf"])
        assert woken.id == "i0"  # its timer is due: ahead of the queued i1 and i2
        assert woken.epoch == first.epoch + 1
        step = StepRecord(DO, "s", 1, "complete", 103.0, result=1)
        with pytest.raises(Fenced):
            await store.save_step(first.pk, first.epoch, step)  # the old epoch is refused
        with pytest.raises(Fenced):
            await store.finish(first.pk, first.epoch, "complete", "1", None, now=103.0)  # so is its finish
        assert (await store.get_by_pk(first.pk)).status == "running"  # type: ignore[union-attr]
        assert await store.save_step(woken.pk, woken.epoch, step) == "running"
        assert await store.claim("w2", 5, now=104.0, lease_until=105.0, workflows=["other"]) == []
        others = await store.claim("w2", 5, now=104.0, lease_until=105.0, workflows=["wf"])
        assert sorted(i.id for i in others) == ["i1", "i2"]
        # w2 stops renewing: once the lease ran out, another worker takes the instances over.
        taken = await store.claim("w3", 5, now=106.0, lease_until=300.0, workflows=["wf"])
        assert sorted(i.id for i in taken) == ["i1", "i2"]
        assert [len(created)] == [3]
    finally:
        await store.close()


async def test_release_leaves_a_finished_instance_alone(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        await store.create_instances("wf", [NewInstance("done", "{}")], now=1.0, skip_existing=False)
        (claimed,) = await store.claim("w1", 1, now=2.0, lease_until=10.0, workflows=["wf"])
        await store.finish(claimed.pk, claimed.epoch, "complete", "1", None, now=3.0)
        await store.release(claimed.pk, claimed.epoch, now=4.0)  # a stop that raced the finish
        record = await store.get_instance("wf", "done")
        assert record is not None and record.status == "complete" and record.output == 1
        await store.create_instances("wf", [NewInstance("busy", "{}")], now=5.0, skip_existing=False)
        (running,) = await store.claim("w1", 1, now=6.0, lease_until=10.0, workflows=["wf"])
        await store.release(running.pk, running.epoch, now=7.0)
        again = await store.claim("w2", 1, now=7.5, lease_until=10.0, workflows=["wf"])
        assert [r.id for r in again] == ["busy"]  # a released running instance is runnable at once
    finally:
        await store.close()


async def test_an_instance_never_starts_before_it_was_queued(db_url: str) -> None:
    """A claim reads the clock, then waits for the group commit; a create that reads the clock
    a moment later may be written first. The start is then the creation time, not earlier."""
    store = open_store(db_url)
    await store.open()
    try:
        (created,) = await store.create_instances("wf", [NewInstance("late", "{}")], now=100.0, skip_existing=False)
        (claimed,) = await store.claim("w1", 1, now=99.5, lease_until=200.0, workflows=["wf"])
        assert claimed.started_at == 100.0
        history = await store.history(created.pk)
        assert [(h["type"], h["timestamp"]) for h in history][:2] == [
            ("WORKFLOW_QUEUED", 100.0),
            ("WORKFLOW_START", 100.0),
        ]
        await store.suspend(claimed.pk, claimed.epoch, wake_at=101.0, wait_types=[], now=100.5)
        (again,) = await store.claim("w1", 1, now=102.0, lease_until=200.0, workflows=["wf"])
        assert again.started_at == 100.0  # the first start is kept
        assert [h["type"] for h in await store.history(created.pk)].count("WORKFLOW_START") == 1
    finally:
        await store.close()


async def test_queue_methods_keep_order_leases_and_dead_letters(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        bodies = [json.dumps({"n": n}) for n in range(1203)]  # more than one statement's chunk
        ids = await store.queue_send("q", bodies, now=10.0, delay=0.0)
        assert len(ids) == 1203 and ids == sorted(ids) and len(set(ids)) == 1203
        (later,) = await store.queue_send("q", ['"late"'], now=10.0, delay=50.0)
        assert (await store.queue_depths(11.0))["q"].ready == 1203
        first = await store.queue_receive("q", 1000, 11.0, visibility_timeout=5.0, max_attempts=2, lease="a")
        second = await store.queue_receive("q", 1000, 11.0, visibility_timeout=5.0, max_attempts=2, lease="b")
        assert [m.body["n"] for m in first + second] == list(range(1203))  # oldest first, none twice
        assert {m.attempts for m in first + second} == {1}
        depth = (await store.queue_depths(11.0))["q"]
        assert (depth.ready, depth.delayed, depth.in_flight) == (0, 1, 1203)
        # An ack needs the message's current lease; one call may carry several leases.
        stale = [(m.id, "not-the-lease") for m in first[:3]]
        mixed = [(m.id, m.lease) for m in first[:500]] + [(m.id, m.lease) for m in second]
        assert await store.queue_ack(stale) == 0
        assert await store.queue_ack(mixed) == 703
        assert await store.queue_retry(first[500].id, "b", visible_at=12.0, error="x") is False
        assert await store.queue_retry(first[500].id, "a", visible_at=12.0, error="boom") is True
        # The others' lease runs out on their second delivery: dead-lettered, not delivered a third time.
        again = await store.queue_receive("q", 1000, 17.0, visibility_timeout=5.0, max_attempts=2, lease="c")
        assert len(again) == 500 and {m.attempts for m in again} == {2}
        # At 23.0 those leases ran out on the last attempt: nothing to deliver (the late one is due at 60.0).
        assert await store.queue_receive("q", 1000, 23.0, visibility_timeout=5.0, max_attempts=2, lease="d") == []
        dead = await store.queue_dead_letters("q", 1000)
        assert len(dead) == 500 and dead[0].id > dead[-1].id  # newest first
        assert {d.error for d in dead} == {"boom", "the consumer's lease ran out on the last attempt"}
        assert await store.queue_redrive("q", 30.0) == 500
        depth = (await store.queue_depths(30.0))["q"]
        assert (depth.ready, depth.delayed, depth.dead) == (500, 1, 0)
        assert later not in {m.id for m in first + second + again}
    finally:
        await store.close()


async def test_a_claim_reads_the_histories_of_the_instances_it_takes(db_url: str) -> None:
    """One query for a claimed batch's steps (replays need them), except the ones ``kept``
    names: the engine holds those histories itself."""
    store = open_store(db_url)
    await store.open()
    try:
        await store.create_instances("wf", [NewInstance(f"i{n}", "{}") for n in range(3)], 1.0, skip_existing=False)
        fresh = await store.claim("w1", 3, now=2.0, lease_until=100.0, workflows=["wf"])
        assert [r.steps for r in fresh] == [[], [], []]  # nothing stored yet: empty, not unread
        for n, record in enumerate(fresh):
            for name in ("a", "b")[: n + 1]:
                done = StepRecord(DO, name, 1, "complete", 2.0, result=[n, name])
                await store.save_step(record.pk, record.epoch, done)
            await store.suspend(record.pk, record.epoch, wake_at=3.0, wait_types=[], now=2.5)
        kept = fresh[2].pk
        woken = {r.id: r for r in await store.claim("w1", 3, now=4.0, lease_until=100.0, workflows=["wf"], kept={kept})}
        assert [(s.name, s.result) for s in woken["i0"].steps or []] == [("a", [0, "a"])]
        assert [(s.name, s.result) for s in woken["i1"].steps or []] == [("a", [1, "a"]), ("b", [1, "b"])]
        assert woken["i2"].steps is None  # kept: not read
        assert [s.name for s in await store.load_steps(kept)] == ["a", "b"]
    finally:
        await store.close()


async def test_a_claim_ends_the_sleeps_its_instances_wake_from(db_url: str) -> None:
    """A woken instance's due sleep is complete when it is claimed (one statement for the
    batch, instead of a write from each replay); a sleep still in the future is left waiting."""
    store = open_store(db_url)
    await store.open()
    try:
        await store.create_instances("wf", [NewInstance("i", "{}")], 1.0, skip_existing=False)
        (record,) = await store.claim("w1", 1, now=2.0, lease_until=100.0, workflows=["wf"])
        due = StepRecord(SLEEP, "nap", 1, "waiting", 2.0, config={"duration": 1}, wake_at=3.0)
        later = StepRecord(SLEEP, "long", 1, "waiting", 2.0, config={"duration": 9}, wake_at=11.0)
        for step in (due, later):
            await store.save_step(record.pk, record.epoch, step)
        await store.suspend(record.pk, record.epoch, wake_at=3.0, wait_types=[], now=2.5)
        (woken,) = await store.claim("w1", 1, now=4.0, lease_until=100.0, workflows=["wf"])
        for steps in (woken.steps or [], await store.load_steps(record.pk)):
            shown = {s.name: (s.status, s.ended_at, s.wake_at) for s in steps}
            assert shown == {"nap": ("complete", 4.0, None), "long": ("waiting", None, 11.0)}
    finally:
        await store.close()
