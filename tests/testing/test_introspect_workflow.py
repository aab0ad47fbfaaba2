"""``introspect_workflow``: modifiers for every instance a workflow creates while the block is open;
and the bad input every introspection refuses with an error naming the problem."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, InstanceAlreadyExistsError
from perdure.modifiers import installed, lookup, sessions
from perdure.testing import IntrospectionError, ManualClock, introspect_workflow, introspect_workflow_instance
from tests.testing.workflows import CALLS, OneStep, Pun

Make = Callable[..., Engine]


async def started(make_engine: Make, cls: Any, name: str = "wf") -> Any:
    engine = make_engine(clock=ManualClock())
    binding = engine.register(cls, name=name)
    await engine.start()
    return binding


async def test_every_instance_created_inside_the_block_is_modified_and_listed(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    before = await binding.create(id="before")
    assert (await before.wait(timeout=10))["output"] == "real"
    async with introspect_workflow(binding) as workflow:
        await workflow.modify_all(lambda m: m.mock_step_result({"name": "only"}, "mocked"))
        created = [await binding.create(id=f"new-{n}") for n in range(3)]
        listed = await workflow.get_instances()
        assert [i.id for i in listed] == ["new-0", "new-1", "new-2"]  # not "before"
        for instance in listed:
            await instance.wait_for_status("complete")
            assert await instance.get_output() == "mocked"
        assert {(await c.status())["output"] for c in created} == {"mocked"}
    assert CALLS == ["only"]  # only "before" ran the real step
    assert installed() == {} and sessions() == {}
    after = await binding.create(id="after")
    assert (await after.wait(timeout=10))["output"] == "real"


async def test_each_instance_gets_its_own_copy_of_counted_modifiers(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow(binding) as workflow:
        await workflow.modify(lambda m: m.mock_step_error({"name": "only"}, RuntimeError("once"), times=1))
        for n in range(2):
            await binding.create(id=f"i-{n}")
        for instance in await workflow.get_instances():
            assert await instance.wait_for_step_result({"name": "only"}) == "real"
    assert CALLS == ["only", "only"]  # each failed its own first attempt, then ran


async def test_a_workflow_modifier_no_instance_reached_is_reported(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    with pytest.raises(IntrospectionError, match=r"force_event_timeout\(\{'name': 'approval'"):
        async with introspect_workflow(binding) as workflow:
            await workflow.modify(lambda m: m.force_event_timeout({"name": "approval"}))
            instance = await binding.create(id="i")
            await instance.wait(timeout=10)
    with pytest.raises(IntrospectionError, match="0 instance"):  # nothing was even created
        async with introspect_workflow(binding) as workflow:
            await workflow.modify(lambda m: m.mock_step_result({"name": "only"}, 1))


async def test_one_open_workflow_introspection_per_workflow(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow(binding):
        with pytest.raises(ValueError, match="already has an open introspect_workflow"):
            async with introspect_workflow(binding):
                pass
    assert sessions() == {}


async def test_introspecting_an_instance_that_exists_is_an_error(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    await binding.create(id="taken")
    with pytest.raises(InstanceAlreadyExistsError, match="comes before create"):
        async with introspect_workflow_instance(binding, "taken"):
            pass
    assert installed() == {}


def test_without_any_introspection_the_engine_gets_no_modifiers() -> None:
    assert lookup("sqlite:///x.db", "wf", "i", 1) is None


async def test_a_run_sees_its_modifiers_and_others_see_none(make_engine: Make) -> None:
    binding = await started(make_engine, OneStep)
    url = binding._engine.url
    async with introspect_workflow_instance(binding, "mine"):
        assert lookup(url, "wf", "mine", 5) is not None
        assert lookup(url, "wf", "other", 6) is None
        assert lookup(url, "other-workflow", "mine", 7) is None


BAD_SELECTORS = [
    ("cool-down", "a step selector is a mapping"),
    ({"index": 1}, "has no 'name'"),
    ({"name": "a", "count": 1}, r"unknown key\(s\) \['count'\]"),
    ({"name": "a", "index": 0}, "'index'.*integer >= 1, got 0"),
    ({"name": "a", "index": "2"}, "'index'.*got '2'"),
    ({"name": "a", "index": True}, "'index'.*got True"),
    ({"name": ""}, "step name"),
]


@pytest.mark.parametrize(("selector", "says"), BAD_SELECTORS)
async def test_a_bad_step_selector_is_a_value_error(make_engine: Make, selector: Any, says: str) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        for call in (
            lambda m: m.mock_step_result(selector, 1),
            lambda m: m.mock_step_error(selector, RuntimeError()),
            lambda m: m.force_step_timeout(selector),
            lambda m: m.force_event_timeout(selector),
            lambda m: m.disable_sleeps([selector]),
            lambda m: m.disable_retry_delays([selector]),
        ):
            with pytest.raises(ValueError, match=says):
                await instance.modify(call)
        with pytest.raises(ValueError, match=says):
            await instance.wait_for_step_result(selector)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda m: m.mock_step_error({"name": "a"}, RuntimeError(), times=-1), "times must be >= 1.*got -1"),
        (lambda m: m.mock_step_error({"name": "a"}, RuntimeError(), times=0), "times must be >= 1"),
        (lambda m: m.force_step_timeout({"name": "a"}, times=1.5), "times is an integer"),
        (lambda m: m.force_step_timeout({"name": "a"}, times=True), "times is an integer"),
        (lambda m: m.mock_step_error({"name": "a"}, "down"), "exception instance"),
        (lambda m: m.mock_event({"payload": 1}), "has no 'type'"),
        (lambda m: m.mock_event({"type": "a", "body": 1}), r"unknown key\(s\) \['body'\]"),
        (lambda m: m.mock_event("approval"), "an event is a mapping"),
        (lambda m: m.mock_event({"type": "a", "payload": {1, 2}}), "mock_event payload"),
        (lambda m: m.mock_step_result({"name": "a"}, object()), "mock_step_result 'a' result"),
        (lambda m: m.disable_sleeps([]), "empty list"),
        (lambda m: m.disable_retry_delays({"name": "a"}), "list of step selectors"),
    ],
)
async def test_bad_modifier_input_is_a_value_error(make_engine: Make, call: Any, says: str) -> None:
    binding = await started(make_engine, OneStep)
    async with introspect_workflow_instance(binding, "i") as instance:
        with pytest.raises(ValueError, match=says):
            await instance.modify(call)
    async with introspect_workflow(binding) as workflow:
        with pytest.raises(ValueError, match=says):
            await workflow.modify(call)


async def test_conflicting_mocks_and_bad_waits_are_value_errors(make_engine: Make) -> None:
    binding = await started(make_engine, Pun)
    # the mocked step "a" is never reached (Pun has no such step): reported when the block ends
    with pytest.raises(IntrospectionError, match="mock_step_result\\(\\{'name': 'a'"):
        async with introspect_workflow_instance(binding, "i") as instance:
            await instance.modify(lambda m: m.mock_step_result({"name": "a"}, 1))
            with pytest.raises(ValueError, match="mocked twice"):
                await instance.modify(lambda m: m.mock_step_result({"name": "a"}, 2))
            with pytest.raises(ValueError, match="already has a mocked result"):
                await instance.modify(lambda m: m.mock_step_error({"name": "a"}, RuntimeError()))
            with pytest.raises(ValueError, match="already has a mocked result"):
                await instance.modify(lambda m: m.force_step_timeout({"name": "a"}))
            with pytest.raises(ValueError, match="unknown status 'done'"):
                await instance.wait_for_status("done")
            with pytest.raises(ValueError, match="timeout is a number"):
                await instance.wait_for_status("complete", timeout=0)
            with pytest.raises(ValueError, match="instance id"):
                introspect_workflow_instance(binding, "not an id!")
            with pytest.raises(ValueError, match="workflow binding"):
                introspect_workflow("wf")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="modify"):
                await instance.modify("disable_sleeps")  # type: ignore[arg-type]
