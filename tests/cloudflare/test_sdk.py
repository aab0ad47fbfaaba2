"""The ``workers`` / ``workers.workflows`` modules a project imports: Request, Response,
WorkerEntrypoint, WorkflowEntrypoint (Cloudflare's ``(ctx, env)``), NonRetryableError, and
``print()`` from a workflow going to the log with its instance."""

from __future__ import annotations

import importlib
import io
import logging
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import perdure
from perdure import Engine
from perdure.cloudflare import console, sdk


@pytest.fixture
def shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim modules in this process for one test only."""
    for name, module in sdk.modules().items():
        monkeypatch.setitem(sys.modules, name, module)


def test_the_cloudflare_imports_resolve_to_perdure(shim: None) -> None:
    workers = importlib.import_module("workers")
    workflows = importlib.import_module("workers.workflows")
    assert issubclass(workers.WorkflowEntrypoint, perdure.WorkflowEntrypoint)
    assert workflows.NonRetryableError is perdure.NonRetryableError
    assert workers.Response is sdk.Response and workers.WorkerEntrypoint is sdk.WorkerEntrypoint
    ffi = importlib.import_module("pyodide.ffi")
    js = importlib.import_module("js")
    assert ffi.to_js({"a": 1}, dict_converter=js.Object.fromEntries) == {"a": 1}


def test_a_name_the_shim_lacks_is_one_line_listing_what_it_has(shim: None) -> None:
    with pytest.raises(ImportError) as caught:
        exec("from workers import DurableObjectNamespace", {})
    assert "DurableObjectNamespace" in str(caught.value)
    workers = importlib.import_module("workers")
    with pytest.raises(AttributeError, match=r"it provides \(.*Response.*WorkflowEntrypoint"):
        workers.Nope  # noqa: B018


def test_nothing_is_installed_on_import() -> None:
    """Only the process that runs a project gets the shim: importing Perdure shadows nothing."""
    code = "import sys, perdure, perdure.cloudflare, perdure.cli; print(sorted({'workers', 'js'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"


async def test_request_has_url_method_headers_and_body_readers() -> None:
    request = sdk.Request(
        "http://localhost:8787/orders?x=1", method="post", headers={"Content-Type": "application/json"}, body='{"n": 2}'
    )
    assert request.url == "http://localhost:8787/orders?x=1"
    assert request.method == "POST" and request.headers.get("content-type") == "application/json"
    assert await request.json() == {"n": 2}
    assert await request.text() == '{"n": 2}' and await request.bytes() == b'{"n": 2}'
    assert await request.clone().json() == {"n": 2}
    with pytest.raises(ValueError):
        sdk.Request("http://x/", method="FETCH")


async def test_response_builds_text_json_and_redirects() -> None:
    text = sdk.Response("hello", status=201, headers={"x-a": "b"})
    assert (text.status, text.ok, text.headers["content-type"], text.headers["x-a"]) == (
        201, True, "text/plain;charset=UTF-8", "b",
    )  # fmt: skip
    assert await text.text() == "hello"
    data = sdk.Response.json({"id": "a"}, status=202)
    assert data.status == 202 and data.headers["content-type"] == "application/json"
    assert await data.json() == {"id": "a"}  # the same name reads a response
    assert sdk.Response.from_json([1]).headers.get_all("content-type") == ["application/json"]
    moved = sdk.Response.redirect("/elsewhere")
    assert (moved.status, moved.headers["location"]) == (302, "/elsewhere")
    assert sdk.Response(None, status=404).status == 404 and not sdk.Response(None, status=404).ok
    with pytest.raises(TypeError, match="Unsupported type in Response: dict"):
        sdk.Response({"a": 1})  # type: ignore[arg-type]


def test_worker_entrypoint_keeps_ctx_and_env() -> None:
    class Default(sdk.WorkerEntrypoint):
        pass

    ctx = sdk.Context()
    entry = Default(ctx, {"A": 1})
    assert entry.ctx is ctx and entry.env == {"A": 1}


async def test_a_cloudflare_style_init_runs_under_the_engine(make_engine: Callable[..., Engine]) -> None:
    """Cloudflare builds a workflow with ``(ctx, env)``; Perdure's engine with ``(env)``."""

    class Flow(sdk.WorkflowEntrypoint):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            self.tag = f"{type(ctx).__name__}:{env['name']}"

        async def run(self, event: Any, step: Any) -> Any:
            @step.do("read")
            async def read() -> str:
                return f"{self.tag}:{event['payload']['n']}:{event['workflowName']}"

            return await read()

    engine = make_engine()
    binding = engine.register(Flow, name="flow", env={"name": "env"})
    await engine.start()
    status = await (await binding.create({"params": {"n": 1}})).wait(10)
    assert status["output"] == "Context:env:1:flow"


async def test_print_in_a_workflow_goes_to_the_log_with_the_instance(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console.InstanceStdout(target))

    class Flow(sdk.WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("talk")
            async def talk() -> int:
                print("inside a step")
                return 1

            print("in run", end="")
            print(" and more")
            return await talk()

    engine = make_engine()
    binding = engine.register(Flow, name="talker")
    await engine.start()
    with caplog.at_level(logging.INFO, logger="perdure.workers"):
        instance = await binding.create({"id": "talk-1"})
        await instance.wait(10)
        print("outside")
    lines = [r.getMessage() for r in caplog.records if r.name == "perdure.workers"]
    assert "[talker/talk-1] inside a step" in lines and "[talker/talk-1] in run and more" in lines
    assert target.getvalue() == "outside\n"
