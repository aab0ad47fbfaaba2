"""Flow control at the boundaries: REST create with concurrency_key and priority, the workflow
view's flow and queued_by_reason, /metrics, the dashboard and the CLI."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from perdure import Engine, WorkflowEntrypoint
from tests.ops.test_cli import as_json, cli


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def work() -> str:
            await asyncio.sleep(event.payload.get("ms", 50) / 1000)
            return "done"

        return await step.do("work", work)


def limited(engine: Engine) -> Engine:
    engine.register(
        Slow, name="limited", concurrency=1, concurrency_per_key=1, rate_limit={"limit": 100, "period": "1 minute"}
    )
    return engine


async def test_rest_create_takes_key_and_priority_and_refuses_bad_values(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    limited(engine)
    created = await client.post(
        "/api/workflows/limited/instances", json={"id": "k1", "concurrency_key": "tenant-1", "priority": 7}
    )
    assert created.status_code == 201, created.text
    assert created.json()["priority"] == 7 and created.json()["concurrency_key"] == "tenant-1"
    listed = (await client.get("/api/workflows/limited/instances")).json()["instances"]
    assert [(i["id"], i["priority"], i["concurrency_key"]) for i in listed] == [("k1", 7, "tenant-1")]
    for body, named in [
        ({"priority": -1}, "priority"),
        ({"priority": "soon"}, "priority"),
        ({"concurrency_key": ""}, "concurrency_key"),
        ({"concurrency_key": ["a"]}, "concurrency_key"),
        ({"urgency": 1}, "urgency"),
    ]:
        refused = await client.post("/api/workflows/limited/instances", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert named in refused.json()["error"]["message"]
    batch = await client.post(
        "/api/workflows/limited/instances", json=[{"id": "b1", "priority": 2}, {"id": "b2", "concurrency_key": "t"}]
    )
    assert batch.status_code == 201 and [i["priority"] for i in batch.json()["instances"]] == [2, 0]
    assert len((await client.get("/api/workflows/limited/instances")).json()["instances"]) == 3  # no refused one


async def test_views_say_why_instances_are_queued(engine: Engine, client: httpx.AsyncClient, db_url: str) -> None:
    limited(engine)
    binding = engine.binding("limited")
    await binding.create(id="a1", params={"ms": 1500}, concurrency_key="a")
    await binding.create(id="a2", concurrency_key="a")
    await binding.create(id="b1", concurrency_key="b")
    async with engine:
        for _ in range(200):
            if (await (await binding.get("a1")).status())["status"] == "running":
                break
            await asyncio.sleep(0.01)
        view = (await client.get("/api/workflows/limited")).json()
        assert view["flow"] == {
            "concurrency": 1,
            "concurrency_per_key": 1,
            "rate_limit": {"limit": 100, "period": 60.0},
        }
        assert view["queued_by_reason"] == {"concurrency_key": 1, "concurrency": 1}
        listed = {w["name"]: w for w in (await client.get("/api/workflows")).json()["workflows"]}
        assert listed["limited"]["queued_by_reason"] == view["queued_by_reason"]
        assert listed["hello"]["flow"] is None and listed["hello"]["queued_by_reason"] == {}
        metrics = (await client.get("/metrics")).text
        assert 'perdure_queued_instances_by_reason{reason="concurrency",workflow="limited"} 1.0' in metrics
        assert 'perdure_queued_instances_by_reason{reason="concurrency_key",workflow="limited"} 1.0' in metrics
        page = (await client.get("/dashboard/workflows/limited")).text
        assert "Flow control: at most 1 running, 1 per key, 100 starts per 60 s" in page
        assert "queued: 1 key&#39;s limit, 1 concurrency limit" in page
        overview = (await client.get("/dashboard/")).text
        assert "flow control: at most 1 running" in overview and "queued: 1 key&#39;s limit" in overview
        # another process (the CLI on the database) reads the limits the engine stored
        described = await cli("workflows", "describe", "limited", "--db", db_url)
        assert described.exit_code == 0, described.output
        assert "at most 1 running, 1 per key" in described.stdout and "1 concurrency limit" in described.stdout
        as_text = as_json(await cli("--json", "workflows", "describe", "limited", "--db", db_url))
        assert as_text["queued_by_reason"] == {"concurrency_key": 1, "concurrency": 1}
        for i in ("a1", "a2", "b1"):
            await (await binding.get(i)).wait(10)
    assert (await client.get("/api/workflows/limited")).json()["queued_by_reason"] == {}


async def test_cli_trigger_takes_priority_and_key(engine: Engine, db_url: str) -> None:
    limited(engine)
    await engine.start()
    await engine.stop()  # the workflow is now on the database, for the --db client
    made = as_json(
        await cli(
            "--json", "workflows", "trigger", "limited", "--id", "c1", "--priority", "3", "--concurrency-key", "k",
            "--db", db_url,
        )
    )  # fmt: skip
    assert made["priority"] == 3 and made["concurrency_key"] == "k"
    bad = await cli("workflows", "trigger", "limited", "--priority", "-2", "--db", db_url)
    assert bad.exit_code == 2 and "priority" in bad.output
