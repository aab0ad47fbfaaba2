"""Databases written by Perdure 0.1 open, upgrade in place and keep everything.

The fixtures in ``tests/data/upgrade`` were made by the 0.1 code (commit 7436349, before the
queue tables joined the schemas) with ``tests/data/upgrade/make_fixtures.py``: instances in
every status with their steps, a buffered event, queue messages ready, delayed and in flight,
and a dead letter; ``manifest.json`` lists what they hold, read with plain SQL at the time.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from perdure.store import Store, open_store
from perdure.store.migrations.sqlite import SCHEMA_VERSION
from tests.pg import drop_schema, new_schema_name, require_server, server_url, with_params

DATA = Path(__file__).resolve().parent.parent / "data" / "upgrade"
MANIFEST: dict[str, Any] = json.loads((DATA / "manifest.json").read_text())
FAR_FUTURE = 4_000_000_000.0  # every delay and lease of the fixtures has run out by then


async def check_everything_kept(store: Store, made: dict[str, Any]) -> None:
    assert await store.count_by_status() == made["count_by_status"]
    for expected in made["instances"]:
        record = await store.get_instance(expected["workflow"], expected["id"])
        assert record is not None, expected["id"]
        assert (record.status, record.params, record.output) == (
            expected["status"],
            expected["params"],
            expected["output"],
        )
        steps = [[s.kind, s.name, s.count, s.status, s.result] for s in await store.load_steps(record.pk)]
        assert steps == expected["steps"], expected["id"]

    messages = made["queue_messages"]
    start = min(m["created_at"] for m in messages)
    depths = await store.queue_depths(start)  # just after they were sent: nothing delayed is due
    for queue in {m["queue"] for m in messages}:
        mine = [m for m in messages if m["queue"] == queue]
        depth = depths[queue]
        assert depth.ready + depth.delayed + depth.in_flight == len(mine)
        assert depth.in_flight == sum(1 for m in mine if m["leased"])
        assert depth.dead == sum(1 for d in made["dead_letters"] if d["queue"] == queue)
        assert depth.oldest_created_at == pytest.approx(min(m["created_at"] for m in mine))

    dead = await store.queue_dead_letters("mail", 10)
    assert [(d.message_id, d.body, d.attempts, d.error) for d in dead] == [
        (d["message_id"], d["body"], d["attempts"], d["error"]) for d in made["dead_letters"] if d["queue"] == "mail"
    ]
    # Once every delay and lease ran out, each message is delivered, with its id, body and count.
    received = await store.queue_receive("jobs", 100, FAR_FUTURE, visibility_timeout=30, max_attempts=5, lease="t")
    jobs = sorted((m for m in messages if m["queue"] == "jobs"), key=lambda m: m["id"])
    assert [(m.id, m.body, m.attempts) for m in received] == [(m["id"], m["body"], m["attempts"] + 1) for m in jobs]
    assert await store.queue_ack([(m.id, m.lease) for m in received]) == len(jobs)
    # New messages continue the ids (PostgreSQL's sequence came along), and dead letters redrive.
    (new_id,) = await store.queue_send("jobs", ['{"after":"upgrade"}'], FAR_FUTURE, 0.0)
    assert new_id > max(m["id"] for m in messages)
    assert await store.queue_redrive("mail", FAR_FUTURE) == 1
    assert (await store.queue_depths(FAR_FUTURE, "mail"))["mail"].ready == 2


async def test_a_perdure_0_1_sqlite_file_upgrades_in_place(tmp_path: Path) -> None:
    made = MANIFEST["sqlite"]
    path = tmp_path / "old.db"
    shutil.copy(DATA / "sqlite-layout3.db", path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT value FROM perdure_meta WHERE key = 'schema_version'").fetchone() == ("3",)
    store = open_store(f"sqlite:///{path}")
    try:
        await store.open()
        with sqlite3.connect(path) as raw:
            (version,) = raw.execute("SELECT value FROM perdure_meta WHERE key = 'schema_version'").fetchone()
        assert version == str(SCHEMA_VERSION) == "7"
        await check_everything_kept(store, made)
        with sqlite3.connect(path) as raw:  # layout 5: ids of acked messages are never handed out again
            (handed_out,) = raw.execute(
                "SELECT MAX(n) FROM (SELECT MAX(id) AS n FROM perdure_queue_messages"
                " UNION SELECT MAX(message_id) FROM perdure_queue_dead)"
            ).fetchone()
        (new_id,) = await store.queue_send("upgrade-check", ["{}"], 0.0, 0.0)
        assert new_id > handed_out
        with sqlite3.connect(path) as raw:  # layout 6: columns added in place, with their index
            columns = {row[1] for row in raw.execute("PRAGMA table_info(instances)")}
            assert {"terminating", "success_retention", "error_retention", "expires_at"} <= columns
            names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
            assert {"ix_instances_expires", "perdure_subscriptions"} <= names
            # layout 7: flow control's columns, indexes and rate-limit slots
            assert {"concurrency_key", "priority"} <= columns
            assert {"ix_instances_queued", "ix_instances_keys", "perdure_rate_slots", "perdure_key_turns"} <= names
            record = await store.get_by_pk(1)
            assert record is not None and record.priority == 0 and record.concurrency_key is None
    finally:
        await store.close()


async def test_a_perdure_0_1_postgresql_schema_upgrades_in_place() -> None:
    require_server()
    import psycopg

    from perdure.store.migrations.postgres import LATEST

    made = MANIFEST["postgresql"]
    assert [m["version"] for m in made["schema_migrations"]] == [1, 2, 3, 4]
    schema = new_schema_name()
    dump = (DATA / "postgres-migration4.sql").read_text().replace(made["schema"], schema)
    try:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(dump.encode())  # no parameters: the whole script in one simple query
        store = open_store(with_params(server_url(), schema=schema))
        try:
            await store.open()
            with psycopg.connect(server_url(), autocommit=True) as conn:
                rows = conn.execute(f'SELECT version FROM "{schema}".schema_migrations ORDER BY 1').fetchall()
            assert [r[0] for r in rows] == list(range(1, LATEST + 1)) and LATEST == 8
            await check_everything_kept(store, made)
        finally:
            await store.close()
    finally:
        drop_schema(schema)
