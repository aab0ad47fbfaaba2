"""The REST API: every endpoint's happy path, and every error class with its JSON body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from perdure import Engine
from perdure.server.api import create_app

from .conftest import wait_status


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


async def test_workflows_list_and_describe(engine: Engine, client: httpx.AsyncClient) -> None:
    await engine.binding("hello").create(id="a")
    response = await client.get("/api/workflows")
    assert response.status_code == 200
    workflows = {w["name"]: w for w in response.json()["workflows"]}
    assert set(workflows) == {"hello", "approval", "flaky", "fails"}
    assert workflows["hello"]["instances"] == {"queued": 1} and workflows["hello"]["total"] == 1
    assert workflows["hello"]["class_name"] == "Hello" and workflows["hello"]["registered"] is True
    one = (await client.get("/api/workflows/approval")).json()
    assert one["name"] == "approval" and one["total"] == 0 and one["step_limit"] == 10_000


async def test_create_run_and_describe(engine: Engine, client: httpx.AsyncClient) -> None:
    response = await client.post("/api/workflows/hello/instances", json={"id": "greet-1", "params": {"name": "Ada"}})
    assert response.status_code == 201
    created = response.json()
    assert created["id"] == "greet-1" and created["status"] == "queued" and created["trigger"] == {"source": "api"}
    async with engine:
        detail = await wait_status(client, "hello", "greet-1", "complete")
    assert detail["output"] == "hello Ada" and detail["params"] == {"name": "Ada"} and detail["success"] is True
    assert detail["queued"].endswith("Z") and detail["start"] and detail["end"] and detail["duration_ms"] >= 0
    (step,) = detail["steps"]
    assert step["type"] == "step" and step["label"] == "greet-1" and step["status"] == "complete"
    assert step["output"] == "hello Ada" and step["config"]["retries"]["limit"] == 5
    assert len(step["attempts"]) == 1 and step["attempts"][0]["success"] is True
    types = [e["type"] for e in detail["history"]]
    assert types == [
        "WORKFLOW_QUEUED", "WORKFLOW_START", "STEP_START", "ATTEMPT_START", "ATTEMPT_SUCCESS", "STEP_SUCCESS",
        "WORKFLOW_SUCCESS",
    ]  # fmt: skip


async def test_step_log_with_retries_sleep_and_failure(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/flaky/instances", json={"id": "f1"})
    await client.post("/api/workflows/fails/instances", json={"id": "x1"})
    async with engine:
        flaky = await wait_status(client, "flaky", "f1", "complete")
        failed = await wait_status(client, "fails", "x1", "errored")
    labels = [(s["label"], s["type"], s["status"]) for s in flaky["steps"]]
    assert labels == [
        ("flaky-call-1", "step", "complete"),
        ("nap-1", "sleep", "complete"),
        ("finish-1", "step", "complete"),
    ]
    attempts = flaky["steps"][0]["attempts"]
    assert [a["success"] for a in attempts] == [False, True]
    assert attempts[0]["error"] == {"name": "ConnectionError", "message": "first attempt fails"}
    types = [e["type"] for e in flaky["history"]]
    assert "ATTEMPT_FAILURE" in types and "SLEEP_START" in types and "SLEEP_COMPLETE" in types
    assert types.index("ATTEMPT_FAILURE") < types.index("SLEEP_START") < types.index("SLEEP_COMPLETE")
    assert flaky["output"] == {"attempts": 2}
    assert failed["error"] == {"name": "NonRetryableError", "message": "this step never works"}
    assert failed["steps"][0]["status"] == "failed"
    assert [e["type"] for e in failed["history"]][-2:] == ["STEP_FAILURE", "WORKFLOW_FAILURE"]


async def test_batch_create_skips_existing(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/hello/instances", json={"id": "b1"})
    response = await client.post(
        "/api/workflows/hello/instances", json=[{"id": "b1"}, {"id": "b2"}, {"params": {"x": 1}}]
    )
    assert response.status_code == 201
    created = response.json()["instances"]
    assert [c["id"] for c in created][:1] == ["b2"] and len(created) == 2


async def test_list_filters_and_paginates(engine: Engine, client: httpx.AsyncClient) -> None:
    for i in range(7):
        await client.post("/api/workflows/hello/instances", json={"id": f"p{i}"})
    await client.patch("/api/workflows/hello/instances/p3/status", json={"status": "terminate"})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/workflows/hello/instances", params=params)).json()
        seen += [i["id"] for i in page["instances"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in reversed(range(7))]
    terminated = (await client.get("/api/workflows/hello/instances", params={"status": "terminated"})).json()
    assert [i["id"] for i in terminated["instances"]] == ["p3"] and terminated["next_cursor"] is None


async def test_pause_resume_terminate_restart_and_events(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/approval/instances", json={"id": "ap"})
    async with engine:
        await wait_status(client, "approval", "ap", "waiting")
        paused = await client.patch("/api/workflows/approval/instances/ap/status", json={"status": "pause"})
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        resumed = await client.patch("/api/workflows/approval/instances/ap/status", json={"status": "resume"})
        assert resumed.json()["status"] in ("waiting", "queued", "running")
        await wait_status(client, "approval", "ap", "waiting")
        sent = await client.post("/api/workflows/approval/instances/ap/events/approve", json={"by": "ops"})
        assert sent.status_code == 202 and sent.json() == {"id": "ap", "workflow": "approval", "type": "approve"}
        done = await wait_status(client, "approval", "ap", "complete")
        assert done["output"] == {"approved": {"by": "ops"}}
        assert [s["type"] for s in done["steps"]] == ["step", "waitForEvent"]
        assert "WAIT_COMPLETE" in [e["type"] for e in done["history"]]
        # restart from the wait keeps "prepare"; the event sent before is delivered again
        restarted = await client.patch(
            "/api/workflows/approval/instances/ap/status",
            json={"status": "restart", "from_step": {"name": "approval", "type": "waitForEvent"}},
        )
        assert restarted.status_code == 200 and restarted.json()["status"] in ("queued", "running", "waiting")
        again = await wait_status(client, "approval", "ap", "complete")
        assert again["steps"][0]["start"] == done["steps"][0]["start"]
        assert again["output"] == {"approved": {"by": "ops"}}
        await client.post("/api/workflows/approval/instances", json={"id": "ap2"})
        await wait_status(client, "approval", "ap2", "waiting")
        stopped = await client.patch("/api/workflows/approval/instances/ap2/status", json={"status": "terminate"})
        assert stopped.json()["status"] == "terminated"
    latest = (await client.get("/api/workflows/approval/instances/latest")).json()
    assert latest["id"] == "ap2" and latest["status"] == "terminated"


async def test_error_classes(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/hello/instances", json={"id": "e1"})
    base = "/api/workflows/hello/instances"
    # invalid JSON, wrong types, schema violations
    error_of(
        await client.post(base, content=b"{nope", headers={"content-type": "application/json"}), 400, "invalid_json"
    )
    error_of(await client.post(base, content=b"NaN", headers={"content-type": "application/json"}), 400, "invalid_json")
    error_of(await client.patch(f"{base}/e1/status"), 400, "invalid_json")
    # a lone surrogate escape parses but is no Unicode text: refused, not a 500 from the store
    json_type = {"content-type": "application/json"}
    for lone in (b'{"id": "s1", "params": {"a": "\\ud800"}}', b'{"id": "s2", "concurrency_key": "k\\udfff"}'):
        error_of(await client.post(base, content=lone, headers=json_type), 400, "invalid_json")
    paired = await client.post(base, content=b'{"id": "s3", "params": "\\ud83d\\ude00"}', headers=json_type)
    assert paired.status_code == 201 and (await client.get(f"{base}/s3")).json()["params"] == "\U0001f600"
    error_of(await client.post(base, json="a string"), 400, "validation_error")
    error_of(await client.post(base, json={"id": "bad id!"}), 400, "validation_error")
    error_of(await client.post(base, json={"id": "ok", "extra": 1}), 400, "validation_error")
    error_of(await client.post(base, json=[]), 400, "validation_error")
    error_of(await client.post(base, json=[{"id": f"z{i}"} for i in range(101)]), 400, "validation_error")
    error_of(await client.post(base, json=[1]), 400, "validation_error")
    error_of(await client.get(base, params={"limit": "0"}), 400, "validation_error")
    error_of(await client.get(base, params={"limit": "1001"}), 400, "validation_error")
    error_of(await client.get(base, params={"limit": "ten"}), 400, "validation_error")
    error_of(await client.get(base, params={"status": "done"}), 400, "validation_error")
    error_of(await client.get(base, params={"cursor": "!!!"}), 400, "validation_error")
    error_of(await client.get(base, params={"cursor": "YWJj"}), 400, "validation_error")  # a forged cursor: "abc"
    error_of(await client.get(base, params={"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}), 400, "validation_error")
    error_of(await client.patch(f"{base}/e1/status", json={"status": "explode"}), 400, "validation_error")
    error_of(await client.patch(f"{base}/e1/status", json=["pause"]), 400, "validation_error")
    error_of(await client.patch(f"{base}/e1/status", json={"status": "pause", "x": 1}), 400, "validation_error")
    error_of(await client.patch(f"{base}/e1/status", json={}), 400, "validation_error")
    error_of(
        await client.patch(f"{base}/e1/status", json={"status": "pause", "from_step": {"name": "greet"}}),
        400,
        "validation_error",
    )
    message = error_of(
        await client.patch(f"{base}/e1/status", json={"status": "restart", "from_step": {"name": "nope"}}),
        404,
        "step_not_found",
    )
    assert "nope" in message
    error_of(await client.post(f"{base}/e1/events/bad.type", json={}), 400, "validation_error")
    error_of(await client.get(f"{base}/{'x' * 101}"), 400, "validation_error")
    error_of(await client.get("/api/workflows/bad%20name"), 400, "validation_error")
    # unknown things
    error_of(await client.get("/api/workflows/nope"), 404, "workflow_not_found")
    error_of(await client.get("/api/workflows/nope/instances"), 404, "workflow_not_found")
    error_of(await client.post("/api/workflows/nope/instances", json={}), 404, "workflow_not_found")
    error_of(await client.get(f"{base}/missing"), 404, "instance_not_found")
    error_of(await client.patch(f"{base}/missing/status", json={"status": "pause"}), 404, "instance_not_found")
    error_of(await client.post(f"{base}/missing/events/go", json={}), 404, "instance_not_found")
    error_of(await client.get("/api/workflows/approval/instances/latest"), 404, "instance_not_found")
    error_of(await client.get("/api/nothing"), 404, "not_found")
    error_of(await client.delete("/api/workflows"), 405, "method_not_allowed")
    error_of(await client.put(f"{base}/e1/status", json={"status": "pause"}), 405, "method_not_allowed")
    # conflicts
    error_of(await client.post(base, json={"id": "e1"}), 409, "instance_exists")
    assert (await client.patch(f"{base}/e1/status", json={"status": "terminate"})).status_code == 200
    error_of(await client.patch(f"{base}/e1/status", json={"status": "terminate"}), 409, "invalid_state")
    error_of(await client.post(f"{base}/e1/events/go", json={}), 409, "invalid_state")
    # too large: by Content-Length, and while streaming without one
    huge = b'{"params": "' + b"x" * (1024 * 1024 + 70_000) + b'"}'
    error_of(await client.post(base, content=huge), 413, "payload_too_large")

    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 100_000

    error_of(await client.post(base, content=chunks()), 413, "payload_too_large")
    # a payload just over 1 MiB but under the body limit is refused by the payload rule
    big = {"params": "y" * (1024 * 1024)}
    assert "1 MiB" in error_of(await client.post(base, json=big), 400, "validation_error")


async def test_bearer_token_and_origin(engine: Engine) -> None:
    app = create_app(engine, token="s3cret-token")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as anonymous:
        response = await anonymous.get("/api/workflows")
        error_of(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        error_of(await anonymous.get("/api/workflows", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        error_of(await anonymous.get("/metrics"), 401, "unauthorized")
        assert (await anonymous.get("/api/health")).json() == {"ok": True}
        login = await anonymous.get("/dashboard/")
        assert login.status_code == 303 and login.headers["location"] == "/dashboard/login"
    headers = {"Authorization": "Bearer s3cret-token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as authed:
        assert (await authed.get("/api/workflows")).status_code == 200
        assert (await authed.post("/api/workflows/hello/instances", json={"id": "t1"})).status_code == 201
        cross = await authed.post(
            "/api/workflows/hello/instances", json={"id": "t2"}, headers={"Origin": "https://evil.example"}
        )
        error_of(cross, 403, "forbidden_origin")
        same = await authed.post(
            "/api/workflows/hello/instances", json={"id": "t3"}, headers={"Origin": "http://127.0.0.1"}
        )
        assert same.status_code == 201
    with pytest.raises(ValueError):
        create_app(engine, token="short")


async def test_allowed_hosts_and_mounting(engine: Engine) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_app(engine, allowed_hosts=["127.0.0.1", "localhost"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://evil.example") as c:
        error_of(await c.get("/api/workflows"), 403, "forbidden_origin")
    outer = Starlette(routes=[Mount("/ops", app=create_app(engine))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://127.0.0.1") as c:
        assert (await c.get("/ops/api/workflows")).status_code == 200
        page = await c.get("/ops/dashboard/")
        assert page.status_code == 200 and 'href="/ops/dashboard/workflows/hello"' in page.text
        assert (await c.get("/ops/dashboard/static/htmx.min.js")).status_code == 200


async def test_openapi_document_lists_every_route(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert set(paths) == {
        "/api/health",
        "/api/workflows",
        "/api/workflows/{name}",
        "/api/workflows/{name}/instances",
        "/api/workflows/{name}/instances/{id}",
        "/api/workflows/{name}/instances/{id}/status",
        "/api/workflows/{name}/instances/{id}/events/{type}",
    }
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert {"invalid_json", "validation_error", "payload_too_large", "unauthorized", "instance_exists"} <= set(codes)
