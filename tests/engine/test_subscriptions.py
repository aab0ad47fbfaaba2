"""Lifecycle subscriptions (Cloudflare's ``cf.workflows.workflow.instance.*`` events): every
status change reaches an async callback or a durable queue, in order per instance, at least once,
also across a worker's SIGKILL; the cursor waits for late PostgreSQL commits."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, Subscription, ValidationError, WorkflowEntrypoint
from perdure.records import HistoryRow
from perdure.subscriptions import Deliveries, parse_subscriptions
from tests.engine.subscribe_worker import make_engine as make_subscribed
from tests.engine.util import start_worker, until_status

Make = Callable[..., Engine]
ORDER = ["queued", "started", "completed"]


class Gate(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("one", lambda: 1)
        if event.payload.get("fail"):
            await step.do("boom", _boom, config={"retries": {"limit": 0}})
        await step.wait_for_event("go", "go", timeout="1 hour")
        return "ok"


def _boom() -> None:
    raise RuntimeError("boom")


async def test_a_callback_gets_every_lifecycle_event_in_cloudflares_shape(make_engine: Make) -> None:
    got: list[dict[str, Any]] = []

    async def collect(message: dict[str, Any]) -> None:
        got.append(message)

    engine = make_engine()
    binding = engine.register(Gate, name="gate", subscriptions=[collect])
    async with engine:
        ok = await binding.create(id="ok")
        await until_status(ok, "waiting")
        await ok.pause()
        await ok.resume()
        await ok.send_event("go", {})
        await ok.wait(5)
        failed = await binding.create(id="failed", params={"fail": True})
        await failed.wait(5)
        gone = await binding.create(id="gone")
        await until_status(gone, "waiting")
        await gone.terminate()
        deadline = time.monotonic() + 5
        while len(got) < 10:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    by_id: dict[str, list[str]] = {}
    for message in got:
        assert set(message) == {"type", "source", "payload", "metadata"}
        assert message["source"] == {"type": "workflow", "workflowName": "gate"}
        assert message["metadata"]["eventTimestamp"].endswith("Z")
        by_id.setdefault(message["payload"]["instanceId"], []).append(
            message["type"].removeprefix("cf.workflows.workflow.instance.")
        )
    assert by_id == {
        "ok": ["queued", "started", "paused", "completed"],
        "failed": ["queued", "started", "errored"],
        "gone": ["queued", "started", "terminated"],
    }


async def test_types_pick_events_and_a_failing_callback_is_retried_in_order(make_engine: Make) -> None:
    got: list[tuple[str, str]] = []
    failures = [2]

    async def flaky(message: dict[str, Any]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("the receiver is down")
        got.append((message["payload"]["instanceId"], message["type"].rsplit(".", 1)[1]))

    engine = make_engine()
    binding = engine.register(
        Gate, name="gate", subscriptions=[Subscription(flaky, types=("started", "completed", "errored"))]
    )
    async with engine:
        for n in range(3):
            await binding.create(id=f"f{n}", params={"fail": True})
        deadline = time.monotonic() + 10
        while len(got) < 6:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    assert sorted(got) == sorted((f"f{n}", kind) for n in range(3) for kind in ("started", "errored"))
    for n in range(3):
        kinds = [kind for i, kind in got if i == f"f{n}"]
        assert kinds == ["started", "errored"]


def test_bad_subscriptions_are_refused() -> None:
    def sync_callback(message: Any) -> None: ...

    for bad, says in (
        ("lifecycle", "list"),
        ([sync_callback], "async"),
        ([""], "empty"),
        ([Subscription("q", types=("finished",))], "finished"),
        ([42], "queue name or an async callable"),
    ):
        with pytest.raises(ValidationError, match=says):
            parse_subscriptions(bad)
    engine = Engine("sqlite:///:memory:")
    with pytest.raises(ValidationError, match="async"):
        engine.register(Gate, name="gate", subscriptions=[sync_callback])


async def test_queue_deliveries_survive_a_sigkilled_worker(db_url: str) -> None:
    """40 instances run in a worker process that is SIGKILLed while it delivers; a second worker
    takes over. Every instance's queued, started and completed events are in the queue, first
    deliveries in order; events delivered but not yet recorded as delivered when the worker died
    are delivered again, in their order (at least once)."""
    client = make_subscribed(db_url)
    binding = client.binding("five")
    first = start_worker("tests.engine.subscribe_worker", db_url)
    second = None
    try:
        for start in range(0, 40, 20):
            await binding.create_batch([{"id": f"i{n}"} for n in range(start, start + 20)])
        store: Any = await client.ensure_store()
        deadline = time.monotonic() + 30
        while not await store._read("SELECT 1 FROM {s}.instances WHERE status = 'complete' LIMIT 1"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_worker("tests.engine.subscribe_worker", db_url)
        deadline = time.monotonic() + 60
        while True:
            rows = await store._read(
                "SELECT body FROM {s}.perdure_queue_messages WHERE queue = 'lifecycle' ORDER BY id"
            )
            events: dict[str, list[str]] = {}
            for (body,) in rows:
                message = json.loads(body)
                events.setdefault(message["payload"]["instanceId"], []).append(message["type"].rsplit(".", 1)[1])
            if len(events) == 40 and all(kinds[-1] == "completed" for kinds in events.values()):
                break
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.1)
        for instance_id, kinds in events.items():
            # first deliveries in order; a redelivery after the crash replays a tail, in order too
            assert list(dict.fromkeys(kinds)) == ["queued", "started", "completed"], (instance_id, kinds)
            # one crash: at most one replay, so at most one step back in the order
            ranks = [ORDER.index(k) for k in kinds]
            backs = sum(1 for a, b in zip(ranks, ranks[1:], strict=False) if b <= a)
            assert backs <= 1 and kinds[-1] == "completed", (instance_id, kinds)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        await client.stop()


class LateCommits:
    """A test double of a PostgreSQL store in which the row with seq 2 commits after seq 3 (its
    transaction was still open when seq 3 became visible)."""

    def __init__(self) -> None:
        self.visible = [1, 3]
        self.xmin = 10  # transaction 10 (the one writing seq 2) is still running
        self.cursor = 0

    def row(self, seq: int) -> HistoryRow:
        return HistoryRow(seq, "WORKFLOW_QUEUED", 1e9, seq, "wf", 1e9, f"i{seq}")

    async def history_horizon(self) -> tuple[int, int, int]:
        return max(self.visible), 11, self.xmin

    async def subscription_cursor(self, name: str, start: int) -> int:
        return self.cursor

    async def history_since(self, after: int, types: Any, limit: int = 500) -> list[HistoryRow]:
        return [self.row(s) for s in sorted(self.visible) if s > after]

    async def advance_subscription(self, name: str, seq: int) -> None:
        self.cursor = seq

    async def hold_role(self, role: str, owner: str, until: float, now: float) -> bool:
        return True  # one worker: its roles are always its own


async def test_the_cursor_does_not_pass_a_transaction_still_open() -> None:
    got: list[str] = []

    async def collect(message: dict[str, Any]) -> None:
        got.append(message["payload"]["instanceId"])

    store = LateCommits()
    deliveries = Deliveries(store, "me", {"wf": parse_subscriptions([collect])}, send=None, settle=0.0)  # type: ignore[arg-type]
    await deliveries.deliver_once()
    assert got == ["i1", "i3"] and store.cursor == 0  # transaction 10 may still add a row below 3
    store.visible.append(2)  # it commits: its row appears below one already delivered
    store.xmin = 12
    await deliveries.deliver_once()
    assert got == ["i1", "i3", "i2"]  # delivered once, nothing repeated
    assert store.cursor == 3


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("slow", _slow)
        return await step.do("after", lambda: "ok")


async def _slow() -> str:
    await asyncio.sleep(0.3)
    return "slow"


async def test_a_pause_that_completes_after_the_running_step_is_an_event(make_engine: Make) -> None:
    got: list[str] = []

    async def collect(message: dict[str, Any]) -> None:
        got.append(message["type"].rsplit(".", 1)[1])

    engine = make_engine()
    binding = engine.register(Slow, name="slow", subscriptions=[collect])
    async with engine:
        instance = await binding.create(id="s")
        await until_status(instance, "running")
        await instance.pause()  # waitingForPause until the step ends, then paused
        await until_status(instance, "paused")
        await instance.resume()
        await instance.wait(5)
        deadline = time.monotonic() + 5
        while len(got) < 4:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    assert got == ["queued", "started", "paused", "completed"]


class One(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("a", lambda: 1)


async def _until(got: list[Any], n: int, seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while len(got) < n:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)


async def test_workers_with_different_subscriptions_each_deliver_their_own(make_engine: Make) -> None:
    """Two workers of one database register different workflows, each with a subscription (as
    in a rolling deploy that adds one): both subscriptions are delivered. With one role for all
    subscriptions, the worker that took it first delivered only its own and the other's events
    waited for ever."""
    got: dict[str, list[str]] = {"x": [], "y": []}

    async def on_x(message: dict[str, Any]) -> None:
        got["x"].append(message["type"].removeprefix("cf.workflows.workflow.instance."))

    async def on_y(message: dict[str, Any]) -> None:
        got["y"].append(message["type"].removeprefix("cf.workflows.workflow.instance."))

    first, second = make_engine(), make_engine()
    x = first.register(One, name="x", subscriptions=[on_x])
    y = second.register(One, name="y", subscriptions=[on_y])
    async with first:
        await asyncio.sleep(0.3)  # the first worker's delivery task has run a round
        async with second:
            await (await x.create(id="x1")).wait(5)
            await (await y.create(id="y1")).wait(5)
            await _until(got["x"], 3)
            await _until(got["y"], 3)
    assert got == {"x": ORDER, "y": ORDER}


async def test_a_subscription_of_a_workflow_registered_after_start_is_delivered(make_engine: Make) -> None:
    got: list[str] = []

    async def collect(message: dict[str, Any]) -> None:
        got.append(message["type"].removeprefix("cf.workflows.workflow.instance."))

    engine = make_engine()
    async with engine:
        late = engine.register(One, name="late", subscriptions=[collect])
        await (await late.create(id="l1")).wait(5)
        await _until(got, 3)
    assert got == ORDER


async def test_one_worker_delivers_a_subscription_and_the_other_takes_over_when_it_stops(make_engine: Make) -> None:
    """Two workers register the same subscription: each event is delivered once while both run
    (one holds the subscription's role), and the second delivers once the first has stopped."""
    got: list[tuple[str, str]] = []

    async def collect(message: dict[str, Any]) -> None:
        got.append((message["payload"]["instanceId"], message["type"].removeprefix("cf.workflows.workflow.instance.")))

    first, second = make_engine(), make_engine()
    for engine in (first, second):
        engine.register(One, name="same", subscriptions=[Subscription(collect, name="audit")])
    await first.start()
    await asyncio.sleep(0.3)
    await second.start()
    assert first.deliveries is not None and second.deliveries is not None
    first.deliveries.role_ttl = second.deliveries.role_ttl = 1.0
    await (await first.binding("same").create(id="a")).wait(5)
    await _until(got, 3)
    await asyncio.sleep(0.5)  # a second deliverer would repeat them by now
    assert got == [("a", t) for t in ORDER]
    await first.stop()  # its role lapses (1 s lease); the second worker takes the subscription over
    await (await second.binding("same").create(id="b")).wait(5)
    deadline = time.monotonic() + 15
    while [e for e in got if e[0] == "b"] != [("b", t) for t in ORDER]:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)
    # at least once: events the first worker delivered before its cursor moved may come again
    assert {e for e in got[3:] if e[0] != "b"} <= {("a", t) for t in ORDER}
    await second.stop()
