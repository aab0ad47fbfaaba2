"""Each modifier of ``introspect_workflow_instance`` (Cloudflare's ``cloudflare:test``), on both
backends, with a started engine whose clock stands still: without the modifier, the instance
would wait for a day (or an hour) that never comes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, InstanceNotFoundError, InvalidStateError
from perdure.modifiers import installed, sessions
from perdure.testing import IntrospectionError, ManualClock, introspect_workflow_instance
from tests.testing.workflows import CALLS, Flaky, OneStep, Pun, TwoSleeps

Make = Callable[..., Engine]


async def started(make_engine: Make, cls: Any, name: str = "wf") -> Any:
    engine = make_engine(clock=ManualClock())
    binding = engine.register(cls, name=name)
    await engine.start()
    return binding


async def steps_of(binding: Any, instance_id: str) -> dict[tuple[str, str, int], Any]:
    instance = await binding.get(instance_id)
    store = await binding._engine.ensure_store()
    return {s.key: s for s in await store.load_steps(instance.pk)}


async def test_the_issue_example_completes_with_every_modifier(make_engine: Make) -> None:
    publish = await started(make_engine, Pun, "publish")
    async with introspect_workflow_instance(publish, "pun-1") as instance:

        async def setup(m: Any) -> None:
            await m.disable_sleeps()
            await m.disable_retry_delays()
            await m.mock_step_result({"name": "create-pun-embedding"}, [0.1, 0.2])
            await m.mock_step_error({"name": "categorize-pun"}, RuntimeError("down"), times=2)
            await m.mock_event({"type": "approval", "payload": {"ok": True}})

        await instance.modify(setup)
        await publish.create(id="pun-1", params={"pun": "..."})
        assert await instance.wait_for_step_result({"name": "create-pun-embedding"}) == [0.1, 0.2]
        await instance.wait_for_status("complete")
        assert await instance.get_output() == {
            "embedding": [0.1, 0.2],
            "category": "wordplay",
            "approved": {"ok": True},
        }
    assert CALLS == ["categorize"]  # the embedding was mocked; categorize ran on its third attempt
    steps = await steps_of(publish, "pun-1")
    attempts = steps[("do", "categorize-pun", 1)].attempts
    assert [a["error"]["message"] if a["error"] else None for a in attempts] == ["down", "down", None]
    assert len(steps[("do", "create-pun-embedding", 1)].attempts) == 1  # a mocked attempt is recorded


async def test_disable_sleeps_for_all_or_for_one_selected_sleep(make_engine: Make) -> None:
    binding = await started(make_engine, TwoSleeps)
    async with introspect_workflow_instance(binding, "all") as everything:
        await everything.modify(lambda m: m.disable_sleeps())
        await binding.create(id="all")
        await everything.wait_for_status("complete")
    async with introspect_workflow_instance(binding, "second") as one:
        await one.modify(lambda m: m.disable_sleeps([{"name": "nap", "index": 2}]))
        await binding.create(id="second")
        await one.wait_for_status("waiting")  # the first nap still lasts its day
        assert ("sleep", "nap", 2) not in await steps_of(binding, "second")
        binding._engine.clock.advance(24 * 3600)
        await one.wait_for_status("complete")  # the second nap took no time


async def test_disable_retry_delays_for_all_or_for_one_step(make_engine: Make) -> None:
    binding = await started(make_engine, Flaky)
    async with introspect_workflow_instance(binding, "all") as instance:
        await instance.modify(lambda m: m.disable_retry_delays())
        await binding.create(id="all")
        await instance.wait_for_status("complete")
        assert await instance.get_output() == ["first", "second"]
    CALLS.clear()
    async with introspect_workflow_instance(binding, "one") as instance:
        await instance.modify(lambda m: m.disable_retry_delays([{"name": "first"}]))
        await binding.create(id="one")
        assert await instance.wait_for_step_result({"name": "first"}) == "first"
        await instance.wait_for_status("waiting")  # "second" waits its hour before attempt 2
        steps = await steps_of(binding, "one")
        assert steps[("do", "second", 1)].status == "retrying"
        for attempts in (1, 2):  # the hours pass; "second" was reached, so nothing is reported
            while len((await steps_of(binding, "one"))[("do", "second", 1)].attempts) < attempts:
                await asyncio.sleep(0.01)
            await instance.wait_for_status("waiting")
            binding._engine.clock.advance(3600)
        await instance.wait_for_status("complete")


async def test_mock_step_result_returns_the_value_without_running_the_step(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        await instance.modify(lambda m: m.mock_step_result({"name": "only"}, {"mocked": [1, 2]}))
        await binding.create(id="i")
        assert await instance.wait_for_step_result({"name": "only"}) == {"mocked": [1, 2]}
        await instance.wait_for_status("complete")
        assert await instance.get_output() == {"mocked": [1, 2]}
    assert CALLS == []


async def test_mock_step_error_on_every_attempt_errors_the_instance(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        await instance.modify(lambda m: m.mock_step_error({"name": "only"}, ValueError("broken")))
        await binding.create(id="i")
        with pytest.raises(ValueError, match="broken"):
            await instance.wait_for_step_result({"name": "only"})
        await instance.wait_for_status("errored")
        assert await instance.get_error() == {"name": "ValueError", "message": "broken"}
    assert CALLS == []
    assert len((await steps_of(binding, "i"))[("do", "only", 1)].attempts) == 3  # the retries ran


async def test_force_step_timeout_times_and_the_shared_attempt_counter(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:

        async def setup(m: Any) -> None:
            await m.mock_step_error({"name": "only"}, RuntimeError("first attempt"), times=1)
            await m.force_step_timeout({"name": "only"}, times=1)  # attempt 2, as on Cloudflare

        await instance.modify(setup)
        await binding.create(id="i")
        assert await instance.wait_for_step_result({"name": "only"}) == "real"
    attempts = (await steps_of(binding, "i"))[("do", "only", 1)].attempts
    assert [a["error"]["name"] if a["error"] else None for a in attempts] == [
        "RuntimeError",
        "WorkflowTimeoutError",
        None,
    ]
    assert CALLS == ["only"]


async def test_force_step_timeout_on_every_attempt(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        await instance.modify(lambda m: m.force_step_timeout({"name": "only"}))
        await binding.create(id="i")
        await instance.wait_for_status("errored")
        assert (await instance.get_error())["name"] == "WorkflowTimeoutError"
    assert CALLS == []


async def test_mock_event_answers_the_wait_and_force_event_timeout_times_it_out(make_engine: Make) -> None:
    binding = await started(make_engine, Pun)
    async with introspect_workflow_instance(binding, "answered") as instance:

        async def answered(m: Any) -> None:
            await m.disable_sleeps()
            await m.mock_event({"type": "approval", "payload": "yes"})

        await instance.modify(answered)
        await binding.create(id="answered")
        await instance.wait_for_status("complete")
        assert (await instance.get_output())["approved"] == "yes"
    async with introspect_workflow_instance(binding, "timed-out") as instance:

        async def timed_out(m: Any) -> None:
            await m.disable_sleeps()
            await m.force_event_timeout({"name": "wait-approval"})

        await instance.modify(timed_out)
        await binding.create(id="timed-out")
        await instance.wait_for_status("complete")  # the day-long timeout passed at once
        assert (await instance.get_output())["approved"] == "timed out"


async def test_a_modifier_the_instance_never_reaches_is_reported_when_the_block_ends(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    with pytest.raises(IntrospectionError, match=r"mock_step_result\(\{'name': 'typo', 'index': 1\}\)") as raised:
        async with introspect_workflow_instance(binding, "i") as instance:

            async def setup(m: Any) -> None:
                await m.mock_step_result({"name": "typo"}, 1)
                await m.mock_step_error({"name": "only", "index": 2}, RuntimeError("x"))
                await m.mock_event({"type": "never-awaited"})
                await m.force_step_timeout({"name": "only"}, times=1)  # reached: not reported

            await instance.modify(setup)
            await binding.create(id="i")
            await instance.wait_for_status("complete")
    message = str(raised.value)
    assert "mock_step_error({'name': 'only', 'index': 2})" in message
    assert "mock_event({'type': 'never-awaited'})" in message
    assert "force_step_timeout" not in message
    with pytest.raises(KeyError):  # the block's own error is not hidden by the report
        async with introspect_workflow_instance(binding, "j") as instance:
            await instance.modify(lambda m: m.mock_step_result({"name": "typo"}, 1))
            raise KeyError("the test failed first")


async def test_modifiers_leave_no_trace_once_the_block_ends(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        await instance.modify(lambda m: m.mock_step_result({"name": "only"}, "mocked"))
        assert installed() != {}
        await binding.create(id="i")
        await instance.wait_for_status("complete")
        assert await instance.get_output() == "mocked"
    assert installed() == {} and sessions() == {}
    handle = await binding.get("i")
    await handle.restart()  # the same instance again, after the block: the real step runs
    assert (await handle.wait(timeout=10))["output"] == "real"
    assert CALLS == ["only"]
    with pytest.raises(Exception, match="closed"):
        await instance.modify(lambda m: m.disable_sleeps())


async def test_wait_helpers_report_what_can_no_longer_happen(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        await instance.wait_for_status("queued")  # at once, as on Cloudflare
        with pytest.raises(InstanceNotFoundError):
            await instance.get_output()
        await binding.create(id="i")
        await instance.wait_for_status("complete")
        with pytest.raises(IntrospectionError, match="finite status"):
            await instance.wait_for_status("errored")
        with pytest.raises(IntrospectionError, match="never completed"):
            await instance.wait_for_step_result({"name": "only", "index": 2})
        with pytest.raises(InvalidStateError, match="cannot retrieve error"):
            await instance.get_error()
        with pytest.raises(TimeoutError, match="did not reach status 'paused'"):
            await instance.wait_for_status("paused", timeout=0.05)
    async with introspect_workflow_instance(binding, "e") as failing:
        await failing.modify(lambda m: m.mock_step_error({"name": "only"}, RuntimeError("no")))
        await binding.create(id="e")
        with pytest.raises(IntrospectionError, match="'errored'.*'complete'"):
            await failing.wait_for_status("complete")
        with pytest.raises(InvalidStateError, match="cannot retrieve output"):
            await failing.get_output()
