"""REST API list endpoints at scale (1,000,000 instances); prints JSON.

The claim under test: list endpoints paginate with a cursor and filter by status, and stay
fast with a million instances in the store, because every list query is an index search (no
full scan). In one run, for SQLite (and PostgreSQL with ``--postgres``):

* the fill: a store with the real schema (an :class:`~perdure.Engine` opens it, so tables and
  indexes are the ones the store creates), then N instances in 2 big workflows (60/40) and a
  small one (0.05%), with a mix of statuses (mostly complete; some errored, terminated, queued,
  waiting, running, paused), bulk-inserted (``executemany`` in big transactions; ``COPY`` on
  PostgreSQL), one ``WORKFLOW_QUEUED`` history row each as ``create_instances`` writes (the
  triggers that keep the counts by status run, as for any insert);
* the endpoints, through the real ASGI app (``create_app``, the workflows registered on its
  engine, which is not started) in-process with httpx, p50/p99 over ``--runs`` requests each:
  first page (limit 50); next pages (following the cursor 20 pages down from the top, each
  next-page request timed); a page in the middle of the list (the cursor of a page half-way
  down); the first page of the small workflow; the first page filtered by a rare status
  (paused), a common one (complete), one no instance has (waitingForPause), and the three in
  turn; next pages of the rare status; ``id_prefix`` search (a selective 6-character prefix and
  a broad 2-character one); one instance's detail; the workflows list and one workflow (these
  two count instances by status, reading the counts that triggers keep; ``counts_exact`` says
  whether they equal a GROUP BY over the instances after the fill);
* the baselines: the store's own SELECTs run on a plain connection to the same database, timed
  the same way (the floor for each endpoint: what is left is HTTP, JSON and the API layer), and
  a deliberate full scan (``params LIKE '%...%'`` over every row) to show what reading every
  instance costs at this size;
* the plans: ``EXPLAIN QUERY PLAN`` (SQLite) / ``EXPLAIN`` (PostgreSQL, the custom plan and the
  generic one a prepared statement may switch to) of each query the endpoints run, with a
  verdict: ``uses index X``, ``SCAN of the whole index X``, or ``SCAN of T (full table)`` (which
  is cheap only for a small table, like the counts).

SQLite gets no ``ANALYZE`` (the store never runs it, so a real file has no statistics);
PostgreSQL gets one after the fill (autovacuum would run it soon after such a load). Reads are
on a warm cache: the fill leaves the database in memory.

Usage: ``python bench/bench_api_scale.py [--instances 1000000] [--runs 50]
[--postgres [URL]] [--pg-instances N]``. ``--postgres`` alone uses ``PERDURE_BENCH_PG_URL``,
else ``PERDURE_TEST_PG_URL``, else the local test server, in a fresh schema dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import httpx

from perdure import Engine, WorkflowEntrypoint
from perdure.server.api import create_app
from perdure.server.operations import encode_cursor
from perdure.store.pg_sql import COUNTS
from perdure.store.rows import INSTANCE_COLUMNS, STEP_COLUMNS, WORKFLOW_COLUMNS, prefix_bounds

DEFAULT_PG_URL = os.environ.get(
    "PERDURE_BENCH_PG_URL", os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
# Two big workflows, and a small one among them (a list of it must not read the others' rows).
WORKFLOWS = (("orders", 0.6), ("emails", 0.3995), ("reports", 0.0005))
LISTED = "orders"  # the workflow whose instances are listed
SMALL = "reports"
STATUS_MIX = (
    ("complete", 0.90),
    ("errored", 0.04),
    ("terminated", 0.01),
    ("queued", 0.02),
    ("waiting", 0.02),
    ("running", 0.005),
    ("paused", 0.005),
)
RARE, COMMON = "paused", "complete"
NONE = "waitingForPause"  # a status no instance has: a filter that matches nothing
PAGE = 50
CHAIN = 20  # next pages followed from the top
BATCH = 50_000  # rows per transaction / per COPY chunk
FILL_COLUMNS = (
    "pk, workflow, id, status, params, trigger, schedule, created_at, started_at, ended_at, output, error,"
    " wake_at, wait_types, wake_requested, paused_at, epoch, owner, lease_until"
)
FULL_SCAN_PATTERN = "%no-such-text%"


class Noop(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> None:
        return None


# -- the rows ---------------------------------------------------------------------------------------
def instance_rows(n: int, seed: int = 7) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of instance rows in :data:`FILL_COLUMNS` order, oldest first (pk 1..n), one
    every half second up to now; each status with the columns the engine leaves it with."""
    rng = random.Random(seed)
    now = time.time()
    names, name_weights = zip(*WORKFLOWS, strict=True)
    statuses, status_weights = zip(*STATUS_MIX, strict=True)
    owner = "bench-host:1:0000abcd"
    error = json.dumps(
        {"name": "ValueError", "message": "card declined", "module": "builtins", "qualname": "ValueError"}
    )
    for start in range(1, n + 1, BATCH):
        size = min(BATCH, n + 1 - start)
        wfs = rng.choices(names, name_weights, k=size)
        sts = rng.choices(statuses, status_weights, k=size)
        batch = []
        for k in range(size):
            pk, workflow, status = start + k, wfs[k], sts[k]
            created = now - (n - pk) * 0.5
            iid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if workflow == "orders":
                params = f'{{"order_id":{pk},"customer":"c-{pk % 9973}","amount":{pk % 500}.5}}'
            else:
                params = f'{{"to":"user{pk % 9973}@example.com","template":"welcome"}}'
            started = ended = output = err = wake_at = wait_types = paused_at = own = lease = None
            epoch = 0 if status == "queued" else 1
            if status != "queued":
                started = created + 0.05
            if status == "complete":
                ended, output = started + 1.2, '{"ok":true}'
            elif status == "errored":
                ended, err = started + 0.8, error
            elif status == "terminated":
                ended = started + 30
            elif status == "waiting":
                wake_at = now + 3600
                wait_types = "approve" if pk % 2 else None
            elif status == "running":
                own, lease = owner, now + 5
            elif status == "paused":
                paused_at = started + 2
            batch.append(
                (pk, workflow, iid, status, params, "api", None, created, started, ended, output, err)
                + (wake_at, wait_types, False, paused_at, epoch, own, lease)
            )
        yield batch


def by_workflow(rows: list[Any]) -> dict[str, dict[str, int]]:
    """``{workflow: {status: n}}`` from GROUP BY rows, as ``count_by_status`` returns it."""
    counts: dict[str, dict[str, int]] = {}
    for workflow, status, n in rows:
        counts.setdefault(workflow, {})[status] = int(n)
    return counts


# -- measuring --------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(ms: list[float]) -> dict[str, Any]:
    return {"p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2), "n": len(ms)}


async def timed_async(fn: Callable[[int], Awaitable[Any]], runs: int, warmup: int = 3) -> list[float]:
    for i in range(warmup):
        await fn(i)
    out = []
    for i in range(runs):
        start = time.perf_counter()
        await fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def timed_sync(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def get(client: httpx.AsyncClient, url: str, params: dict[str, Any] | None = None) -> Any:
    response = await client.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} {params}: {response.status_code} {response.text[:300]}")
    return response.json()


async def measure_api(url: str, runs: int, mid_pk: int, sample_ids: list[str], grouped: Any) -> dict[str, Any]:
    """The endpoints' timings on an engine with the workflows registered (not started), and
    whether its kept counts equal a fresh GROUP BY of the instances."""
    engine = Engine(url)
    for name, _ in WORKFLOWS:
        engine.register(Noop, name=name)
    try:
        result = await endpoints(engine, runs, mid_pk, sample_ids)
        result["counts_exact"] = await engine.store.count_by_status() == by_workflow(grouped)
        return result
    finally:
        await engine.stop()


async def endpoints(engine: Engine, runs: int, mid_pk: int, sample_ids: list[str]) -> dict[str, Any]:
    """p50/p99 of each endpoint through the ASGI app (no network)."""
    app = create_app(engine)
    base = f"/api/workflows/{LISTED}/instances"
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        first = await get(c, base, {"limit": PAGE})
        assert len(first["instances"]) == PAGE and first["next_cursor"], first

        async def chain(params: dict[str, Any]) -> list[float]:
            """Follow the cursor CHAIN pages down from the first page, timing each next page,
            until ``runs`` pages are timed."""
            times: list[float] = []
            while len(times) < runs:
                page = await get(c, base, params)
                for _ in range(CHAIN):
                    if not page["next_cursor"] or len(times) >= runs:
                        break
                    start = time.perf_counter()
                    page = await get(c, base, {**params, "cursor": page["next_cursor"]})
                    times.append((time.perf_counter() - start) * 1000)
                    assert page["instances"], "empty page"
            return times

        def listing(params: dict[str, Any]) -> Callable[[int], Awaitable[Any]]:
            return lambda _: get(c, base, params)

        # the API signs its cursors with the database's key; one made here must be signed alike
        mid = {"limit": PAGE, "cursor": encode_cursor(str(mid_pk), await engine.store.secret("cursors"))}
        selective, broad = sample_ids[0][:6], sample_ids[0][:2]
        out["first_page"] = summary(await timed_async(listing({"limit": PAGE}), runs))
        out["next_page"] = summary(await chain({"limit": PAGE}))
        out["middle_page"] = summary(await timed_async(listing(mid), runs))
        out[f"status_{RARE}_first_page"] = summary(await timed_async(listing({"limit": PAGE, "status": RARE}), runs))
        out[f"status_{RARE}_next_page"] = summary(await chain({"limit": PAGE, "status": RARE}))
        out[f"status_{COMMON}_first_page"] = summary(
            await timed_async(listing({"limit": PAGE, "status": COMMON}), runs)
        )
        out[f"status_{NONE}_first_page"] = summary(await timed_async(listing({"limit": PAGE, "status": NONE}), runs))
        rotation = (COMMON, RARE, NONE)  # on PostgreSQL: would a prepared statement's generic plan stick?
        out["status_rotating_first_page"] = summary(
            await timed_async(lambda i: get(c, base, {"limit": PAGE, "status": rotation[i % 3]}), runs)
        )
        out["small_workflow_first_page"] = summary(
            await timed_async(lambda _: get(c, f"/api/workflows/{SMALL}/instances", {"limit": PAGE}), runs)
        )
        sel = await get(c, base, {"limit": PAGE, "id_prefix": selective})
        wide = await get(c, base, {"limit": PAGE, "id_prefix": broad})
        assert sel["instances"] and wide["instances"]
        out["id_prefix_6_chars"] = summary(await timed_async(listing({"limit": PAGE, "id_prefix": selective}), runs))
        out["id_prefix_2_chars"] = summary(await timed_async(listing({"limit": PAGE, "id_prefix": broad}), runs))
        out["instance_detail"] = summary(
            await timed_async(lambda i: get(c, f"{base}/{sample_ids[i % len(sample_ids)]}"), runs)
        )
        out["workflows_list"] = summary(await timed_async(lambda _: get(c, "/api/workflows"), runs))
        out["workflow_describe"] = summary(await timed_async(lambda _: get(c, f"/api/workflows/{LISTED}"), runs))
        counted = await get(c, "/api/workflows")
        out["counted_total"] = sum(w["total"] for w in counted["workflows"])
    return out


def queries(
    mid_pk: int, sample_id: str, ph: str, table: Callable[[str], str], sqlite: bool
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The SELECTs the endpoints run, as the store builds them (see ``list_instances`` and
    ``count_by_status`` in perdure/store/sqlite.py and postgres.py), with their parameters."""
    inst = table("instances")
    top = 2**62
    cols = INSTANCE_COLUMNS
    plus = "+" if sqlite else ""
    idcmp = "id" if sqlite else 'id COLLATE "C"'
    low, high = prefix_bounds(sample_id[:6])
    low2, high2 = prefix_bounds(sample_id[:2])
    prefix = f"workflow = {ph} AND {plus}pk < {ph} AND {idcmp} >= {ph} AND {idcmp} < {ph}"
    return {
        "first_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, PAGE + 1),
        ),
        "middle_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} ORDER BY pk DESC LIMIT {ph}",
            (LISTED, mid_pk, PAGE + 1),
        ),
        "small_workflow_first_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} ORDER BY pk DESC LIMIT {ph}",
            (SMALL, top, PAGE + 1),
        ),
        f"status_{RARE}_first_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} AND status = {ph}"
            f" ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, RARE, PAGE + 1),
        ),
        f"status_{COMMON}_first_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} AND status = {ph}"
            f" ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, COMMON, PAGE + 1),
        ),
        f"status_{NONE}_first_page": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND pk < {ph} AND status = {ph}"
            f" ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, NONE, PAGE + 1),
        ),
        "id_prefix_6_chars": (
            f"SELECT {cols} FROM {inst} WHERE {prefix} ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, low, high, PAGE + 1),
        ),
        "id_prefix_2_chars": (
            f"SELECT {cols} FROM {inst} WHERE {prefix} ORDER BY pk DESC LIMIT {ph}",
            (LISTED, top, low2, high2, PAGE + 1),
        ),
        "instance_detail:get_instance": (
            f"SELECT {cols} FROM {inst} WHERE workflow = {ph} AND id = {ph}",
            (LISTED, sample_id),
        ),
        "instance_detail:load_steps": (
            f"SELECT {STEP_COLUMNS} FROM {table('steps')} WHERE instance_pk = {ph} ORDER BY seq",
            (mid_pk,),
        ),
        "instance_detail:history": (
            f"SELECT type, ts, data FROM {table('history')} WHERE instance_pk = {ph} ORDER BY seq",
            (mid_pk,),
        ),
        "workflows_list:count_by_status": (
            f"SELECT workflow, status, n FROM {table('instance_counts')} WHERE n != 0"
            if sqlite
            else COUNTS.replace("{s}.", table("")).replace("{where}", ""),
            (),
        ),
        "workflows_list:known_workflows": (
            f"SELECT {WORKFLOW_COLUMNS} FROM {table('workflows')} ORDER BY name",
            (),
        ),
        "workflow_describe:count_by_status": (
            f"SELECT workflow, status, n FROM {table('instance_counts')} WHERE workflow = {ph} AND n != 0"
            if sqlite
            else COUNTS.replace("{s}.", table("")).replace("{where}", f"WHERE workflow = {ph}"),
            (LISTED,) if sqlite else (LISTED, LISTED),
        ),
    }


RAW_TIMED = (
    "first_page",
    "small_workflow_first_page",
    f"status_{RARE}_first_page",
    f"status_{COMMON}_first_page",
    f"status_{NONE}_first_page",
    "id_prefix_6_chars",
    "id_prefix_2_chars",
    "workflows_list:count_by_status",
)


def sqlite_verdict(details: list[str]) -> str:
    """``SEARCH ... USING INDEX X (bounds)`` reads a range of X; ``SCAN`` reads all of it."""
    parts, sort = [], ""
    for d in details:
        index = re.search(r"USING (?:COVERING )?INDEX (\w+)", d)
        bounds = re.search(r"\(([^()]*)\)$", d)
        if d.startswith("SEARCH"):
            name = f"index {index.group(1)}" if index else "the primary key"
            parts.append(f"uses {name}" + (f" ({bounds.group(1)})" if bounds else ""))
        elif d.startswith("SCAN") and index:
            parts.append(f"SCAN of the whole index {index.group(1)}")
        elif d.startswith("SCAN"):
            table = re.match(r"SCAN (\w+)", d)
            parts.append(f"SCAN of {table.group(1) if table else 'a'} (full table)")
        elif "TEMP B-TREE" in d:
            sort = "; then sorts the matches"
    return "; ".join(parts) + sort


def _columns(condition: str) -> str:
    """``workflow, pk`` from ``((workflow = 'orders'::text) AND (pk < 5))``."""
    found = re.findall(r"\(*(\w+)\)*(?:::\w+)?\s*(?:[<>]=?|=|~~)\s", condition)
    return ", ".join(dict.fromkeys(found))


def pg_verdict(plan: list[str]) -> str:
    """An index node with no ``Index Cond`` under it reads the whole index; a ``Filter`` under
    it drops rows the index range holds (the cost grows with how many it drops)."""
    parts, sort = [], ""
    for i, line in enumerate(plan):
        if m := re.search(r"(Index Only Scan|Index Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\w+)", line):
            details = []
            for below in plan[i + 1 :]:
                if "->" in below:
                    break
                details.append(below.strip())
            cond = next((d for d in details if d.startswith("Index Cond:")), None)
            only = " (index only)" if m.group(1) == "Index Only Scan" else ""
            text = (
                f"uses index {m.group(2)}{only} ({_columns(cond)})" if cond else f"SCAN of the whole index {m.group(2)}"
            )
            if filt := next((d for d in details if d.startswith("Filter:")), None):
                text += f", filters rows on ({_columns(filt)})"
            parts.append(text)
        elif m := re.search(r"Seq Scan on (\w+)", line):
            parts.append(f"SCAN of {m.group(1)} (full table" + (", parallel)" if "Parallel" in line else ")"))
        elif re.search(r"^\s*(->\s*)?(Incremental )?Sort(?! Key)\b", line):
            sort = "; then sorts the matches"
    return "; ".join(dict.fromkeys(parts)) + sort


# -- SQLite -----------------------------------------------------------------------------------------
def fill_sqlite(path: Path, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the indexes of random ids stay in memory
    insert = f"INSERT INTO instances ({FILL_COLUMNS}) VALUES ({', '.join('?' * 19)})"
    history = "INSERT INTO history (instance_pk, type, ts, data) VALUES (?, 'WORKFLOW_QUEUED', ?, ?)"
    for batch in instance_rows(n):
        conn.execute("BEGIN")
        conn.executemany(insert, batch)
        conn.executemany(history, [(r[0], r[7], '{"trigger":"api"}') for r in batch])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def bench_sqlite(directory: Path, n: int, runs: int) -> dict[str, Any]:
    path = directory / "scale.db"
    engine = Engine(f"sqlite:///{path}")
    for name, _ in WORKFLOWS:
        engine.register(Noop, name=name)
    await engine.start()  # creates the schema, records the workflows; nothing to run yet
    await engine.stop()
    start = time.perf_counter()
    fill_sqlite(path, n)
    fill_seconds = time.perf_counter() - start

    raw = sqlite3.connect(path, isolation_level=None)  # as the store's reader connects
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = FULL")
    mix = dict(raw.execute("SELECT status, COUNT(*) FROM instances GROUP BY status ORDER BY 2 DESC").fetchall())
    grouped = raw.execute("SELECT workflow, status, COUNT(*) FROM instances GROUP BY workflow, status").fetchall()
    (max_pk,) = raw.execute("SELECT max(pk) FROM instances").fetchone()
    mid_pk = max_pk // 2
    sample_ids = [
        r[0]
        for r in raw.execute(
            f"SELECT id FROM instances WHERE workflow = ? AND pk IN ({','.join('?' * 200)})",
            (LISTED, *random.Random(1).sample(range(1, max_pk + 1), 200)),
        )
    ]
    result: dict[str, Any] = {
        "instances": n,
        "fill_seconds": round(fill_seconds, 1),
        "db_size_mb": round(path.stat().st_size / 2**20),
        "status_mix": mix,
    }

    # a server with the application: the workflows registered
    result.update(await measure_api(f"sqlite:///{path}", runs, mid_pk, sample_ids, grouped))

    plans: dict[str, Any] = {}
    raw_ms: dict[str, Any] = {}
    for key, (query, params) in queries(mid_pk, sample_ids[0], "?", lambda t: t, sqlite=True).items():
        details = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {query}", params)]
        plans[key] = {"plan": " | ".join(details), "verdict": sqlite_verdict(details)}
        if key in RAW_TIMED:
            raw_ms[key] = summary(timed_sync(lambda q=query, p=params: raw.execute(q, p).fetchall(), runs))
    scan = f"SELECT count(*) FROM instances WHERE params LIKE '{FULL_SCAN_PATTERN}'"
    scan_plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {scan}")]
    plans["full_scan_baseline"] = {"plan": " | ".join(scan_plan), "verdict": sqlite_verdict(scan_plan)}
    full_scan = statistics.median(timed_sync(lambda: raw.execute(scan).fetchall(), 3, warmup=1))
    raw.close()
    result["baseline_raw_first_page_ms"] = raw_ms["first_page"]["p50_ms"]
    result["full_scan_ms"] = round(full_scan, 1)
    result["raw_sql"] = raw_ms
    result["plans"] = plans
    return result


# -- PostgreSQL -------------------------------------------------------------------------------------
def with_schema(url: str, schema: str) -> str:
    parts = urlparse(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunparse(parts._replace(query=urlencode(query)))


def fill_postgres(conninfo: str, schema: str, n: int) -> None:
    import psycopg
    from psycopg import sql

    s = sql.Identifier(schema)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for batch in instance_rows(n):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {}.instances ({}) FROM STDIN").format(s, sql.SQL(FILL_COLUMNS))) as copy:
                    for row in batch:
                        copy.write_row(row)
                with cur.copy(sql.SQL("COPY {}.history (instance_pk, type, ts, data) FROM STDIN").format(s)) as copy:
                    for row in batch:
                        copy.write_row((row[0], "WORKFLOW_QUEUED", row[7], '{"trigger":"api"}'))
        conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'pk'), %s)", (f"{schema}.instances", n))
        conn.execute(sql.SQL("ANALYZE {}.instances").format(s))
        conn.execute(sql.SQL("ANALYZE {}.history").format(s))


def pg_plans(conn: Any, qs: dict[str, tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """Each query's custom plan (the parameters' values known) and, when it differs, its
    generic plan: psycopg prepares a statement after 5 runs on a connection, and PostgreSQL may
    then switch it to the generic plan."""
    from psycopg import sql

    plans: dict[str, Any] = {}
    for n, (key, (query, params)) in enumerate(qs.items()):
        custom = [r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) {query}", params)]
        entry = {"plan": " | ".join(line.strip() for line in custom), "verdict": pg_verdict(custom)}
        if params:
            pieces = query.split("%s")
            numbered = pieces[0] + "".join(f"${i}{piece}" for i, piece in enumerate(pieces[1:], 1))
            name = f"bench_plan_{n}"
            conn.execute(f"PREPARE {name} AS {numbered}")
            with conn.transaction():
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                values = sql.SQL(", ").join(sql.Literal(v) for v in params)
                generic = [
                    r[0]
                    for r in conn.execute(
                        sql.SQL("EXPLAIN (COSTS OFF) EXECUTE {}({})").format(sql.Identifier(name), values)
                    )
                ]
            conn.execute(f"DEALLOCATE {name}")
            if pg_verdict(generic) != entry["verdict"]:
                entry["generic_plan"] = " | ".join(line.strip() for line in generic)
                entry["generic_verdict"] = pg_verdict(generic)
        plans[key] = entry
    return plans


async def bench_postgres(url: str, n: int, runs: int) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    from perdure.store.postgres import parse_url

    schema = f"bench_api_{uuid.uuid4().hex[:10]}"
    url = with_schema(url, schema)
    conninfo, _ = parse_url(url)
    try:
        engine = Engine(url)
        for name, _ in WORKFLOWS:
            engine.register(Noop, name=name)
        await engine.start()  # runs the migrations, records the workflows
        await engine.stop()
        start = time.perf_counter()
        fill_postgres(conninfo, schema, n)
        fill_seconds = time.perf_counter() - start

        with psycopg.connect(conninfo, autocommit=True) as raw:
            s = sql.Identifier(schema).as_string(raw)
            mix = dict(raw.execute(f"SELECT status, COUNT(*) FROM {s}.instances GROUP BY status ORDER BY 2 DESC"))
            grouped = raw.execute(f"SELECT workflow, status, COUNT(*) FROM {s}.instances GROUP BY workflow, status")
            grouped = grouped.fetchall()
            (size,) = raw.execute("SELECT pg_total_relation_size(%s)", (f"{s}.instances",)).fetchone()
            mid_pk = n // 2
            picks = random.Random(1).sample(range(1, n + 1), 200)
            sample_ids = [
                r[0]
                for r in raw.execute(
                    f"SELECT id FROM {s}.instances WHERE workflow = %s AND pk = ANY(%s)", (LISTED, picks)
                )
            ]
        result: dict[str, Any] = {
            "instances": n,
            "fill_seconds": round(fill_seconds, 1),
            "instances_table_with_indexes_mb": round(size / 2**20),
            "status_mix": mix,
        }

        result.update(await measure_api(url, runs, mid_pk, sample_ids, grouped))

        with psycopg.connect(conninfo, autocommit=True) as raw:
            qs = queries(mid_pk, sample_ids[0], "%s", lambda t: f"{s}.{t}", sqlite=False)
            raw_ms: dict[str, Any] = {}
            for key in RAW_TIMED:  # prepared after 5 runs, as the store's statements are
                query, params = qs[key]
                raw_ms[key] = summary(timed_sync(lambda q=query, p=params: raw.execute(q, p).fetchall(), runs))
            plans = pg_plans(raw, qs)
            scan = f"SELECT count(*) FROM {s}.instances WHERE params LIKE '{FULL_SCAN_PATTERN}'"
            scan_plan = [r[0] for r in raw.execute(f"EXPLAIN (COSTS OFF) {scan}")]
            plans["full_scan_baseline"] = {
                "plan": " | ".join(x.strip() for x in scan_plan),
                "verdict": pg_verdict(scan_plan),
            }
            full_scan = statistics.median(timed_sync(lambda: raw.execute(scan).fetchall(), 3, warmup=1))
        result["baseline_raw_first_page_ms"] = raw_ms["first_page"]["p50_ms"]
        result["full_scan_ms"] = round(full_scan, 1)
        result["raw_sql"] = raw_ms
        result["plans"] = plans
        return result
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--postgres", nargs="?", const=DEFAULT_PG_URL, default=None, metavar="URL")
    parser.add_argument("--pg-instances", type=int, default=None, help="instances on PostgreSQL (default: --instances)")
    parser.add_argument("--skip-sqlite", action="store_true", help="only PostgreSQL")
    args = parser.parse_args()
    began = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "perdure-api-scale", "cpus": os.cpu_count(), "instances": args.instances}
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            out["sqlite"] = await bench_sqlite(Path(tmp), args.instances, args.runs)
        out["fill_seconds"] = out["sqlite"]["fill_seconds"]
    if args.postgres:
        out["postgresql"] = await bench_postgres(args.postgres, args.pg_instances or args.instances, args.runs)
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    out["total_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
