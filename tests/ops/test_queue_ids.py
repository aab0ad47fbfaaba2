"""Queue message ids are never reused, so a consumer's default instance id (``<queue>-<id>``)
never names an instance an earlier message started (SQLite reused the id of a deleted row
before layout 5: a new message was then acked and no instance started)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from perdure import Engine, WorkflowEntrypoint
from perdure.store.migrations.sqlite import SCHEMA_VERSION
from perdure.triggers.queues import Queue, QueueConsumer, workflow_trigger


class Resize(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("resize", lambda: f"resized {event.payload['file']}")


async def _consume_one(engine: Engine, queue: Queue, body: dict[str, Any]) -> Any:
    """Send ``body``, let a consumer start its instance, and return that instance's output."""
    message_id = await queue.send({"params": body})
    async with QueueConsumer(queue, workflow_trigger(engine.binding("resize")), poll_interval=0.01):
        for _ in range(500):  # until the consumer acked it
            stats = await queue.stats()
            if stats["ready"] == 0 and stats["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
    instance = await engine.binding("resize").get(f"{queue.name}-{message_id}")
    return (await instance.wait(10))["output"]


async def test_an_acked_message_id_is_not_handed_out_again(db_url: str) -> None:
    engine = Engine(db_url, poll_interval=0.02)
    engine.register(Resize, name="resize")
    queue = Queue(engine, "images")
    async with engine:
        first = await queue.send({"file": "cat.png"})
        assert await queue.ack(await queue.receive(10)) == 1  # the queue is empty again
        second = await queue.send({"file": "owl.png"})
        assert int(second) > int(first)
        await queue.ack(await queue.receive(10))
        assert await _consume_one(engine, queue, {"file": "cat.png"}) == "resized cat.png"
        assert await _consume_one(engine, queue, {"file": "owl.png"}) == "resized owl.png"
    await engine.stop()


async def test_a_layout_4_file_keeps_counting_past_every_id_it_handed_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = Engine(url, poll_interval=0.02)
    engine.register(Resize, name="resize")
    queue = Queue(engine, "images")
    async with engine:
        for name in ("a.png", "b.png", "c.png"):
            await _consume_one(engine, queue, {"file": name})
    await engine.stop()
    # Make the file what Perdure 0.1 / layout 4 wrote: a messages table without AUTOINCREMENT.
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'perdure_queue_messages'").fetchone()
    conn.executescript(
        "BEGIN; DROP TABLE perdure_queue_messages;"
        + sql.replace(" AUTOINCREMENT", "")
        + "; DELETE FROM sqlite_sequence WHERE name = 'perdure_queue_messages';"
        " UPDATE perdure_meta SET value = '4' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()
    engine = Engine(url, poll_interval=0.02)
    engine.register(Resize, name="resize")
    queue = Queue(engine, "images")
    async with engine:
        assert await _consume_one(engine, queue, {"file": "d.png"}) == "resized d.png"  # not a.png's instance
        ids = sorted(i.id for i in (await (await engine.ensure_store()).list_instances("resize", limit=10)).items)
    await engine.stop()
    assert ids == ["images-1", "images-2", "images-3", "images-4"]
    conn = sqlite3.connect(tmp_path / "old.db")
    assert conn.execute("SELECT value FROM perdure_meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    conn.close()
