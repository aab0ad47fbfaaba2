"""The PostgreSQL store on its own: URLs, migrations, fencing, concurrent claims, group commit,
notifications and recovery from killed connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from perdure.errors import Fenced, InstanceAlreadyExistsError, ValidationError
from perdure.records import COMPLETE, DO, NewInstance, StepRecord
from perdure.store.migrations.postgres import LATEST, SchemaTooNewError
from perdure.store.pg_commit import Write, _run_unguarded
from perdure.store.postgres import PostgresStore, parse_url
from tests.pg import drop_schema, new_schema_name, require_server, server_url, with_params
from tests.postgres.helpers import new_app_name, terminate_backends

StoreFactory = Callable[..., PostgresStore]


@pytest.fixture
async def stores() -> AsyncIterator[tuple[str, StoreFactory]]:
    """``(schema, factory)``: stores on one fresh schema, all closed (and the schema dropped)
    at the end."""
    require_server()
    schema = new_schema_name()
    made: list[PostgresStore] = []

    def factory(**options: Any) -> PostgresStore:
        params = {"schema": schema}
        if "application_name" in options:
            params["application_name"] = options.pop("application_name")
        store = PostgresStore(with_params(server_url(), **params), **options)
        made.append(store)
        return store

    yield schema, factory
    for store in made:
        await store.close()
    drop_schema(schema)


def step(name: str, status: str = COMPLETE, result: Any = 1) -> StepRecord:
    now = time.time()
    return StepRecord(DO, name, 1, status, now, attempts=[{"start": now, "end": now, "error": None}], result=result)


async def one_instance(store: PostgresStore, instance_id: str = "a") -> int:
    [record] = await store.create_instances("w", [NewInstance(instance_id, "{}")], time.time(), skip_existing=False)
    return record.pk


# -- urls and migrations ---------------------------------------------------------------------------


def test_url_schema_parameter_is_ours_and_the_rest_goes_to_libpq() -> None:
    conninfo, schema = parse_url("postgresql://u:pw@db.example:6543/app?schema=jobs&sslmode=disable")
    assert schema == "jobs"
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    assert params["host"] == "db.example" and params["port"] == "6543" and params["dbname"] == "app"
    assert params["sslmode"] == "disable" and params["application_name"] == "perdure"
    assert "schema" not in params
    assert parse_url("postgresql://u@h/db")[1] == "perdure"
    assert parse_url("postgresql://u@h/db", "other")[1] == "other"
    assert "application_name=mine" in parse_url("postgresql://u@h/db?application_name=mine")[0]


@pytest.mark.parametrize("url, schema", [("postgresql://h/db?schema=a", "b"), ("postgresql://h/db?schema=1x", None)])
def test_url_schema_conflicts_and_bad_names_are_rejected(url: str, schema: str | None) -> None:
    with pytest.raises(ValidationError, match="schema"):
        parse_url(url, schema)


async def test_concurrent_opens_migrate_once(stores: tuple[str, StoreFactory]) -> None:
    schema, factory = stores
    opened = [factory() for _ in range(5)]
    await asyncio.gather(*(store.open() for store in opened))
    rows = await opened[0]._read("SELECT version FROM {s}.schema_migrations")
    assert sorted(rows) == [(v,) for v in range(1, LATEST + 1)]
    await opened[0].close()
    await opened[0].open()  # reopening finds it done
    assert await opened[0]._read("SELECT count(*) FROM {s}.schema_migrations") == [(LATEST,)]


async def test_a_schema_from_a_newer_version_is_refused(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    await store.open()
    await store._transact(lambda conn: conn.execute(store._q("INSERT INTO {s}.schema_migrations VALUES (999, 'x', 0)")))
    with pytest.raises(SchemaTooNewError, match="999"):
        await factory().open()


async def test_pooled_sessions_end_idle_transactions(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory(idle_in_transaction_timeout=0.25)
    assert await store._read("SHOW idle_in_transaction_session_timeout") == [("250ms",)]


# -- fencing and claims -------------------------------------------------------------------------------


async def test_writes_of_a_taken_over_instance_are_fenced(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    old, new = factory(), factory()
    pk = await one_instance(old)
    now = time.time()
    [mine] = await old.claim("old", 10, now, now + 1, ["w"])
    await old.save_step(pk, mine.epoch, step("first"))
    [taken] = await new.claim("new", 10, now + 2, now + 10, ["w"])  # the old lease expired
    assert taken.pk == pk and taken.epoch == mine.epoch + 1 and taken.owner == "new"
    with pytest.raises(Fenced):
        await old.save_step(pk, mine.epoch, step("late"))
    await old.save_step(pk, mine.epoch, step("lazy"), durable=False)  # refused too, silently
    with pytest.raises(Fenced):
        await old.take_event(pk, mine.epoch, step("wait", "waiting"), "go", now)
    for late_write in (
        old.suspend(pk, mine.epoch, now + 60, [], now),
        old.release(pk, mine.epoch, now),
        old.finish(pk, mine.epoch, COMPLETE, "1", None, now),
    ):
        with pytest.raises(Fenced):
            await late_write
    assert await new.save_step(pk, taken.epoch, step("second")) == "running"
    await new.close()  # commits what is queued
    assert [s.name for s in await old.load_steps(pk)] == ["first", "second"]
    record = await old.get_by_pk(pk)
    assert record is not None and (record.status, record.owner, record.epoch) == ("running", "new", taken.epoch)


async def test_concurrent_claims_take_disjoint_instances(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    client = factory()
    await client.create_instances(
        "w", [NewInstance(f"i{n}", "{}") for n in range(60)], time.time(), skip_existing=False
    )
    workers = [factory() for _ in range(4)]

    async def claim_all(store: PostgresStore, owner: str) -> list[int]:
        got: list[int] = []
        while True:
            now = time.time()
            claimed = await store.claim(owner, 3, now, now + 60, ["w"])
            if not claimed:
                return got
            got += [r.pk for r in claimed]

    results = await asyncio.gather(*(claim_all(store, f"w{n}") for n, store in enumerate(workers)))
    every = [pk for got in results for pk in got]
    assert len(every) == len(set(every)) == 60
    assert all(results)  # nobody was starved by the others' locks


async def test_claim_order_is_due_timers_then_queued_oldest_first(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    now = time.time()
    first, second, third = [await one_instance(store, name) for name in ("x", "y", "z")]
    [x] = await store.claim("me", 1, now, now + 60, ["w"])
    assert x.pk == first
    await store.suspend(first, x.epoch, now - 1, [], now)  # due already
    order = [r.pk for r in await store.claim("me", 3, now, now + 60, ["w"])]
    assert order == [first, second, third]
    assert await store.claim("me", 3, now, now + 60, ["other"]) == []


# -- group commit ---------------------------------------------------------------------------------


async def test_concurrent_step_saves_share_commits_and_fence_alone(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    now = time.time()
    await store.create_instances("w", [NewInstance(f"i{n}", "{}") for n in range(50)], now, skip_existing=False)
    claimed = await store.claim("me", 50, now, now + 60, ["w"])
    stale = claimed[7]
    before = store.batches
    saves = [
        store.save_step(r.pk, r.epoch - 1 if r is stale else r.epoch, step(f"s{k}", result=k))
        for r in claimed
        for k in range(4)
    ]
    results = await asyncio.gather(*saves, return_exceptions=True)
    assert store.batches - before < 20  # 200 saves, a handful of commits
    fenced = [i for i, result in enumerate(results) if isinstance(result, Fenced)]
    assert fenced == [28, 29, 30, 31]  # the stale instance's four, and only those
    assert all(result == "running" for i, result in enumerate(results) if i not in fenced)
    for record in claimed:
        saved = await store.load_steps(record.pk)
        assert [(s.name, s.result) for s in saved] == ([] if record is stale else [(f"s{k}", k) for k in range(4)])


def count_statements(store: PostgresStore, name: str) -> list[int]:
    """Record the size of each call of the store's group statement ``name`` (a spy that calls
    the real one)."""
    sizes: list[int] = []
    real = getattr(store, name)

    async def spy(conn: Any, writes: Any) -> Any:
        sizes.append(len(writes))
        return await real(conn, writes)

    setattr(store, name, spy)
    return sizes


async def test_concurrent_lone_creates_share_statements(stores: tuple[str, StoreFactory]) -> None:
    """REST POSTs arriving together are lone creates: they share one CREATE_GROUP statement
    per commit (each was its own statement when its write had no key), and the first write
    of an id gets it."""
    _, factory = stores
    store = factory()
    await one_instance(store, "warm")
    sizes = count_statements(store, "_create_group")
    now = time.time()
    results = await asyncio.gather(
        *[store.create_instances("w", [NewInstance(f"c{n}", "{}")], now, skip_existing=False) for n in range(40)],
        *[store.create_instances("w", [NewInstance("twice", "{}")], now, skip_existing=False) for _ in range(3)],
        return_exceptions=True,
    )
    assert max(sizes) > 1 and len(sizes) < 40
    assert [r[0].id for r in results[:40] if isinstance(r, list)] == [f"c{n}" for n in range(40)]
    assert sum(isinstance(r, InstanceAlreadyExistsError) for r in results[40:]) == 2
    assert len({r[0].pk for r in results if isinstance(r, list)}) == 41


async def test_concurrent_finishes_share_statements_and_fence_alone(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    now = time.time()
    items = [NewInstance(f"f{n}", "{}", success_retention=60.0, error_retention=120.0) for n in range(30)]
    await store.create_instances("w", items, now, skip_existing=False)
    claimed = await store.claim("me", 30, now, now + 60, ["w"])
    stale = claimed[5]
    sizes = count_statements(store, "_finish_group")
    results = await asyncio.gather(
        *[
            store.finish(
                r.pk,
                r.epoch - 1 if r is stale else r.epoch,
                "complete" if n % 2 == 0 else "errored",
                "1" if n % 2 == 0 else None,
                None if n % 2 == 0 else {"name": "Error", "message": "boom"},
                now,
            )
            for n, r in enumerate(claimed)
        ],
        return_exceptions=True,
    )
    assert max(sizes) > 1 and len(sizes) < 30
    assert [i for i, r in enumerate(results) if isinstance(r, Fenced)] == [5]
    for n, record in enumerate(claimed):
        got = await store.get_instance("w", record.id)
        assert got is not None
        if record is stale:
            assert got.status == "running"
            continue
        assert got.status == ("complete" if n % 2 == 0 else "errored") and got.owner is None
        [(expires,)] = await store._read("SELECT expires_at FROM {s}.instances WHERE pk = %s", (record.pk,))
        assert expires == pytest.approx(now + (60.0 if n % 2 == 0 else 120.0))
        assert [h["type"] for h in await store.history(record.pk)][-1] == (
            "WORKFLOW_SUCCESS" if n % 2 == 0 else "WORKFLOW_FAILURE"
        )


async def test_a_batch_runs_its_groups_by_phase_then_its_lone_writes() -> None:
    """A finish (phase 1) runs after the step saves of its batch, even when another instance's
    finish was queued first: an unawaited step save of the finishing run must land first.
    No server: the writes record their order on a stand-in connection (a test double)."""
    order: list[str] = []

    def group_of(name: str) -> Any:
        async def group(conn: Any, writes: Any) -> list[tuple[Any, None]]:
            order.append(f"{name} x{len(writes)}")
            return [(None, None)] * len(writes)

        return group

    def alone(label: str) -> Any:
        async def fn(conn: Any) -> None:
            order.append(label)

        return fn

    finish, save = group_of("finish"), group_of("save")
    writes = [
        Write(alone("finish A"), group=finish, key=("finish", 1), phase=1),
        Write(alone("save B"), group=save, key=(2, "s")),
        Write(alone("claim"), single=True),
        Write(alone("finish B"), group=finish, key=("finish", 2), phase=1),
        Write(alone("save C"), group=save, key=(3, "s")),
        Write(alone("finish C"), group=finish, key=("finish", 3), phase=1),
        Write(alone("save D"), group=group_of("lone"), key=(4, "s")),
    ]
    outcomes = await _run_unguarded(object(), writes)  # type: ignore[arg-type]
    assert order == ["save x2", "save D", "finish x3", "claim"]
    assert outcomes == [(None, None)] * len(writes)


async def test_a_failed_batch_create_leaves_nothing(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    await one_instance(store, "taken")
    items = [NewInstance("new-1", "{}"), NewInstance("taken", "{}"), NewInstance("new-2", "{}")]
    with pytest.raises(InstanceAlreadyExistsError, match="taken"):
        await store.create_instances("w", items, time.time(), skip_existing=False)
    assert await store.get_instance("w", "new-1") is None
    created = await store.create_instances("w", [*items, NewInstance("new-1", "{}")], time.time(), skip_existing=True)
    assert [r.id for r in created] == ["new-1", "new-2"]
    assert [r.pk for r in created] == sorted(r.pk for r in created)  # pks follow the given order


# -- notifications and connection loss -------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_notifications_reach_other_stores_only(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    writer, watcher = factory(safety_poll=60), factory(safety_poll=60)
    seen = {"writer": 0, "watcher": 0}
    await writer.open()
    await watcher.open()
    writer.on_change(lambda: seen.__setitem__("writer", seen["writer"] + 1))
    watcher.on_change(lambda: seen.__setitem__("watcher", seen["watcher"] + 1))
    await eventually(lambda: writer.listening and watcher.listening)
    await eventually(lambda: seen == {"writer": 1, "watcher": 1})  # the (re)connection signal
    assert await watcher.changed() is True
    assert await watcher.changed() is False
    pk = await one_instance(writer)
    await eventually(lambda: seen["watcher"] == 2)
    assert await watcher.changed() is True
    await writer.send_event(pk, "go", "{}", time.time())
    await writer.pause(pk, time.time())
    await eventually(lambda: seen["watcher"] >= 3)
    await asyncio.sleep(0.2)
    assert seen["writer"] == 1  # its own notifications are not news to it


async def test_changed_is_a_slow_poll_as_well(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory(safety_poll=0.2)
    await store.open()
    assert await store.changed() in (True, False)
    await eventually(lambda: store.listening)
    await store.changed()
    assert await store.changed() is False
    await asyncio.sleep(0.25)
    assert await store.changed() is True  # expired leases are announced by nobody: look anyway


async def test_listener_reconnects_after_its_connection_is_killed(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    app = new_app_name()
    watcher, writer = factory(application_name=app, safety_poll=60), factory()
    calls: list[float] = []
    await watcher.open()
    watcher.on_change(lambda: calls.append(time.monotonic()))
    await eventually(lambda: watcher.listening)
    assert terminate_backends(app) >= 1
    await eventually(lambda: watcher._listener.connections == 2)
    await one_instance(writer)
    await eventually(lambda: len(calls) >= 3)  # connect, reconnect, the create


async def test_writes_and_reads_survive_killed_connections(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    app = new_app_name()
    store = factory(application_name=app, pool_min=3)
    pk = await one_instance(store)
    now = time.time()
    [record] = await store.claim("me", 1, now, now + 60, ["w"])
    for n in range(3):
        assert terminate_backends(app) >= 1
        await asyncio.sleep(0.05)
        assert await store.save_step(pk, record.epoch, step(f"s{n}")) == "running"
        assert terminate_backends(app) >= 1
        await asyncio.sleep(0.05)
        assert [s.name for s in await store.load_steps(pk)] == [f"s{k}" for k in range(n + 1)]
    await store.renew_leases("me", [pk], now + 120)
    assert terminate_backends(app) >= 1
    await asyncio.sleep(0.05)
    await store.pause(pk, time.time())  # a control call retried before COMMIT was sent
    status = await store.get_by_pk(pk)
    assert status is not None and status.status == "waitingForPause"
    assert terminate_backends(app) >= 1
    await asyncio.sleep(0.05)
    # Not idempotent, so it may not be retried once sent; the dead connection is noticed
    # before anything is sent, and the write goes through on a new one.
    await store.finish(pk, record.epoch, COMPLETE, "42", None, time.time())
    status = await store.get_by_pk(pk)
    assert status is not None and (status.status, status.output) == ("complete", 42)


async def test_a_pause_requested_from_a_dead_worker_completes_on_claim(stores: tuple[str, StoreFactory]) -> None:
    _, factory = stores
    store = factory()
    pk = await one_instance(store)
    now = time.time()
    [record] = await store.claim("dead", 1, now, now + 60, ["w"])
    assert await store.pause(pk, now) == "waitingForPause"
    await store.expire_leases(["dead"])
    assert await store.claim("alive", 5, now + 1, now + 60, ["w"]) == []  # paused, not claimed
    paused = await store.get_by_pk(pk)
    assert paused is not None and (paused.status, paused.owner, paused.epoch) == ("paused", None, record.epoch + 1)
    assert await store.resume(pk, now + 2) == "queued"
    [again] = await store.claim("alive", 5, now + 3, now + 60, ["w"])
    assert again.pk == pk and again.started_at == now  # started once: one WORKFLOW_START
    # the pause that completed on claim is a lifecycle event, in the same statement
    assert [h["type"] for h in await store.history(pk)] == ["WORKFLOW_QUEUED", "WORKFLOW_START", "WORKFLOW_PAUSED"]
    assert (await store.history(pk))[0]["data"] == {"trigger": "binding"}
