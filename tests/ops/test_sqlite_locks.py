"""SQLite's write lock held by a stopped process: readers go on, writers get a clear error.

A real worker process (``perdure.cli.worker``) stops itself with SIGSTOP inside a write
transaction (the test hook ``PERDURE_TEST_SIGSTOP_IN_WRITE``, :mod:`perdure.store._test_hooks`),
so it holds the write lock for as long as the test wants; the read commands of the real
``perdure`` CLI then run against the file, and writers meet the lock.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from perdure import Engine
from perdure.cli import main
from perdure.errors import DatabaseLockedError, ReadOnlyStoreError
from perdure.store import open_store
from perdure.store.sqlite_writer import lock_holder

from .sample_app import register

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc (locks, process states)"),
]
ROOT = Path(__file__).resolve().parents[2]
PERDURE = str(Path(sys.executable).parent / "perdure")
LAYOUT3 = ROOT / "tests" / "data" / "upgrade" / "sqlite-layout3.db"


async def _seed(url: str) -> None:
    """A file with a finished instance (steps and history), one waiting for an event, and a
    dead-lettered queue message; its engine is stopped, so no process has it open."""
    from perdure.triggers.queues import Queue

    engine = register(Engine(url, poll_interval=0.02))
    async with engine:
        done = await engine.binding("hello").create(id="seed", params={"name": "Ada"})
        assert (await done.wait(10))["status"] == "complete"
        await engine.binding("approval").create(id="waits")
        queue = Queue(engine, "jobs")
        await queue.send({"n": 1})
        (message,) = await queue.receive(1)
        assert await queue.dead_letter(message, "boom") == "dead"


def seed(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "locks.db"
    url = f"sqlite:///{path}"
    asyncio.run(_seed(url))
    return path, url


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def stopped_worker(tmp_path: Path) -> Iterator[tuple[Path, str, subprocess.Popen[bytes]]]:
    """A seeded file and a worker process stopped inside its first write transaction."""
    path, url = seed(tmp_path)
    env = {**os.environ, "PERDURE_TEST_DB": url, "PERDURE_TEST_SIGSTOP_IN_WRITE": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "perdure.cli.worker", "tests.ops.sample_app:engine"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while _state(worker.pid) != "T":
            assert worker.poll() is None, "the worker exited instead of stopping"
            assert time.monotonic() < deadline, "the worker never stopped"
            time.sleep(0.02)
        raw = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            raw.execute("BEGIN IMMEDIATE")  # the stopped worker holds the write lock
        raw.close()
        yield path, url, worker
    finally:
        worker.kill()  # SIGKILL ends a stopped process too
        worker.wait()


def _digest(path: Path) -> dict[str, str]:
    """The bytes of the database file and its WAL (the -shm is shared memory, not data; a
    reader may create an empty -wal, which holds nothing)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (path, path.with_name(path.name + "-wal"))
        if p.exists() and p.stat().st_size > 0
    }


READS = [
    ("workflows", "list"),
    ("workflows", "describe", "hello"),
    ("instances", "list", "hello"),
    ("instances", "describe", "hello", "seed"),
    ("instances", "describe", "approval", "latest"),
    ("queues", "list"),
    ("queues", "dead", "jobs"),
]


def test_read_commands_succeed_while_a_stopped_worker_holds_the_write_lock(
    stopped_worker: tuple[Path, str, subprocess.Popen[bytes]],
) -> None:
    path, url, worker = stopped_worker
    assert lock_holder(str(path)) == worker.pid  # /proc/locks names it
    before = _digest(path)
    started = time.monotonic()
    runs = [
        subprocess.Popen([PERDURE, "--json", *args, "--db", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in READS
    ]
    outputs = [run.communicate(timeout=30) for run in runs]
    elapsed = time.monotonic() - started
    for args, run, (_out, err) in zip(READS, runs, outputs, strict=True):
        assert run.returncode == 0, (args, err.decode())
    assert elapsed < 8  # none waited for the lock (the busy timeout is 10 s)
    assert b'"seed"' in outputs[2][0] and b'"greet"' in outputs[3][0] and b"boom" in outputs[6][0]
    assert _state(worker.pid) == "T"  # still holding it
    assert _digest(path) == before  # the reads wrote nothing


def _without_file_override() -> None:
    """In the child, before exec: drop root's power to write any file (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER from the bounding set), so that permissions bind it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_file_without_write_permission_can_be_listed(tmp_path: Path) -> None:
    path, url = seed(tmp_path)
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # 0444
    before = _digest(path)
    preexec = _without_file_override if os.geteuid() == 0 else None

    def perdure(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [PERDURE, *args, "--db", url], capture_output=True, text=True, timeout=30, preexec_fn=preexec
            )
        except subprocess.SubprocessError as exc:  # root that may not drop its capabilities
            pytest.skip(f"cannot run without CAP_DAC_OVERRIDE here: {exc}")

    listed = perdure("instances", "list", "hello")
    assert listed.returncode == 0, listed.stderr
    assert "seed" in listed.stdout
    assert perdure("workflows", "list").returncode == 0
    assert perdure("instances", "describe", "hello", "seed").returncode == 0
    written = perdure("workflows", "trigger", "hello")  # a write says why it cannot
    assert written.returncode == 1
    assert "cannot be written" in written.stderr and str(path) in written.stderr, written.stderr
    assert "Traceback" not in written.stderr and len(written.stderr.strip().splitlines()) == 1
    assert _digest(path) == before


async def test_a_writer_blocked_by_the_lock_is_told_which_process_holds_it(
    stopped_worker: tuple[Path, str, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, url, worker = stopped_worker
    engine = register(Engine(url, busy_timeout_ms=300))
    started = time.monotonic()
    with pytest.raises(DatabaseLockedError) as caught:
        await engine.binding("hello").create(id="blocked")
    assert time.monotonic() - started < 3
    error = caught.value
    assert error.pid == worker.pid and error.path == str(path)
    message = str(error)
    assert f"process {worker.pid} (" in message and "perdure.cli.worker" in message and "stopped" in message
    assert f"kill -CONT {worker.pid}" in message and "PostgreSQL" in message and "waited 0.3 s" in message
    await engine.stop()

    # The CLI prints it as one line and exits 1, no traceback.
    import perdure.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "DEFAULT_BUSY_TIMEOUT_MS", 300)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["workflows", "trigger", "hello", "--db", url], catch_exceptions=False
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"process {worker.pid} (" in lines[0] and "is locked" in lines[0], result.stderr
    assert "Traceback" not in result.output


async def test_a_waiting_write_leaves_the_event_loop_free_and_goes_through_once_the_lock_is_let_go(
    stopped_worker: tuple[Path, str, subprocess.Popen[bytes]],
) -> None:
    """A server on the file (reads and writes in one process) keeps answering reads while its
    write waits for the lock; the write commits once the stopped worker goes on."""
    _path, url, worker = stopped_worker
    engine = register(Engine(url))  # the default wait: 10 s
    store = await engine.ensure_store()
    write = asyncio.create_task(engine.binding("hello").create(id="after-the-lock"))
    await asyncio.sleep(0.3)
    assert not write.done()  # waiting for the lock...
    started = time.monotonic()
    for _ in range(20):  # ...while the loop goes on: reads, timers
        assert await store.get_instance("hello", "seed") is not None
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < 1.0
    os.kill(worker.pid, signal.SIGCONT)  # the worker commits and lets go
    instance = await asyncio.wait_for(write, 5)
    assert instance.id == "after-the-lock"
    await engine.stop()


def test_a_writer_names_the_holder_of_a_rollback_journal_lock(tmp_path: Path) -> None:
    """A file another tool keeps in rollback-journal mode: the lock is on the file itself."""
    path = tmp_path / "rollback.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA journal_mode = DELETE'); c.execute('CREATE TABLE t (x)')\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO t VALUES (1)')\n"
            "os.kill(os.getpid(), signal.SIGSTOP)\n",
            str(path),
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while _state(holder.pid) != "T":
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        store = open_store(f"sqlite:///{path}", busy_timeout_ms=200)
        with pytest.raises(DatabaseLockedError) as caught:
            asyncio.run(store.open())  # switching it to WAL needs the lock
        assert caught.value.pid == holder.pid and f"kill -CONT {holder.pid}" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


async def test_a_read_only_store_refuses_writes_and_old_layouts(tmp_path: Path) -> None:
    path, url = await asyncio.to_thread(seed, tmp_path)
    store = open_store(url, read_only=True)
    assert (await store.get_instance("hello", "seed")) is not None
    from perdure.records import NewInstance

    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        await store.create_instances("hello", [NewInstance("x", "{}", "api")], 0.0, skip_existing=False)
    await store.close()

    old = tmp_path / "layout3.db"
    shutil.copy(LAYOUT3, old)
    before = old.read_bytes()
    with pytest.raises(ReadOnlyStoreError, match="has layout 3 .* upgrades in place"):
        await open_store(f"sqlite:///{old}", read_only=True).open()
    assert old.read_bytes() == before  # not upgraded
    with pytest.raises(ReadOnlyStoreError, match="no database file"):
        await open_store(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True).open()
    assert not (tmp_path / "missing.db").exists()
