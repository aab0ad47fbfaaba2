"""A real PostgreSQL server restart, and a server crash, while a worker runs (issue 3).

The shared test server must not be restarted, so the test owns a cluster of its own
(:mod:`tests.postgres.cluster`): the worker's store, its side-effect table and the test's client
all live there. The server is restarted under a running worker, in the three ways a server goes
away: ``pg_ctl restart -m fast``; a fast shutdown followed by a pause in which every connection
attempt is refused; and ``pg_ctl stop -m immediate`` (no shutdown checkpoint: the next start runs
crash recovery) followed by a pause. The worker must ride through all of them and every instance
must complete with exact results.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.pg import with_params
from tests.postgres.app import CHAIN_STEPS, EFFECTS_TABLE
from tests.postgres.cluster import OwnedCluster, ShutdownMode
from tests.postgres.helpers import Schema, Worker, new_app_name
from tests.postgres.test_workers import check_chains, client, create_chains, wait_all_complete

pytestmark = pytest.mark.slow

N = 60
# At most 5 instances at a time: the run lasts long enough for every restart to land in it.
WORKER_ENV = {"PERDURE_TEST_LEASE_TTL": "2", "PERDURE_TEST_MAX_CONCURRENT": "5"}
# (shutdown mode, seconds the server stays down; 0: ``pg_ctl restart``)
OUTAGES: list[tuple[ShutdownMode, float]] = [("fast", 0.0), ("fast", 1.5), ("immediate", 1.5)]
# What a worker logs when its connections break (psycopg_pool's warnings, perdure's listener).
OUTAGE_SIGNS = (
    "discarding broken connection",
    "discarding closed connection",
    "error connecting",
    "LISTEN connection lost",
)


@dataclass
class ClusterSchema(Schema):
    """A :class:`Schema` on an owned cluster rather than on the shared server."""

    base: str = ""

    def url(self, **params: str) -> str:
        return with_params(self.base, schema=self.name, **params)

    def effects_url(self) -> str:
        return with_params(self.base, options=f"-csearch_path={self.name}", application_name="perdure_test_fx")

    def create(self) -> None:
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL(EFFECTS_TABLE).format(schema=sql.Identifier(self.name)))

    def drop(self) -> None:
        pass  # the whole cluster goes


def incomplete(schema: Schema) -> int:
    rows: list[tuple[Any, ...]] = schema.query("SELECT count(*) FROM instances WHERE status <> 'complete'")
    return int(rows[0][0])


async def until_steps_done(schema: Schema, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if schema.query("SELECT count(*) FROM steps")[0][0] >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} steps recorded within {timeout}s")


async def test_worker_survives_server_restarts_and_crash(owned_cluster: OwnedCluster, tmp_path: Path) -> None:
    """60 instances x 20 steps on a worker; the server is restarted (fast, twice) and crashed
    (immediate stop) during the run; the worker keeps running, every instance completes, every
    step is recorded exactly once with its result, and the worker stops gracefully."""
    cluster = owned_cluster
    schema = ClusterSchema(base=cluster.url())
    schema.create()
    engine = client(schema)
    await create_chains(engine, N)
    worker = Worker(schema.url(application_name=new_app_name()), schema.effects_url(), tmp_path / "w.log", **WORKER_ENV)
    pending_at_outage: list[int] = []
    noticed: list[str] = []  # what the worker logged about each outage
    pids = [cluster.postmaster_pid()]
    try:
        worker.wait_running()
        await until_steps_done(schema, at_least=50, timeout=20)
        for mode, pause in OUTAGES:
            pending_at_outage.append(incomplete(schema))
            logged = worker.log.stat().st_size
            await asyncio.to_thread(cluster.restart, mode, pause)
            pids.append(cluster.postmaster_pid())
            await asyncio.sleep(1.0)  # let the worker reconnect and make progress
            assert worker.proc.poll() is None, worker.log.read_text()
            noticed.append(worker.log.read_bytes()[logged:].decode(errors="replace"))
        await wait_all_complete(engine, "chain", N, timeout=60)
        assert worker.proc.poll() is None  # it kept running
    finally:
        code = worker.stop()
        await engine.stop()
    log = worker.log.read_text()
    assert code == 0, log  # and it still stopped gracefully on SIGTERM
    # The outages were real: a new server process each time, each while work was left ...
    assert len(set(pids)) == len(OUTAGES) + 1 and None not in pids, pids
    assert all(n > 0 for n in pending_at_outage), pending_at_outage
    assert "database system was interrupted" in cluster.server_log()  # the crash: recovery ran
    # ... and the worker felt every one: its connections broke (the pools, the LISTEN one).
    for text in noticed:
        assert any(sign in text for sign in OUTAGE_SIGNS), log
    check_chains(schema, N)
    # Every step's side effect ran to its end at least once (some ran again after an outage).
    done = schema.query("SELECT count(DISTINCT (instance, step)) FROM effects WHERE ended IS NOT NULL")
    assert done == [(N * CHAIN_STEPS,)]
