"""Versions of one workflow for the replay tests: ``perdure replay tests.engine.replay_app:VERSION``."""

from __future__ import annotations

from typing import Any

from perdure import Engine, WorkflowEntrypoint


class V1(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        await step.sleep("nap", "1 hour")
        b = await step.do("b", lambda: 2)
        return a + b


class Renamed(WorkflowEntrypoint):  # "a" became "a2": sleeping instances would run a2 again
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a2", lambda: 1)
        await step.sleep("nap", "1 hour")
        return a + await step.do("b", lambda: 2)


class LongerNap(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        await step.sleep("nap", "2 hours")
        return a + await step.do("b", lambda: 2)


class NapIsAStep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        await step.do("nap", lambda: None)
        return a + await step.do("b", lambda: 2)


class Shorter(WorkflowEntrypoint):  # the nap and "b" were dropped
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("a", lambda: 1)


class Inserted(WorkflowEntrypoint):  # a new step before the nap, unguarded
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        extra = await step.do("extra", lambda: 10)
        await step.sleep("nap", "1 hour")
        return a + extra + await step.do("b", lambda: 2)


class Patched(WorkflowEntrypoint):  # the same change behind patched(): old instances keep the old path
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        extra = 0
        if await step.patched("extra-step"):
            extra = await step.do("extra", lambda: 10)
        await step.sleep("nap", "1 hour")
        return a + extra + await step.do("b", lambda: 2)


class Deprecated(WorkflowEntrypoint):  # no old instance is left: the new path only
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        step.deprecate_patch("extra-step")
        extra = await step.do("extra", lambda: 10)
        await step.sleep("nap", "1 hour")
        return a + extra + await step.do("b", lambda: 2)


VERSIONS: dict[str, type[WorkflowEntrypoint]] = {
    "v1": V1,
    "renamed": Renamed,
    "longer_nap": LongerNap,
    "nap_is_a_step": NapIsAStep,
    "shorter": Shorter,
    "inserted": Inserted,
    "patched": Patched,
    "deprecated": Deprecated,
}


def engine_for(version: str, url: str = "sqlite:///unused-by-replay.db", **options: Any) -> Engine:
    engine = Engine(url, **options)
    engine.register(VERSIONS[version], name="order")
    return engine


def v1() -> Engine:
    return engine_for("v1")


def renamed() -> Engine:
    return engine_for("renamed")


def patched() -> Engine:
    return engine_for("patched")
