"""A wake storm: many instances sleeping until the same instant, then one step each (issue 12,
Scale row ``bench_wake_storm.py``); prints JSON.

On embedded SQLite (default durability ``full``), one engine in this process
(``max_concurrent=100``), in one run:

* the baseline, the engine's normal steps/s: 10,000 instances x 10 no-op steps
  (``bench_engine.py``'s workload; ``--baseline-instances``) through ``create_batch``, awaited:
  a sustained rate (7-9 s), as the storm's is. On this VM a burst of 1,000 (under a second)
  ran faster than the same work kept up (median 14,200 vs 12,400 steps/s over six and three
  runs on 2026-12-04), which made the ratio swing. And, for comparison of like with like, the
  same number of 1-step instances (queued, not woken) as instances/s;
* the storm: N instances, each ``step.sleep_until(T)`` (the same T for all, chosen so that every
  instance is ``waiting`` before it) and then one no-op step that records when it ran. From T:
  the seconds until the last one completes, the completion throughput (N steps / those seconds)
  and its ratio to the baseline's steps/s (target: >= 0.5), and the wake lateness (step start -
  T) p50/p99/max. The storm's instances run 1 step each, so each of its steps also carries a claim,
  a replay and a finish: ``ratio_to_one_step_instances`` compares it with queued 1-step
  instances.

The issue's size is N = 100,000 (``--instances 100000``; several minutes on 2 cores, most of it
putting 100,000 instances to sleep); the default is 20,000, ``--quick`` 5,000.

Usage: ``python bench/bench_wake_storm.py [--instances 20000] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_engine import STEPS, TenSteps, noop, percentile
from bench_sleepers import rss_mib

from perdure import Engine, WorkflowEntrypoint
from perdure.binding import WorkflowBinding

RAN_AT: list[float] = []  # wall-clock start of each storm step (this process runs them all)


async def record_time() -> None:  # async, as bench_engine's no-op: a plain function would run in a thread
    RAN_AT.append(time.time())


class Storm(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.sleep_until("nap", event.payload["at_ms"])
        await step.do("work", record_time)


class OneStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.do("work", noop)


async def create_all(binding: WorkflowBinding, n: int, params: dict[str, Any] | None = None) -> None:
    for offset in range(0, n, 100):
        await binding.create_batch([{"params": params or {}} for _ in range(min(100, n - offset))])


async def until_count(engine: Engine, workflow: str, status: str, n: int, every: float = 0.05) -> None:
    while (await engine.store.count_by_status(workflow)).get(workflow, {}).get(status, 0) < n:
        await asyncio.sleep(every)


async def queued_rate(engine: Engine, binding: WorkflowBinding, workflow: str, n: int) -> float:
    """Instances/s of ``n`` instances created in batches of 100 and run to completion."""
    start = time.perf_counter()
    await create_all(binding, n)
    await until_count(engine, workflow, "complete", n, 0.01)
    return n / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--baseline-instances", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="5,000 instances")
    args = parser.parse_args()
    n = 5000 if args.quick else args.instances
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(f"sqlite:///{Path(tmp) / 'storm.db'}", max_concurrent=100)
        ten = engine.register(TenSteps, name="ten")
        one = engine.register(OneStep, name="one")
        storm = engine.register(Storm, name="storm")
        async with engine:
            await queued_rate(engine, ten, "ten", 100)  # warm up
            base_n = args.baseline_instances
            steps_per_s = await queued_rate(engine, ten, "ten", base_n) * STEPS
            one_per_s = await queued_rate(engine, one, "one", base_n)
            # Putting an instance to sleep costs about what a 1-step instance does; leave room.
            margin = 5.0 + 2.0 * n / one_per_s
            at = time.time() + margin
            rss_before = rss_mib()
            put_to_sleep = time.perf_counter()
            await create_all(storm, n, {"at_ms": at * 1000})
            await until_count(engine, "storm", "waiting", n, 0.2)
            asleep_after = time.perf_counter() - put_to_sleep
            all_asleep_before_t = time.time() < at
            rss_asleep = rss_mib()
            await asyncio.sleep(max(0.0, at - time.time()))
            await until_count(engine, "storm", "complete", n, 0.01)
            done = time.time()
            rss_after = rss_mib()
    late = [(t - at) * 1000 for t in RAN_AT]
    storm_seconds = max(RAN_AT) - at
    storm_rate = n / storm_seconds
    report = {
        "benchmark": "perdure-wake-storm",
        "backend": "sqlite",
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "instances": n,
        "baseline": {
            "instances": base_n,
            "steps_per_instance": STEPS,
            "engine_steps_per_s": round(steps_per_s),
            "one_step_instances_per_s": round(one_per_s),
        },
        "seconds_to_all_waiting": round(asleep_after, 1),
        "all_waiting_before_the_instant": all_asleep_before_t,
        "storm_seconds_from_instant_to_last_step": round(storm_seconds, 2),
        "storm_seconds_to_all_complete": round(done - at, 2),
        "storm_steps_per_s": round(storm_rate),
        "ratio_to_engine_steps_per_s": round(storm_rate / steps_per_s, 2),
        "ratio_to_one_step_instances": round(storm_rate / one_per_s, 2),
        "wake_lateness_ms": {
            "p50": round(percentile(late, 0.5), 1),
            "p99": round(percentile(late, 0.99), 1),
            "max": round(max(late), 1),
            "min": round(min(late), 1),
        },
        "rss_mib": {"before": round(rss_before, 1), "all_asleep": round(rss_asleep, 1), "after": round(rss_after, 1)},
        "target_met": {"ratio_ge_0.5": storm_rate / steps_per_s >= 0.5},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
