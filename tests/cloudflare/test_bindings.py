"""``self.env`` of a project: workflow bindings with Cloudflare's Python surface, vars, and
bindings Perdure does not provide, which say so in one line when first touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perdure import Engine, InstanceAlreadyExistsError, InstanceNotFoundError, WorkflowEntrypoint
from perdure.cloudflare.bindings import Env, UnsupportedBinding, UnsupportedBindingError, Workflow
from perdure.cloudflare.wrangler import OtherBinding

Make = Callable[..., Engine]


class Approval(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        @step.do("first")
        async def first() -> int:
            return int(event["payload"].get("n", 0))

        got = await step.wait_for_event("approve", "approval", timeout="1 hour")
        return {"n": await first(), "approved": got["payload"]}


async def started(make_engine: Make, cls: type[WorkflowEntrypoint], env: Any = None) -> Workflow:
    engine = make_engine()
    workflow = Workflow(engine.register(cls, name="approval", env=env))
    await engine.start()
    return workflow


async def wait_for(instance: Any, status: str) -> dict[str, Any]:
    import asyncio

    for _ in range(500):
        current: dict[str, Any] = await instance.status()
        if current["status"] == status:
            return current
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {status}: {current}")


async def test_create_get_status_and_send_event(make_engine: Make) -> None:
    workflow = await started(make_engine, Approval)
    instance = await workflow.create({"id": "order-1", "params": {"n": 4}})
    assert instance.id == "order-1" and workflow.name == "approval"
    again = await workflow.get("order-1")
    await wait_for(again, "waiting")
    await again.send_event({"type": "approval", "payload": {"ok": True}})
    done = await wait_for(instance, "complete")
    assert done == {"status": "complete", "output": {"n": 4, "approved": {"ok": True}}, "error": None}
    generated = await workflow.create()
    assert len(generated.id) == 36
    by_keyword = await workflow.create(id="order-2", params={"n": 1})
    assert (await workflow.get("order-2")).id == by_keyword.id
    with pytest.raises(InstanceAlreadyExistsError):
        await workflow.create({"id": "order-1"})
    with pytest.raises(InstanceNotFoundError):
        await workflow.get("nope")


async def test_create_batch_skips_existing_ids_and_takes_camel_case(make_engine: Make) -> None:
    workflow = await started(make_engine, Approval)
    await workflow.create({"id": "a"})
    created = await workflow.createBatch([{"id": "a"}, {"id": "b", "params": {"n": 2}}, {"id": "c"}])
    assert [i.id for i in created] == ["b", "c"]
    await wait_for(created[0], "waiting")
    await created[0].sendEvent({"type": "approval", "payload": 1})
    assert (await wait_for(created[0], "complete"))["output"] == {"n": 2, "approved": 1}


async def test_cloudflare_only_create_options_do_not_fail(make_engine: Make) -> None:
    workflow = await started(make_engine, Approval)
    hinted = await workflow.create({"id": "h", "locationHint": "weur"})
    kept = await workflow.create({"id": "r", "retention": {"successRetention": "7 days", "errorRetention": 60_000}})
    assert [(await workflow.get(i.id)).id for i in (hinted, kept)] == ["h", "r"]
    store: Any = workflow._binding._engine.store  # type: ignore[attr-defined]
    rows = await store._read("SELECT success_retention, error_retention FROM {s}.instances WHERE id = 'r'")
    assert rows == [(7 * 86400.0, 60.0)]  # Cloudflare's camelCase keys, kept
    with pytest.raises(ValueError, match="unknown key"):
        await workflow.create({"id": "x", "colour": "red"})
    with pytest.raises(ValueError, match="successRetention|success_retention"):
        await workflow.create({"id": "y", "retention": {"successRetention": "soon"}})


async def test_delete_batch(make_engine: Make) -> None:
    workflow = await started(make_engine, Approval)
    await workflow.create({"id": "d"})
    result = await workflow.deleteBatch(["d", "gone"])
    assert result["deleted"] == [{"id": "d"}] and result["errors"][0]["code"] == 10400


async def test_pause_resume_terminate_restart(make_engine: Make) -> None:
    workflow = await started(make_engine, Approval)
    instance = await workflow.create({"id": "p", "params": {"n": 1}})
    await wait_for(instance, "waiting")
    await instance.pause()
    await wait_for(instance, "paused")
    await instance.resume()
    await wait_for(instance, "waiting")
    await instance.terminate()
    assert (await instance.status())["status"] == "terminated"
    await instance.restart()
    await wait_for(instance, "waiting")
    await instance.send_event({"type": "approval", "payload": "yes"})
    assert (await wait_for(instance, "complete"))["output"] == {"n": 1, "approved": "yes"}
    with pytest.raises(ValueError, match="send_event takes"):
        await instance.send_event("approval")  # type: ignore[arg-type]


def kv_env(tmp_path: Path) -> Env:
    cache = UnsupportedBinding(OtherBinding("CACHE", "KV namespace", "kv_namespaces"), "wrangler.toml")
    return Env({"CACHE": cache, "GREETING": "hi"}, "wrangler.toml")


def test_an_unsupported_binding_is_named_when_touched_not_before(tmp_path: Path) -> None:
    env = kv_env(tmp_path)
    cache = env.CACHE  # reaching it is fine (a module may keep it at import)
    assert env.GREETING == "hi"
    expected = "env.CACHE is a KV namespace binding (kv_namespaces in wrangler.toml), which perdure does not provide"
    for touch in (lambda: cache.get("k"), lambda: cache("x"), lambda: cache["k"]):
        with pytest.raises(UnsupportedBindingError) as caught:
            touch()
        assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    with pytest.raises(UnsupportedBindingError):
        cache.value = 1
    with pytest.raises(AttributeError, match="env has no binding or var 'DB': wrangler.toml declares CACHE, GREETING"):
        env.DB  # noqa: B018


async def test_a_step_touching_an_unsupported_binding_fails_without_retries(make_engine: Make, tmp_path: Path) -> None:
    attempts: list[int] = []

    class UsesKv(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("read cache")
            async def read(ctx: Any) -> Any:
                attempts.append(ctx["attempt"])
                return await self.env.CACHE.get("key")

            return await read()

    workflow = await started(make_engine, UsesKv, kv_env(tmp_path))
    instance = await workflow.create()
    status = await wait_for(instance, "errored")
    assert status["error"]["name"] == "UnsupportedBindingError"
    assert "env.CACHE is a KV namespace binding" in status["error"]["message"]
    assert attempts == [1]
