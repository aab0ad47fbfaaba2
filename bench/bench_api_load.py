"""HTTP triggers under load: ``POST /api/workflows/{name}/instances`` at concurrency 50; prints JSON.

The workload: N (5,000) creates, each a ``POST /api/workflows/bench/instances`` with a small JSON
body, from C (50) keep-alive HTTP/1.1 connections on loopback (one request in flight per
connection, no pipelining), against a real server process built the way ``perdure dev`` builds
one: ``create_app(engine, allowed_hosts=LOOPBACK_NAMES)`` (so the same middleware: security
headers and the guard with its host check, no token), served by ``uvicorn.Server(server_config(
app, "127.0.0.1", port, log_level="info"))`` (perdure's bounded h11 protocol, its keep-alive,
connection and backlog limits, and the access log ``perdure dev`` prints by default), with the
engine started in the same process (its workers run the created instances, one async no-op step
each, while the creates arrive, as under ``perdure dev``). Once on SQLite (a fresh file) and, with
``--postgres``, on PostgreSQL (a fresh schema, dropped at the end).

The baseline, in the same run against the same server process: N ``GET /api/health`` (a trivial
JSON endpoint, ``{"ok": true}``, behind the same middleware, uvicorn settings and access log) with
the same client and concurrency. Its requests/s is the ceiling of this server stack with this
client, so the create path's ratio to it is what the engine and store cost per request.

The client: a small raw-asyncio HTTP/1.1 client (no httpx: its ``AsyncClient`` caps near
250 requests/s here) spread over ``--clients`` (2) processes, each holding C/clients
connections. That the client is not the bottleneck shows in the output: the baseline's
requests/s against the creates', and the client processes' CPU (``client_cpu_pct``: CPU seconds
over wall seconds, per process) next to the server's (``server_cpu_pct``, from /proc).

``PERDURE_BENCH_DURABILITY=normal`` opens the SQLite store with ``durability="normal"`` (no fsync per
commit) instead of the default ``"full"``, to see what the fsync costs.

Reported per run: requests/s, latency p50/p99 (ms, from write to the end of the response body),
errors (non-2xx answers or broken connections; must be 0), the ratio to the baseline, and the
target (>= 40% of the baseline's requests/s and p99 <= 50 ms), with ``os.getloadavg()``.

Usage: ``python bench/bench_api_load.py [--requests 5000] [--concurrency 50] [--clients 2]
[--postgres [URL]] [--no-sqlite]``. ``--postgres`` alone uses ``PERDURE_BENCH_PG_URL``, else
``PERDURE_TEST_PG_URL``, else the local test server ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_postgres import DEFAULT_URL, drop_schema, with_schema  # bench/ is on the path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = "bench"
BODY = b'{"params": {"n": 1}}'


# -- the server process ------------------------------------------------------------------------
def serve(url: str, port: int) -> None:
    """Run the engine (workers in-process, as ``perdure dev``) and its app under uvicorn."""
    import uvicorn

    from perdure import Engine, WorkflowEntrypoint
    from perdure.cli.serving import LOOPBACK_NAMES
    from perdure.server.api import create_app
    from perdure.server.http_server import server_config

    async def noop() -> None:
        return None

    class OneStep(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> None:
            await step.do("noop", noop)

    durability = os.environ.get("PERDURE_BENCH_DURABILITY")  # SQLite only; default "full"
    engine = Engine(url, durability=durability) if durability else Engine(url)
    engine.register(OneStep, name=WORKFLOW)
    app = create_app(engine, allowed_hosts=LOOPBACK_NAMES)

    async def main() -> None:
        await engine.ensure_store()
        await engine.start()
        try:
            await uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="info")).serve()
        finally:
            await engine.stop()

    asyncio.run(main())


# -- the client --------------------------------------------------------------------------------
async def _connection(port: int, request: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not 200 <= status < 300:
                errors.append(f"HTTP {status}")
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


def _client(port: int, request: bytes, connections: int, requests: int, barrier: Any, out: Any) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    shares = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]

    async def main() -> None:
        barrier.wait()
        await asyncio.gather(*(_connection(port, request, n, latencies, errors) for n in shares))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    out.put((latencies, errors[:5], len(errors), time.process_time() - cpu0, time.perf_counter() - wall0))


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def load(port: int, pid: int, request: bytes, requests: int, concurrency: int, clients: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(clients + 1), ctx.Queue()
    per = [concurrency // clients + (1 if i < concurrency % clients else 0) for i in range(clients)]
    reqs = [requests * n // concurrency for n in per]
    reqs[0] += requests - sum(reqs)
    procs = [ctx.Process(target=_client, args=(port, request, per[i], reqs[i], barrier, out)) for i in range(clients)]
    for p in procs:
        p.start()
    cpu0 = _server_cpu(pid)
    barrier.wait()
    start = time.perf_counter()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - start
    server_cpu = _server_cpu(pid) - cpu0
    for p in procs:
        p.join()
    latencies = [x for r in results for x in r[0]]
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "errors": sum(r[2] for r in results),
        "error_samples": [e for r in results for e in r[1]][:5],
        "client_cpu_pct": [round(100 * r[3] / r[4], 1) for r in results],
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
    }


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"the server did not start:\n{log.read().decode(errors='replace')}") from None
                time.sleep(0.1)
        health = http_request("GET", "/api/health")
        create = http_request("POST", f"/api/workflows/{WORKFLOW}/instances", BODY)
        load(port, server.pid, health, 500, args.concurrency, args.clients)  # warm up
        load(port, server.pid, create, 500, args.concurrency, args.clients)
        baseline = load(port, server.pid, health, args.requests, args.concurrency, args.clients)
        creates = load(port, server.pid, create, args.requests, args.concurrency, args.clients)
        ratio = creates["requests_per_s"] / baseline["requests_per_s"]
        return {
            "creates": creates,
            "baseline_health": baseline,
            "ratio_to_baseline": round(ratio, 3),
            "target_met": ratio >= 0.40 and creates["p99_ms"] <= 50 and creates["errors"] == 0,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--postgres", nargs="?", const=DEFAULT_URL, default=None)
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "workload": f"{args.requests} POST creates, concurrency {args.concurrency}, {args.clients} client processes",
        "cpus": os.cpu_count(),
    }
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            report["sqlite"] = run(f"sqlite:///{tmp}/bench.db", args)
    if args.postgres:
        schema = f"perdure_bench_{uuid.uuid4().hex[:12]}"
        try:
            report["postgres"] = run(with_schema(args.postgres, schema), args)
        finally:
            drop_schema(args.postgres, schema)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
