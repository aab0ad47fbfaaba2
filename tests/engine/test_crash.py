"""Kill -9 a worker process repeatedly mid-workflow; nothing is lost, nothing recorded twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.engine import util
from tests.engine.crash_worker import STEPS, make_engine
from tests.engine.util import until_status

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, effects: Path) -> subprocess.Popen[str]:
    return util.start_worker("tests.engine.crash_worker", url, str(effects))


async def test_sigkill_during_50_instances_of_20_steps(db_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    client = make_engine(db_url, str(effects))  # never started: a client that creates instances
    binding = client.binding("twenty")
    instances = await binding.create_batch([{"id": f"job-{n}"} for n in range(50)])
    kills = 0
    worker = start_worker(db_url, effects)
    try:
        for delay in (0.3, 0.5, 0.4, 0.6):
            await asyncio.sleep(delay)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            kills += 1
            worker = start_worker(db_url, effects)
        deadline = time.monotonic() + 60
        for instance in instances:
            status = await instance.wait(timeout=max(0.1, deadline - time.monotonic()))
            assert status == {"status": "complete", "output": sum(range(STEPS)), "error": None}
    finally:
        worker.kill()
        worker.wait()
    lines = effects.read_text().split()
    executions = Counter(zip(lines[1::3], lines[2::3], strict=False))
    pids = set(lines[0::3])
    assert kills == 4 and len(pids) == 5  # every worker did some of the work
    assert len(executions) == 50 * STEPS  # every step's side effect happened
    assert max(executions.values()) <= 2  # at most once more, for the step a kill interrupted
    repeated = sum(1 for n in executions.values() if n == 2)
    assert repeated <= kills * 5  # only steps in flight at a kill (5 running instances) re-ran
    for instance in instances:
        steps = await client.store.load_steps(instance.pk)
        assert sorted((s.name, s.count, s.status) for s in steps) == sorted(
            (f"step-{i}", 1, "complete") for i in range(STEPS)
        )
    await client.stop()


async def test_another_process_controls_instances_the_worker_runs(db_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    client = make_engine(db_url, str(effects))
    binding = client.binding("twenty")
    worker = start_worker(db_url, effects)
    try:
        doomed = await binding.create(id="doomed")
        paused = await binding.create(id="paused")
        while not effects.exists() or effects.read_text().count(" paused ") < 2:
            await asyncio.sleep(0.01)
        await doomed.terminate()
        await paused.pause()
        await asyncio.sleep(0.5)
        assert (await doomed.status())["status"] == "terminated"
        assert (await paused.status())["status"] == "paused"
        done_before = effects.read_text().count(" paused ")
        await asyncio.sleep(0.3)
        assert effects.read_text().count(" paused ") == done_before  # no step runs while paused
        await paused.resume()
        assert (await paused.wait(10))["status"] == "complete"
        assert effects.read_text().count(" doomed ") < STEPS
    finally:
        worker.kill()
        worker.wait()
        await client.stop()


async def test_sleeps_and_waits_keep_their_deadlines_across_sigkill(db_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    client = make_engine(db_url, str(effects))
    binding = client.binding("napper")
    worker = start_worker(db_url, effects)
    try:
        instances = await binding.create_batch([{"id": f"nap-{n}"} for n in range(5)])
        for instance in instances:
            await until_status(instance, "waiting")
        os.kill(worker.pid, signal.SIGKILL)  # every instance is asleep in the database now
        worker.wait()
        for instance in instances:
            await instance.send_event("approval", instance.id)  # sent while no worker runs
        await asyncio.sleep(1.5)
        worker = start_worker(db_url, effects)
        for instance in instances:
            status = await instance.wait(10)
            assert status["status"] == "complete"
            # Started over at the restart, it would have slept >= 1.5 + 2 s.
            assert 2.0 <= status["output"]["slept"] < 3.2
            assert status["output"]["approval"] == instance.id
    finally:
        worker.kill()
        worker.wait()
        await client.stop()


async def test_an_idle_worker_takes_over_from_a_worker_killed_mid_run(db_url: str, tmp_path: Path) -> None:
    """Two workers; the one running the only instance is SIGKILLed. Nothing else is written,
    so only the survivor's own sweep can find the orphan: it must, within about a lease."""
    effects = tmp_path / "effects.log"
    client = make_engine(db_url, str(effects))
    workers = [start_worker(db_url, effects), start_worker(db_url, effects)]
    try:
        instance = await client.binding("twenty").create(id="orphan")
        owner = None
        for _ in range(500):
            record = await client.store.get_instance("twenty", "orphan")
            if record is not None and record.owner:
                owner = record.owner
                break
            await asyncio.sleep(0.01)
        assert owner is not None
        victim = next(w for w in workers if f":{w.pid}:" in owner)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        status = await instance.wait(timeout=15)  # lease_ttl 3 s: well within
        assert status == {"status": "complete", "output": sum(range(STEPS)), "error": None}
        record = await client.store.get_instance("twenty", "orphan")
        assert record is not None and record.owner != owner
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    await client.stop()


async def test_sigkill_during_a_rollback_resumes_it_and_no_handler_runs_twice_after_it_finished(
    db_url: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    effects.touch()
    client = make_engine(db_url, str(effects))
    instances = await client.binding("saga").create_batch([{"id": f"trip-{n}"} for n in range(3)])
    worker = start_worker(db_url, effects)
    try:
        deadline = time.monotonic() + 20
        while effects.read_text().count("undo-2-start") < 3:  # every trip is inside its rollback
            assert time.monotonic() < deadline, effects.read_text()
            await asyncio.sleep(0.01)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        worker = start_worker(db_url, effects)
        for instance in instances:
            status = await instance.wait(timeout=30)
            assert status["status"] == "errored"
            assert status["error"] == {"name": "RuntimeError", "message": "the trip is off"}
    finally:
        worker.kill()
        worker.wait()
    lines = [line.split() for line in effects.read_text().splitlines()]
    for n in range(3):
        log = [what for _, trip, what in lines if trip == f"trip-{n}"]
        starts = [w.split("-")[1] for w in log if w.endswith("-start")]
        ends = [w.split("-")[1] for w in log if w.endswith("-end")]
        assert ends == ["4", "3", "2", "1", "0"]  # every handler finished once, newest step first
        assert sorted(set(starts), reverse=True) == ["4", "3", "2", "1", "0"]
        assert len(starts) - len(set(starts)) <= 1  # only the handler the kill interrupted started again
        steps = await client.store.load_steps(instances[n].pk)
        assert sorted(s.name for s in steps if s.kind == "rollback") == [f"book-{i}" for i in range(5)]
    await client.stop()


async def test_sigkill_while_a_run_takes_a_backlog_of_events(db_url: str, tmp_path: Path) -> None:
    """Takes of events read ahead commit lazily (perdure.store.event_prefetch): killed mid-way,
    the new worker takes every event exactly once, in order, and nothing is recorded twice."""
    effects = tmp_path / "effects.log"
    client = make_engine(db_url, str(effects))
    binding = client.binding("fanin")
    instance = await binding.create(id="fan", params={"n": 600})
    for i in range(600):
        await instance.send_event("item", i)
    kills = 0
    worker = start_worker(db_url, effects)
    try:
        for delay in (0.4, 0.3):
            await asyncio.sleep(delay)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            kills += 1
            worker = start_worker(db_url, effects)
        status = await instance.wait(timeout=60)
    finally:
        worker.kill()
        worker.wait()
    assert status["status"] == "complete" and status["output"] == list(range(600))
    lines = effects.read_text().splitlines()
    took = Counter(line.split()[2] for line in lines)
    assert len({line.split()[0] for line in lines}) >= 2  # the kills came mid-way: workers shared it
    assert set(took) == {f"took-{i}-{i}" for i in range(600)}  # event i went to wait i, always
    assert max(took.values()) <= 2 and sum(took.values()) - 600 <= kills  # only in-flight steps re-ran
    steps = await client.store.load_steps(instance.pk)
    waits = sorted((s for s in steps if s.kind == "waitForEvent"), key=lambda s: int(s.name.split("-")[1]))
    assert [s.result["payload"] for s in waits] == list(range(600))
    assert not await client.store.has_event(instance.pk, "item")  # every event consumed, once
    await client.stop()
