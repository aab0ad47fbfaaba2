"""Flow control (perdure.flow) across real worker processes on one PostgreSQL schema.

``python -m perdure.cli.worker tests.postgres.flow_worker:make_engine`` processes share a fresh
schema; their steps record every execution (instance, step, pid, start, end; ``time.time()``
in each process, one clock on one machine) in the ``effects`` table, and the test checks from
those records, across all processes, that a workflow's ``concurrency`` and
``concurrency_per_key`` held while a worker was SIGKILLed mid-run and the others took over,
and that a step rate limit held across two processes.

**What "running" means here, and what is asserted.** The engine's limit is on instances whose
status is ``running`` in the database: one counts from its claim until its run suspends or ends,
and while its worker is dead it still counts (the claim takes over expired runs *within* the
slot they hold: a dead run's slot passes to its successor, it is never freed and taken twice).
The records give, per instance, a set of *runs*: consecutive executions in one process, from
the first one's start to the last one's end. Each run lies inside a time the instance was
``running`` (its claim precedes its first step, and it is still running when its last step
ends), except for the run of a SIGKILLed worker, whose step in flight never recorded its end.
Such a run (one with an execution left open, or followed by a run of that instance in another
process) is taken to last until ``min(killed at + lease_ttl, the start of the instance's next
run)``: the instance was ``running`` all that time (its lease, renewed at most at the kill,
ran out by ``killed at + lease_ttl`` at the latest, and until another worker claimed it again,
it stayed ``running`` under the dead owner), so this is still inside the engine's definition,
and it is longer than the time the dead process really ran. Only a killed worker may leave an
execution open (a cancelled body records its end in ``finally``).

The union of an instance's runs is then a subset of the times it was ``running``, so "at most
N instances have a run open at any moment" follows from the engine's limit, and a claim that
broke the limit shows as N + 1 overlapping instances (steps last 100 ms; claims take
milliseconds). Asserted: at most ``CAP`` instances at once and (``keyed``) at most one per key,
and also that the limit was reached (the workers did run ``CAP`` at once: the check is not
vacuous). An end at ``t`` closes before a start at ``t`` opens.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from perdure import Engine
from tests.postgres.flow_worker import (
    CAP,
    RATE_LIMIT,
    RATE_PERIOD,
    SLOTS_TABLE,
    SPAN_OUTPUT,
    SPAN_STEPS,
    Metered,
    Spans,
)
from tests.postgres.helpers import Schema, Worker, new_app_name, wait_all_complete

pytestmark = pytest.mark.slow

LEASE_TTL = 1.0
INSTANCES = 30
KEYS = 6
METERED = ("metered", "metered-a", "metered-b")  # run by both workers, by the first, by the second
HOT = 12  # of the keyed test's instances, the first HOT (the oldest) share the key tenant-0

Span = tuple[float, float]


class FlowWorker(Worker):
    """A worker subprocess running ``tests.postgres.flow_worker``, with a short lease."""

    APP = "tests.postgres.flow_worker:make_engine"

    def __init__(self, url: str, effects_url: str, log: Path, **env: str) -> None:
        super().__init__(url, effects_url, log, PERDURE_TEST_LEASE_TTL=str(LEASE_TTL), **env)


def client(schema: Schema) -> Engine:
    """An engine that is never started: it creates instances and reads them."""
    engine = Engine(schema.url(application_name="perdure_test_client"))
    engine.register(Spans, name="capped", concurrency=CAP)
    engine.register(Spans, name="keyed", concurrency=CAP, concurrency_per_key=1)
    for name in METERED:
        engine.register(Metered, name=name)
    return engine


def max_overlap(spans: list[Span]) -> int:
    """The most spans open at one time (an end at t closes before a start at t opens)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def union(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def running_spans(rows: list[tuple[Any, ...]], killed: dict[int, float], lease_ttl: float) -> dict[str, list[Span]]:
    """Per instance, the union of its runs (see the module doc) from ``effects`` rows
    ``(instance, step, pid, started, ended)``; ``killed``: pid -> when it was SIGKILLed."""
    by_instance: dict[str, list[tuple[float, float | None, int]]] = defaultdict(list)
    for instance, _, pid, started, ended in rows:
        assert ended is not None or pid in killed, f"{instance}: an execution in live worker {pid} never ended"
        by_instance[instance].append((started, ended, pid))
    result: dict[str, list[Span]] = {}
    for instance, executions in by_instance.items():
        executions.sort()
        runs: list[list[tuple[float, float | None, int]]] = []
        for execution in executions:  # consecutive executions in one process: one run
            if runs and runs[-1][-1][2] == execution[2]:
                runs[-1].append(execution)
            else:
                runs.append([execution])
        spans: list[Span] = []
        for n, run in enumerate(runs):
            pid = run[0][2]
            start = run[0][0]
            end = max(e if e is not None else s for s, e, _ in run)
            cut_short = any(e is None for _, e, _ in run) or n + 1 < len(runs)
            if pid in killed and cut_short:
                held = killed[pid] + lease_ttl
                if n + 1 < len(runs):
                    held = min(held, runs[n + 1][0][0])
                end = max(end, held)
            spans.append((start, end))
        result[instance] = union(spans)
    return result


def check_outputs(schema: Schema, workflow: str, n: int) -> None:
    """Every instance complete with the exact output; every step stored once with its result."""
    outputs = schema.query("SELECT id, status, output FROM instances WHERE workflow = %s", (workflow,))
    assert len(outputs) == n
    assert {(status, output) for _, status, output in outputs} == {("complete", str(SPAN_OUTPUT))}
    steps = schema.query(
        "SELECT i.id, s.name, s.count, s.status, s.result FROM steps s JOIN instances i ON i.pk = s.instance_pk"
        " WHERE i.workflow = %s",
        (workflow,),
    )
    assert len(steps) == n * SPAN_STEPS
    assert len({(instance, name, count) for instance, name, count, _, _ in steps}) == n * SPAN_STEPS
    for _, name, count, status, result in steps:
        i = int(name.split("-")[1])
        assert (count, status, result) == (1, "complete", str(i + 1))


def check_reruns(rows: list[tuple[Any, ...]], victim: int) -> int:
    """A step body ran more than once only because the victim's execution of it was cut short
    (at least once, never twice otherwise); returns how many instances moved off the victim."""
    executions: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for instance, step, pid, started, _ in rows:
        executions[(instance, step)].append((started, pid))
    for key, runs in executions.items():
        runs.sort()
        assert all(pid == victim for _, pid in runs[:-1]), f"{key} ran again after a live worker: {runs}"
    moved = set()
    by_instance: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for instance, _, pid, started, _ in rows:
        by_instance[instance].append((started, pid))
    for instance, seen in by_instance.items():  # the victim ran it, and then another worker did
        pids = [pid for _, pid in sorted(seen)]
        if victim in pids and pids[-1] != victim:
            moved.add(instance)
    return len(moved)


async def kill_one_mid_step(schema: Schema, workers: list[FlowWorker], after_ended: int) -> tuple[int, float]:
    """Once ``after_ended`` executions have ended, SIGKILL a worker that has one in flight;
    its pid and (after reaping it) the time it was dead by."""
    pids = {w.pid: w for w in workers}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (ended,) = schema.query("SELECT count(*) FROM effects WHERE ended IS NOT NULL")[0]
        if ended >= after_ended:
            open_in = [pid for (pid,) in schema.query("SELECT pid FROM effects WHERE ended IS NULL") if pid in pids]
            if open_in:
                victim = pids[open_in[0]]
                victim.signal(signal.SIGKILL)
                victim.kill()  # reap it
                workers.remove(victim)
                return victim.pid, time.time()
        await asyncio.sleep(0.02)
    raise AssertionError("no worker had a step in flight")


async def run_killing_one(
    schema: Schema, tmp_path: Path, workflow: str, create: list[Mapping[str, Any]], *, remote: bool
) -> tuple[int, float]:
    """Three workers run ``create``; one is SIGKILLed mid-step. ``remote``: the workers pose as
    processes on other machines, so the dead one's instances are taken over by the other two
    only when its leases run out; otherwise a replacement is started, and the dead pid frees
    them at once. Returns the victim's pid and when it was dead."""
    engine = client(schema)
    app = new_app_name()
    spawned = 0

    def spawn() -> FlowWorker:
        nonlocal spawned
        spawned += 1
        env = {"PERDURE_TEST_OWNER_HOST": f"elsewhere-{spawned}.example"} if remote else {}
        return FlowWorker(schema.url(application_name=app), schema.effects_url(), tmp_path / f"w{spawned}.log", **env)

    workers = [spawn() for _ in range(3)]
    try:
        for worker in workers:
            worker.wait_running()
        await engine.binding(workflow).create_batch(create)
        victim, died_at = await kill_one_mid_step(schema, workers, after_ended=3 * CAP * SPAN_STEPS)
        if not remote:
            workers.append(spawn())
        await wait_all_complete(engine, workflow, len(create), timeout=25)
    finally:
        for worker in workers:
            worker.stop()
        await engine.stop()
    return victim, died_at


async def test_concurrency_holds_across_workers_when_one_is_killed(schema: Schema, tmp_path: Path) -> None:
    """``concurrency=3`` over three workers "on three machines"; one is SIGKILLed mid-step and the
    other two take its instances over when their leases run out. All 30 complete once, and at
    no moment did more than 3 instances run (see the module doc for how a killed run counts)."""
    create: list[Mapping[str, Any]] = [{"id": f"c{i:02d}"} for i in range(INSTANCES)]
    victim, died_at = await run_killing_one(schema, tmp_path, "capped", create, remote=True)
    check_outputs(schema, "capped", INSTANCES)
    rows = schema.query(
        "SELECT e.instance, e.step, e.pid, e.started, e.ended FROM effects e"
        " JOIN instances i ON i.id = e.instance AND i.workflow = 'capped'"
    )
    assert check_reruns(rows, victim) >= 1  # the kill did interrupt runs, which went on elsewhere
    spans = running_spans(rows, {victim: died_at}, LEASE_TTL)
    assert len(spans) == INSTANCES
    assert max_overlap([s for runs in spans.values() for s in runs]) == CAP  # never more; and reached
    # (How the work spreads over the workers is up to their claims: one may take all 3 slots.)


async def test_concurrency_per_key_holds_across_workers_when_one_is_killed(schema: Schema, tmp_path: Path) -> None:
    """``concurrency=3, concurrency_per_key=1`` over three workers, 30 instances on 6 keys (12 on
    one of them, created first); one worker is SIGKILLed mid-step and a replacement started (the
    dead pid frees its instances at once). All complete once; at most 3 ran at once, and never
    two of one key."""
    # A hot key: the oldest 12 instances are tenant-0's, so a claim by age alone would run
    # them side by side; the other 18 are spread over tenant-1..5.
    keyed = [0] * HOT + [1 + i % (KEYS - 1) for i in range(INSTANCES - HOT)]
    create: list[Mapping[str, Any]] = [
        {"id": f"k{i:02d}", "concurrency_key": f"tenant-{key}"} for i, key in enumerate(keyed)
    ]
    victim, died_at = await run_killing_one(schema, tmp_path, "keyed", create, remote=False)
    check_outputs(schema, "keyed", INSTANCES)
    keys = dict(schema.query("SELECT id, concurrency_key FROM instances WHERE workflow = 'keyed'"))
    assert set(keys.values()) == {f"tenant-{k}" for k in range(KEYS)}
    rows = schema.query(
        "SELECT e.instance, e.step, e.pid, e.started, e.ended FROM effects e"
        " JOIN instances i ON i.id = e.instance AND i.workflow = 'keyed'"
    )
    assert check_reruns(rows, victim) >= 1
    spans = running_spans(rows, {victim: died_at}, LEASE_TTL)
    assert len(spans) == INSTANCES
    assert max_overlap([s for runs in spans.values() for s in runs]) == CAP
    per_key: dict[str, list[Span]] = defaultdict(list)
    for instance, runs in spans.items():
        per_key[keys[instance]].extend(runs)
    overlaps = {key: max_overlap(runs) for key, runs in per_key.items()}
    assert overlaps == {key: 1 for key in per_key}, overlaps


def create_slots_table(schema: Schema) -> None:
    with psycopg.connect(schema.effects_url(), autocommit=True) as conn:
        conn.execute(sql.SQL(SLOTS_TABLE).format(schema=sql.Identifier(schema.name)))


async def test_step_rate_limit_is_shared_by_two_workers(schema: Schema, tmp_path: Path) -> None:
    """``engine.rate_limit("api", limit=5, period=1 s)`` in two workers; 30 instances each call
    the limited step once: 10 of a workflow both workers run, and 10 each of a workflow only one
    of them runs (so both surely take slots). Asserted, across both processes:

    * all complete, each with one stored step and one attempt (none failed for its slot);
    * the slots the store handed out (every ``reserve_rate_slot`` answer, logged by the workers):
      one per attempt, and at most 5 in any half-open window of 1 s (``s[i + 5] - s[i] >= 1``
      in time order); both workers took some;
    * every attempt started at or after its slot (the instance waited for it);
    * every attempt started within 0.75 s of its slot, so the starts keep the slots' spacing
      less that delay: at most 5 in any window of ``1 s - max delay``. The plain "at most 5
      starts in any 1 s" is NOT asserted: it is not what the engine promises, and it does not
      hold (see the comment at the assertion);
    * the limit did not hold them back longer than needed: 30 calls at 5/s end within ~6 s.
    """
    create_slots_table(schema)
    engine = client(schema)
    app = new_app_name()
    workers = [
        FlowWorker(
            schema.url(application_name=app), schema.effects_url(), tmp_path / f"{tag}.log", PERDURE_TEST_WORKER_TAG=tag
        )
        for tag in ("a", "b")
    ]
    each = INSTANCES // len(METERED)
    try:
        for worker in workers:
            worker.wait_running()
        began = time.time()
        for name in METERED:
            await engine.binding(name).create_batch([{"id": f"{name}-{i:02d}"} for i in range(each)])
        for name in METERED:
            await wait_all_complete(engine, name, each, timeout=25)
    finally:
        for worker in workers:
            worker.stop()
        await engine.stop()
    outputs = schema.query("SELECT pk, id, status, output FROM instances")
    assert len(outputs) == INSTANCES
    assert {(status, output) for _, iid, status, output in outputs} == {
        ("complete", f'"{iid}"') for _, iid, _, _ in outputs
    }
    ids = {pk: iid for pk, iid, _, _ in outputs}
    steps = schema.query("SELECT instance_pk, name, count, status, attempts FROM steps")
    assert sorted((pk, name, count, status) for pk, name, count, status, _ in steps) == sorted(
        (pk, "call", 1, "complete") for pk in ids
    )
    assert all(len(json.loads(attempts)) == 1 for *_, attempts in steps)  # none failed, none lost

    # The slot log: one slot per holder (a holder asking again gets the same slot back).
    slots: dict[str, float] = {}
    slot_pids = set()
    for holder, at, pid in schema.query("SELECT holder, at, pid FROM slots ORDER BY id"):
        assert slots.setdefault(holder, at) == at, f"{holder} got two slots"
        slot_pids.add(pid)
    assert len(slots) == INSTANCES  # one attempt each
    assert slot_pids == {w.pid for w in workers}  # the limit was shared by both processes
    times = sorted(slots.values())
    gaps = [times[i + RATE_LIMIT] - times[i] for i in range(len(times) - RATE_LIMIT)]
    assert min(gaps) >= RATE_PERIOD - 1e-6, f"{RATE_LIMIT + 1} slots within {min(gaps):.3f}s"

    # Each attempt at or after its slot; its delay after it.
    attempts = schema.query("SELECT instance, pid, started FROM effects")
    assert len(attempts) == INSTANCES
    started = {instance: at for instance, _, at in attempts}
    slot_of = {ids[int(holder.split(":")[0])]: at for holder, at in slots.items()}
    delays = {instance: started[instance] - slot_of[instance] for instance in started}
    assert min(delays.values()) >= -1e-3, delays  # never before its slot (1 ms: the clock's resolution)
    # Started soon after its slot: within a claim round or two of it when the workers are not
    # flooded (here 30 instances: ~0.01-0.12 s; the margin is for a loaded machine). Under a
    # flood the delay grows to the order of the period: see bench/bench_flow_control.py.
    max_delay = max(delays.values())
    assert max_delay < 0.75, delays
    # So the starts keep the slots' spacing less the delay: an attempt starts a little after its
    # slot (at once if the slot was free when asked, else when a worker claims the woken
    # instance), so starts in a window of 1 s - max delay have their slots in one of 1 s. (This
    # follows from the slot and delay checks above; it checks the two records agree.)
    starts = sorted(started.values())
    shifted = RATE_PERIOD - max_delay
    closest = min(starts[i + RATE_LIMIT] - starts[i] for i in range(len(starts) - RATE_LIMIT))
    assert closest >= shifted - 1e-3, f"attempts closer than their slots allow: max delay {max_delay:.3f}s"
    # NOT asserted: "at most RATE_LIMIT attempts *started* in any 1 s window" (closest >= 1 s).
    # The engine promises the slots (docs/guides/flow-control.md says so), and an attempt starts
    # at or after its slot, later by the worker's delay in starting it: a batch that started
    # late (woken by a claim ~50-100 ms after its slot) next to one that started at once puts
    # RATE_LIMIT + 1 starts in under a second (seen: six within 0.91-0.95 s, the slots exactly
    # 1 s apart). Reservations once read the time before queueing for the limiter's lock, and
    # under a flood (bench/bench_flow_control.py, 500 instances at 50/s) handed out slots up to
    # 1.7 s in the past; they read it under the lock now (max delay 0.35 s in that bench).
    # The limit did not hold them back longer than needed: 30 calls at 5/s take ~5 s.
    assert starts[-1] - began < (INSTANCES / RATE_LIMIT - 1) * RATE_PERIOD + 3
