"""Deleting instances over REST (``DELETE /api/workflows/{name}/instances[/{id}]``) and the CLI
(``perdure instances delete``): Cloudflare's deleteBatch result, 404 for an unknown id, a
clear 400 for a bad body."""

from __future__ import annotations

import json
from typing import Any

import httpx

from perdure import Engine
from tests.ops.conftest import wait_status
from tests.ops.test_cli import cli


async def test_rest_delete_one_and_a_batch(engine: Engine, client: httpx.AsyncClient) -> None:
    async with engine:
        for instance_id in ("a", "b", "c"):
            await client.post("/api/workflows/hello/instances", json={"id": instance_id, "params": {"name": "x"}})
        await client.post("/api/workflows/approval/instances", json={"id": "held"})
        for instance_id in ("a", "b", "c"):
            await wait_status(client, "hello", instance_id, "complete")
        one = await client.delete("/api/workflows/hello/instances/a")
        assert one.status_code == 200 and one.json() == {"id": "a", "workflow": "hello", "deleted": True}
        assert (await client.get("/api/workflows/hello/instances/a")).status_code == 404
        assert (await client.delete("/api/workflows/hello/instances/a")).status_code == 404
        batch = await client.request("DELETE", "/api/workflows/hello/instances", json={"ids": ["b", "c", "zz", "b"]})
        assert batch.status_code == 200
        assert batch.json() == {
            "deleted": [{"id": "b"}, {"id": "c"}],
            "errors": [{"id": "zz", "code": 10400, "message": "workflows.api.error.instance.not_found"}],
        }
        held = await client.delete("/api/workflows/approval/instances/held")  # unfinished: terminated first
        assert held.status_code == 200
        for body, says in (
            ({"ids": []}, "1-100"),
            ({"ids": "b"}, "list"),
            ({"id": ["b"]}, "ids"),
            ([1], "ids"),
        ):
            bad = await client.request("DELETE", "/api/workflows/hello/instances", json=body)
            assert bad.status_code == 400 and says in bad.json()["error"]["message"], bad.text


async def test_cli_deletes_and_exits_1_for_an_unknown_id(engine: Engine, db_url: str) -> None:
    binding = engine.binding("hello")
    async with engine:
        first = await binding.create(id="one", params={"name": "x"})
        await first.wait(5)
    result = await cli("--db", db_url, "--json", "instances", "delete", "hello", "one", "missing")
    assert result.exit_code == 1, result.output
    body: Any = json.loads(result.stdout)
    assert body["deleted"] == [{"id": "one"}] and body["errors"][0]["id"] == "missing"
    assert await engine.store.get_instance("hello", "one") is None
    result = await cli("--db", db_url, "instances", "delete", "hello")
    assert result.exit_code == 2 and "ID" in result.output
