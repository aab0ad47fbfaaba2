"""Helpers for the PostgreSQL multi-process tests: a schema per test, worker subprocesses
(``python -m perdure.cli.worker tests.postgres.app:make_engine``), and reading the results."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from perdure import Engine
from tests.pg import drop_schema, new_schema_name, require_server, server_url, with_params
from tests.postgres.app import EFFECTS_TABLE

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Schema:
    """A fresh schema on the test server, with the ``effects`` table the test app writes to."""

    name: str = field(default_factory=new_schema_name)

    def url(self, **params: str) -> str:
        """The store URL for this schema (extra libpq parameters, e.g. ``application_name``)."""
        return with_params(server_url(), schema=self.name, **params)

    def effects_url(self) -> str:
        return with_params(server_url(), options=f"-csearch_path={self.name}", application_name="perdure_test_fx")

    def create(self) -> None:
        require_server()
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL(EFFECTS_TABLE).format(schema=sql.Identifier(self.name)))

    def drop(self) -> None:
        drop_schema(self.name)

    def query(self, text: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Rows of ``text`` run with this schema first on the search path."""
        with psycopg.connect(self.effects_url(), autocommit=True) as conn:
            return conn.execute(text, params).fetchall()


class Worker:
    """One worker subprocess of the app ``APP`` (``module:factory``); its log goes to ``log``."""

    APP = "tests.postgres.app:make_engine"

    def __init__(self, url: str, effects_url: str, log: Path, **env: str) -> None:
        self.log = log
        self.log_file = open(log, "ab")  # closed by stop() or kill()
        environment = {
            **os.environ,
            "PERDURE_TEST_URL": url,
            "PERDURE_TEST_EFFECTS_URL": effects_url,
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perdure.cli.worker", self.APP, "--log-level", "INFO"],
            cwd=ROOT,
            env=environment,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def wait_running(self, timeout: float = 20.0) -> None:
        """Until the worker logged that its engine runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"running" in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.pid} exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"worker {self.pid} did not start within {timeout}s:\n{self.log.read_text()}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log_file.close()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def new_app_name() -> str:
    return f"perdure_w_{uuid.uuid4().hex[:12]}"


def terminate_backends(application_name: str) -> int:
    """Kill, server-side, every connection of ``application_name`` (only ours: the name is
    unique to the test). Returns how many were killed."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND application_name = %s",
            (application_name,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def overlapping(intervals: list[tuple[float, float]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pairs of intervals that overlap (each touching pair reported once)."""
    ordered = sorted(intervals)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]]


async def wait_all_complete(engine: Engine, workflow: str, n: int, timeout: float) -> None:
    """Until ``n`` instances of ``workflow`` are complete (none errored); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = (await engine.store.count_by_status(workflow)).get(workflow, {})
        if counts.get("complete", 0) == n:
            return
        assert not counts.get("errored"), counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all {n} instances completed within {timeout}s: {counts}")
