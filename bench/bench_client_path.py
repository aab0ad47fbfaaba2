"""The plain client path against the batch path (issue 12, Scale row ``bench_client_path.py``);
prints JSON.

The workload every peer benchmark uses: N instances (1,000, the issue's size) of 10 no-op steps
(``bench_engine.py``'s workflow), on an engine in this process, started and awaited from the same
process. Per backend (SQLite, then PostgreSQL unless ``--no-postgres``), in one run:

* ``plain``: N x ``binding.create()``, one call each, then ``instance.wait()`` on each, one by one;
* ``batch`` (the baseline): the same N instances through ``create_batch`` (100 a call), awaited
  one by one;
* ``gather``: the batch path awaited with ``asyncio.gather`` of N ``wait()`` calls at once;

in rounds, alternating back to back (``--rounds``, 3), each reported as durable steps/s, with
the median of the rounds, and the ratio plain / batch (target: >= 0.8 on both backends) and
gather / batch, beside ``plain_ratio_ceiling``, the ratio that one commit per acknowledged
``create()`` allows at the commit cost measured in the same run (see :func:`ceiling`);

* latency: p50/p99 of one 10-step workflow, ``create()`` to the end of ``wait()``, one at a time
  (target: p50 <= 3 ms on SQLite, <= 6 ms on PostgreSQL).

SQLite uses the default durability (``full``, fsync per commit), and is run again with
``durability="normal"`` (no fsync at commit; ``--no-normal`` skips it) beside the measured cost of
one fsync'd commit on the same disk (``fsync_commit_us``): the p50 target is below the floor of
12 such commits in turn on a slow disk. PostgreSQL uses a fresh schema, dropped at the end, with
the same floor measured on the server (``commit_us``: one autocommit INSERT, a round trip and a
WAL flush, ``bench_postgres.raw_insert_rate``). All
engines use ``max_concurrent=100`` as ``bench_engine.py`` does.

Usage: ``python bench/bench_client_path.py [--instances 1000] [--rounds 3] [--latency-runs 200]
[--url postgresql://...] [--no-postgres]`` (``--quick``: 300 instances, 2 rounds, 50 latency runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_engine import STEPS, TenSteps, percentile  # the same workload (bench/ is on the path)
from bench_postgres import DEFAULT_URL, in_schema, raw_insert_rate

from perdure import Engine
from perdure.binding import Instance, WorkflowBinding


async def plain(binding: WorkflowBinding, n: int) -> float:
    start = time.perf_counter()
    created = [await binding.create() for _ in range(n)]
    for instance in created:
        await instance.wait()
    return time.perf_counter() - start


async def batched(binding: WorkflowBinding, n: int) -> list[Instance]:
    created: list[Instance] = []
    for offset in range(0, n, 100):
        created += await binding.create_batch([{} for _ in range(min(100, n - offset))])
    return created


async def batch(binding: WorkflowBinding, n: int) -> float:
    start = time.perf_counter()
    for instance in await batched(binding, n):
        await instance.wait()
    return time.perf_counter() - start


async def gather(binding: WorkflowBinding, n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(instance.wait() for instance in await batched(binding, n)))
    return time.perf_counter() - start


async def one_latency(binding: WorkflowBinding) -> float:
    start = time.perf_counter()
    instance = await binding.create()
    await instance.wait()
    return (time.perf_counter() - start) * 1000


def fsync_commit_us(directory: str, n: int = 500) -> float:
    """Microseconds per commit of one small row on a WAL SQLite file with ``synchronous=FULL``
    (one fsync each), next to the bench's database: the floor under every acknowledged write."""
    conn = sqlite3.connect(Path(directory) / "fsync.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        start = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (b) VALUES (?)", ("x" * 200,))
            conn.execute("COMMIT")
        return (time.perf_counter() - start) / n * 1e6
    finally:
        conn.close()


def ceiling(result: dict[str, Any], commit_us: float) -> float:
    """The highest plain / batch ratio an engine could reach whose acknowledged ``create()``
    commits before it returns: the plain loop waits for one commit per instance, and every
    instance in flight waits for that same commit (their step results are in it), so the CPU
    work of an instance (at most the batch path's time per instance, which already includes its
    share of 1/100 of a commit) and one commit run in turn, not side by side:
    ``batch_time / (batch_time + commit)``."""
    batch_us = 1e6 * STEPS / result["steps_per_s_median"]["batch"]
    return round(batch_us / (batch_us + commit_us), 2)


async def run_backend(
    url: str, backend: str, instances: int, rounds: int, latency_runs: int, **options: Any
) -> dict[str, Any]:
    engine = Engine(url, max_concurrent=100, **options)
    binding = engine.register(TenSteps, name="bench")
    paths: dict[str, Callable[[WorkflowBinding, int], Awaitable[float]]] = {
        "plain": plain,
        "batch": batch,
        "gather": gather,
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    async with engine:
        for _ in range(20):  # warm up (connections, prepared statements, page cache)
            await one_latency(binding)
        await batch(binding, 100)
        for _ in range(rounds):
            for name, path in paths.items():  # back to back, in turn
                rates[name].append(instances * STEPS / await path(binding, instances))
        lat = [await one_latency(binding) for _ in range(latency_runs)]
    med = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "backend": backend,
        "instances": instances,
        "steps_per_instance": STEPS,
        "rounds": rounds,
        "steps_per_s": {name: [round(v) for v in values] for name, values in rates.items()},
        "steps_per_s_median": {name: round(v) for name, v in med.items()},
        "ratio_plain_to_batch": round(med["plain"] / med["batch"], 2),
        "ratio_gather_to_batch": round(med["gather"] / med["batch"], 2),
        "latency_10_steps_ms": {"p50": round(percentile(lat, 0.5), 2), "p99": round(percentile(lat, 0.99), 2)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-normal", action="store_true", help="skip the SQLite durability='normal' comparison")
    parser.add_argument("--quick", action="store_true", help="300 instances, 2 rounds, 50 latency runs")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.rounds, args.latency_runs = 300, 2, 50
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        fsync_us = fsync_commit_us(tmp)
        url = f"sqlite:///{Path(tmp) / 'client-path.db'}"
        full = await run_backend(url, "sqlite", args.instances, args.rounds, args.latency_runs)
        # Where the SQLite misses come from: a 10-step instance waits for 12 commits in turn
        # (create, 10 steps, finish), each an fsync with the default durability.
        full["durability"] = "full"
        full["fsync_commit_us"] = round(fsync_us, 1)
        full["latency_floor_ms_12_fsyncs"] = round(12 * fsync_us / 1000, 2)
        full["plain_ratio_ceiling"] = ceiling(full, fsync_us)
        results.append(full)
        if not args.no_normal:  # the same without the fsyncs, for comparison (not the default)
            url = f"sqlite:///{Path(tmp) / 'client-path-normal.db'}"
            normal = await run_backend(
                url, "sqlite", args.instances, args.rounds, args.latency_runs, durability="normal"
            )
            normal["durability"] = "normal"
            results.append(normal)
    if not args.no_postgres:

        async def job(schema_url: str) -> dict[str, Any]:
            return await run_backend(schema_url, "postgresql", args.instances, args.rounds, args.latency_runs)

        pg_commit_us = 1e6 / raw_insert_rate(args.url, 2.0)
        pg = await in_schema(args.url, job)
        # The same floor on the server: one autocommit INSERT per round trip and WAL flush.
        pg["commit_us"] = round(pg_commit_us, 1)
        pg["latency_floor_ms_12_commits"] = round(12 * pg_commit_us / 1000, 2)
        pg["plain_ratio_ceiling"] = ceiling(pg, pg_commit_us)
        results.append(pg)
    targets = {"sqlite": 3.0, "postgresql": 6.0}
    for result in results:
        result["target_met"] = {
            "ratio_plain_to_batch_ge_0.8": result["ratio_plain_to_batch"] >= 0.8,
            f"p50_le_{targets[result['backend']]}ms": result["latency_10_steps_ms"]["p50"]
            <= targets[result["backend"]],
        }
    report = {
        "benchmark": "perdure-client-path",
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
