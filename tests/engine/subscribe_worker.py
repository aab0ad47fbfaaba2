"""A worker process for the subscriptions crash test: five-step workflows whose lifecycle events
go to the durable queue ``lifecycle``.

Run as ``python -m tests.engine.subscribe_worker DB_URL``; prints ``ready`` and works until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from perdure import Engine, WorkflowEntrypoint


class Five(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        for i in range(5):

            async def work(i: int = i) -> int:
                await asyncio.sleep(0.03)
                return i

            await step.do(f"step-{i}", work)
        return "done"


def make_engine(url: str, **options: Any) -> Engine:
    engine = Engine(url, **options)
    engine.register(Five, name="five", subscriptions=["lifecycle"])
    return engine


async def main(url: str) -> None:
    engine = make_engine(url, lease_ttl=1.0, max_concurrent=10)
    async with engine:
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
