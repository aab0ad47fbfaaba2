"""The application that the worker processes of these tests run.

Started as ``python -m perdure.cli.worker tests.postgres.app:make_engine``; configured through the
environment:

* ``PERDURE_TEST_URL``: the store URL (with ``schema`` and ``application_name``);
* ``PERDURE_TEST_EFFECTS_URL``: where steps record their side effects (the ``effects`` table,
  in the same schema, reached over connections the tests never kill);
* ``PERDURE_TEST_LEASE_TTL`` (seconds, default 1; ``default``: the engine's default),
  ``PERDURE_TEST_SAFETY_POLL`` (seconds; the store's default when unset);
* ``PERDURE_TEST_OWNER_HOST``: the host name the worker gives in its owner id (a test double
  for a worker on another machine);
* ``PERDURE_TEST_FENCED_LOG``: a file to which every step write refused with ``Fenced`` is
  appended, as ``<pid> <instance pk> <step name> <count>`` (the proof a late write was tried);
* ``PERDURE_TEST_DEAF=1``: the worker hears of no other process's changes (a test double of
  the store's ``changed``/``on_change``/``renew_leases``: no notifications, no safety poll,
  no lost lease seen on renewal), so it claims only
  when it starts or a run of its own ends, and learns that an instance moved on only when a
  write for it is refused.

Every step execution inserts a row ``(instance, step, pid, started)`` into ``effects`` when it
starts and sets ``ended`` when it is done, so a test can see each execution, who ran it, and
whether two ran at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from perdure import Engine, WorkflowEntrypoint
from perdure.errors import Fenced
from perdure.records import StepRecord

CHAIN_STEPS = 20
LONG_STEP_SECONDS = 2.0

EFFECTS_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.effects (
    id BIGSERIAL PRIMARY KEY, instance TEXT NOT NULL, step INTEGER NOT NULL, pid INTEGER NOT NULL,
    started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION)"""

_pool: AsyncConnectionPool[Any] | None = None


async def _effects() -> AsyncConnectionPool[Any]:
    global _pool
    if _pool is None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            os.environ["PERDURE_TEST_EFFECTS_URL"], min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
        )
        await pool.open()
        _pool = pool
    return _pool


async def effect_start(instance: str, step: int) -> int:
    pool = await _effects()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO effects (instance, step, pid, started) VALUES (%s, %s, %s, %s) RETURNING id",
            (instance, step, os.getpid(), time.time()),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def effect_end(effect_id: int) -> None:
    pool = await _effects()
    async with pool.connection() as conn:
        await conn.execute("UPDATE effects SET ended = %s WHERE id = %s", (time.time(), effect_id))


def effect_sync(instance: str, step: int, seconds: float) -> int:
    """A blocking step body (it runs in a worker thread): start row, sleep, end row."""
    with psycopg.connect(os.environ["PERDURE_TEST_EFFECTS_URL"], autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO effects (instance, step, pid, started) VALUES (%s, %s, %s, %s) RETURNING id",
            (instance, step, os.getpid(), time.time()),
        ).fetchone()
        assert row is not None
        time.sleep(seconds)
        conn.execute("UPDATE effects SET ended = %s WHERE id = %s", (time.time(), row[0]))
    return os.getpid()


class Chain(WorkflowEntrypoint):
    """``CHAIN_STEPS`` steps; step ``i`` records its side effect and returns ``i * i``."""

    async def run(self, event: Any, step: Any) -> int:
        total = 0
        for i in range(CHAIN_STEPS):

            async def body(i: int = i) -> int:
                effect = await effect_start(event.instance_id, i)
                await asyncio.sleep(random.uniform(0.005, 0.03))
                await effect_end(effect)
                return i * i

            total += await step.do(f"step-{i}", body, config={"retries": {"limit": 10, "delay": 100}})
        return total


class Long(WorkflowEntrypoint):
    """One blocking step of ``LONG_STEP_SECONDS`` that returns the pid that ran it."""

    async def run(self, event: Any, step: Any) -> int:
        pid: int = await step.do("long", lambda: effect_sync(event.instance_id, 0, LONG_STEP_SECONDS))
        return pid


def _log_fenced(engine: Engine, path: str) -> None:
    """Wrap the store's ``save_step`` so every refused write is written down."""
    store: Any = engine.store
    original = store.save_step

    async def save_step(pk: int, epoch: int, step: StepRecord, *, durable: bool = True) -> str:
        try:
            result: str = await original(pk, epoch, step, durable=durable)
            return result
        except Fenced:
            with open(path, "a") as log:
                log.write(f"{os.getpid()} {pk} {step.name} {step.count}\n")
            raise

    store.save_step = save_step


def _deafen(engine: Engine) -> None:
    store: Any = engine.store

    async def changed() -> bool:
        return False

    store.changed = changed
    store.on_change = lambda callback: None
    # Nor from its own lease renewals: a renewal refused because another worker took the
    # instance over would otherwise cancel the run before its late write (see leases.py).
    renew = store.renew_leases

    async def renew_leases(owner: str, pks: list[int], until: float) -> set[int]:
        await renew(owner, pks, until)
        return set(pks)

    store.renew_leases = renew_leases


def make_engine() -> Engine:
    options: dict[str, Any] = {}  # unset: the engine's and the store's own defaults
    lease = os.environ.get("PERDURE_TEST_LEASE_TTL", "1")
    if lease != "default":
        options["lease_ttl"] = float(lease)
    if "PERDURE_TEST_SAFETY_POLL" in os.environ:
        options["safety_poll"] = float(os.environ["PERDURE_TEST_SAFETY_POLL"])
    engine = Engine(
        os.environ["PERDURE_TEST_URL"],
        poll_interval=0.05,
        max_concurrent=int(os.environ.get("PERDURE_TEST_MAX_CONCURRENT", "100")),
        **options,
    )
    if host := os.environ.get("PERDURE_TEST_OWNER_HOST"):
        # Pose as a process on another machine: a dead local owner is expired at once by its
        # pid, one elsewhere only when its lease runs out.
        engine.owner = engine.owner.replace(socket.gethostname(), host, 1)
    engine.register(Chain, name="chain")
    engine.register(Long, name="long")
    fenced_log = os.environ.get("PERDURE_TEST_FENCED_LOG")
    if fenced_log:
        _log_fenced(engine, fenced_log)
    if os.environ.get("PERDURE_TEST_DEAF") == "1":
        _deafen(engine)
    return engine
