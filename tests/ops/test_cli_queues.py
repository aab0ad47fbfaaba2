"""`perdure queues`: depth, send, dead letters and redrive of the durable queues, with --db."""

from __future__ import annotations

from typing import Any

from perdure import Engine
from perdure.triggers.queues import Queue

from .test_cli import as_json, cli


async def test_queues_send_list_dead_redrive(engine: Engine, db_url: str) -> None:
    db = ("--db", db_url)
    await engine.ensure_store()
    empty = await cli("queues", "list", *db)
    assert empty.exit_code == 0 and "No queues" in empty.stdout
    assert as_json(await cli("--json", "queues", "list", *db)) == {"queues": []}

    sent = await cli("queues", "send", "jobs", '{"n": 1}', *db)
    assert sent.exit_code == 0 and 'sent to queue "jobs"' in sent.stdout
    later = as_json(await cli("queues", "send", "jobs", "[1, 2]", "--delay", "60", "--json", *db))
    assert later == {"queue": "jobs", "id": later["id"], "delay": 60.0} and later["id"].isdigit()
    text = await cli("queues", "list", *db)
    assert text.exit_code == 0, text.output
    for bit in ("Queue", "Ready", "Delayed", "In flight", "Dead", "jobs"):
        assert bit in text.stdout
    (row,) = as_json(await cli("queues", "list", "--json", *db))["queues"]
    assert {k: row[k] for k in ("name", "ready", "delayed", "in_flight", "dead")} == {
        "name": "jobs", "ready": 1, "delayed": 1, "in_flight": 0, "dead": 0,
    }  # fmt: skip
    assert isinstance(row["oldest_age"], float) and row["oldest_age"] >= 0

    queue = Queue(engine, "jobs")  # a consumer takes the ready message and gives up on it
    (message,) = await queue.receive(10)
    assert message.body == {"n": 1}
    listed: Any = as_json(await cli("queues", "list", "--json", *db))["queues"][0]
    assert (listed["ready"], listed["in_flight"]) == (0, 1)
    assert await queue.dead_letter(message, "poison pill") == "dead"

    dead = await cli("queues", "dead", "jobs", *db)
    assert dead.exit_code == 0, dead.output
    for bit in ("poison pill", '{"n": 1}', message.id):
        assert bit in dead.stdout
    letters = as_json(await cli("queues", "dead", "jobs", "--limit", "5", "--json", *db))
    assert letters["queue"] == "jobs"
    (letter,) = letters["dead_letters"]
    assert letter["message_id"] == message.id and letter["body"] == {"n": 1}
    assert letter["error"] == "poison pill" and letter["attempts"] == 1
    assert letter["failed_at"].endswith("Z")  # ISO 8601, like the other commands' timestamps
    row = as_json(await cli("queues", "list", "--json", *db))["queues"][0]
    assert (row["ready"], row["in_flight"], row["dead"]) == (0, 0, 1)

    redriven = await cli("queues", "redrive", "jobs", *db)
    assert redriven.exit_code == 0 and "Moved 1 dead letter(s)" in redriven.stdout
    row = as_json(await cli("queues", "list", "--json", *db))["queues"][0]
    assert (row["ready"], row["delayed"], row["dead"]) == (1, 1, 0)
    (again,) = await queue.receive(10)
    assert again.body == {"n": 1} and again.attempts == 1  # attempts start again
    assert as_json(await cli("queues", "redrive", "jobs", "--json", *db)) == {"queue": "jobs", "redriven": 0}

    # a queue never used reads as empty, not as an error
    assert as_json(await cli("queues", "dead", "nothing-here", "--json", *db)) == {
        "queue": "nothing-here", "dead_letters": [],
    }  # fmt: skip
    none = await cli("queues", "dead", "nothing-here", *db)
    assert none.exit_code == 0 and 'No dead letters in queue "nothing-here"' in none.stdout
    assert as_json(await cli("queues", "redrive", "nothing-here", "--json", *db))["redriven"] == 0
    assert [q["name"] for q in as_json(await cli("queues", "list", "--json", *db))["queues"]] == ["jobs"]


async def test_queues_bad_input(engine: Engine, db_url: str) -> None:
    db = ("--db", db_url)
    await engine.ensure_store()
    cases = [
        (("queues", "send", "jobs", "{not json", *db), "BODY_JSON is not valid JSON"),
        (("queues", "send", "jobs", "", *db), "BODY_JSON is empty"),
        (("queues", "send", "jobs", "NaN", *db), "not JSON-serialisable"),
        (("queues", "send", "jobs", "1", "--delay", "inf", *db), "--delay must be a finite number"),
        (("queues", "send", "jobs", "1", "--delay", "-1", *db), "not in the range"),
        (("queues", "send", "bad name!", "1", *db), "queue name 'bad name!' must be 1-64 characters"),
        (("queues", "send", *db, "--", "-dash", "1"), "queue name"),
        (("queues", "dead", "x" * 65, *db), "queue name"),
        (("queues", "redrive", "a/b", *db), "queue name"),
        (("queues", "dead", "jobs", "--limit", "0", *db), "not in the range"),
    ]
    for args, message in cases:
        result = await cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert as_json(await cli("queues", "list", "--json", *db)) == {"queues": []}  # nothing was sent


async def test_queues_need_db() -> None:
    for args in (
        ("queues", "list", "--url", "http://127.0.0.1:9"),
        ("--url", "http://127.0.0.1:9", "queues", "send", "jobs", "1"),
        ("queues", "dead", "jobs"),  # no --url either: the default server
        ("queues", "redrive", "jobs", "--json"),
    ):
        result = await cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "`perdure queues` needs --db" in result.stderr and "no queue endpoints" in result.stderr
