"""Durable queues in the engine's database, the workflow trigger, and the Redis Streams consumer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from perdure import Engine
from perdure.triggers.queues import Message, Queue, QueueConsumer, workflow_trigger


class FakeClock:
    """Time that moves only when told (the queue reads engine.clock)."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        # The engine races each step against clock.sleep(timeout): returning at once here made
        # a step that took more than one loop turn (a pool thread) time out now and then.
        await asyncio.sleep(seconds)


@pytest.fixture
def clock(engine: Engine) -> FakeClock:
    fake = FakeClock()
    engine.clock = fake
    return fake


async def test_send_receive_ack(engine: Engine, clock: FakeClock) -> None:
    queue = Queue(engine, "jobs", visibility_timeout=30)
    ids = [await queue.send({"n": i}) for i in range(5)]
    batch = await queue.receive(3)
    assert [m.body for m in batch] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m.id for m in batch] == ids[:3] and all(m.attempts == 1 for m in batch)
    assert await queue.ack(batch) == 3
    rest = await queue.receive(10)
    assert [m.body["n"] for m in rest] == [3, 4]
    assert await queue.receive(10) == []  # leased
    stats = await queue.stats()
    assert stats["in_flight"] == 2 and stats["ready"] == 0
    clock.t += 31  # the consumer "died": the lease runs out and the messages come back
    again = await queue.receive(10)
    assert [m.attempts for m in again] == [2, 2]
    assert await queue.ack(rest) == 0  # the stale lease cannot ack any more
    assert await queue.ack(again) == 2
    assert (await queue.stats())["ready"] == 0


async def test_delay_retry_backoff_and_dead_letter(engine: Engine, clock: FakeClock) -> None:
    queue = Queue(engine, "retry", max_attempts=3, retry_delay=10, backoff="exponential")
    await queue.send("later", delay=5)
    assert await queue.receive() == []
    clock.t += 5
    (message,) = await queue.receive()
    assert await queue.retry(message, error="boom") == "retry"  # wait 10 s
    clock.t += 9
    assert await queue.receive() == []
    clock.t += 1
    (message,) = await queue.receive()
    assert message.attempts == 2
    assert await queue.retry(message, error="boom again") == "retry"  # wait 20 s
    clock.t += 20
    (message,) = await queue.receive()
    assert message.attempts == 3
    assert await queue.retry(message, error="third time") == "dead"
    assert await queue.receive() == []
    (dead,) = await queue.dead_letters()
    assert dead["body"] == "later" and dead["attempts"] == 3 and dead["error"] == "third time"
    assert (await queue.stats())["dead"] == 1
    assert await queue.redrive() == 1
    (message,) = await queue.receive()
    assert message.body == "later" and message.attempts == 1


async def test_expired_leases_dead_letter_after_max_attempts(engine: Engine, clock: FakeClock) -> None:
    queue = Queue(engine, "crashy", max_attempts=2, visibility_timeout=10)
    await queue.send({"x": 1})
    for _ in range(2):
        assert len(await queue.receive()) == 1
        clock.t += 11
    assert await queue.receive() == []
    (dead,) = await queue.dead_letters()
    assert "lease ran out" in dead["error"]


async def test_input_validation(engine: Engine) -> None:
    with pytest.raises(ValueError):
        Queue(engine, "bad name")
    with pytest.raises(ValueError):
        Queue(engine, "q", max_attempts=0)
    queue = Queue(engine, "q")
    with pytest.raises(ValueError):
        await queue.send(object())
    with pytest.raises(ValueError):
        await queue.send("x" * (1024 * 1024 + 1))
    with pytest.raises(ValueError):
        await queue.receive(0)


async def test_consumer_starts_instances_idempotently(engine: Engine, clock: FakeClock) -> None:
    queue = Queue(engine, "greetings", max_attempts=2)
    await queue.send_batch([{"name": "Ada"}, {"id": "explicit", "params": {"name": "Bob"}}, {"id": "bad id!"}])
    consumer = QueueConsumer(queue, workflow_trigger(engine.binding("hello")), batch_size=10)
    assert await consumer.run_once() == 3
    page = await (await engine.ensure_store()).list_instances("hello")
    by_id = {r.id: r for r in page.items}
    assert set(by_id) == {"greetings-1", "explicit"}
    assert by_id["greetings-1"].params == {"name": "Ada"} and by_id["greetings-1"].trigger == "queue"
    (dead,) = await queue.dead_letters()
    assert "invalid instance" in dead["error"]
    # a redelivered message does not start a second instance
    await queue.send({"id": "explicit", "params": {"name": "again"}})
    assert await consumer.run_once() == 1
    assert (await engine.binding("hello").get("explicit")).id == "explicit"
    assert len((await (await engine.ensure_store()).list_instances("hello")).items) == 2
    async with engine:
        assert (await (await engine.binding("hello").get("greetings-1")).wait(10))["output"] == "hello Ada"


async def test_handler_failure_retries_the_batch(engine: Engine, clock: FakeClock) -> None:
    queue = Queue(engine, "flaky", retry_delay=0)
    await queue.send_batch([1, 2])
    calls: list[list[Any]] = []

    async def handler(messages: list[Message]) -> None:
        calls.append([m.body for m in messages])
        if len(calls) == 1:
            raise RuntimeError("downstream is down")
        messages[0].retry(delay=100)

    consumer = QueueConsumer(queue, handler)
    assert await consumer.run_once() == 2
    assert await consumer.run_once() == 2
    assert calls == [[1, 2], [1, 2]]
    assert (await queue.stats()) | {"oldest_age": None} == {
        "ready": 0, "delayed": 1, "in_flight": 0, "dead": 0, "oldest_age": None,
    }  # fmt: skip


# -- Redis Streams ----------------------------------------------------------------------------------
@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    import os

    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = aioredis.from_url(os.environ.get("PERDURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at 127.0.0.1:6379: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis: Any) -> AsyncIterator[str]:
    key = f"perdure-test-{uuid.uuid4().hex}"
    yield key
    await redis.delete(key, f"{key}:dead")


async def test_redis_stream_starts_instances(engine: Engine, redis: Any, stream: str) -> None:
    import json

    from perdure.triggers.redis_streams import RedisStreamConsumer

    first = await redis.xadd(stream, {"body": json.dumps({"name": "Ada"})})
    await redis.xadd(stream, {"body": json.dumps({"id": "from-redis", "params": {"name": "Bob"}})})
    await redis.xadd(stream, {"name": "fields-as-params"})
    consumer = RedisStreamConsumer(redis, stream, workflow_trigger(engine.binding("hello")), consumer="c1", block_ms=10)
    assert await consumer.run_once() == 3
    assert await consumer.run_once() == 0
    expected_id = f"{stream}-{first.decode()}"
    instance = await engine.binding("hello").get(expected_id)
    assert (await instance.record()).params == {"name": "Ada"}
    assert (await (await engine.binding("hello").get("from-redis")).record()).params == {"name": "Bob"}
    pending = await redis.xpending(stream, "perdure")
    assert pending["pending"] == 0  # everything acknowledged


async def test_redis_reclaims_and_dead_letters(engine: Engine, redis: Any, stream: str) -> None:
    import json

    from perdure.triggers.redis_streams import RedisStreamConsumer

    attempts: list[str] = []

    async def broken(messages: list[Message]) -> None:
        attempts.extend(m.id for m in messages)
        raise RuntimeError("cannot reach the database")

    await redis.xadd(stream, {"body": json.dumps({"name": "Cy"})})
    dying = RedisStreamConsumer(redis, stream, broken, consumer="dying", block_ms=10, claim_idle_ms=0, max_deliveries=2)
    assert await dying.run_once() == 1  # read, handler fails: stays pending
    assert await dying.run_once() == 1  # re-claimed (delivery 2), fails again
    assert await dying.run_once() == 0  # delivery 3 > max_deliveries: dead-lettered
    assert len(attempts) == 2
    (dead,) = await redis.xrange(f"{stream}:dead")
    fields = {k.decode(): v.decode() for k, v in dead[1].items()}
    assert json.loads(fields["body"]) == {"name": "Cy"} and fields["deliveries"] == "3"
    assert (await redis.xpending(stream, "perdure"))["pending"] == 0

    # another consumer takes over what a crashed one left pending
    await redis.xadd(stream, {"body": json.dumps({"id": "taken-over"})})
    crashed = RedisStreamConsumer(redis, stream, broken, consumer="crashed", block_ms=10, claim_idle_ms=60_000)
    assert await crashed.run_once() == 1
    healthy = RedisStreamConsumer(
        redis, stream, workflow_trigger(engine.binding("hello")), consumer="healthy", block_ms=10, claim_idle_ms=0
    )
    assert await healthy.run_once() == 1
    assert (await engine.binding("hello").get("taken-over")).id == "taken-over"
    assert (await redis.xpending(stream, "perdure"))["pending"] == 0
