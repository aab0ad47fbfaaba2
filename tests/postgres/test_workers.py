"""Many worker processes on one PostgreSQL database: crashes, frozen workers, lost connections.

Each test runs real ``python -m perdure.cli.worker`` processes on a fresh schema and checks the
contract of issue 3: every instance completes, every step is recorded exactly once, no step's
side effect runs in two workers at once, a worker that lost its lease cannot record anything,
and a worker whose connections die keeps going.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from perdure import Engine
from tests.postgres.app import CHAIN_STEPS, LONG_STEP_SECONDS, Chain, Long
from tests.postgres.helpers import Schema, Worker, new_app_name, overlapping, terminate_backends, wait_all_complete
from tests.postgres.proxy import Proxy

pytestmark = pytest.mark.slow

EXPECTED_OUTPUT = sum(i * i for i in range(CHAIN_STEPS))


def client(schema: Schema) -> Engine:
    """An engine that is never started: it creates instances and reads them."""
    engine = Engine(schema.url(application_name="perdure_test_client"))
    engine.register(Chain, name="chain")
    engine.register(Long, name="long")
    return engine


async def create_chains(engine: Engine, n: int) -> None:
    binding = engine.binding("chain")
    for start in range(0, n, 100):
        await binding.create_batch([{"id": f"c{i:04d}"} for i in range(start, min(n, start + 100))])


def check_chains(schema: Schema, n: int) -> None:
    """Every instance complete with the exact output; every step stored once with its result."""
    outputs = schema.query("SELECT id, status, output FROM instances WHERE workflow = 'chain'")
    assert len(outputs) == n
    assert {(status, output) for _, status, output in outputs} == {("complete", str(EXPECTED_OUTPUT))}
    steps = schema.query(
        "SELECT i.id, s.name, s.count, s.status, s.result FROM steps s JOIN instances i ON i.pk = s.instance_pk"
    )
    assert len(steps) == n * CHAIN_STEPS
    keys = {(instance, name, count) for instance, name, count, _, _ in steps}
    assert len(keys) == n * CHAIN_STEPS  # exactly once per (instance, step)
    for _, name, count, status, result in steps:
        i = int(name.split("-")[1])
        assert (count, status, result) == (1, "complete", str(i * i))


def check_no_concurrent_effects(schema: Schema, died_at: dict[int, float]) -> int:
    """No two executions of one step overlapped in time; returns how many steps ran twice.

    An execution whose worker was SIGKILLed has no end: it lasted until its worker died."""
    executions: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for instance, step, pid, started, ended in schema.query("SELECT instance, step, pid, started, ended FROM effects"):
        end = ended if ended is not None else died_at.get(pid)
        assert end is not None, f"step {instance}/{step} never ended in worker {pid}, which was not killed"
        executions[(instance, step)].append((started, end))
    clashes = {key: overlapping(spans) for key, spans in executions.items() if overlapping(spans)}
    assert not clashes, f"side effects ran concurrently: {dict(list(clashes.items())[:5])}"
    return sum(1 for spans in executions.values() if len(spans) > 1)


async def test_sigkill_random_workers_of_three(schema: Schema, tmp_path: Path) -> None:
    """3 workers share 200 instances x 20 steps; random workers are SIGKILLed and replaced."""
    engine = client(schema)
    await create_chains(engine, 200)
    app = new_app_name()
    # A killed worker's instances are freed by its successor at once (same host, dead pid), so
    # the lease can be long enough that a busy machine never lets a live worker's lease lapse.
    # At most 40 instances per worker: 200 instances keep all three busy.
    env = {"PERDURE_TEST_LEASE_TTL": "3", "PERDURE_TEST_MAX_CONCURRENT": "40"}
    spawned = 0

    def spawn() -> Worker:
        nonlocal spawned
        spawned += 1
        return Worker(schema.url(application_name=app), schema.effects_url(), tmp_path / f"w{spawned}.log", **env)

    workers = [spawn() for _ in range(3)]
    died_at: dict[int, float] = {}
    rng = random.Random(1234)
    try:
        for worker in workers:
            worker.wait_running()
        for _ in range(6):
            await asyncio.sleep(rng.uniform(0.4, 1.0))
            victim = workers.pop(rng.randrange(len(workers)))
            victim.signal(signal.SIGKILL)
            victim.kill()  # reap it
            died_at[victim.pid] = time.time()
            workers.append(spawn())
        await wait_all_complete(engine, "chain", 200, timeout=40)
    finally:
        for worker in workers:
            worker.stop()
        await engine.stop()
    check_chains(schema, 200)
    reruns = check_no_concurrent_effects(schema, died_at)
    assert reruns > 0  # the kills did interrupt steps, which ran again elsewhere
    ran_in = {pid for (pid,) in schema.query("SELECT DISTINCT pid FROM effects")}
    assert len(ran_in) >= 4  # the work really was shared between the workers


async def test_sigstopped_worker_cannot_record_after_takeover(schema: Schema, tmp_path: Path) -> None:
    """SIGSTOP a worker mid-step; another takes over when the lease expires; after SIGCONT the
    stopped worker finishes its step, and its write is refused (Fenced)."""
    engine = client(schema)
    fenced_log = tmp_path / "fenced.log"
    fenced_log.touch()
    env = {
        "PERDURE_TEST_LEASE_TTL": "1",
        "PERDURE_TEST_FENCED_LOG": str(fenced_log),
    }
    app = new_app_name()
    instance = await engine.binding("long").create(id="long-1")
    # The worker to be stopped is deaf to other processes (no notifications, no safety poll):
    # when it resumes, the only way it can learn of the takeover is the refusal of its late
    # write, so that write is always attempted. (A hearing worker may instead learn of it
    # first and cancel the run, which is also correct but proves nothing about fencing.)
    # It claims the instance, created above, when it starts.
    first = Worker(
        schema.url(application_name=app),
        schema.effects_url(),
        tmp_path / "first.log",
        PERDURE_TEST_DEAF="1",
        **env,
    )
    second: Worker | None = None
    try:
        first.wait_running()
        await until(lambda: schema.query("SELECT pid FROM effects WHERE pid = %s", (first.pid,)), timeout=10)
        first.signal(signal.SIGSTOP)
        stopped_at = time.time()
        second = Worker(schema.url(application_name=app), schema.effects_url(), tmp_path / "second.log", **env)
        second.wait_running()
        status = await instance.wait(timeout=20)
        assert status == {"status": "complete", "output": second.pid, "error": None}
        assert time.time() - stopped_at >= 1.0  # taken over only after the lease expired
        first.signal(signal.SIGCONT)
        # Generous: after a long stop, the worker's pool may first replace connections the
        # server closed (idle_in_transaction_session_timeout, pool_timeout 10 s).
        await until(lambda: fenced_log.read_text().strip(), timeout=30)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await engine.stop()
    # The stopped worker tried to record its result for the old epoch, and was refused ...
    pid, _, name, count = fenced_log.read_text().split("\n")[0].split()
    assert (int(pid), name, count) == (first.pid, "long", "1")
    # ... its side effect did happen (it finished the step after SIGCONT) ...
    effects = schema.query("SELECT pid, started, ended FROM effects ORDER BY started")
    assert [pid for pid, _, _ in effects] == [first.pid, second.pid]
    assert all(ended is not None for _, _, ended in effects)
    assert effects[0][2] - effects[0][1] >= LONG_STEP_SECONDS
    # ... but the stored step is the new owner's, recorded once, and the instance is theirs.
    steps = schema.query("SELECT name, status, result FROM steps")
    assert steps == [("long", "complete", str(second.pid))]
    assert schema.query("SELECT status, output, owner FROM instances") == [("complete", str(second.pid), None)]


async def test_a_dead_worker_elsewhere_is_taken_over_within_five_seconds_by_default(
    schema: Schema, tmp_path: Path
) -> None:
    """With the default lease and safety poll, an instance whose worker on another machine died
    (SIGKILL mid-step; no pid on this host to check) runs again in the surviving worker within
    5 seconds of the death."""
    engine = client(schema)
    app = new_app_name()
    defaults = {"PERDURE_TEST_LEASE_TTL": "default"}
    doomed = Worker(
        schema.url(application_name=app),
        schema.effects_url(),
        tmp_path / "doomed.log",
        PERDURE_TEST_OWNER_HOST="elsewhere.example",
        **defaults,
    )
    survivor: Worker | None = None
    try:
        doomed.wait_running()
        instance = await engine.binding("long").create(id="orphan")
        await until(lambda: schema.query("SELECT 1 FROM effects WHERE pid = %s", (doomed.pid,)), timeout=10)
        survivor = Worker(schema.url(application_name=app), schema.effects_url(), tmp_path / "survivor.log", **defaults)
        survivor.wait_running()
        doomed.signal(signal.SIGKILL)
        doomed.kill()  # reap it
        died_at = time.time()
        status = await instance.wait(timeout=20)
        assert status == {"status": "complete", "output": survivor.pid, "error": None}
    finally:
        doomed.kill()
        if survivor is not None:
            survivor.stop()
        await engine.stop()
    ((restarted_at,),) = schema.query("SELECT started FROM effects WHERE pid = %s", (survivor.pid,))
    assert restarted_at - died_at <= 5.0, f"taken over {restarted_at - died_at:.2f}s after the death"


async def test_worker_survives_killed_connections(schema: Schema, tmp_path: Path) -> None:
    """Every connection of a running worker is killed server-side, again and again; the worker
    keeps running and every instance completes with exact results."""
    engine = client(schema)
    await create_chains(engine, 60)
    app = new_app_name()
    worker = Worker(schema.url(application_name=app), schema.effects_url(), tmp_path / "w.log")
    killed = 0
    try:
        worker.wait_running()
        for _ in range(8):
            await asyncio.sleep(random.uniform(0.3, 0.6))
            killed += terminate_backends(app)
        await wait_all_complete(engine, "chain", 60, timeout=40)
        assert worker.proc.poll() is None  # it kept running
    finally:
        code = worker.stop()
        await engine.stop()
    assert code == 0  # and it still stopped gracefully on SIGTERM
    assert killed >= 8
    check_chains(schema, 60)
    # No check that side effects never overlapped: with its connections gone a worker cannot
    # renew its leases, and the engine (engine.py) keeps running a step whose lease expired,
    # so the worker's next claim may start the same step again. Fencing keeps the record exact.


async def test_worker_survives_database_outage(schema: Schema, tmp_path: Path) -> None:
    """The worker reaches PostgreSQL through a proxy that drops every connection and refuses
    new ones for 2 seconds, twice (what a server restart looks like to a client); the worker
    reconnects and every instance completes with exact results."""
    engine = client(schema)
    await create_chains(engine, 60)
    with Proxy(os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")) as proxy:
        url = proxy.url(schema=schema.name, application_name=new_app_name())
        worker = Worker(url, schema.effects_url(), tmp_path / "w.log")
        try:
            worker.wait_running()
            for _ in range(2):
                await asyncio.sleep(1.0)
                await asyncio.to_thread(proxy.outage, 2.0)
            await wait_all_complete(engine, "chain", 60, timeout=45)
            assert worker.proc.poll() is None
        finally:
            code = worker.stop()
            await engine.stop()
    assert code == 0
    assert proxy.dropped > 0
    check_chains(schema, 60)  # (no overlap check: see test_worker_survives_killed_connections)


async def until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert callable(predicate)
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")
