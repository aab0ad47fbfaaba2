"""The pytest plugin (entry point ``pytest11``): its fixtures in a pytest session of their own,
which finds them only through the installed entry point (no conftest, no -p)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perdure import Engine
from perdure.testing import ManualClock
from tests.pg import drop_schema, require_server, schema_exists, server_url

INNER = """
import time

import pytest
from perdure import EventTimeoutError, WorkflowEntrypoint
from perdure.testing import ManualClock, introspect_workflow_instance


class Month(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.sleep("a month", "30 days")
        try:
            await step.wait_for_event("answer", "answer", timeout="1 hour")
        except EventTimeoutError:
            return "no answer"


@pytest.mark.asyncio
async def test_time_skipping(perdure_engine, perdure_time_skipping):
    assert perdure_engine.clock is perdure_time_skipping and perdure_engine.is_running
    month = perdure_engine.register(Month, name="month")
    real = time.perf_counter()
    result = await (await month.create()).wait(timeout=10)
    assert result["output"] == "no answer" and time.perf_counter() - real < 1.0


@pytest.mark.asyncio
async def test_modifiers(perdure_engine):
    assert not isinstance(perdure_engine.clock, ManualClock)
    month = perdure_engine.register(Month, name="month")
    async with introspect_workflow_instance(month, "m") as instance:
        async def setup(m):
            await m.disable_sleeps()
            await m.force_event_timeout({"name": "answer"})
        await instance.modify(setup)
        await month.create(id="m")
        await instance.wait_for_status("complete")


@pytest.mark.asyncio
async def test_more_engines(perdure_make_engine):
    first, second = perdure_make_engine(), perdure_make_engine(fast_wait=0)
    assert first.url == second.url and second.fast_wait == 0


@pytest.mark.asyncio
async def test_postgres(perdure_postgres_engine):
    with open("schema.txt", "w") as out:
        out.write(perdure_postgres_engine.store.schema)
    month = perdure_postgres_engine.register(Month, name="month")
    async with introspect_workflow_instance(month, "m") as instance:
        await instance.modify(lambda m: m.disable_sleeps())
        await month.create(id="m")
        await instance.wait_for_status("waiting")
"""


def run_inner(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(INNER)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )  # the plugin's own decorator
    env = {k: v for k, v in os.environ.items() if k not in ("PERDURE_TEST_POSTGRES_URL", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_fixtures_come_from_the_installed_entry_point(tmp_path: Path) -> None:
    done = run_inner(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed, 1 skipped" in done.stdout
    assert "no PostgreSQL server configured" in done.stdout  # skipped, and says why


def test_the_postgres_fixture_uses_a_fresh_schema_of_the_configured_server(tmp_path: Path) -> None:
    require_server()
    done = run_inner(tmp_path, "-k", "postgres", f"--perdure-postgres-url={server_url()}")
    schema = (tmp_path / "schema.txt").read_text() if (tmp_path / "schema.txt").exists() else None
    left = schema is not None and schema_exists(schema)
    if left:
        drop_schema(schema)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert schema is not None and schema.startswith("perdure_pytest_")
    assert not left, "the fixture left its schema behind"


def test_the_plugin_is_loaded_here_too_and_its_fixtures_are_lazy(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("perdure")
    assert "perdure_engine" not in request.fixturenames


async def test_perdure_engine_with_time_skipping(perdure_engine: Engine, perdure_time_skipping: ManualClock) -> None:
    assert perdure_engine.clock is perdure_time_skipping and perdure_time_skipping.auto_advance


async def test_perdure_postgres_engine_in_this_suite(perdure_postgres_engine: Engine) -> None:
    assert perdure_postgres_engine.url.startswith("postgresql") and perdure_postgres_engine.is_running
