"""Stopped (SIGSTOP), not dead, workers: their instances are taken over in time, and after
SIGCONT they start nothing on instances they lost (issue: side effects out of order)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine import util
from tests.engine.stall_worker import LEASE_TTL, STEPS, make_engine

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, effects: Path) -> subprocess.Popen[str]:
    return util.start_worker("tests.engine.stall_worker", url, str(effects))


def read_effects(effects: Path) -> list[tuple[int, str, int, float]]:
    rows = []
    for line in effects.read_text().splitlines():
        pid, instance, step, at = line.split()
        rows.append((int(pid), instance, int(step), float(at)))
    return rows


async def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def stop_all(*workers: subprocess.Popen[str]) -> None:
    for worker in workers:
        os.kill(worker.pid, signal.SIGCONT)  # a stopped process cannot die of SIGKILL until resumed
        worker.kill()
        worker.wait()


async def test_a_resumed_worker_starts_no_step_of_an_instance_it_lost(db_url: str, tmp_path: Path) -> None:
    """More runs than pool threads, so attempts queue in the pool. Worker A is stopped for
    twice the lease; B takes its instances over; on SIGCONT, A's queued attempts must not
    start (they would run step k after B ran steps beyond k)."""
    effects = tmp_path / "effects.log"
    effects.touch()
    client = make_engine(db_url, str(effects))
    a = start_worker(db_url, effects)
    b = None
    try:
        instances = await client.binding("plain").create_batch([{"id": f"job-{n}"} for n in range(16)])
        await wait_for(lambda: len({r[1] for r in read_effects(effects)}) >= 6, 10)
        b = start_worker(db_url, effects)
        a.send_signal(signal.SIGSTOP)
        await asyncio.sleep(2 * LEASE_TTL)
        resumed = time.time()
        a.send_signal(signal.SIGCONT)
        for instance in instances:
            assert (await instance.wait(timeout=60))["status"] == "complete"
    finally:
        stop_all(a, *([b] if b else []))
        await client.stop()
    rows = read_effects(effects)
    assert {pid for pid, *_ in rows} == {a.pid, b.pid}  # B did take over
    lost = {name for pid, name, _, at in rows if pid == b.pid and at < resumed}
    assert lost, "B took over nothing while A was stopped"
    late = [(name, step) for pid, name, step, at in rows if pid == a.pid and at >= resumed and name in lost]
    assert late == [], f"A started steps of instances B had taken over: {late}"
    for name in {r[1] for r in rows}:  # per instance, steps start in order (a re-run repeats one)
        steps = [step for _, n, step, _ in rows if n == name]
        assert steps == sorted(steps), f"{name}: steps ran out of order: {steps}"
        assert set(steps) == set(range(STEPS))


async def test_a_stopped_workers_instances_are_taken_over_within_a_lease_and_a_second(
    db_url: str, tmp_path: Path
) -> None:
    """Nothing else writes to the database while A is stopped: B must find the expired
    leases by itself (on SQLite no write wakes it), within lease_ttl + 1 s."""
    effects = tmp_path / "effects.log"
    effects.touch()
    client = make_engine(db_url, str(effects))
    a = start_worker(db_url, effects)
    b = None
    try:
        instances = await client.binding("plain").create_batch([{"id": f"job-{n}"} for n in range(4)])
        await wait_for(lambda: len({r[1] for r in read_effects(effects)}) == 4, 10)
        b = start_worker(db_url, effects)
        await asyncio.sleep(0.3)  # B is up and idle: every instance is A's
        a.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()

        async def owners() -> set[str | None]:
            records = [await client.store.get_instance("plain", f"job-{n}") for n in range(4)]
            return {r.owner if r is not None else None for r in records}

        while any(owner is not None and f":{a.pid}:" in owner for owner in await owners()):
            assert time.monotonic() - stopped < 4 * LEASE_TTL, "B never took over"
            await asyncio.sleep(0.02)
        took = time.monotonic() - stopped
        print(f"takeover after {took:.2f}s (lease_ttl {LEASE_TTL}s)")
        assert took <= LEASE_TTL + 1.5  # the rule is lease_ttl + 1 s; half a second for a loaded CI machine
        for instance in instances:
            assert (await instance.wait(timeout=30))["status"] == "complete"
    finally:
        stop_all(a, *([b] if b else []))
        await client.stop()
