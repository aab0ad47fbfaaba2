"""Fan-out and fan-in through events (issue 12, Scale row ``bench_fanout.py``); prints JSON.

On embedded SQLite (default durability ``full``), one engine in this process
(``max_concurrent=100``), in one run:

* the baseline: N independent instances of the child workflow (2 no-op steps each), created
  with ``create_batch`` (100 a call) from outside, until all complete: steps/s;
* the fan-out: one parent that starts N children in steps (one ``step.do`` per 100 children,
  each a ``create_batch`` through the child binding in its ``env``, with ids derived from the
  parent's so that a retried step creates no duplicates), then waits for all of them with N
  ``step.wait_for_event("child", "child-done")``; each child does one no-op step and then, in a
  second step, ``send_event("child-done")`` to the parent through the parent binding. Reported:
  seconds from the parent's ``create()`` to its completion (and to the last child's: the
  difference is the parent consuming events after every child is done), the children's steps/s over that time
  (2N steps; the target compares this with the baseline: >= 0.5), all steps/s (children's steps,
  the parent's N/100 start steps and its N event waits), how many times the parent was claimed
  (each claim replays its whole history), and the worker's RSS (this process: it runs the
  engine) before, after, and peak.

The issue's size is N = 10,000 (the default; about a minute on 2 cores); ``--quick`` runs 2,000.

Usage: ``python bench/bench_fanout.py [--children 10000] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_engine import noop
from bench_sleepers import rss_mib
from bench_wake_storm import until_count

from perdure import Engine, WorkflowEntrypoint

PARENT_RUNS: list[float] = []  # when each replay of the parent began


class Parent(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> int:
        PARENT_RUNS.append(time.perf_counter())
        n = event.payload["children"]
        child = self.env["child"]
        for offset in range(0, n, 100):

            async def start(offset: int = offset) -> int:
                items = [
                    {"id": f"{event.instance_id}-{i}", "params": {"parent": event.instance_id, "notify": True}}
                    for i in range(offset, min(n, offset + 100))
                ]
                await child.create_batch(items)
                return len(items)

            await step.do("start children", start)
        for _ in range(n):
            await step.wait_for_event("child", "child-done", timeout="1 hour")
        return n


class Child(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        await step.do("work", noop)

        async def notify() -> None:
            if event.payload.get("notify"):
                parent = await self.env["parent"].get(event.payload["parent"])
                await parent.send_event("child-done", {"child": event.instance_id})

        await step.do("notify", notify)


async def seconds_until(engine: Engine, complete: int, start: float) -> float:
    """Seconds from ``start`` until ``complete`` children are complete."""
    await until_count(engine, "child", "complete", complete, 0.01)
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2,000 children")
    args = parser.parse_args()
    n = 2000 if args.quick else args.children
    env: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(f"sqlite:///{Path(tmp) / 'fanout.db'}", max_concurrent=100)
        parent = engine.register(Parent, name="parent", env=env)
        child = engine.register(Child, name="child", env=env)
        env.update(parent=parent, child=child)
        async with engine:
            for _ in range(2):  # warm up
                await child.create_batch([{} for _ in range(100)])
            await until_count(engine, "child", "complete", 200, 0.01)
            rss_before = rss_mib()
            start = time.perf_counter()
            for offset in range(0, n, 100):
                await child.create_batch([{} for _ in range(min(100, n - offset))])
            await until_count(engine, "child", "complete", 200 + n, 0.01)
            baseline_seconds = time.perf_counter() - start
            rss_after_baseline = rss_mib()
            start = time.perf_counter()
            instance = await parent.create(params={"children": n})
            children_done = asyncio.create_task(seconds_until(engine, 200 + 2 * n, start))
            status = await instance.wait()
            fanout_seconds = time.perf_counter() - start
            children_seconds = await children_done
            rss_after = rss_mib()
            counts = (await engine.store.count_by_status("child"))["child"]
    baseline_rate = 2 * n / baseline_seconds
    child_rate = 2 * n / fanout_seconds
    report = {
        "benchmark": "perdure-fanout",
        "backend": "sqlite",
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "children": n,
        "parent_status": status["status"],
        "children_complete": counts.get("complete", 0) - 200 - n,
        "baseline": {
            "independent_instances": n,
            "steps_per_instance": 2,
            "seconds": round(baseline_seconds, 2),
            "steps_per_s": round(baseline_rate),
        },
        "fanout_seconds": round(fanout_seconds, 2),
        "seconds_until_all_children_complete": round(children_seconds, 2),
        "fanout_child_steps_per_s": round(child_rate),
        "fanout_all_steps_per_s": round((3 * n + -(-n // 100)) / fanout_seconds),
        "ratio_child_steps_to_baseline": round(child_rate / baseline_rate, 2),
        "parent_claims": len(PARENT_RUNS),
        "worker_rss_mib": {
            "before": round(rss_before, 1),
            "after_baseline": round(rss_after_baseline, 1),
            "after_fanout": round(rss_after, 1),
            "peak": round(max(peak_rss_mib(), rss_after), 1),
        },
        "target_met": {"ratio_ge_0.5": child_rate / baseline_rate >= 0.5},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
