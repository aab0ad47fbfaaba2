"""Flow-control benchmark on PostgreSQL (perdure.flow): what the limits cost, and whether they
hold across processes; prints JSON.

The workload: N (600) instances of a workflow of 3 I/O-bound steps (each ``await
asyncio.sleep(0.05)``), created with a ``concurrency_key`` spread round-robin over K (20) keys,
run by 2 ``perdure.cli.worker`` subprocesses sharing one fresh schema (this process only creates
the instances and watches them finish). Each step returns its start and end
(``time.time()``), which the store records anyway, so the spans cost no extra writes; an
instance's span runs from its first step's start to its last step's end. In one run:

* ``baseline``: no limits, but each worker started with ``max_concurrent`` = limit / 2 (10),
  so that the total concurrency equals the limit (20) the way it did before flow control;
* ``concurrency``: ``register(concurrency=20)``, workers at the default ``max_concurrent``
  (100): the limit alone caps them, across both processes;
* ``concurrency_per_key``: ``concurrency=20, concurrency_per_key=2`` over the K keys;
* ``step_rate_limit``: M (500) instances of one step under ``engine.rate_limit("api",
  limit=50, period="1 second")`` in both workers. Each step returns when its attempt started;
  each worker also appends every slot the store hands out (``reserve_rate_slot``) to a file.

Reported: for the first three, instances/s (create of the first to completion of the last, the
clock started once both workers claimed warm-up instances), the ratio to the baseline (target:
>= 0.8), the most instances running at once according to the recorded spans (must be <= 20;
an end at t closes before a start at t opens), the mean concurrency (the sum of the spans over the
time from the first start to the last end)
and, with keys, the most of one key at once (must be <= 2). For the rate limit: attempts/s
as ``M / (last start - first start + period)`` (what M attempts at exactly the limit would
take: the first window's batch at once, then one window per batch) and its ratio to the limit,
and the most slots and the most attempt starts in any half-open 1-second window, with the delay
from each attempt's slot to its start (``start_delay_s``). The slots must stay <= 50 (the
engine's promise); the starts are not bounded by it: an attempt starts after its slot, when its
run gets to it (at once if the slot was free, else when a worker claims the woken instance), and
under the flood of M runs that reserve their slots at the start that delay grows, so batches of
consecutive windows can start together (``attempt_starts_limit_held``, reported, not a target).

Each measurement uses a fresh schema, dropped at the end.

Usage: ``python bench/bench_flow_control.py [--url postgresql://...] [--instances 600]
[--keys 20] [--limit 20] [--per-key 2] [--rate-instances 500] [--rate 50]``
(the URL defaults to ``PERDURE_BENCH_PG_URL``, else ``PERDURE_TEST_PG_URL``, else the local test
server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import bench_postgres  # bench/ is on the path
import psycopg
from bench_postgres import DEFAULT_URL, drop_schema, percentile, with_schema

from perdure import Engine, WorkflowEntrypoint

STEPS = 3
STEP_SECONDS = 0.05
RATE_PERIOD = 1.0


class IOSteps(WorkflowEntrypoint):
    """``STEPS`` steps of ``STEP_SECONDS`` each; each returns ``[start, end]``."""

    async def run(self, event: Any, step: Any) -> int:
        for i in range(STEPS):

            async def io() -> list[float]:
                start = time.time()
                await asyncio.sleep(STEP_SECONDS)
                return [start, time.time()]

            await step.do(f"io-{i}", io)
        return STEPS


class Metered(WorkflowEntrypoint):
    """One step under the rate limit ``api``; it returns when its attempt started."""

    async def run(self, event: Any, step: Any) -> float:
        started: float = await step.do("call", time.time, config={"rate_limit": "api"})
        return started


def _append(path: str, line: str) -> None:
    with open(path, "a") as log:  # small and local: cheaper than a write to the database
        log.write(line)


def read_slots(directory: str) -> dict[str, float]:
    """The slots the workers logged: holder -> time."""
    slots: dict[str, float] = {}
    for log in Path(directory).iterdir():
        for line in log.read_text().splitlines():
            holder, at = line.rsplit(" ", 1)
            slots[holder] = float(at)
    return slots


def _log_slots(engine: Engine, path: str) -> None:
    """Append every slot the store hands out to ``path`` (``holder at`` per line)."""
    store: Any = engine.store
    original = store.reserve_rate_slot

    async def reserve_rate_slot(limiter: str, holder: str, limit: int, period: float, now: Any) -> float:
        at: float = await original(limiter, holder, limit, period, now)
        _append(path, f"{holder} {at!r}\n")
        return at

    store.reserve_rate_slot = reserve_rate_slot


def make_engine() -> Engine:
    """The worker processes' app (``bench_flow_control:make_engine``), set by the environment."""
    env = os.environ
    engine = Engine(env["PERDURE_BENCH_URL"], max_concurrent=int(env.get("PERDURE_BENCH_MAX_CONCURRENT", "100")))
    limits: dict[str, Any] = {}
    if "PERDURE_BENCH_CONCURRENCY" in env:
        limits["concurrency"] = int(env["PERDURE_BENCH_CONCURRENCY"])
    if "PERDURE_BENCH_PER_KEY" in env:
        limits["concurrency_per_key"] = int(env["PERDURE_BENCH_PER_KEY"])
    engine.register(IOSteps, name="io", **limits)
    engine.rate_limit("api", limit=int(env.get("PERDURE_BENCH_RATE", "50")), period=f"{RATE_PERIOD} seconds")
    engine.register(Metered, name="metered")
    if "PERDURE_BENCH_SLOTS" in env:
        _log_slots(engine, f"{env['PERDURE_BENCH_SLOTS']}.{os.getpid()}")
    return engine


def start_workers(url: str, n: int, **env: str) -> list[subprocess.Popen[bytes]]:
    return bench_postgres.start_workers(url, n, "bench_flow_control:make_engine", **env)


stop_workers = bench_postgres.stop_workers


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one time (an end at t closes before a start at t opens)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def most_in_window(times: list[float], period: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + period)``."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - period:
            first += 1
        most = max(most, last - first + 1)
    return most


def rows(url: str, schema: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, options=f"-csearch_path={schema}") as conn:
        return conn.execute(query).fetchall()


async def wait_complete(client: Engine, workflow: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = (await client.store.count_by_status(workflow)).get(workflow, {})
        if counts.get("complete", 0) >= n:
            return
        if counts.get("errored"):
            raise RuntimeError(f"instances errored: {counts}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not complete after {timeout}s: {counts}")
        await asyncio.sleep(0.02)


async def warm_up(binding: Any, n: int) -> None:
    """Both workers connected and claimed something (their first claims find nothing else)."""
    warm = await binding.create_batch([{"id": f"warm-{i}", "params": {}} for i in range(n)])
    for instance in warm:
        await instance.wait(timeout=60)


async def spans_run(
    server: str, schema: str, name: str, instances: int, keys: int, workers: int, **env: str
) -> dict[str, Any]:
    """``instances`` of ``io`` on ``workers`` processes started with ``env``."""
    url = with_schema(server, schema)
    client = Engine(url)  # never started: creates instances and reads their status
    binding = client.register(IOSteps, name="io")
    await client.ensure_store()
    procs = start_workers(url, workers, **env)
    try:
        await warm_up(binding, 2 * workers)
        start = time.perf_counter()
        for offset in range(0, instances, 100):
            await binding.create_batch(
                [
                    {"id": f"i{i:05d}", "concurrency_key": f"k{i % keys}"}
                    for i in range(offset, min(instances, offset + 100))
                ]
            )
        await wait_complete(client, "io", instances + 2 * workers)
        elapsed = time.perf_counter() - start
    finally:
        stop_workers(procs)
        await client.stop()
    by_instance: dict[str, list[float]] = defaultdict(list)
    key_of: dict[str, str] = {}
    for iid, key, result in rows(
        server,
        schema,
        "SELECT i.id, i.concurrency_key, s.result FROM steps s JOIN instances i ON i.pk = s.instance_pk"
        " WHERE i.id NOT LIKE 'warm-%'",
    ):
        by_instance[iid].extend(json.loads(result))
        key_of[iid] = key
    assert len(by_instance) == instances
    spans = {iid: (min(times), max(times)) for iid, times in by_instance.items()}
    per_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for iid, span in spans.items():
        per_key[key_of[iid]].append(span)
    first = min(s for s, _ in spans.values())
    last = max(e for _, e in spans.values())
    return {
        "name": name,
        "worker_processes": workers,
        "worker_env": {k.removeprefix("PERDURE_BENCH_").lower(): v for k, v in env.items()},
        "instances": instances,
        "keys": keys,
        "seconds": round(elapsed, 2),
        "instances_per_s": round(instances / elapsed, 1),
        "max_concurrency_observed": max_overlap(list(spans.values())),
        "mean_concurrency": round(sum(e - s for s, e in spans.values()) / (last - first), 2),
        "max_per_key_observed": max(max_overlap(s) for s in per_key.values()),
    }


async def rate_run(server: str, schema: str, instances: int, rate: int, workers: int) -> dict[str, Any]:
    """``instances`` of ``metered`` (one step under ``rate`` per second) on ``workers`` processes."""
    url = with_schema(server, schema)
    client = Engine(url)
    binding = client.register(Metered, name="metered")
    await client.ensure_store()
    with tempfile.TemporaryDirectory() as tmp:
        slots_file = str(Path(tmp) / "slots")
        procs = start_workers(url, workers, PERDURE_BENCH_RATE=str(rate), PERDURE_BENCH_SLOTS=slots_file)
        try:
            await warm_up(binding, 2 * workers)
            # The warm-up took slots: let its window pass so the run starts with an empty one.
            await asyncio.sleep(RATE_PERIOD)
            began = time.time()
            start = time.perf_counter()
            for offset in range(0, instances, 100):
                await binding.create_batch([{"id": f"m{i:05d}"} for i in range(offset, min(instances, offset + 100))])
            await wait_complete(client, "metered", instances + 2 * workers)
            elapsed = time.perf_counter() - start
        finally:
            stop_workers(procs)
            await client.stop()
        slots = read_slots(tmp)
    pk_of = {iid: pk for pk, iid in rows(server, schema, "SELECT pk, id FROM instances")}
    starts: dict[int, float] = {
        pk_of[iid]: float(output)
        for iid, output in rows(server, schema, "SELECT id, output FROM instances WHERE id NOT LIKE 'warm-%'")
    }
    assert len(starts) == instances
    slot_of: dict[int, float] = {}
    for holder, at in slots.items():
        pk = int(holder.split(":")[0])
        assert pk not in slot_of, f"instance {pk} took two slots"
        slot_of[pk] = at
    run_slots = [slot_of[pk] for pk in starts]
    delays = [starts[pk] - slot_of[pk] for pk in starts]
    times = sorted(starts.values())
    achieved = instances / (times[-1] - times[0] + RATE_PERIOD)
    return {
        "name": "step_rate_limit",
        "worker_processes": workers,
        "instances": instances,
        "limit": {"limit": rate, "period_s": RATE_PERIOD},
        "seconds": round(elapsed, 2),
        "first_attempt_after_create_s": round(times[0] - began, 3),
        "attempts_per_s": round(achieved, 1),
        "ratio_to_limit": round(achieved / rate, 3),
        "max_slots_in_1s_window": most_in_window(run_slots, RATE_PERIOD),
        "max_attempt_starts_in_1s_window": most_in_window(times, RATE_PERIOD),
        "attempt_starts_limit_held": most_in_window(times, RATE_PERIOD) <= rate,
        "start_delay_s": {
            "min": round(min(delays), 4),
            "p50": round(percentile(delays, 0.5), 3),
            "p99": round(percentile(delays, 0.99), 3),
            "max": round(max(delays), 3),
        },
    }


async def in_schema(server: str, job: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    schema = f"perdure_bench_{uuid.uuid4().hex[:12]}"
    try:
        result: dict[str, Any] = await job(server, schema, *args, **kwargs)
        return result
    finally:
        drop_schema(server, schema)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--limit", type=int, default=20, help="the concurrency limit (even: split over 2 workers)")
    parser.add_argument("--per-key", type=int, default=2)
    parser.add_argument("--rate-instances", type=int, default=500)
    parser.add_argument("--rate", type=int, default=50, help="step rate limit: attempts per second")
    args = parser.parse_args()
    workers = 2
    n, keys, limit = args.instances, args.keys, args.limit
    baseline = await in_schema(
        args.url, spans_run, "baseline", n, keys, workers, PERDURE_BENCH_MAX_CONCURRENT=str(limit // workers)
    )
    limited = await in_schema(
        args.url, spans_run, "concurrency", n, keys, workers, PERDURE_BENCH_CONCURRENCY=str(limit)
    )
    keyed = await in_schema(
        args.url,
        spans_run,
        "concurrency_per_key",
        n,
        keys,
        workers,
        PERDURE_BENCH_CONCURRENCY=str(limit),
        PERDURE_BENCH_PER_KEY=str(args.per_key),
    )
    for run in (baseline, limited, keyed):
        run["ratio_to_baseline"] = round(run["instances_per_s"] / baseline["instances_per_s"], 3)
    for run in (limited, keyed):
        run["meets_target_ratio_0_8"] = run["ratio_to_baseline"] >= 0.8
        run["limit_held"] = run["max_concurrency_observed"] <= limit
    keyed["per_key_limit_held"] = keyed["max_per_key_observed"] <= args.per_key
    rate = await in_schema(args.url, rate_run, args.rate_instances, args.rate, workers)
    rate["slot_limit_held"] = rate["max_slots_in_1s_window"] <= args.rate
    with psycopg.connect(args.url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    report = {
        "benchmark": "perdure-flow-control-postgresql",
        "cpus": os.cpu_count(),
        "server_version": row[0] if row else None,
        "workload": {"steps": STEPS, "step_seconds": STEP_SECONDS, "concurrency_limit": limit},
        "ideal_instances_per_s_at_limit": round(limit / (STEPS * STEP_SECONDS), 1),
        "runs": [baseline, limited, keyed],
        "rate_limit": rate,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
