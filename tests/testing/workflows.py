"""Workflows the introspection tests run; ``CALLS`` records which step bodies really ran."""

from __future__ import annotations

from typing import Any

from perdure import EventTimeoutError, WorkflowEntrypoint

CALLS: list[str] = []
FAST = {"retries": {"limit": 3, "delay": "1 hour", "backoff": "constant"}}


def body(name: str, value: Any) -> Any:
    def run() -> Any:
        CALLS.append(name)
        return value

    return run


class Pun(WorkflowEntrypoint):
    """The issue's example: embedding, a cool-down, a category, an approval."""

    async def run(self, event: Any, step: Any) -> Any:
        embedding = await step.do("create-pun-embedding", body("embed", [9.9]), config=FAST)
        await step.sleep("cool-down", "1 day")
        category = await step.do("categorize-pun", body("categorize", "wordplay"), config=FAST)
        try:
            approval = await step.wait_for_event("wait-approval", "approval", timeout="1 day")
            approved = approval["payload"]
        except EventTimeoutError:
            approved = "timed out"
        return {"embedding": embedding, "category": category, "approved": approved}


class TwoSleeps(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("nap", "1 day")
        await step.sleep("nap", "1 day")
        return await step.do("done", body("done", "ok"))


class Flaky(WorkflowEntrypoint):
    """Two steps that fail twice each (then succeed), with an hour between attempts."""

    async def run(self, event: Any, step: Any) -> Any:
        def flaky(name: str) -> Any:
            def run() -> str:
                CALLS.append(name)
                if CALLS.count(name) <= 2:
                    raise RuntimeError(f"{name} down")
                return name

            return run

        first = await step.do("first", flaky("first"), config=FAST)
        second = await step.do("second", flaky("second"), config=FAST)
        return [first, second]


class OneStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("only", body("only", "real"), config={"retries": {"limit": 2, "delay": 0}})
