"""/metrics: instance gauges, step counters and histograms derived from the store, queue depth."""

from __future__ import annotations

import re

import httpx

from perdure import Engine
from perdure.triggers.queues import Queue

from .conftest import wait_status


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return None


async def test_metrics_exposition(engine: Engine, client: httpx.AsyncClient) -> None:
    first = await client.get("/metrics")  # the collector starts tailing the history here
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    await client.post("/api/workflows/hello/instances", json={"id": "queued-one"})
    text = (await client.get("/metrics")).text
    assert sample(text, "perdure_instances", workflow="hello", status="queued") == 1
    assert sample(text, "perdure_instance_queue_depth", workflow="hello") == 1
    age = sample(text, "perdure_oldest_queued_instance_age_seconds", workflow="hello")
    assert age is not None and age >= 0
    assert sample(text, "perdure_instances_created_total", workflow="hello") == 1

    await client.post("/api/workflows/flaky/instances", json={"id": "f"})
    await client.post("/api/workflows/fails/instances", json={"id": "x"})
    async with engine:
        await wait_status(client, "flaky", "f", "complete")
        await wait_status(client, "fails", "x", "errored")
        await wait_status(client, "hello", "queued-one", "complete")
        text = (await client.get("/metrics")).text
    assert sample(text, "perdure_instances", workflow="flaky", status="complete") == 1, text
    assert sample(text, "perdure_step_attempts_total", workflow="flaky", step="flaky-call") == 2
    assert sample(text, "perdure_step_attempt_failures_total", workflow="flaky", step="flaky-call") == 1
    assert sample(text, "perdure_step_successes_total", workflow="flaky", step="flaky-call") == 1
    assert sample(text, "perdure_step_failures_total", workflow="fails", step="explode") == 1
    assert sample(text, "perdure_step_attempt_duration_seconds_count", workflow="flaky", step="flaky-call") == 2
    assert sample(text, "perdure_step_duration_seconds_count", workflow="flaky", step="finish") == 1
    assert sample(text, "perdure_instances_finished_total", workflow="fails", status="errored") == 1
    assert sample(text, "perdure_instance_duration_seconds_count", workflow="flaky", status="complete") == 1
    assert sample(text, "perdure_instance_queue_delay_seconds_count", workflow="hello") == 1
    assert sample(text, "perdure_timer_lateness_seconds_count", workflow="flaky", kind="sleep") == 1
    assert sample(text, "perdure_timer_lateness_seconds_count", workflow="flaky", kind="retry") == 1
    assert sample(text, "perdure_timer_overdue_seconds") == 0
    # a second scrape counts nothing twice
    again = (await client.get("/metrics")).text
    assert sample(again, "perdure_step_attempts_total", workflow="flaky", step="flaky-call") == 2

    queue = Queue(engine, "orders")
    await queue.send({"n": 1})
    await queue.send({"n": 2}, delay=60)
    text = (await client.get("/metrics")).text
    assert sample(text, "perdure_queue_messages", queue="orders", state="ready") == 1
    assert sample(text, "perdure_queue_messages", queue="orders", state="delayed") == 1
    assert sample(text, "perdure_queue_messages", queue="orders", state="dead") == 0
