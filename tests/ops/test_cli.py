"""The `perdure` command line: against a database (--db), against a real `perdure dev` server
(--url), and as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from perdure import Engine
from perdure.cli import main

ROOT = Path(__file__).resolve().parents[2]
PERDURE = str(Path(sys.executable).parent / "perdure")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


async def cli(*args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(invoke, *args)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_cli_against_the_database(engine: Engine, db_url: str) -> None:
    db = ("--db", db_url)
    await engine.ensure_store()
    unknown = await cli("workflows", "trigger", "hello", *db)  # a --db client knows only stored workflows
    assert unknown.exit_code == 3 and "no workflow named 'hello'" in unknown.stderr
    await engine.binding("hello").create(id="seed")
    await engine.binding("approval").create(id="seed")
    created = as_json(await cli("workflows", "trigger", "hello", '{"name": "Ada"}', "--id", "cli-1", "--json", *db))
    assert created["id"] == "cli-1" and created["status"] == "queued"
    text = await cli("workflows", "trigger", "approval", *db)
    assert text.exit_code == 0 and "has been queued successfully" in text.stdout
    workflows = as_json(await cli("--json", "workflows", "list", *db))["workflows"]
    assert {w["name"] for w in workflows} == {"hello", "approval"}  # a --db client sees the stored workflows
    async with engine:
        await (await engine.binding("hello").get("cli-1")).wait(10)
        approval_id = (await (await engine.ensure_store()).list_instances("approval", limit=1)).items[0].id
        for _ in range(200):
            if (await (await engine.binding("approval").get(approval_id)).status())["status"] == "waiting":
                break
            await asyncio.sleep(0.02)
        described = await cli("instances", "describe", "hello", "cli-1", *db)
        assert described.exit_code == 0, described.output
        for text_bit in ("Completed", "greet-1", "hello Ada", "Step", "Workflow Name"):
            assert text_bit in described.stdout
        latest = as_json(await cli("instances", "describe", "approval", "--json", *db))
        assert latest["id"] == approval_id and latest["status"] == "waiting"
        listed = as_json(await cli("instances", "list", "hello", "--status", "complete", "--json", *db))
        assert [i["id"] for i in listed["instances"]] == ["cli-1", "seed"]
        paused = as_json(await cli("instances", "pause", "approval", approval_id, "--json", *db))
        assert paused["status"] == "paused"
        assert (await cli("instances", "resume", "approval", approval_id, *db)).exit_code == 0
        sent = await cli(
            "instances", "send-event", "approval", approval_id, "--type", "approve", "--payload", '{"ok": 1}', *db
        )
        assert sent.exit_code == 0 and "sent" in sent.stdout
        final = await (await engine.binding("approval").get(approval_id)).wait(10)
        assert final["output"] == {"approved": {"ok": 1}}
        restarted = as_json(await cli("instances", "restart", "hello", "cli-1", "--json", *db))
        assert restarted["status"] in ("queued", "running", "complete")
    # errors: clear message on stderr, no traceback, distinct exit codes
    cases = [
        (("workflows", "describe", "nope", *db), 3, "no workflow named 'nope'"),
        (("instances", "describe", "hello", "missing", *db), 3, "no instance 'missing'"),
        (("workflows", "trigger", "hello", "{not json", *db), 2, "PARAMS is not valid JSON"),
        (("workflows", "trigger", "hello", "--id", "cli-1", *db), 4, "already exists"),
        (("workflows", "trigger", "hello", "--id", "bad id!", *db), 2, "instance id"),
        (("instances", "terminate", "approval", approval_id, *db), 4, "already complete"),
        (("instances", "restart", "hello", "cli-1", "--from-step-name", "nope", *db), 3, "no step step 'nope'"),
        (("instances", "list", "hello", "--db", "sqlite:////nonexistent/dir/x.db"), 2, "no database file"),
        (("instances", "list", "hello", "--db", "mysql://x"), 2, "unsupported database url"),
        (("instances", "list", "hello", "--url", "http://x", *db), 2, "either --url or --db"),
    ]
    for args, code, message in cases:
        result = await cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[str]:
    """A real `perdure dev` process (API + dashboard + worker) on a free port."""
    port = free_port()
    env = {**os.environ, "PERDURE_TEST_DB": f"sqlite:///{tmp_path / 'dev.db'}", "PYTHONUNBUFFERED": "1"}
    env.pop("PERDURE_TOKEN", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [PERDURE, "dev", "tests.ops.sample_app:engine", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(f"perdure dev did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_cli_against_a_real_server(dev_server: str, tmp_path: Path) -> None:
    said = (tmp_path / "server.log").read_text()
    assert f"CLI: perdure --url {dev_server} instances list approval" in said  # the server says how to reach it
    url = ("--url", dev_server)
    created = as_json(invoke("workflows", "trigger", "hello", '{"name": "Bo"}', "--id", "http-1", "--json", *url))
    assert created["trigger"] == {"source": "api"}
    detail: dict[str, Any] = {}
    for _ in range(200):
        detail = as_json(invoke("instances", "describe", "hello", "http-1", "--json", *url))
        if detail["status"] == "complete":
            break
        time.sleep(0.05)
    assert detail["output"] == "hello Bo"
    missing = invoke("instances", "describe", "hello", "nope", *url)
    assert missing.exit_code == 3 and "no instance 'nope'" in missing.stderr
    bad = invoke("instances", "list", "hello", "--cursor", "!!", *url)
    assert bad.exit_code == 2 and "cursor" in bad.stderr
    # the real binary, as a user runs it
    done = subprocess.run(
        [PERDURE, "instances", "describe", "hello", "latest", "--url", dev_server],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "http-1" in done.stdout and "greet-1" in done.stdout and "Completed" in done.stdout
    listed = subprocess.run(
        [PERDURE, "--json", "--url", dev_server, "workflows", "list"], capture_output=True, text=True, timeout=60
    )
    assert {w["name"] for w in json.loads(listed.stdout)["workflows"]} == {"hello", "approval", "flaky", "fails"}
    unreachable = subprocess.run(
        [PERDURE, "workflows", "list", "--url", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True
    )
    assert unreachable.returncode == 1 and "cannot reach the Perdure server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_serve_refuses_a_public_address_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERDURE_TOKEN", raising=False)
    result = invoke("serve", "tests.ops.sample_app:make_engine", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "without a token" in result.stderr
    result = invoke("serve", "no_such_module:engine")
    assert result.exit_code == 2 and "cannot import module 'no_such_module'" in result.stderr
    result = invoke("worker", "tests.ops.sample_app:nothing")
    assert result.exit_code == 2 and "has no attribute 'nothing'" in result.stderr
