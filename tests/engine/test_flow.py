"""Flow control (perdure.flow): workflow concurrency, concurrency keys, start and step rate
limits, and priorities, on both backends with one engine (several workers: tests/postgres)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, ValidationError, WorkflowEntrypoint

Make = Callable[..., Engine]

# What the runs did, shared by the workflows of one test: (instance id, what, monotonic time).
LOG: list[tuple[str, str, float]] = []


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    LOG.clear()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one time (an end at t closes before a start at t opens)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def spans(workflow_ids: set[str] | None = None) -> dict[str, tuple[float, float]]:
    start = {i: t for i, what, t in LOG if what == "start"}
    end = {i: t for i, what, t in LOG if what == "end"}
    return {i: (start[i], end[i]) for i in start if i in end and (workflow_ids is None or i in workflow_ids)}


class Work(WorkflowEntrypoint):
    """One step that takes ``ms`` milliseconds (an await, as I/O-bound work does)."""

    async def run(self, event: Any, step: Any) -> Any:
        async def work() -> str:
            LOG.append((event.instance_id, "start", time.monotonic()))
            await asyncio.sleep(event.payload.get("ms", 100) / 1000)
            LOG.append((event.instance_id, "end", time.monotonic()))
            return event.instance_id

        return await step.do("work", work)


class SleepsBetween(WorkflowEntrypoint):
    """A step, a sleep, a step: it holds a slot only while it runs a step."""

    async def run(self, event: Any, step: Any) -> Any:
        LOG.append((event.instance_id, "first", time.monotonic()))
        await step.do("first", lambda: 1)
        await step.sleep("nap", event.payload["nap_ms"])
        await step.do("second", lambda: 2)
        LOG.append((event.instance_id, "done", time.monotonic()))
        return "ok"


async def test_concurrency_caps_running_instances(make_engine: Make) -> None:
    engine = make_engine()
    work = engine.register(Work, name="work", concurrency=2)
    async with engine:
        instances = [await work.create(id=f"w{i}", params={"ms": 120}) for i in range(7)]
        for instance in instances:
            assert (await instance.wait(20))["status"] == "complete"
    done = spans()
    assert len(done) == 7
    assert max_overlap(list(done.values())) == 2  # never more, and the limit was used


async def test_a_finished_limited_run_starts_the_next_queued_one_at_once(make_engine: Make) -> None:
    """The end of a run of a limited workflow frees a slot of its limit: the dispatcher claims
    at once, not at the next poll (10 s here), although it had slots of its own to spare (a
    finished run nudged it only when it had none: concurrency=20 ran at 0.62x its limit)."""
    engine = make_engine(poll_interval=10.0)
    work = engine.register(Work, name="work", concurrency=1)
    async with engine:
        started = time.monotonic()
        instances = [await work.create(id=f"n{i}", params={"ms": 20}) for i in range(4)]
        for instance in instances:
            assert (await instance.wait(30))["status"] == "complete"
        assert time.monotonic() - started < 5


async def test_waiting_instances_hold_no_slot(make_engine: Make) -> None:
    engine = make_engine()
    flow = engine.register(SleepsBetween, name="naps", concurrency=1)
    async with engine:
        first = await flow.create(id="a", params={"nap_ms": 1500})
        await asyncio.sleep(0.3)  # a runs its first step and goes to sleep, short as the nap is
        second = await flow.create(id="b", params={"nap_ms": 10})
        await second.wait(10)
        assert (await first.status())["status"] in ("waiting", "running")
        await first.wait(10)
    done = {i: t for i, what, t in LOG if what == "done"}
    assert done["b"] < done["a"]  # b ran to the end while a slept (fast_wait did not hold a's slot)


async def test_keys_limit_each_key_and_take_turns(make_engine: Make) -> None:
    engine = make_engine(max_concurrent=50)
    work = engine.register(Work, name="work", concurrency=2, concurrency_per_key=1)
    for i in range(6):  # the busy key's instances are created first ...
        await work.create(id=f"busy-{i}", params={"ms": 80}, concurrency_key="busy")
    await work.create(id="quiet-0", params={"ms": 80}, concurrency_key="quiet")  # ... then one more
    async with engine:
        for i in range(6):
            await (await work.get(f"busy-{i}")).wait(20)
        await (await work.get("quiet-0")).wait(20)
    done = spans()
    busy = [s for i, s in done.items() if i.startswith("busy")]
    assert max_overlap(busy) == 1  # one at a time per key
    assert max_overlap(list(done.values())) <= 2
    order = sorted(done, key=lambda i: done[i][0])
    assert order.index("quiet-0") <= 1  # not behind the busy key's backlog


async def test_keys_take_turns_even_when_one_slot_is_free(make_engine: Make) -> None:
    engine = make_engine()
    work = engine.register(Work, name="work", concurrency=1, concurrency_per_key=1)
    for i in range(4):
        await work.create(id=f"busy-{i}", params={"ms": 1}, concurrency_key="busy")
    for i in range(2):
        await work.create(id=f"quiet-{i}", params={"ms": 1}, concurrency_key="quiet")
    async with engine:
        for instance_id in [f"busy-{i}" for i in range(4)] + ["quiet-0", "quiet-1"]:
            await (await work.get(instance_id)).wait(10)
    starts = [i for i, what, _ in LOG if what == "start"]
    # the key served longest ago goes first: quiet is not behind busy's whole backlog
    assert starts == ["busy-0", "quiet-0", "busy-1", "quiet-1", "busy-2", "busy-3"]


async def test_priority_orders_queued_instances(make_engine: Make) -> None:
    engine = make_engine(max_concurrent=1)
    work = engine.register(Work, name="work")
    for i, priority in enumerate([5, 0, 9, 0, 1]):
        await work.create(id=f"p{i}-{priority}", params={"ms": 1}, priority=priority)
    async with engine:
        for instance in [await work.get(i) for i in ("p0-5", "p1-0", "p2-9", "p3-0", "p4-1")]:
            await instance.wait(10)
    starts = [i for i, what, _ in LOG if what == "start"]
    assert starts == ["p1-0", "p3-0", "p4-1", "p0-5", "p2-9"]  # lower first, then oldest first


async def test_priority_orders_a_limited_workflow_too(make_engine: Make) -> None:
    engine = make_engine()
    work = engine.register(Work, name="work", concurrency=1)
    for i, priority in enumerate([3, 1, 2]):
        await work.create(id=f"p{i}", params={"ms": 1}, priority=priority)
    async with engine:
        for i in range(3):
            await (await work.get(f"p{i}")).wait(10)
    assert [i for i, what, _ in LOG if what == "start"] == ["p1", "p2", "p0"]


async def test_start_rate_limit_spaces_first_runs(make_engine: Make) -> None:
    engine = make_engine()
    work = engine.register(Work, name="work", rate_limit={"limit": 2, "period": "1 second"})
    async with engine:
        instances = [await work.create(id=f"r{i}", params={"ms": 1}) for i in range(5)]
        for instance in instances:
            await instance.wait(20)
    store = await engine.ensure_store()
    # the limit bounds first starts (the claims: WORKFLOW_START), which the history records
    starts = []
    for instance in instances:
        starts += [h["timestamp"] for h in await store.history(instance.pk) if h["type"] == "WORKFLOW_START"]
    starts.sort()
    assert len(starts) == 5
    for i in range(len(starts) - 2):  # no three starts inside one second
        assert starts[i + 2] - starts[i] >= 1.0 - 1e-6
    created = min(h["timestamp"] for h in await store.history(instances[0].pk))
    assert starts[-1] - created < 4  # and they were not held back for longer than needed


class CallsTheApi(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def call() -> float:
            now = time.monotonic()
            LOG.append((event.instance_id, "call", now))
            return now

        return await step.do("call", call, config={"rate_limit": "api"})


async def test_a_step_over_its_rate_limit_waits_without_holding_a_worker(make_engine: Make) -> None:
    engine = make_engine(max_concurrent=1)  # one worker slot: a run holding it would block "plain"
    engine.rate_limit("api", limit=1, period=700)
    api = engine.register(CallsTheApi, name="api")
    plain = engine.register(Work, name="plain")
    async with engine:
        callers = [await api.create(id=f"c{i}") for i in range(4)]
        await asyncio.sleep(0.2)
        assert [(await c.status())["status"] for c in callers].count("waiting") >= 2  # waiting, not failing
        other = await plain.create(id="plain", params={"ms": 1})
        await other.wait(5)
        plain_done = time.monotonic()
        results = [(await c.wait(10)) for c in callers]
    assert all(r["status"] == "complete" for r in results)
    slots = await (await engine.ensure_store()).rate_slots("api", 0)  # all four reserved up front
    assert len(slots) == 4 and all(b - a >= 0.7 - 1e-6 for a, b in zip(slots, slots[1:], strict=False))
    calls = sorted(t for _, what, t in LOG if what == "call")
    assert len(calls) == 4
    assert all(b - a >= 0.4 for a, b in zip(calls, calls[1:], strict=False))  # each at (after) its slot
    assert plain_done < calls[-1]  # it ran while rate-limited steps waited


async def test_rate_limited_step_keeps_its_slot_across_a_restart(make_engine: Make) -> None:
    first = make_engine()
    first.rate_limit("api", limit=1, period="2 seconds")
    api = first.register(CallsTheApi, name="api")
    async with first:
        a = await api.create(id="a")
        await a.wait(5)
        b = await api.create(id="b")
        await asyncio.sleep(0.2)
        assert (await b.status())["status"] == "waiting"
    store = await first.ensure_store()
    before = await store.rate_slots("api", 0)
    second = make_engine()  # a new worker (the first stopped while b waited for its slot)
    second.rate_limit("api", limit=1, period="2 seconds")
    second.register(CallsTheApi, name="api")
    async with second:
        assert (await (await second.binding("api").get("b")).wait(10))["status"] == "complete"
    after = await (await second.ensure_store()).rate_slots("api", 0)
    assert after == before  # b found the slot it had reserved: it took no second one
    calls = sorted(t for _, what, t in LOG if what == "call")
    assert calls[1] - calls[0] >= 1.5  # b's slot was 2 s after a's (a started a little after its own)


async def test_bad_flow_control_values_are_refused(make_engine: Make) -> None:
    engine = make_engine()
    for options, message in [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency_per_key": "2"}, "concurrency_per_key"),
        ({"concurrency": 2, "concurrency_per_key": 3}, "cannot exceed"),
        ({"rate_limit": {"limit": 10, "period": 0}}, "period"),
        ({"rate_limit": {"limit": 0, "period": "1 minute"}}, "limit"),
        ({"rate_limit": {"limit": 1}}, "rate_limit"),
    ]:
        with pytest.raises(ValidationError, match=message):
            engine.register(Work, name="bad", **options)
    with pytest.raises(ValueError, match="period"):
        engine.rate_limit("api", limit=5, period="0 seconds")
    with pytest.raises(ValueError, match="limit"):
        engine.rate_limit("api", limit=-5, period="1 second")
    engine.rate_limit("api", limit=5, period="1 second")
    with pytest.raises(ValueError, match="already defined"):
        engine.rate_limit("api", limit=6, period="1 second")
    work = engine.register(Work, name="work")
    for options, message in [
        ({"priority": -1}, "priority"),
        ({"priority": 2**31}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"concurrency_key": ""}, "concurrency_key"),
        ({"concurrency_key": 42}, "concurrency_key"),
        ({"concurrency_key": "x" * 257}, "concurrency_key"),
        ({"concurrency_key": "tenant\x89"}, "control characters"),
        ({"concurrency_key": "\x00"}, "control characters"),
        ({"concurrency_key": "a\ud800"}, "lone surrogates"),
    ]:
        with pytest.raises(ValidationError, match=message):
            await work.create(**options)
    assert (await work.create(id="float-priority", priority=3.0)).created.priority == 3  # type: ignore[union-attr,arg-type]
    with pytest.raises(ValidationError, match="priority"):
        await work.create(priority=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="lone surrogate"):
        await work.create(params={"text": "\ud800"})
    with pytest.raises(ValidationError, match="allowed"):
        await work.create_batch([{"id": "x", "priority": 1, "urgent": True}])
    stored = (await (await engine.ensure_store()).list_instances("work")).items
    assert [r.id for r in stored] == ["float-priority"]  # nothing refused was stored


class UnknownLimit(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("call", lambda: 1, config={"rate_limit": "nope"})


async def test_a_step_naming_an_undefined_rate_limit_errors_naming_it(make_engine: Make) -> None:
    engine = make_engine()
    engine.rate_limit("api", limit=1, period="1 second")
    wf = engine.register(UnknownLimit, name="unknown")
    async with engine:
        status = await (await wf.create()).wait(5)
    assert status["status"] == "errored"
    assert "'nope'" in status["error"]["message"] and "'api'" in status["error"]["message"]


async def test_queued_reasons_say_why_instances_wait(make_engine: Make) -> None:
    engine = make_engine()
    work = engine.register(Work, name="work", concurrency=1, concurrency_per_key=1)
    await work.create(id="a1", params={"ms": 600}, concurrency_key="a")
    await work.create(id="a2", params={"ms": 1}, concurrency_key="a")
    await work.create(id="b1", params={"ms": 1}, concurrency_key="b")
    store = await engine.ensure_store()
    registration = engine.workflows["work"]
    assert registration.flow is not None
    assert await store.queued_reasons("work", registration.flow, engine.clock.now()) == {"ready": 3}
    async with engine:
        for _ in range(500):  # a1 runs
            if (await (await work.get("a1")).status())["status"] == "running":
                break
            await asyncio.sleep(0.01)
        reasons = await store.queued_reasons("work", registration.flow, engine.clock.now())
        assert reasons == {"concurrency_key": 1, "concurrency": 1}
        for i in ("a1", "a2", "b1"):
            await (await work.get(i)).wait(10)
    (known,) = await store.known_workflows()
    assert known.flow == {"concurrency": 1, "concurrency_per_key": 1}
