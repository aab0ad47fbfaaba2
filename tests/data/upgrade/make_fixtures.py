"""Make the "older database" fixtures of this folder with Perdure 0.1 (commit 7436349).

The fixtures are databases written by the released code, so that a test of a newer Perdure can
open them, upgrade them in place and check that no queue message, instance or step was lost:

* ``sqlite-layout3.db``: one self-contained SQLite file (WAL checkpointed, vacuumed), layout 3
  (``perdure_meta.schema_version``);
* ``postgres-migration4.sql``: a plain-SQL ``pg_dump --inserts`` of the PostgreSQL schema
  ``perdure_upgrade_fixture`` (migrations 1-4); restore it under another name by replacing
  every ``perdure_upgrade_fixture`` in the text and running it through ``psql -v ON_ERROR_STOP=1``;
* ``manifest.json``: what both hold, read back with plain SQL after the engine stopped.

It must be run with the 0.1 code at commit 7436349 on ``PYTHONPATH``, not with the code of the
checkout it lives in (it refuses to run when the store layouts are not SQLite 3 / PostgreSQL 4)::

    git -C /work/main worktree add --detach /tmp/perdure-base 7436349
    cd /tmp/perdure-base
    PYTHONPATH=/tmp/perdure-base /work/main/.venv/bin/python /work/main/tests/data/upgrade/make_fixtures.py
    git -C /work/main worktree remove --force /tmp/perdure-base

PostgreSQL comes from ``--pg-url`` (default ``$PERDURE_TEST_PG_URL`` or
``postgresql://postgres@127.0.0.1:5432/test``); ``pg_dump`` and ``psql`` must be on ``PATH``. The
schema ``perdure_upgrade_fixture`` is dropped before and after the run.
"""

# The imports are sorted for the 0.1 tree this runs against; in a newer tree some of these modules moved
# (perdure.queues is perdure/triggers/queues.py there), so ruff would classify them differently.
# ruff: noqa: I001

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import perdure
from perdure import Engine, NonRetryableError, WorkflowEntrypoint

BASE_COMMIT = "7436349"
try:  # modules of the 0.1 layout
    from perdure.binding import Instance
    from perdure.queues import Database, Queue
    from perdure.store.migrations.postgres import LATEST as PG_LATEST
    from perdure.store.sqlite import SCHEMA_VERSION as SQLITE_LAYOUT
except ImportError as exc:
    sys.exit(
        f"{exc} (perdure from {perdure.__file__}): run this with the 0.1 code (commit {BASE_COMMIT})"
        " on PYTHONPATH, see the module docstring"
    )
SCHEMA = "perdure_upgrade_fixture"
HERE = Path(__file__).resolve().parent
DEFAULT_PG_URL = os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ORDERS_CRON = "0 0 1 1 *"  # once a year: it never fires while the fixture is made
VISIBILITY = 365 * 86400.0  # the in-flight message stays leased for a year
SETTLE_TIMEOUT = 30.0

Rows = list[tuple[Any, ...]]
Query = Callable[[str, Sequence[Any]], Rows]


# -- the workflows ----------------------------------------------------------------------------
class Orders(WorkflowEntrypoint):
    """``params["mode"]``: ``complete`` (3 steps), ``decline`` (errors), ``cool-down`` (sleeps an
    hour) or ``approval`` (waits for an ``approval`` event)."""

    async def run(self, event: Any, step: Any) -> Any:
        order = int(event.payload["order"])
        mode = str(event.payload["mode"])

        async def validate() -> dict[str, Any]:
            return {"order": order, "valid": True, "items": [{"sku": f"SKU-{order}", "qty": order}]}

        checked = await step.do("validate", validate)
        if mode == "cool-down":
            await step.sleep("cool-down", "1 hour")
        if mode == "approval":
            await step.wait_for_event("approval", "approval", timeout="30 days")

        async def charge() -> float:
            if mode == "decline":
                raise NonRetryableError(f"card declined for order {order}")
            return round(order * 12.5 + 0.25, 2)

        amount = await step.do("charge", charge, config={"retries": {"limit": 0}})

        async def ship() -> str:
            return f"tracking-{order:04d}-Ünïcødé-✈"

        tracking = await step.do("ship", ship)
        return {"order": order, "amount": amount, "tracking": tracking, "items": checked["items"]}


class Greet(WorkflowEntrypoint):
    """Composes a greeting, then waits for a ``go`` event (left paused or terminated)."""

    async def run(self, event: Any, step: Any) -> Any:
        name = str(event.payload["name"])

        async def compose() -> str:
            return f"Hallo, {name}!"

        greeting = await step.do("compose", compose)
        go = await step.wait_for_event("go-ahead", "go", timeout="30 days")
        return {"greeting": greeting, "go": go["payload"]}


class Report(WorkflowEntrypoint):
    """Registered only on a client engine that never starts: its instances stay queued."""

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("render", lambda: {"pages": 1})


# -- making the data ---------------------------------------------------------------------------
async def settle(expected: dict[str, tuple[Instance, str]]) -> None:
    """Wait until every instance has its expected status."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        statuses = {key: (await instance.status())["status"] for key, (instance, _) in expected.items()}
        if all(statuses[key] == want for key, (_, want) in expected.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"instances did not settle: {statuses}")
        await asyncio.sleep(0.05)


async def populate(url: str) -> dict[str, dict[str, int]]:
    """Leave instances in every lasting state and messages in two queues; return count_by_status."""
    engine = Engine(url)
    orders = engine.register(Orders, name="orders", schedules=[ORDERS_CRON])
    greet = engine.register(Greet, name="greet")
    client = Engine(url)  # never started: a client, so nothing runs its workflow's instances
    reports = client.register(Report, name="report")
    async with engine:
        done = await orders.create_batch(
            [
                {"id": "order-1", "params": {"order": 1, "mode": "complete"}},
                {"id": "order-2", "params": {"order": 2, "mode": "complete", "note": "Grüße 🚀"}},
            ]
        )
        declined = await orders.create(id="order-declined", params={"order": 3, "mode": "decline"})
        cooling = await orders.create({"id": "order-cooling", "params": {"order": 4, "mode": "cool-down"}})
        approval = await orders.create(id="order-approval", params={"order": 5, "mode": "approval"})
        paused = await greet.create(id="greet-paused", params={"name": "Zoë"})
        terminated = await greet.create(id="greet-terminated", params={"name": "Renée"})
        queued = await reports.create_batch(
            [{"id": "report-1", "params": {"month": "2025-01"}}, {"id": "report-2", "params": {"month": "2025-02"}}]
        )
        assert len(done) == 2 and len(queued) == 2
        await settle(
            {
                "order-1": (done[0], "complete"),
                "order-2": (done[1], "complete"),
                "order-declined": (declined, "errored"),
                "order-cooling": (cooling, "waiting"),
                "order-approval": (approval, "waiting"),
                "greet-paused": (paused, "waiting"),
                "greet-terminated": (terminated, "waiting"),
            }
        )
        # an event of a type nobody waits for: it stays buffered
        await approval.send_event(type="gift-note", payload={"note": "Alles Gute! 🎁", "from": ["Åsa", "Jürgen"]})
        await paused.pause()
        await terminated.terminate()
        await settle(
            {
                "order-approval": (approval, "waiting"),
                "greet-paused": (paused, "paused"),
                "greet-terminated": (terminated, "terminated"),
                "report-1": (queued[0], "queued"),
                "report-2": (queued[1], "queued"),
            }
        )

        jobs = Queue(engine, "jobs", visibility_timeout=VISIBILITY)
        await jobs.send({"job": "in-flight", "attempt": "first", "payload": {"a": [1, 2, {"b": None}]}})
        leased = await jobs.receive(1)
        assert len(leased) == 1 and leased[0].body["job"] == "in-flight", leased
        await jobs.send_batch(
            [
                {"job": "resize", "image": {"id": 7, "sizes": [64, 128, 256]}, "tags": ["thumb", "web"]},
                "Grüße aus Köln — 東京 — مرحبا 🚀",
                [1, 2.5, None, True, {"deep": {"deeper": {"deepest": "ünïcødé"}}}],
            ]
        )
        await jobs.send({"job": "later", "at": "in an hour"}, delay=3600)
        mail = Queue(engine, "mail", max_attempts=1)
        await mail.send_batch([{"to": "bounce@example.com", "subject": "Ça va?"}, {"to": "ok@example.com", "n": 2}])
        bounced = await mail.receive(1)
        assert len(bounced) == 1 and bounced[0].body["to"] == "bounce@example.com", bounced
        assert await mail.dead_letter(bounced[0], "550 5.1.1 mailbox unavailable") == "dead"
        stats = {"jobs": await jobs.stats(), "mail": await mail.stats()}
        for name, want in (("jobs", (3, 1, 1, 0)), ("mail", (1, 0, 0, 1))):
            got = tuple(stats[name][k] for k in ("ready", "delayed", "in_flight", "dead"))
            assert got == want, (name, stats[name])
        await Database.release(engine)  # the queues' own connection on PostgreSQL
        counts = await engine.store.count_by_status(None)
    await client.stop()  # closes the client's store
    return counts


# -- reading it back with plain SQL ------------------------------------------------------------
def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def read_back(query: Query) -> dict[str, Any]:
    instances = []
    for pk, workflow, instance_id, status, params, output, error in query(
        "SELECT pk, workflow, id, status, params, output, error FROM instances ORDER BY pk", ()
    ):
        steps = query("SELECT kind, name, count, status, result FROM steps WHERE instance_pk = ? ORDER BY seq", (pk,))
        events = query(
            "SELECT type, payload, consumed_by IS NOT NULL FROM events WHERE instance_pk = ? ORDER BY pk", (pk,)
        )
        instances.append(
            {
                "workflow": workflow,
                "id": instance_id,
                "status": status,
                "params": _json(params),
                "output": _json(output),
                "error": _json(error),
                "steps": [[kind, name, count, st, _json(result)] for kind, name, count, st, result in steps],
                "events": [{"type": t, "payload": _json(p), "consumed": bool(c)} for t, p, c in events],
            }
        )
    messages = [
        {
            "queue": queue,
            "id": int(message_id),
            "body": _json(body),
            "attempts": attempts,
            "visible_at": visible_at,
            "leased": lease is not None,
            "created_at": created_at,
        }
        for queue, message_id, body, attempts, visible_at, lease, created_at in query(
            "SELECT queue, id, body, attempts, visible_at, lease, created_at FROM perdure_queue_messages ORDER BY id",
            (),
        )
    ]
    dead = [
        {"queue": queue, "message_id": int(message_id), "body": _json(body), "attempts": attempts, "error": error}
        for queue, message_id, body, attempts, error in query(
            "SELECT queue, message_id, body, attempts, error FROM perdure_queue_dead ORDER BY id", ()
        )
    ]
    workflows = [
        {"name": name, "class_name": class_name, "schedules": _json(schedules)}
        for name, class_name, schedules in query("SELECT name, class_name, schedules FROM workflows ORDER BY name", ())
    ]
    grouped: dict[str, dict[str, int]] = {}
    for workflow, status, n in query("SELECT workflow, status, COUNT(*) FROM instances GROUP BY workflow, status", ()):
        grouped.setdefault(workflow, {})[status] = int(n)
    return {
        "instances": instances,
        "queue_messages": messages,
        "dead_letters": dead,
        "workflows": workflows,
        "grouped": grouped,
    }


def _sorted_counts(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {wf: dict(sorted(by_status.items())) for wf, by_status in sorted(counts.items())}


def check(backend: str, data: dict[str, Any], counts: dict[str, dict[str, int]]) -> None:
    grouped = data.pop("grouped")
    assert _sorted_counts(grouped) == _sorted_counts(counts), (backend, grouped, counts)
    want = {"complete": 2, "errored": 1, "waiting": 2, "paused": 1, "terminated": 1, "queued": 2}
    got: dict[str, int] = {}
    for instance in data["instances"]:
        got[instance["status"]] = got.get(instance["status"], 0) + 1
    assert got == want, (backend, got)
    assert len(data["queue_messages"]) == 6 and len(data["dead_letters"]) == 1, backend


# -- SQLite ------------------------------------------------------------------------------------
def make_sqlite(out: Path) -> dict[str, Any]:
    path = out / "sqlite-layout3.db"
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    counts = asyncio.run(populate(f"sqlite:///{path}"))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        data = read_back(lambda q, p: conn.execute(q, tuple(p)).fetchall())
        (layout,) = conn.execute("SELECT value FROM perdure_meta WHERE key = 'schema_version'").fetchone()
        (journal,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert not leftover.exists(), f"{leftover} is left over"
    check("sqlite", data, counts)
    return {
        "file": path.name,
        "schema_version": int(layout),
        "journal_mode": journal,
        "count_by_status": _sorted_counts(counts),
        **data,
    }


# -- PostgreSQL --------------------------------------------------------------------------------
def drop_schema(conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def pg_query(conn: psycopg.Connection[Any]) -> Query:
    def query(text: str, params: Sequence[Any]) -> Rows:
        return conn.execute(text.replace("?", "%s"), tuple(params)).fetchall()

    return query


def pg_counts(query: Query) -> dict[str, Any]:
    """The rows of migration 4's count tables, and the counts they add up to (what count_by_status reads)."""
    folded = query("SELECT COUNT(*) FROM instance_counts", ())[0][0]
    deltas = query("SELECT COUNT(*) FROM instance_count_deltas", ())[0][0]
    totals: dict[str, dict[str, int]] = {}
    for workflow, status, n in query(
        "SELECT workflow, status, SUM(n) FROM (SELECT workflow, status, n FROM instance_counts"
        " UNION ALL SELECT workflow, status, delta FROM instance_count_deltas) AS c"
        " GROUP BY workflow, status HAVING SUM(n) <> 0",
        (),
    ):
        totals.setdefault(workflow, {})[status] = int(n)
    return {
        "instance_counts_rows": int(folded),
        "instance_count_deltas_rows": int(deltas),
        "totals": _sorted_counts(totals),
    }


# Lines an older psql or server cannot run: pg_dump 13.22/14.19/15.14/16.10/17.6 and later wrap the dump in
# \\restrict KEY ... \\unrestrict KEY (a random KEY, psql meta-commands that older psql rejects), and pg_dump 17+
# writes SET transaction_timeout (unknown to servers before 17). Without them the dump is the same on every psql.
_UNPORTABLE = re.compile(r"^(\\restrict |\\unrestrict |SET transaction_timeout\b)")


def dump(conninfo: str, path: Path) -> list[str]:
    """``pg_dump`` the fixture schema to ``path``; returns the lines stripped from it."""
    text = subprocess.run(
        ["pg_dump", "--dbname", conninfo, f"--schema={SCHEMA}", "--no-owner", "--no-privileges", "--inserts"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = text.splitlines(keepends=True)
    stripped = [line.rstrip("\n") for line in lines if _UNPORTABLE.match(line)]
    path.write_text("".join(line for line in lines if not _UNPORTABLE.match(line)), encoding="utf-8")
    return stripped


def check_restore(conninfo: str, path: Path, expected: dict[str, Any], counts: dict[str, Any]) -> None:
    """Restore the dump under another schema name and compare what it holds."""
    other = f"{SCHEMA}_restore_check"
    drop_schema(conninfo, other)
    try:
        script = path.read_text(encoding="utf-8").replace(SCHEMA, other)
        subprocess.run(
            ["psql", "--dbname", conninfo, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            input=script,
            check=True,
            capture_output=True,
            text=True,
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(other)))
            restored = read_back(pg_query(conn))
            restored_counts = pg_counts(pg_query(conn))
        restored.pop("grouped")
        assert restored == expected, "the restored dump differs from the fixture schema"
        assert restored_counts == counts, (restored_counts, counts)
    finally:
        drop_schema(conninfo, other)


def make_postgres(out: Path, url: str) -> dict[str, Any]:
    conninfo = url
    drop_schema(conninfo, SCHEMA)
    separator = "&" if "?" in url else "?"
    counts = asyncio.run(populate(f"{url}{separator}schema={SCHEMA}"))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
        data = read_back(pg_query(conn))
        count_tables = pg_counts(pg_query(conn))
        migrations = [
            {"version": v, "description": d}
            for v, d in conn.execute("SELECT version, description FROM schema_migrations ORDER BY version").fetchall()
        ]
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (SCHEMA,)
            ).fetchall()
        ]
        (server,) = conn.execute("SHOW server_version").fetchone() or ("?",)
    assert {"perdure_queue_messages", "perdure_queue_dead"} <= set(tables), tables
    check("postgresql", data, counts)
    path = out / "postgres-migration4.sql"
    stripped = dump(conninfo, path)
    assert _sorted_counts(count_tables["totals"]) == _sorted_counts(counts), (count_tables, counts)
    check_restore(conninfo, path, data, count_tables)
    drop_schema(conninfo, SCHEMA)
    return {
        "file": path.name,
        "schema": SCHEMA,
        "server_version": server,
        "schema_migrations": migrations,
        "tables": tables,
        "stripped_dump_lines": stripped,
        "count_tables": count_tables,
        "count_by_status": _sorted_counts(counts),
        **data,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (without ?schema=)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the fixtures go (default: this folder)")
    args = parser.parse_args(argv)
    if SQLITE_LAYOUT != 3 or PG_LATEST != 4:
        print(
            f"perdure at {perdure.__file__} has SQLite layout {SQLITE_LAYOUT} and PostgreSQL migration {PG_LATEST};"
            f" run this with the 0.1 code (commit {BASE_COMMIT}) on PYTHONPATH, see the module docstring",
            file=sys.stderr,
        )
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generated_by": {
            "commit": BASE_COMMIT,
            "perdure_version": getattr(perdure, "__version__", None),
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
            "generated_at": time.time(),
        },
        "sqlite": make_sqlite(out),
        "postgresql": make_postgres(out, args.pg_url),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("sqlite-layout3.db", "postgres-migration4.sql", "manifest.json"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
