"""Engine benchmark on embedded SQLite; prints JSON.

For each durability setting (``full``: fsync per commit, the default; ``normal``: survives a
process crash, not a power cut) it measures, in the same run:

* throughput: 1,000 instances x 10 no-op async steps, as durable steps/s and workflows/s;
* latency: p50/p99 of one 10-step workflow, create to final status, one at a time;
* per-step overhead: (latency of a 10-step workflow - latency of a 0-step one) / 10;
* the baseline: raw single-row INSERT commits/s with the same SQLite settings, one thread,
  and the ratio of durable steps/s to it.

Usage: ``python bench/bench_engine.py [--instances 1000] [--latency-runs 200]``
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
from pathlib import Path
from typing import Any

from perdure import Engine, WorkflowEntrypoint

STEPS = 10


async def noop() -> None:
    return None


class TenSteps(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        for _ in range(event.payload.get("steps", STEPS)):
            await step.do("noop", noop)


def raw_commit_rate(path: Path, durability: str, seconds: float = 2.0) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x",))
        conn.execute("COMMIT")
        n += 1
    conn.close()
    return n / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(binding: Any, runs: int, steps: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        instance = await binding.create(params={"steps": steps})
        await instance.wait()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def bench(durability: str, directory: Path, instances: int, latency_runs: int) -> dict[str, Any]:
    engine = Engine(f"sqlite:///{directory / f'engine-{durability}.db'}", durability=durability, max_concurrent=100)
    binding = engine.register(TenSteps, name="bench")
    async with engine:
        await latencies(binding, 20, STEPS)  # warm up
        ten = await latencies(binding, latency_runs, STEPS)
        zero = await latencies(binding, latency_runs, 0)
        start = time.perf_counter()
        created = []
        for offset in range(0, instances, 100):
            created += await binding.create_batch([{} for _ in range(min(100, instances - offset))])
        for instance in created:
            await instance.wait()
        elapsed = time.perf_counter() - start
    raw = raw_commit_rate(directory / f"raw-{durability}.db", durability)
    steps_per_s = instances * STEPS / elapsed
    return {
        "durability": durability,
        "instances": instances,
        "steps_per_instance": STEPS,
        "durable_steps_per_s": round(steps_per_s),
        "workflows_per_s": round(instances / elapsed, 1),
        "latency_10_steps_ms": {"p50": round(percentile(ten, 0.5), 2), "p99": round(percentile(ten, 0.99), 2)},
        "latency_0_steps_ms": {"p50": round(percentile(zero, 0.5), 2)},
        "per_step_overhead_ms_p50": round((statistics.median(ten) - statistics.median(zero)) / STEPS, 3),
        "baseline_raw_sqlite_commits_per_s": round(raw),
        "ratio_steps_to_raw_commits": round(steps_per_s / raw, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [await bench(d, Path(tmp), args.instances, args.latency_runs) for d in ("full", "normal")]
    print(json.dumps({"benchmark": "perdure-engine-sqlite", "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
