"""Durable-queue benchmark on SQLite and PostgreSQL; prints JSON.

For each backend, in one run (a fresh SQLite file with the default ``durability="full"``; a
fresh PostgreSQL schema, dropped at the end):

* ``send_sequential``: 2,000 ``Queue.send`` calls one after another (each waits for its
  commit), as messages/s;
* ``send_concurrent``: 5,000 ``send`` calls from 50 tasks at once (they share group commits);
* ``drain``: ``receive(100)`` then ``ack`` until the queue is empty, as messages/s;
* ``trigger``: 1,000 messages consumed by a ``QueueConsumer`` with ``workflow_trigger`` into a
  running engine, until every instance (one no-op step) completed, as instances/s;
* the baseline: raw single-row INSERT commits/s on the same backend (SQLite with the store's
  settings; PostgreSQL one connection in autocommit), and each rate's ratio to it.

The script runs on this tree and, for a back-to-back comparison, on Perdure 0.1 (whose queues
lived in ``perdure.queues``): ``PYTHONPATH=<0.1 checkout> python bench/bench_queues.py``.

Usage: ``python bench/bench_queues.py [--no-postgres] [--url postgresql://...]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from perdure import Engine, WorkflowEntrypoint

try:
    from perdure.triggers.queues import Queue, QueueConsumer, workflow_trigger
except ImportError:  # Perdure 0.1, measured for comparison
    from perdure.queues import Queue, QueueConsumer, workflow_trigger  # type: ignore[import-not-found,no-redef]

DEFAULT_URL = os.environ.get(
    "PERDURE_BENCH_PG_URL", os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
)


async def noop() -> None:
    return None


class OneStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.do("noop", noop)


def raw_sqlite_commits(path: Path, seconds: float = 2.0) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x",))
        conn.execute("COMMIT")
        n += 1
    conn.close()
    return n / (time.perf_counter() - start)


def raw_postgres_commits(url: str, seconds: float = 2.0) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT)")
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.execute("INSERT INTO t (v) VALUES (%s)", ("x",))
            n += 1
        return n / (time.perf_counter() - start)


async def measure(url: str) -> dict[str, Any]:
    engine = Engine(url, max_concurrent=100)
    binding = engine.register(OneStep, name="queued")
    results: dict[str, float] = {}
    async with engine:
        queue = Queue(engine, "bench", visibility_timeout=60)
        await queue.send({"warm": True})
        await queue.ack(await queue.receive(10))

        start = time.perf_counter()
        for i in range(2000):
            await queue.send({"n": i})
        results["send_sequential_per_s"] = 2000 / (time.perf_counter() - start)

        async def sender(offset: int) -> None:
            for i in range(100):
                await queue.send({"n": offset + i})

        start = time.perf_counter()
        await asyncio.gather(*(sender(k * 100) for k in range(50)))
        results["send_concurrent_per_s"] = 5000 / (time.perf_counter() - start)

        start, drained = time.perf_counter(), 0
        while batch := await queue.receive(100):
            drained += await queue.ack(batch)
        results["drain_per_s"] = drained / (time.perf_counter() - start)
        assert drained == 7000, drained

        jobs = Queue(engine, "jobs")
        for offset in range(0, 1000, 100):
            await jobs.send_batch([{"id": f"job-{offset + i}", "params": {}} for i in range(100)])
        start = time.perf_counter()
        async with QueueConsumer(jobs, workflow_trigger(binding), batch_size=100, poll_interval=0.01):
            store = await engine.ensure_store()
            while (await store.count_by_status("queued")).get("queued", {}).get("complete", 0) < 1000:
                await asyncio.sleep(0.01)
        results["trigger_instances_per_s"] = 1000 / (time.perf_counter() - start)
    return {key: round(value) for key, value in results.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        figures = await measure(f"sqlite:///{Path(tmp) / 'queues.db'}")
        raw = raw_sqlite_commits(Path(tmp) / "raw.db")
        runs.append(("sqlite", figures, raw))
    if not args.no_postgres:
        import psycopg
        from psycopg import sql

        schema = f"perdure_bench_{uuid.uuid4().hex[:12]}"
        separator = "&" if "?" in args.url else "?"
        try:
            figures = await measure(f"{args.url}{separator}schema={schema}")
        finally:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        runs.append(("postgresql", figures, raw_postgres_commits(args.url)))
    results = [
        {
            "backend": backend,
            **figures,
            "baseline_raw_commits_per_s": round(raw),
            "ratios_to_raw_commits": {k.removesuffix("_per_s"): round(v / raw, 2) for k, v in figures.items()},
        }
        for backend, figures, raw in runs
    ]
    print(json.dumps({"benchmark": "perdure-queues", "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
