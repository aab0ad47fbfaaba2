"""Instance counts by workflow and status (``Store.count_by_status``), kept by triggers instead of
counted over every instance: exact after every kind of status change, on files and schemas that
predate them, and (on PostgreSQL, where the triggers append deltas that stores fold into the
counts) while workers write and folds run at the same time."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perdure import Engine, InstanceAlreadyExistsError, InvalidStateError, NonRetryableError, WorkflowEntrypoint
from perdure.errors import Fenced
from perdure.records import COMPLETE, ERRORED, TERMINAL, NewInstance
from perdure.store import open_store
from perdure.store.base import Store
from perdure.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.engine.util import until_status

Make = Callable[..., Engine]
Counts = dict[str, dict[str, int]]


def is_postgres(url: str) -> bool:
    return url.startswith("postgres")


def raw_sqlite(path: str, *statements: str) -> None:
    """Run ``statements`` in one transaction on a connection of its own: another program, or an
    older Perdure, that knows nothing of the counts."""
    raw = sqlite3.connect(path)
    try:
        with raw:
            for statement in statements:
                raw.execute(statement)
    finally:
        raw.close()


def _table(rows: list[tuple[Any, ...]], kind: str) -> Counts:
    counts: Counts = {}
    for k, workflow, status, n in rows:
        if k == kind and n:
            counts.setdefault(workflow, {})[status] = int(n)
    return counts


async def kept_and_truth(store: Store, workflow: str | None = None) -> tuple[Counts, Counts]:
    """The counts the triggers keep (on PostgreSQL: folded counts plus deltas) and a GROUP BY over
    the instances, read in one statement, so from one snapshot even while others write."""
    if isinstance(store, SQLiteStore):
        where = "WHERE workflow = ?" if workflow else ""
        rows = store._fetch(
            f"SELECT 'kept', workflow, status, n FROM instance_counts {where} UNION ALL"
            f" SELECT 'truth', workflow, status, COUNT(*) FROM instances {where} GROUP BY workflow, status",
            (workflow, workflow) if workflow else (),
        )
    else:
        from perdure.store.pg_sql import COUNTS

        where = "WHERE workflow = %(w)s" if workflow else ""
        kept = COUNTS.replace("{where}", where)
        rows = await store._read(  # type: ignore[attr-defined]
            f"SELECT 'kept', workflow, status, total FROM ({kept}) k (workflow, status, total, deltas) UNION ALL"
            f" SELECT 'truth', workflow, status, count(*) FROM {{s}}.instances {where} GROUP BY workflow, status",
            {"w": workflow} if workflow else (),
        )
    return _table(rows, "kept"), _table(rows, "truth")


async def check(store: Store, *workflows: str) -> Counts:
    """Kept counts == GROUP BY, and count_by_status says the same (all of them, and per workflow).
    Call it when nothing else writes. Returns the counts."""
    kept, truth = await kept_and_truth(store)
    assert kept == truth
    assert await store.count_by_status() == truth
    for workflow in workflows:
        kept_one, truth_one = await kept_and_truth(store, workflow)
        assert kept_one == truth_one == ({workflow: truth[workflow]} if workflow in truth else {})
        assert await store.count_by_status(workflow) == truth_one
    return truth


async def deltas(store: Store) -> int:
    rows = await store._read("SELECT count(*) FROM {s}.instance_count_deltas")  # type: ignore[attr-defined]
    return int(rows[0][0])


async def pg_execute(store: Store, *statements: str) -> None:
    """Run ``statements`` (``{s}`` for the schema) in one transaction of the store's pool."""

    async def run(conn: Any) -> None:
        for statement in statements:
            await conn.execute(store._q(statement))  # type: ignore[attr-defined]

    await store._transact(run)  # type: ignore[attr-defined]


async def delete_instance(store: Store, pk: int) -> None:
    if isinstance(store, SQLiteStore):
        await store._write(lambda conn: conn.execute("DELETE FROM instances WHERE pk = ?", (pk,)))
    else:
        await pg_execute(store, f"DELETE FROM {{s}}.instances WHERE pk = {int(pk)}")


# -- workflows ---------------------------------------------------------------------------------------


class Echo(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload)


class Boom(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        raise NonRetryableError("boom")


class Sleeper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("long", "1 hour")


class Waiter(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return (await step.wait_for_event("approval", "approve", timeout="1 hour"))["payload"]


class Held(WorkflowEntrypoint):
    """Its step waits until the test opens the gate."""

    gate: asyncio.Event

    async def run(self, event: Any, step: Any) -> Any:
        async def hold() -> str:
            await Held.gate.wait()
            return "released"

        await step.do("hold", hold)
        return await step.do("after", lambda: "done")  # a pause requested during hold stops here


# -- through the engine ------------------------------------------------------------------------------


async def test_counts_follow_every_kind_of_status_change(make_engine: Make) -> None:
    Held.gate = asyncio.Event()
    engine = make_engine(max_concurrent=10)
    echo = engine.register(Echo, name="echo")
    boom = engine.register(Boom, name="boom")
    sleeper = engine.register(Sleeper, name="sleeper")
    waiter = engine.register(Waiter, name="waiter")
    held = engine.register(Held, name="held")
    store = await engine.ensure_store()
    names = ("echo", "boom", "sleeper", "waiter", "held", "nobody")

    assert await check(store, *names) == {}
    echoes = await echo.create_batch([{"params": n} for n in range(5)])
    await echo.create_batch([{"id": echoes[0].id}, {"id": "e-new"}])  # the existing id is skipped
    with pytest.raises(InstanceAlreadyExistsError):
        await echo.create(id="e-new")
    booms = [await boom.create() for _ in range(2)]
    sleepers = await sleeper.create_batch([{}, {}, {}])
    waiters = await waiter.create_batch([{}, {}])
    holds = await held.create_batch([{}, {}])
    queued_paused = await echo.create(id="paused-while-queued")
    await queued_paused.pause()
    assert await check(store, *names) == {
        "echo": {"queued": 6, "paused": 1},
        "boom": {"queued": 2},
        "sleeper": {"queued": 3},
        "waiter": {"queued": 2},
        "held": {"queued": 2},
    }

    async with engine:  # claims, steps, finishes, suspends
        for instance in [*echoes, *booms, *sleepers, *waiters]:
            await until_status(instance, {"echo": "complete", "boom": "errored"}.get(instance.workflow, "waiting"))
        for instance in holds:
            await until_status(instance, "running")
        assert await check(store, *names) == {
            "echo": {"complete": 6, "paused": 1},
            "boom": {"errored": 2},
            "sleeper": {"waiting": 3},
            "waiter": {"waiting": 2},
            "held": {"running": 2},
        }

        await holds[0].pause()  # running -> waitingForPause
        await sleepers[0].pause()  # waiting -> paused
        await waiters[0].send_event(type="approve", payload="yes")  # waiting -> running -> complete
        await waiters[1].terminate()  # waiting -> terminated
        await until_status(waiters[0], "complete")
        assert await check(store, *names) == {
            "echo": {"complete": 6, "paused": 1},
            "boom": {"errored": 2},
            "sleeper": {"waiting": 2, "paused": 1},
            "waiter": {"complete": 1, "terminated": 1},
            "held": {"running": 1, "waitingForPause": 1},
        }

        Held.gate.set()  # waitingForPause -> paused, running -> complete
        await until_status(holds[0], "paused")
        await until_status(holds[1], "complete")
        await holds[0].resume()  # paused -> queued -> running -> complete
        await sleepers[0].resume()  # paused -> waiting
        await queued_paused.resume()  # paused -> queued -> complete
        await until_status(holds[0], "complete")
        await until_status(queued_paused, "complete")
        await booms[0].restart()  # errored -> queued -> errored
        await echoes[1].restart()  # complete -> queued -> complete
        await waiters[1].restart()  # terminated -> queued -> waiting
        await sleepers[1].terminate()  # waiting -> terminated
        await until_status(waiters[1], "waiting")
        await until_status(echoes[1], "complete")
        await until_status(booms[0], "errored")
        assert await check(store, *names) == {
            "echo": {"complete": 7},
            "boom": {"errored": 2},
            "sleeper": {"waiting": 2, "terminated": 1},
            "waiter": {"complete": 1, "waiting": 1},
            "held": {"complete": 2},
        }


async def test_count_by_status_reads_the_kept_counts(db_url: str) -> None:
    """Not the instances: a change made to the kept counts behind the store's back shows."""
    store = open_store(db_url)
    try:
        await store.create_instances("w", [NewInstance("a", "{}")], time.time(), skip_existing=False)
        if isinstance(store, SQLiteStore):
            raw_sqlite(store.path, "UPDATE instance_counts SET n = n + 1000")
        else:
            await pg_execute(store, "INSERT INTO {s}.instance_count_deltas VALUES ('w', 'queued', 1000)")
        assert await store.count_by_status() == {"w": {"queued": 1001}}
    finally:
        await store.close()


# -- random operations on the store ------------------------------------------------------------------

OPERATIONS = (
    "create",
    "create_batch",
    "claim",
    "suspend",
    "release",
    "finish",
    "stale_finish",
    "pause",
    "resume",
    "terminate",
    "restart",
    "event",
    "takeover",
    "delete",
    "fold",
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = open_store(db_url)
    await opened.open()
    yield opened
    await opened.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 1000)), min_size=5, max_size=40))
async def test_random_operations_keep_the_counts_exact(store: Store, ops: list[tuple[str, int]]) -> None:
    """Every store operation that moves an instance (as the engine and the control calls do,
    plus a few no engine makes: a suspend of any status, a delete), checked after each one.
    The examples share the store; each uses two workflows of its own."""
    tag = uuid.uuid4().hex[:8]
    workflows = [f"p{tag}a", f"p{tag}b"]
    clock = 1000.0
    pks = [  # a few to start with, so that most operations have an instance to act on
        record.pk
        for workflow in workflows
        for record in await store.create_instances(
            workflow, [NewInstance(f"s{k}", "{}") for k in range(3)], clock, skip_existing=False
        )
    ]

    async def current(r: int) -> tuple[int, int, str] | None:
        if not pks:
            return None
        record = await store.get_by_pk(pks[r % len(pks)])
        assert record is not None
        return record.pk, record.epoch, record.status

    for op, r in ops:
        clock += 1.0
        now = clock
        workflow = workflows[r % 2]
        picked = await current(r)
        try:
            if op == "create":
                created = await store.create_instances(
                    workflow, [NewInstance(f"i{r % 7}", "{}")], now, skip_existing=True
                )
                pks.extend(record.pk for record in created)
            elif op == "create_batch":  # a duplicate id among them refuses the whole batch
                items = [NewInstance(f"i{(r + k) % 9}", "{}") for k in range(3)]
                created = await store.create_instances(workflow, items, now, skip_existing=False)
                pks.extend(record.pk for record in created)
            elif op == "claim":
                await store.claim("A" if r % 2 else "B", 1 + r % 3, now, now + 100, workflows)
            elif op == "takeover":  # dead owners: their running instances go to C, paused if asked
                await store.expire_leases(["A", "B"])
                await store.claim("C", 1 + r % 3, now, now + 100, workflows)
            elif picked is None:
                pass
            elif op == "suspend":
                wake = (None, now - 1, now + 1000)[r % 3]
                await store.suspend(picked[0], picked[1], wake, ["go"] if r % 2 else [], now)
            elif op == "release":
                await store.release(picked[0], picked[1], now)
            elif op == "finish":
                await store.finish(picked[0], picked[1], (COMPLETE, ERRORED)[r % 2], "1", None, now)
            elif op == "stale_finish":
                with pytest.raises(Fenced):
                    await store.finish(picked[0], picked[1] - 1, COMPLETE, "1", None, now)
            elif op == "pause":
                await store.pause(picked[0], now)
            elif op == "resume":
                await store.resume(picked[0], now)
            elif op == "terminate":
                await store.terminate(picked[0], now)
            elif op == "restart":
                await store.restart(picked[0], now, None)
            elif op == "event":
                await store.send_event(picked[0], "go", "{}", now)
            elif op == "delete":  # no operation deletes instances; an operator might
                pks.remove(picked[0])
                await delete_instance(store, picked[0])
            elif op == "fold" and not isinstance(store, SQLiteStore):
                await store.compact_counts()  # type: ignore[attr-defined]
        except (InstanceAlreadyExistsError, InvalidStateError):
            pass
        kept, truth = await kept_and_truth(store)
        assert kept == truth, (op, r)
    for workflow in workflows:
        kept, truth = await kept_and_truth(store, workflow)
        assert kept == truth
        assert await store.count_by_status(workflow) == truth


# -- databases from before the counts ---------------------------------------------------------------


async def make_some_instances(store: Store, workflow: str) -> None:
    """Instances in five statuses, and the history of their changes."""
    now = time.time()
    items = [NewInstance(f"x{k}", "{}") for k in range(8)]
    await store.create_instances(workflow, items, now, skip_existing=False)
    claimed = await store.claim("old", 5, now, now + 100, [workflow])
    await store.finish(claimed[0].pk, claimed[0].epoch, COMPLETE, "1", None, now)
    await store.finish(claimed[1].pk, claimed[1].epoch, ERRORED, None, {"name": "E", "message": "m"}, now)
    await store.suspend(claimed[2].pk, claimed[2].epoch, now + 100, [], now)
    await store.terminate(claimed[3].pk, now)


async def test_a_database_from_before_the_counts_gets_them_counted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a file of layout 2 (no counts table, no triggers), with instances, some written
    by an older Perdure. PostgreSQL: a schema migrated up to the migration before the counts,
    with instances. Opened by this version, the counts are taken from the instances, and every
    later change is counted, also one made by a connection that knows nothing of the counts
    (an older Perdure still running)."""
    older_writes = (
        "UPDATE {s}instances SET status = 'complete' WHERE id = 'x7'",
        "INSERT INTO {s}instances (workflow, id, status, params, trigger, created_at)"
        " VALUES ('v', 'late', 'queued', '{{}}', 'api', 0)",
    )
    later_writes = (
        "UPDATE {s}instances SET status = 'paused' WHERE status = 'queued'",
        "INSERT INTO {s}instances (workflow, id, status, params, trigger, created_at)"
        " VALUES ('v', 'later', 'queued', '{{}}', 'api', 0)",
    )
    if not is_postgres(db_url):
        old = open_store(db_url)
        await make_some_instances(old, "w")
        await old.close()
        assert isinstance(old, SQLiteStore)
        raw_sqlite(  # back to layout 2, then an older Perdure's writes
            old.path,
            *(
                f"DROP TRIGGER {name}"
                for name in ("instance_counts_insert", "instance_counts_update", "instance_counts_delete")
            ),
            "DROP TABLE instance_counts",
            "UPDATE perdure_meta SET value = '2' WHERE key = 'schema_version'",
            *(w.format(s="") for w in older_writes),
        )
    else:
        from perdure.store.migrations import postgres as migrations

        every = migrations.MIGRATIONS
        counts = next(m for m in every if "instance counts" in m.description)
        before = tuple(m for m in migrations.MIGRATIONS if m.version < counts.version)  # a schema of then
        assert len(before) == counts.version - 1
        monkeypatch.setattr(migrations, "MIGRATIONS", before)
        monkeypatch.setattr(migrations, "LATEST", before[-1].version)
        old = open_store(db_url)
        await old.open()
        # This Perdure's statements name the columns later migrations add: give the old schema
        # those (only those; each is IF NOT EXISTS, so the real upgrade below passes over them).
        later_columns = [
            statement
            for m in every
            if m.version > counts.version
            for statement in m.statements
            if "ADD COLUMN IF NOT EXISTS" in statement
        ]
        await pg_execute(old, *later_columns)
        await make_some_instances(old, "w")
        await pg_execute(old, *(w.format(s="{s}.") for w in older_writes))
        assert await old._read("SELECT max(version) FROM {s}.schema_migrations") == [  # type: ignore[attr-defined]
            (before[-1].version,)
        ]
        assert await old._read("SELECT to_regclass('{s}.instance_counts') IS NULL") == [(True,)]  # type: ignore[attr-defined]
        await old.close()
        monkeypatch.undo()

    store = open_store(db_url)
    try:
        assert await check(store, "w", "v") == {
            "w": {"queued": 2, "running": 1, "complete": 2, "errored": 1, "waiting": 1, "terminated": 1},
            "v": {"queued": 1},
        }
        if isinstance(store, SQLiteStore):
            assert store._fetch("SELECT value FROM perdure_meta WHERE key = 'schema_version'") == [
                (str(SCHEMA_VERSION),)
            ]
            raw_sqlite(store.path, *(w.format(s="") for w in later_writes))
        else:
            from perdure.store.migrations.postgres import LATEST

            assert await store._read("SELECT max(version) FROM {s}.schema_migrations") == [(LATEST,)]  # type: ignore[attr-defined]
            await pg_execute(store, *(w.format(s="{s}.") for w in later_writes))
        await make_some_instances(store, "u")
        assert await check(store, "w", "v", "u") == {
            "w": {"paused": 2, "running": 1, "complete": 2, "errored": 1, "waiting": 1, "terminated": 1},
            "v": {"paused": 1, "queued": 1},
            "u": {"queued": 3, "running": 1, "complete": 1, "errored": 1, "waiting": 1, "terminated": 1},
        }
    finally:
        await store.close()


# -- PostgreSQL: deltas and folds --------------------------------------------------------------------


class Hop(WorkflowEntrypoint):
    """Two steps around a short sleep (the instance is suspended, then claimed again, maybe by
    the other engine); one in five fails."""

    async def run(self, event: Any, step: Any) -> Any:
        async def noop() -> None:
            return None

        await step.do("a", noop)
        await step.sleep("nap", 20)  # milliseconds
        await step.do("b", noop)
        if event.payload % 5 == 0:
            raise NonRetryableError("one in five")
        return event.payload


async def test_counts_stay_exact_while_two_engines_write_and_folds_run(make_engine: Make, db_url: str) -> None:
    """Two engines move 150 instances through their lives (with pauses, resumes and
    terminations from outside) while, on PostgreSQL, both engines fold deltas every 20 ms and a
    third store folds in a loop. Every snapshot read meanwhile has kept counts equal to the
    GROUP BY: no delta is lost or counted twice by a fold. At the end the engines' own folds
    leave no delta behind."""
    postgres = is_postgres(db_url)
    options: dict[str, Any] = {"fast_wait": 0, "max_concurrent": 20}
    if postgres:
        options["compact_every"] = 0.02
    engines = [make_engine(**options) for _ in range(2)]
    bindings = [engine.register(Hop, name="hop") for engine in engines]
    observer = open_store(db_url)
    folded: list[int | None] = []
    snapshots = 0
    done = asyncio.Event()

    async def fold_in_a_loop() -> None:
        folder = open_store(db_url)
        try:
            while not done.is_set():
                folded.append(await folder.compact_counts())  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)
        finally:
            await folder.close()

    async def watch() -> None:
        nonlocal snapshots
        while not done.is_set():
            kept, truth = await kept_and_truth(observer)
            assert kept == truth
            snapshots += 1
            await asyncio.sleep(0.001)

    background: list[asyncio.Task[None]] = []
    try:
        async with engines[0], engines[1]:
            background.append(asyncio.create_task(watch()))
            if postgres:
                background.append(asyncio.create_task(fold_in_a_loop()))
            instances = [
                *await bindings[0].create_batch([{"params": n} for n in range(75)]),
                *await bindings[1].create_batch([{"params": n} for n in range(75, 150)]),
            ]
            for k, instance in enumerate(instances[:30]):
                with contextlib.suppress(InvalidStateError):  # unless it finished already
                    await (instance.pause() if k % 3 else instance.terminate())
            await asyncio.sleep(0.05)
            for k, instance in enumerate(instances[:30]):
                if k % 3:
                    await instance.resume()
            deadline = time.monotonic() + 30
            while True:
                _, truth = await kept_and_truth(observer)
                if set(truth.get("hop", {})) <= TERMINAL:
                    break
                assert time.monotonic() < deadline, truth
                await asyncio.sleep(0.05)
            done.set()
            await asyncio.gather(*background)
            counts = await check(observer, "hop")
            assert sum(counts["hop"].values()) == 150 and 0 < counts["hop"]["terminated"] <= 10
            assert snapshots > 10
            if postgres:
                assert any(n for n in folded), folded  # the loop folded deltas while engines wrote
                deadline = time.monotonic() + 5
                while await deltas(observer):  # the idle engines fold what is left
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert await check(observer, "hop") == counts
    finally:
        done.set()
        await asyncio.gather(*background, return_exceptions=True)
        await observer.close()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL schema (folds exist only there: SQLite updates its counts in place)."""
    from tests.pg import fresh_schema_url

    return fresh_schema_url(request)


async def test_a_fold_skips_while_another_holds_the_lock_and_reads_fold_many_deltas(pg_url: str) -> None:
    from perdure.store.postgres import PostgresStore

    db_url = pg_url

    store = PostgresStore(db_url, compact_after=10, compact_every=3600)  # no background folds
    other = PostgresStore(db_url)
    try:
        now = time.time()
        for k in range(4):  # four statements: four deltas
            await store.create_instances(
                "w", [NewInstance(f"a{k}", "{}"), NewInstance(f"b{k}", "{}")], now, skip_existing=False
            )
        assert await deltas(store) == 4
        assert await store.compact_counts() == 4
        assert await deltas(store) == 0 and await store.compact_counts() == 0
        await store.claim("me", 8, now, now + 100, ["w"])  # 8 status changes: 16 deltas
        assert await deltas(store) == 16
        assert await other._read("SELECT count(*) FROM {s}.instance_counts") == [(1,)]

        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_the_lock(conn: Any) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (store._counts.lock,))
            held.set()
            await release.wait()

        holder = asyncio.create_task(other._transact(hold_the_lock))
        await held.wait()
        assert await store.compact_counts() is None  # skipped at once, nothing folded
        assert await deltas(store) == 16
        assert await store.count_by_status("w") == {"w": {"running": 8}}  # exact meanwhile
        release.set()
        await holder

        # A read that comes across more than compact_after deltas folds them.
        assert await store.count_by_status() == {"w": {"running": 8}}
        assert await deltas(store) == 0
        assert await check(store, "w") == {"w": {"running": 8}}
    finally:
        await store.close()
        await other.close()
