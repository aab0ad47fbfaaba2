"""The application the worker processes of ``test_flow_workers.py`` run: workflows with flow
control (perdure.flow) whose steps record what they did, so that a test can check, from the
records of every process, that the limits held across all of them.

Started as ``python -m perdure.cli.worker tests.postgres.flow_worker:make_engine``; configured
through the environment:

* ``PERDURE_TEST_URL``: the store URL (with ``schema`` and ``application_name``);
* ``PERDURE_TEST_EFFECTS_URL``: where steps record their executions (the ``effects`` table of
  tests/postgres/app.py, in the same schema: ``(instance, step, pid, started, ended)``, a row
  inserted when a step body starts and its ``ended`` set when it stops, whether it returned or
  was cancelled; a body cut short by SIGKILL never sets it);
* ``PERDURE_TEST_LEASE_TTL`` (seconds, default 1);
* ``PERDURE_TEST_OWNER_HOST``: the host name in the worker's owner id (a worker "on another
  machine": when it dies its instances are taken over only once their lease runs out, not at
  once by its dead pid);
* ``PERDURE_TEST_WORKER_TAG``: the worker also runs ``metered-<tag>``, a workflow no other
  worker runs (so that a test knows each worker takes part in the rate limit).

The workflows:

* ``capped`` (``concurrency=CAP``) and ``keyed`` (``concurrency=CAP``,
  ``concurrency_per_key=1``): ``SPAN_STEPS`` steps; step ``i`` records its execution, sleeps
  ``STEP_SECONDS`` and returns ``i + 1``, so the output is ``SPAN_OUTPUT``;
* ``metered`` (and ``metered-<tag>``): one step ``call`` under the step rate limit ``api`` (``RATE_LIMIT`` per
  ``RATE_PERIOD`` seconds), which records its attempt and returns the instance id. Every slot
  the store hands out (``reserve_rate_slot``) is appended to the ``slots`` table
  (``SLOTS_TABLE``: the holder, the slot's time, the pid that asked), the log the test checks
  the limit against (the store deletes slots older than a period as it goes).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from tests.postgres.app import _effects, effect_end, effect_start

CAP = 3
SPAN_STEPS = 3
STEP_SECONDS = 0.1
SPAN_OUTPUT = sum(i + 1 for i in range(SPAN_STEPS))
RATE_LIMIT = 5
RATE_PERIOD = 1.0

SLOTS_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.slots (
    id BIGSERIAL PRIMARY KEY, holder TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, pid INTEGER NOT NULL,
    asked DOUBLE PRECISION NOT NULL)"""


class Spans(WorkflowEntrypoint):
    """``SPAN_STEPS`` steps of ``STEP_SECONDS`` each, every execution recorded."""

    async def run(self, event: Any, step: Any) -> int:
        total = 0
        for i in range(SPAN_STEPS):

            async def body(i: int = i) -> int:
                effect = await effect_start(event.instance_id, i)
                try:
                    await asyncio.sleep(STEP_SECONDS)
                finally:  # a cancelled run (lease lost, taken over) stops here: its end is now
                    await effect_end(effect)
                return i + 1

            total += await step.do(f"step-{i}", body)
        return total


class Metered(WorkflowEntrypoint):
    """One rate-limited step that records its attempt."""

    async def run(self, event: Any, step: Any) -> str:
        async def call() -> str:
            await effect_end(await effect_start(event.instance_id, 0))
            return str(event.instance_id)

        result: str = await step.do("call", call, config={"rate_limit": "api"})
        return result


def _log_slots(engine: Engine) -> None:
    """Wrap the store's ``reserve_rate_slot`` so every slot it hands out is written down."""
    store: Any = engine.store
    original = store.reserve_rate_slot

    async def reserve_rate_slot(limiter: str, holder: str, limit: int, period: float, clock: Any) -> float:
        now = clock()
        at: float = await original(limiter, holder, limit, period, clock)
        pool = await _effects()
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO slots (holder, at, pid, asked) VALUES (%s, %s, %s, %s)", (holder, at, os.getpid(), now)
            )
        return at

    store.reserve_rate_slot = reserve_rate_slot


def make_engine() -> Engine:
    engine = Engine(
        os.environ["PERDURE_TEST_URL"],
        poll_interval=0.05,
        lease_ttl=float(os.environ.get("PERDURE_TEST_LEASE_TTL", "1")),
    )
    if host := os.environ.get("PERDURE_TEST_OWNER_HOST"):
        engine.owner = engine.owner.replace(socket.gethostname(), host, 1)
    engine.register(Spans, name="capped", concurrency=CAP)
    engine.register(Spans, name="keyed", concurrency=CAP, concurrency_per_key=1)
    engine.rate_limit("api", limit=RATE_LIMIT, period=RATE_PERIOD * 1000)  # a number is milliseconds
    engine.register(Metered, name="metered")
    if tag := os.environ.get("PERDURE_TEST_WORKER_TAG"):
        engine.register(Metered, name=f"metered-{tag}")
    _log_slots(engine)
    return engine
