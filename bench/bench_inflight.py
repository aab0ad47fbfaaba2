"""Thousands of I/O-bound instances in flight in one worker (issue 12, Scale row
``bench_inflight.py``); prints JSON.

N instances x 5 steps, each step awaiting 200 ms of simulated I/O (``asyncio.sleep`` inside the
step function), on one engine in this process (embedded SQLite, default durability ``full``).
The engine runs at most ``max_concurrent`` instances at once (``Engine(max_concurrent=...)``,
default 100: the only setting that bounds I/O-bound work, docs/reference/config.md), so the ideal
is ``max_concurrent / 0.2 s`` steps/s. In one run, for each ``--max-concurrent`` value:

* the baseline: the ideal steps/s above, and the engine's CPU cost of the same workload without
  the I/O (N x 5 no-op steps, steps/s measured first in the same run), to show how much of the
  time the engine itself needs;
* the run: seconds from the first create until all complete, steps/s, its ratio to the ideal
  (target: >= 0.8 at the default setting), and the process's RSS (target: < 300 MB) before,
  at the end and peak.

The issue's size is N = 10,000 (about 100 s at the ideal with ``max_concurrent=100``, so 2-3
minutes with the no-op baseline); ``--quick`` runs 2,000.

Usage: ``python bench/bench_inflight.py [--instances 10000] [--max-concurrent 100 [1000 ...]] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_fanout import peak_rss_mib
from bench_sleepers import rss_mib
from bench_wake_storm import until_count

from perdure import Engine, WorkflowEntrypoint
from perdure.binding import WorkflowBinding

STEPS = 5
IO_SECONDS = 0.2
DEFAULT_MAX_CONCURRENT: int = inspect.signature(Engine).parameters["max_concurrent"].default


async def io() -> None:
    await asyncio.sleep(IO_SECONDS)


async def nothing() -> None:
    return None


class IoBound(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        fn = io if event.payload.get("io", True) else nothing
        for i in range(STEPS):
            await step.do(f"call {i}", fn)


async def timed(engine: Engine, binding: WorkflowBinding, n: int, io_bound: bool, done_before: int) -> float:
    start = time.perf_counter()
    for offset in range(0, n, 100):
        await binding.create_batch([{"params": {"io": io_bound}} for _ in range(min(100, n - offset))])
    await until_count(engine, "io", "complete", done_before + n, 0.02)
    return time.perf_counter() - start


async def run_one(directory: Path, n: int, max_concurrent: int) -> dict[str, Any]:
    engine = Engine(f"sqlite:///{directory / f'inflight-{max_concurrent}.db'}", max_concurrent=max_concurrent)
    binding = engine.register(IoBound, name="io")
    async with engine:
        await timed(engine, binding, 100, False, 0)  # warm up
        cpu_seconds = await timed(engine, binding, n, False, 100)
        rss_before = rss_mib()
        seconds = await timed(engine, binding, n, True, 100 + n)
        rss_after = rss_mib()
    ideal = max_concurrent / IO_SECONDS
    rate = n * STEPS / seconds
    result: dict[str, Any] = {
        "max_concurrent": max_concurrent,
        "is_engine_default": max_concurrent == DEFAULT_MAX_CONCURRENT,
        "baseline": {
            "ideal_steps_per_s": round(ideal),
            "ideal_seconds": round(n * STEPS / ideal, 1),
            "noop_steps_per_s": round(n * STEPS / cpu_seconds),
        },
        "seconds": round(seconds, 1),
        "steps_per_s": round(rate),
        "ratio_to_ideal": round(rate / ideal, 3),
        "rss_mib": {
            "before": round(rss_before, 1),
            "after": round(rss_after, 1),
            "peak": round(max(peak_rss_mib(), rss_after), 1),
        },
    }
    if result["is_engine_default"]:
        result["target_met"] = {"ratio_ge_0.8": rate / ideal >= 0.8, "rss_lt_300mib": peak_rss_mib() < 300}
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--max-concurrent", type=int, nargs="+", default=[DEFAULT_MAX_CONCURRENT])
    parser.add_argument("--quick", action="store_true", help="2,000 instances")
    args = parser.parse_args()
    n = 2000 if args.quick else args.instances
    with tempfile.TemporaryDirectory() as tmp:
        results = [await run_one(Path(tmp), n, m) for m in args.max_concurrent]
    report = {
        "benchmark": "perdure-inflight-io",
        "backend": "sqlite",
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "instances": n,
        "steps_per_instance": STEPS,
        "io_seconds_per_step": IO_SECONDS,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
