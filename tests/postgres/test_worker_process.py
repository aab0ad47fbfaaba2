"""``python -m perdure.cli.worker``: graceful stop, waiting for the database, bad app strings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.postgres.helpers import ROOT, Schema, Worker, new_app_name
from tests.postgres.proxy import Proxy
from tests.postgres.test_workers import client, until

pytestmark = pytest.mark.slow


def test_a_bad_app_string_exits_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "perdure.cli.worker", "no_such_module_xyz:engine"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no_such_module_xyz" in result.stderr


async def test_sigterm_hands_running_instances_back(schema: Schema, tmp_path: Path) -> None:
    """A worker stopped with SIGTERM mid-step releases its instance at once (no lease to wait
    for); the next worker runs it to completion."""
    engine = client(schema)
    env = {"PERDURE_TEST_LEASE_TTL": "30"}  # a takeover by lease expiry would take far longer
    first = Worker(schema.url(application_name=new_app_name()), schema.effects_url(), tmp_path / "1.log", **env)
    try:
        first.wait_running()
        instance = await engine.binding("long").create(id="handed-back")
        await until(lambda: schema.query("SELECT 1 FROM effects"), timeout=10)
        assert first.stop() == 0
        record = await instance.record()
        assert (record.status, record.owner) == ("waiting", None)  # due at once, nobody's
        second = Worker(schema.url(application_name=new_app_name()), schema.effects_url(), tmp_path / "2.log", **env)
        try:
            started = time.monotonic()
            status = await instance.wait(timeout=20)
            assert status == {"status": "complete", "output": second.pid, "error": None}
            assert time.monotonic() - started < 15
        finally:
            second.stop()
    finally:
        first.stop()
        await engine.stop()


async def test_a_worker_waits_for_the_database_to_come_up(schema: Schema, tmp_path: Path) -> None:
    engine = client(schema)
    with Proxy(os.environ.get("PERDURE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")) as proxy:
        proxy.down()
        worker = Worker(
            proxy.url(schema=schema.name, application_name=new_app_name()), schema.effects_url(), tmp_path / "w.log"
        )
        try:
            await asyncio.sleep(2.0)
            assert worker.proc.poll() is None  # still trying
            assert b"cannot start" in worker.log.read_bytes()
            proxy.up()
            worker.wait_running(timeout=30)
            instance = await engine.binding("chain").create(id="after-outage")
            status = await instance.wait(timeout=30)
            assert status["status"] == "complete"
        finally:
            assert worker.stop() == 0
            await engine.stop()
