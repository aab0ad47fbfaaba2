"""Sleeping instances cost rows, not memory: prints JSON.

Creates N instances that each run one step and then sleep for an hour, waits until all of them
are ``waiting``, and reports the process's resident memory before and after, next to the
baseline of the same engine with no instances. A sleeping instance holds no task or coroutine,
so memory should not grow with N.

Usage: ``python bench/bench_sleepers.py [--instances 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from perdure import Engine, WorkflowEntrypoint


class Sleeper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.do("work", lambda: None)
        await step.sleep("nap", "1 hour")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(f"sqlite:///{Path(tmp) / 'sleepers.db'}", fast_wait=0.5)
        binding = engine.register(Sleeper, name="sleeper")
        async with engine:
            await asyncio.sleep(0.5)
            baseline = rss_mib()
            start = time.perf_counter()
            for offset in range(0, args.instances, 100):
                await binding.create_batch([{} for _ in range(min(100, args.instances - offset))])
            while (await engine.store.count_by_status("sleeper"))["sleeper"].get("waiting", 0) < args.instances:
                await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - start
            after = rss_mib()
            tasks = len(asyncio.all_tasks())
            running = len(engine._running)
    print(
        json.dumps(
            {
                "benchmark": "perdure-sleeping-instances",
                "instances": args.instances,
                "seconds_to_all_waiting": round(elapsed, 1),
                "rss_mib_baseline": round(baseline, 1),
                "rss_mib_all_sleeping": round(after, 1),
                "rss_growth_bytes_per_instance": round((after - baseline) * 2**20 / args.instances, 1),
                "asyncio_tasks_while_all_sleep": tasks,
                "instances_held_in_memory": running,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
