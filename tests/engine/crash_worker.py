"""A worker process for the crash test: 20-step workflows whose steps log a side effect.

Run as ``python -m tests.engine.crash_worker DB_URL EFFECTS_FILE``; it works until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from perdure import Engine, WorkflowEntrypoint

STEPS = 20


def make_engine(url: str, effects: str) -> Engine:
    class Twenty(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            total = 0
            for i in range(STEPS):

                async def effect(i: int = i) -> int:
                    # The side effect happens before the result is recorded: a crash in between
                    # runs it again (at least once), never loses it.
                    with open(effects, "a") as f:
                        f.write(f"{os.getpid()} {event.instance_id} {i}\n")
                    await asyncio.sleep(0.01)
                    return i

                total += await step.do(f"step-{i}", effect)
            return total

    class Napper(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            before = await step.do("before", time.time)
            await step.sleep("nap", 2000)
            after = await step.do("after", time.time)
            approval = await step.wait_for_event("approval", "approval", timeout="1 minute")
            return {"slept": after - before, "approval": approval["payload"]}

    class Saga(WorkflowEntrypoint):
        """Five steps with rollback handlers, then a failure: the handlers log and take a while."""

        async def run(self, event: Any, step: Any) -> Any:
            for i in range(5):

                async def undo(output: int) -> None:
                    with open(effects, "a") as f:
                        f.write(f"{os.getpid()} {event.instance_id} undo-{output}-start\n")
                    await asyncio.sleep(0.15)
                    with open(effects, "a") as f:
                        f.write(f"{os.getpid()} {event.instance_id} undo-{output}-end\n")

                await step.do(f"book-{i}", lambda i=i: i, rollback=undo, rollback_config={"retries": {"limit": 0}})
            raise RuntimeError("the trip is off")

    class FanIn(WorkflowEntrypoint):
        """Takes ``n`` "item" events one by one; after each, a step logs the payload it took."""

        async def run(self, event: Any, step: Any) -> Any:
            taken = []
            for i in range(event.payload["n"]):
                got = await step.wait_for_event(f"item-{i}", "item", timeout="1 minute")

                async def record(i: int = i, value: Any = got["payload"]) -> Any:
                    with open(effects, "a") as f:
                        f.write(f"{os.getpid()} {event.instance_id} took-{i}-{value}\n")
                    await asyncio.sleep(0.002)
                    return value

                taken.append(await step.do(f"record-{i}", record))
            return taken

    engine = Engine(url, max_concurrent=5, poll_interval=0.02, fast_wait=0.1)
    engine.register(FanIn, name="fanin")
    engine.register(Saga, name="saga")
    engine.register(Twenty, name="twenty")
    engine.register(Napper, name="napper")
    return engine


async def main(url: str, effects: str) -> None:
    async with make_engine(url, effects):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
