"""Engine benchmark on PostgreSQL; prints JSON. The workload is ``bench_engine.py``'s.

In one run, against one server:

* throughput with 1 and with 2 worker processes (``perdure.cli.worker`` subprocesses; this process
  only creates the instances and watches them finish): 1,000 instances x 10 no-op async steps,
  as durable steps/s and workflows/s, plus how many writes each group commit carried;
* latency: p50/p99 of one 10-step workflow, create to final status, one at a time, with the
  engine in this process (so completion is seen at once, not by polling);
* per-step overhead: (latency of a 10-step workflow - latency of a 0-step one) / 10;
* the baseline: raw single-row INSERT commits/s on the same server (one connection,
  autocommit), and the ratio of durable steps/s to it.

Each measurement uses a fresh schema, dropped at the end.

Usage: ``python bench/bench_postgres.py [--url postgresql://...] [--instances 1000] [--latency-runs 200]``
(the URL defaults to ``PERDURE_BENCH_PG_URL``, else ``PERDURE_TEST_PG_URL``, else the local test server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import psycopg
from bench_engine import STEPS, TenSteps  # the same workload (bench/ is on the path)
from psycopg import sql

from perdure import Engine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = os.environ.get(
    "PERDURE_BENCH_PG_URL", os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
)


def make_engine() -> Engine:
    """The worker processes' app (``bench_postgres:make_engine``); the URL comes from the environment."""
    engine = Engine(os.environ["PERDURE_BENCH_URL"], max_concurrent=100)
    engine.register(TenSteps, name="bench")
    return engine


def with_schema(url: str, schema: str) -> str:
    parts = urlparse(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunparse(parts._replace(query=urlencode(query)))


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def raw_insert_rate(url: str, seconds: float = 3.0) -> float:
    """Single-row INSERTs in autocommit on one connection: one commit (one WAL flush) each."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS warmup (v TEXT)")  # connection warm-up
        table = sql.Identifier(f"perdure_bench_raw_{uuid.uuid4().hex[:8]}")
        conn.execute(sql.SQL("CREATE TABLE {} (id BIGSERIAL PRIMARY KEY, v TEXT)").format(table))
        try:
            insert = sql.SQL("INSERT INTO {} (v) VALUES (%s)").format(table)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                conn.execute(insert, ("x",))
                n += 1
            return n / (time.perf_counter() - start)
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(table))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_latency(binding: Any, steps: int) -> float:
    start = time.perf_counter()
    instance = await binding.create(params={"steps": steps})
    await instance.wait()
    return (time.perf_counter() - start) * 1000


async def latency(url: str, runs: int) -> dict[str, Any]:
    """10-step and 0-step workflows alternately, so that load from elsewhere on the machine
    weighs on both alike."""
    engine = Engine(url, max_concurrent=100)
    binding = engine.register(TenSteps, name="bench")
    ten: list[float] = []
    zero: list[float] = []
    async with engine:
        for _ in range(20):  # warm up (connections, prepared statements)
            await one_latency(binding, STEPS)
        for _ in range(runs):
            zero.append(await one_latency(binding, 0))
            ten.append(await one_latency(binding, STEPS))
    return {
        "runs": runs,
        "latency_10_steps_ms": {"p50": round(percentile(ten, 0.5), 2), "p99": round(percentile(ten, 0.99), 2)},
        "latency_0_steps_ms": {"p50": round(percentile(zero, 0.5), 2)},
        "per_step_overhead_ms_p50": round((statistics.median(ten) - statistics.median(zero)) / STEPS, 3),
    }


def start_workers(
    url: str, n: int, app: str = "bench_postgres:make_engine", **extra: str
) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes of ``app`` (a ``module:factory`` in bench/) on ``url``; ``extra``
    goes into their environment."""
    env = {**os.environ, "PERDURE_BENCH_URL": url, "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{ROOT}", **extra}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "perdure.cli.worker", app, "--log-level", "WARNING"],
            cwd=ROOT,
            env=env,
        )
        for _ in range(n)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def throughput(url: str, instances: int, workers: int) -> dict[str, Any]:
    client = Engine(url)  # never started: creates instances and reads their status
    binding = client.register(TenSteps, name="bench")
    await client.ensure_store()
    procs = start_workers(url, workers)
    try:
        # Let the workers connect (their first claim finds nothing) before the clock starts.
        warm = await binding.create_batch([{"params": {"steps": 1}} for _ in range(2 * workers)])
        for instance in warm:
            await instance.wait(timeout=60)
        start = time.perf_counter()
        for offset in range(0, instances, 100):
            await binding.create_batch([{} for _ in range(min(100, instances - offset))])
        while True:
            counts = (await client.store.count_by_status("bench")).get("bench", {})
            if counts.get("complete", 0) >= instances + len(warm):
                break
            if counts.get("errored"):
                raise RuntimeError(f"instances errored: {counts}")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
    finally:
        stop_workers(procs)
        await client.stop()
    steps_per_s = instances * STEPS / elapsed
    return {
        "worker_processes": workers,
        "instances": instances,
        "steps_per_instance": STEPS,
        "seconds": round(elapsed, 2),
        "durable_steps_per_s": round(steps_per_s),
        "workflows_per_s": round(instances / elapsed, 1),
    }


async def in_schema(url: str, job: Any, *args: Any) -> dict[str, Any]:
    schema = f"perdure_bench_{uuid.uuid4().hex[:12]}"
    try:
        result: dict[str, Any] = await job(with_schema(url, schema), *args)
        return result
    finally:
        drop_schema(url, schema)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()
    raw = raw_insert_rate(args.url)
    lat = await in_schema(args.url, latency, args.latency_runs)
    runs = [await in_schema(args.url, throughput, args.instances, n) for n in (1, 2)]
    for run in runs:
        run["ratio_steps_to_raw_commits"] = round(run["durable_steps_per_s"] / raw, 2)
    with psycopg.connect(args.url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    report = {
        "benchmark": "perdure-engine-postgresql",
        "cpus": os.cpu_count(),
        "server": {"version": row[0] if row else None, "synchronous_commit": sync[0] if sync else None},
        "baseline_raw_insert_commits_per_s": round(raw),
        "latency": lat,
        "throughput": runs,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
