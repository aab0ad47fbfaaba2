"""``config={"sensitive": "output"}``: the workflow gets the step's result (and again on replay),
everything else shows "[REDACTED]": REST, dashboard, CLI, history, logs and spans."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from perdure import Engine, WorkflowEntrypoint
from perdure.cli import main
from perdure.server.api import create_app

SECRET = "sk-live-4f9c2e7a"


class Issue(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        token = await step.do("issue token", lambda: {"token": SECRET}, config={"sensitive": "output"})
        await step.sleep("let it settle", 100)  # over fast_wait: the run suspends and replays
        public = await step.do("public", lambda: "visible")
        return {"same_after_replay": token["token"] == SECRET, "public": public}


async def test_the_result_is_hidden_everywhere_but_in_the_workflow(
    make_engine: Callable[..., Engine], db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Issue, name="issue")
    await engine.start()
    instance = await binding.create(id="tok-1")
    status = await instance.wait(10)
    assert status["output"] == {"same_after_replay": True, "public": "visible"}

    app = create_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        detail = (await c.get("/api/workflows/issue/instances/tok-1")).json()
        page = (await c.get("/dashboard/workflows/issue/instances/tok-1")).text
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["issue token"]["output"] == "[REDACTED]"
    assert steps["issue token"]["config"]["sensitive"] == "output"
    assert steps["public"]["output"] == "visible"  # only the sensitive step is hidden
    assert SECRET not in json.dumps(detail) and SECRET not in page
    assert "[REDACTED]" in page

    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["instances", "describe", "issue", "tok-1", "--db", db_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "REDACTED" in result.output
    assert SECRET not in caplog.text


def test_sensitive_takes_only_output() -> None:
    from perdure.retries import resolve_config

    with pytest.raises(ValueError, match="config 'sensitive' must be \"output\""):
        resolve_config("s", {"sensitive": "result"})
    assert resolve_config("s", {"sensitive": "output"})["sensitive"] == "output"
    assert "sensitive" not in resolve_config("s", None)
