"""One instance with a very long history (issue 12, Scale row ``bench_long_history.py``); prints
JSON.

One instance of S no-op steps (10,000, the issue's size; ``--quick`` 2,000) with a durable sleep
after every 100 steps, on embedded SQLite (default durability ``full``), engine in this
process. The sleeps are 50 ms with ``Engine(fast_wait=0.02)``, so each one really suspends the
instance: every segment of 100 steps starts with a claim, ``load_steps`` of the whole history
and a replay of ``run()`` through every earlier step. For each segment it records:

* ``wake_to_first_ms``: from the end of the previous sleep (its last step + 50 ms) to the
  first new step (timer, claim, loading the history, replay);
* ``replay_ms``: from the start of ``run()`` to the first new step (the replay alone);
* ``per_step_ms``: (``wake_to_first_ms`` + the time of its 100 new steps) / 100, the cost of a
  step with its share of its segment's wake.

The baseline is the start of the same run: the target is the median ``per_step_ms`` of the last
5 segments <= 2x that of segments 1-5 (no quadratic replay).

Usage: ``python bench/bench_long_history.py [--steps 10000] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from perdure import Engine, WorkflowEntrypoint

SEGMENT = 100
SLEEP_MS = 50
STEP_AT: dict[int, float] = {}  # step index -> when it ran (first and only execution)
RUN_AT: list[float] = []  # when each replay of run() began


class LongHistory(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> int:
        RUN_AT.append(time.perf_counter())
        total = event.payload["steps"]
        for k in range(total):

            async def mark(k: int = k) -> None:  # async: a plain function would run in a thread
                STEP_AT[k] = time.perf_counter()

            await step.do("step", mark)
            if k % SEGMENT == SEGMENT - 1 and k < total - 1:
                await step.sleep("pause", SLEEP_MS)
        return total


def summary(values: list[float]) -> float:
    return round(statistics.median(values), 3)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2,000 steps")
    args = parser.parse_args()
    total = 2000 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(f"sqlite:///{Path(tmp) / 'long.db'}", fast_wait=0.02)
        binding = engine.register(LongHistory, name="long", limits={"steps": total + 1})
        async with engine:
            start = time.perf_counter()
            instance = await binding.create(params={"steps": total})
            status = await instance.wait()
            seconds = time.perf_counter() - start
    segments = []
    for seg in range(1, total // SEGMENT):
        first, last = seg * SEGMENT, seg * SEGMENT + SEGMENT - 1
        woke = STEP_AT[first - 1] + SLEEP_MS / 1000
        run_start = max(t for t in RUN_AT if t <= STEP_AT[first])
        wake_to_first = (STEP_AT[first] - woke) * 1000
        segments.append(
            {
                "segment": seg,
                "history_steps": first,
                "wake_to_first_ms": wake_to_first,
                "replay_ms": (STEP_AT[first] - run_start) * 1000,
                "new_steps_ms": (STEP_AT[last] - STEP_AT[first]) * 1000,
                "per_step_ms": (wake_to_first + (STEP_AT[last] - STEP_AT[first]) * 1000) / SEGMENT,
            }
        )
    head, tail = segments[:5], segments[-5:]
    start_ms = statistics.median(s["per_step_ms"] for s in head)
    end_ms = statistics.median(s["per_step_ms"] for s in tail)
    every = max(1, len(segments) // 10)
    report = {
        "benchmark": "perdure-long-history",
        "backend": "sqlite",
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "steps": total,
        "sleeps": total // SEGMENT - 1,
        "status": status["status"],
        "claims": len(RUN_AT),
        "seconds": round(seconds, 2),
        "sleeping_seconds": round((total // SEGMENT - 1) * SLEEP_MS / 1000, 2),
        "per_step_ms_start": round(start_ms, 3),
        "per_step_ms_end": round(end_ms, 3),
        "ratio_end_to_start": round(end_ms / start_ms, 2),
        "replay_ms_start": summary([s["replay_ms"] for s in head]),
        "replay_ms_end": summary([s["replay_ms"] for s in tail]),
        "wake_to_first_ms_start": summary([s["wake_to_first_ms"] for s in head]),
        "wake_to_first_ms_end": summary([s["wake_to_first_ms"] for s in tail]),
        "new_step_ms_start": round(statistics.median(s["new_steps_ms"] for s in head) / (SEGMENT - 1), 3),
        "new_step_ms_end": round(statistics.median(s["new_steps_ms"] for s in tail) / (SEGMENT - 1), 3),
        "segments_sampled": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()} for s in segments[::every]
        ],
        "target_met": {"ratio_le_2": end_ms / start_ms <= 2},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
