"""OpenTelemetry spans per run and per step attempt (optional dependency)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from perdure import Engine, WorkflowEntrypoint

trace = pytest.importorskip("opentelemetry.trace", reason="the otel extra is not installed")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")

EXPORTER = in_memory.InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(export.SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(tracer_provider)


async def test_spans_for_runs_and_attempts(make_engine: Callable[..., Engine]) -> None:
    class Flaky(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            @step.do("flaky", config={"retries": {"limit": 1, "delay": 10}})
            async def flaky(ctx: dict[str, Any]) -> int:
                if ctx["attempt"] == 1:
                    raise ConnectionError("first attempt fails")
                return ctx["attempt"]

            await step.sleep("suspend-once", 300)
            return await flaky()

    EXPORTER.clear()
    engine = make_engine(fast_wait=0.05)
    binding = engine.register(Flaky, name="traced")
    async with engine:
        instance = await binding.create(id="t1")
        assert (await instance.wait(5))["output"] == 2
    spans = EXPORTER.get_finished_spans()
    runs = [s for s in spans if s.name == "workflow traced"]
    attempts = [s for s in spans if s.name == "step flaky"]
    assert len(runs) == 2  # the first run suspended in the sleep; the second one finished
    assert all(s.status.status_code != trace.StatusCode.ERROR for s in runs)
    assert runs[0].attributes["perdure.instance_id"] == "t1"
    assert [s.attributes["perdure.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].status.status_code == trace.StatusCode.ERROR
    assert attempts[0].events[0].name == "exception"
    assert attempts[1].status.status_code != trace.StatusCode.ERROR
    assert all(a.parent is not None and a.parent.span_id == runs[1].context.span_id for a in attempts)
