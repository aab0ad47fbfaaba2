"""Operators' tools in another process than the workers: a workflow some engine registered on
the database is listed, described and triggered with no instance yet; instances are found by id
prefix (CLI, API, dashboard)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from perdure import Engine
from perdure.server.api import create_app

from .sample_app import Hello
from .test_api import error_of
from .test_cli import as_json, cli


async def test_a_workflow_registered_by_a_worker_is_listed_and_triggered_from_elsewhere(
    make_engine: Callable[..., Engine], db_url: str
) -> None:
    db = ("--db", db_url)
    worker = make_engine()
    worker.register(Hello, name="greet", schedules=["0 6 * * *"], limits={"steps": 9})
    async with worker:  # `perdure worker app:engine` on a fresh database
        listed = as_json(await cli("--json", "workflows", "list", *db))["workflows"]
        assert [(w["name"], w["registered"], w["class_name"], w["total"]) for w in listed] == [
            ("greet", False, "Hello", 0)
        ]
        assert listed[0]["schedules"] == ["0 6 * * *"] and listed[0]["step_limit"] == 9
        assert listed[0]["last_registered_at"].endswith("Z")
        text = await cli("workflows", "list", *db)
        assert text.exit_code == 0 and "greet" in text.stdout and "Hello" in text.stdout
        described = await cli("workflows", "describe", "greet", *db)
        assert described.exit_code == 0 and "0 6 * * *" in described.stdout

        created = as_json(await cli("workflows", "trigger", "greet", '{"name": "Ada"}', "--id", "t-1", "--json", *db))
        assert created["id"] == "t-1" and created["status"] in ("queued", "running", "complete")
        result = await (await worker.binding("greet").get("t-1")).wait(10)
        assert result["output"] == "hello Ada"

        # The API and the dashboard of a server that does not load the application see it too.
        server = make_engine()
        transport = httpx.ASGITransport(app=create_app(server))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            (workflow,) = (await client.get("/api/workflows")).json()["workflows"]
            assert workflow["name"] == "greet" and workflow["class_name"] == "Hello"
            assert workflow["registered"] is False and workflow["instances"] == {"complete": 1}
            page = await client.get("/dashboard/")
            assert page.status_code == 200 and "registered elsewhere" in page.text and "Hello" in page.text
            assert (await client.post("/api/workflows/greet/instances", json={"id": "t-2"})).status_code == 201


async def test_instances_are_found_by_id_prefix(engine: Engine, client: httpx.AsyncClient, db_url: str) -> None:
    hello = engine.binding("hello")
    for instance_id in ("order-1", "order-10", "order-2", "other-1", "order_x"):
        await hello.create(id=instance_id)

    # API: newest first, paginated, prefix taken literally
    page = (await client.get("/api/workflows/hello/instances", params={"id_prefix": "order-"})).json()
    assert [i["id"] for i in page["instances"]] == ["order-2", "order-10", "order-1"]
    first = (await client.get("/api/workflows/hello/instances", params={"id_prefix": "order", "limit": 3})).json()
    rest = await client.get(
        "/api/workflows/hello/instances", params={"id_prefix": "order", "limit": 3, "cursor": first["next_cursor"]}
    )
    assert [i["id"] for i in first["instances"] + rest.json()["instances"]] == [
        "order_x", "order-2", "order-10", "order-1"
    ]  # fmt: skip
    assert rest.json()["next_cursor"] is None
    empty = await client.get("/api/workflows/hello/instances", params={"id_prefix": "order-3"})
    assert empty.status_code == 200 and empty.json() == {"instances": [], "next_cursor": None}
    for bad, why in (("order%", "may contain only"), ("a b", "may contain only"), ("x" * 101, "at most 100")):
        response = await client.get("/api/workflows/hello/instances", params={"id_prefix": bad})
        assert why in error_of(response, 400, "validation_error")

    # CLI
    db = ("--db", db_url)
    listed = as_json(await cli("instances", "list", "hello", "--id-prefix", "order-1", "--json", *db))
    assert [i["id"] for i in listed["instances"]] == ["order-10", "order-1"]
    refused = await cli("instances", "list", "hello", "--id-prefix", "or%", *db)
    assert refused.exit_code == 2 and "id_prefix" in refused.stderr

    # Dashboard: the prefix's matches, the instance with exactly that id first
    html = (await client.get("/dashboard/workflows/hello", params={"id": "order-1"})).text
    assert html.index(">order-1<") < html.index(">order-10<") and "order-2" not in html
    html = (await client.get("/dashboard/workflows/hello", params={"id": "ord"})).text
    assert all(f">{i}<" in html for i in ("order-1", "order-10", "order-2", "order_x")) and "other-1" not in html
    html = (await client.get("/dashboard/workflows/hello", params={"id": "nothing"})).text
    assert "No instances whose id starts with nothing" in html
    html = (await client.get("/dashboard/workflows/hello", params={"id": "or%"})).text
    assert "may contain only" in html
    html = (await client.get("/dashboard/workflows/hello", params={"id": "latest"})).text
    assert ">order_x<" in html  # the newest instance
