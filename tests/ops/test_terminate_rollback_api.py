"""``PATCH .../status {"status": "terminate", "rollback": true}`` and ``perdure instances terminate --rollback``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from click.testing import CliRunner

from perdure import Engine, WorkflowEntrypoint
from perdure.cli import main
from perdure.server.api import create_app

undone: list[str] = []


class Booking(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("book", lambda: "room", rollback=lambda output: undone.append(output))
        await step.wait_for_event("confirm", "confirm")


async def test_rest_and_cli_terminate_with_rollback(make_engine: Callable[..., Engine], db_url: str) -> None:
    undone.clear()
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Booking, name="booking")
    await engine.start()
    first, second = await binding.create(id="b-1"), await binding.create(id="b-2")
    for instance in (first, second):
        while (await instance.status())["status"] != "waiting":
            await asyncio.sleep(0.01)
    app = create_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        url = "/api/workflows/booking/instances/b-1/status"
        for body, says in (
            ({"status": "pause", "rollback": True}, "rollback is only allowed with status 'terminate'"),
            ({"status": "terminate", "rollback": "yes"}, "rollback must be true or false"),
        ):
            refused = await c.patch(url, json=body)
            assert refused.status_code == 400 and says in refused.json()["error"]["message"]
        accepted = await c.patch(url, json={"status": "terminate", "rollback": True})
        assert accepted.status_code == 200, accepted.text
    assert (await first.wait(10))["status"] == "terminated"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["instances", "terminate", "booking", "b-2", "--rollback", "--db", db_url],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (await second.wait(10))["status"] == "terminated"
    assert undone == ["room", "room"]
