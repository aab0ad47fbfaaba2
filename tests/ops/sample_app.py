"""Workflows the ops tests drive, and an app module for `perdure serve tests.ops.sample_app:engine`.

``register(engine)`` adds them to any engine; the module-level ``engine`` uses the database in
``PERDURE_TEST_DB`` (the subprocess tests set it).
"""

from __future__ import annotations

import os
from typing import Any

from perdure import Engine, NonRetryableError, WorkflowEntrypoint


class Hello(WorkflowEntrypoint):
    """One step: greets ``params["name"]``."""

    async def run(self, event: Any, step: Any) -> Any:
        name = event["payload"].get("name", "world") if isinstance(event["payload"], dict) else "world"
        return await step.do("greet", lambda: f"hello {name}")


class Approval(WorkflowEntrypoint):
    """A step, then waits up to an hour for an ``approve`` event."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.do("prepare", lambda: {"ready": True})
        approval = await step.wait_for_event("approval", "approve", timeout="1 hour")
        return {"approved": approval["payload"]}


class Flaky(WorkflowEntrypoint):
    """A step that fails on its first attempt, a short sleep, then a second step."""

    async def run(self, event: Any, step: Any) -> Any:
        @step.do("flaky-call", config={"retries": {"limit": 2, "delay": 20, "backoff": "constant"}})
        async def flaky(ctx: Any) -> int:
            if ctx["attempt"] == 1:
                raise ConnectionError("first attempt fails")
            return int(ctx["attempt"])

        attempts = await flaky()
        await step.sleep("nap", 30)
        return await step.do("finish", lambda: {"attempts": attempts})


class Fails(WorkflowEntrypoint):
    """A step that raises NonRetryableError."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.do("explode", self.explode)

    @staticmethod
    def explode() -> None:
        raise NonRetryableError("this step never works")


def register(engine: Engine) -> Engine:
    engine.register(Hello, name="hello")
    engine.register(Approval, name="approval")
    engine.register(Flaky, name="flaky")
    engine.register(Fails, name="fails")
    return engine


def make_engine() -> Engine:
    return register(Engine(os.environ.get("PERDURE_TEST_DB", "sqlite:///perdure-ops-test.db"), poll_interval=0.02))


engine = make_engine() if os.environ.get("PERDURE_TEST_DB") else None
