"""A worker process for the stall tests: plain (sync) steps that take a while and log a side effect.

Run as ``python -m tests.engine.stall_worker DB_URL EFFECTS_FILE``; it works until killed.
Each of its runs can start more attempts than the thread pool has threads, so attempts wait
in the pool's queue: what a stopped-then-resumed worker must not start blindly.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from perdure import Engine, WorkflowEntrypoint

STEPS = 10
STEP_SECONDS = 0.2
LEASE_TTL = 3.0


def make_engine(url: str, effects: str) -> Engine:
    class Plain(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            for i in range(STEPS):

                def effect(i: int = i) -> int:
                    with open(effects, "a") as f:  # one short line per write: appends never interleave
                        f.write(f"{os.getpid()} {event.instance_id} {i} {time.time():.3f}\n")
                    time.sleep(STEP_SECONDS)
                    return i

                await step.do(f"step-{i}", effect)
            return STEPS

    engine = Engine(url, max_concurrent=50, poll_interval=0.02, lease_ttl=LEASE_TTL)
    engine.register(Plain, name="plain")
    return engine


async def main(url: str, effects: str) -> None:
    async with make_engine(url, effects):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
