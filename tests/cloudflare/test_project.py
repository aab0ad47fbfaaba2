"""Loading a project (bad input is one line naming the file and the place) and its ASGI app:
the Worker's fetch at the root, Perdure's API under /perdure with its guard."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from perdure.cli import main
from perdure.cloudflare import Project, ProjectError, load_project
from perdure.server.api import create_app

PERDURE = str(Path(sys.executable).parent / "perdure")

WRANGLER = """
name = "test-worker"
main = "src/entry.py"

[vars]
GREETING = "hi"

[[workflows]]
name = "echo"
binding = "ECHO"
class_name = "Echo"

[[d1_databases]]
binding = "DB"
database_name = "db"
"""

ENTRY = """
from workers import Response, WorkerEntrypoint, WorkflowEntrypoint

DB_AT_IMPORT = None


class Echo(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("echo")
        async def echo():
            return event["payload"]

        return await echo()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[3]
        if path == "db":
            return Response(await self.env.DB.prepare("select 1").first())
        if path == "plain":
            return "not a response"
        if path == "boom":
            raise RuntimeError("boom")
        if request.method == "POST":
            instance = await self.env.ECHO.create({"params": await request.json()})
            return Response.json({"id": instance.id}, status=201)
        return Response(f"{self.env.GREETING} {request.method} {request.headers.get('x-who')}")
"""


def project_dir(tmp_path: Path, entry: str = ENTRY, wrangler: str = WRANGLER) -> Path:
    (tmp_path / "src").mkdir(parents=True, exist_ok=True)
    (tmp_path / "wrangler.toml").write_text(wrangler)
    (tmp_path / "src" / "entry.py").write_text(textwrap.dedent(entry))
    return tmp_path


def load(path: Path) -> Project:
    return load_project(path, f"sqlite:///{path / 'test.db'}")


def error_of(path: Path) -> str:
    with pytest.raises(ProjectError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, ValueError)
    return message


def test_a_class_the_main_module_lacks_is_named_with_those_it_has(tmp_path: Path) -> None:
    wrangler = WRANGLER.replace('class_name = "Echo"', 'class_name = "Missing"')
    message = error_of(project_dir(tmp_path, wrangler=wrangler))
    assert message == (
        "wrangler.toml: workflows[0].class_name 'Missing' is not defined in src/entry.py (its workflow classes: Echo)"
    )


def test_limits_steps_and_schedules_reach_the_registration(tmp_path: Path) -> None:
    wrangler = WRANGLER.replace(
        'class_name = "Echo"', 'class_name = "Echo"\nschedules = ["*/5 * * * *", "0 3 * * mon"]\nlimits = { steps = 7 }'
    )
    registration = load(project_dir(tmp_path, wrangler=wrangler)).engine.workflows["echo"]
    assert registration.schedules == ["*/5 * * * *", "0 3 * * mon"]
    assert registration.step_limit == 7
    plain = load(project_dir(tmp_path / "plain")).engine.workflows["echo"]
    assert plain.schedules == [] and plain.step_limit != 7


def test_a_class_that_is_not_a_workflow(tmp_path: Path) -> None:
    wrangler = WRANGLER.replace('class_name = "Echo"', 'class_name = "Default"')
    assert "'Default' is not a WorkflowEntrypoint subclass" in error_of(project_dir(tmp_path, wrangler=wrangler))


def test_a_schedule_the_engine_refuses_names_the_entry(tmp_path: Path) -> None:
    wrangler = WRANGLER.replace('class_name = "Echo"', 'class_name = "Echo"\nschedules = ["every day"]')
    message = error_of(project_dir(tmp_path, wrangler=wrangler))
    assert message.startswith("wrangler.toml: workflows[0]: ") and "every day" in message


def test_main_missing_or_absent(tmp_path: Path) -> None:
    assert "has no main" in error_of(project_dir(tmp_path, wrangler=WRANGLER.replace('main = "src/entry.py"', "")))
    project_dir(tmp_path)
    (tmp_path / "src" / "entry.py").unlink()
    assert error_of(tmp_path) == "wrangler.toml: main 'src/entry.py' does not exist"


def test_errors_while_importing_main_name_the_place(tmp_path: Path) -> None:
    message = error_of(project_dir(tmp_path, entry="x = 1\ndef broken(:\n"))
    assert message.startswith("src/entry.py:2:") and "SyntaxError while importing src/entry.py" in message
    message = error_of(project_dir(tmp_path, entry="from workers import KVNamespace\n"))
    assert message.startswith("src/entry.py:1: ImportError") and "perdure's workers provides" in message
    assert "WorkflowEntrypoint" in message
    message = error_of(project_dir(tmp_path, entry="import json\n\n\njson.loads('{')\n"))
    assert message.startswith("src/entry.py:4: JSONDecodeError")


def test_a_wrangler_file_that_does_not_parse(tmp_path: Path) -> None:
    assert error_of(project_dir(tmp_path, wrangler='main = "src/entry.py"\n[[workflows]\n')).startswith(
        "wrangler.toml:2:"
    )


def test_a_bad_database_url(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="--db 'mysql://x'"):
        load_project(project_dir(tmp_path), "mysql://x")


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, token: str | None = None, expose: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The project's ASGI app (Perdure's ``create_app`` under /perdure) with its engine running."""
    project = load(project_dir(tmp_path))
    await project.engine.start()
    app = project.asgi(create_app(project.engine, token=token), expose_errors=expose)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8787") as http:
            yield http
    finally:
        await project.engine.stop()


async def test_fetch_is_served_at_every_path_and_perdure_under_its_mount(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        answer = await http.get("/anything/at/all", headers={"x-who": "me"})
        assert (answer.status_code, answer.text) == (200, "hi GET me")
        assert answer.headers["content-type"] == "text/plain;charset=UTF-8"
        created = await http.post("/", json={"n": 1})
        assert created.status_code == 201
        instance_id = created.json()["id"]
        for _ in range(200):
            detail = (await http.get(f"/perdure/api/workflows/echo/instances/{instance_id}")).json()
            if detail["status"] == "complete":
                break
            await asyncio.sleep(0.02)
        assert detail["output"] == {"n": 1}, detail
        assert (await http.get("/perdure")).headers["location"] == "/perdure/dashboard/"
        assert (await http.get("/perdure/dashboard/")).status_code == 200


async def test_errors_in_fetch_are_a_500_with_one_line(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        db = await http.get("/db")
        assert db.status_code == 500
        assert db.text.startswith("UnsupportedBindingError: env.DB is a D1 database binding (d1_databases in")
        assert (await http.get("/plain")).text == "fetch returned str, not a workers.Response"
        assert (await http.get("/boom")).text == "RuntimeError: boom"
    async with serving(tmp_path / "quiet", expose=False) as http:
        assert (await http.get("/boom")).text == "error"  # perdure serve shows nothing of the code


async def test_the_token_guards_perdure_not_the_worker(tmp_path: Path) -> None:
    async with serving(tmp_path, token="a-long-secret") as http:
        assert (await http.get("/perdure/api/workflows")).status_code == 401
        authorised = await http.get("/perdure/api/workflows", headers={"authorization": "Bearer a-long-secret"})
        assert [w["name"] for w in authorised.json()["workflows"]] == ["echo"]
        assert (await http.get("/hello")).status_code == 200


@pytest.mark.parametrize("command", ["dev", "serve", "worker"])
def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path, command: str) -> None:
    wrangler = WRANGLER.replace('class_name = "Echo"', 'class_name = "Gone"')
    result = CliRunner().invoke(main, [command, str(project_dir(tmp_path, wrangler=wrangler))])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and "'Gone' is not defined in src/entry.py" in result.stderr
    missing = CliRunner().invoke(main, [command, str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere: no such file or directory" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = CliRunner().invoke(main, [command, str(empty)])
    assert nothing.exit_code == 2 and "holds no wrangler.json, wrangler.jsonc or wrangler.toml" in nothing.stderr
    typo = CliRunner().invoke(main, [command, str(tmp_path / "wrangler.tom"), "--db", "sqlite:///x.db"])
    assert typo.exit_code == 2 and "wrangler.tom: no such file or directory" in typo.stderr
    with_db = CliRunner().invoke(main, [command, "tests.ops.sample_app:engine", "--db", "sqlite:///x.db"])
    assert with_db.exit_code == 2 and "--db is for a Cloudflare project" in with_db.stderr


@pytest.mark.slow
def test_perdure_dev_binds_dev_port_and_reads_dev_vars(tmp_path: Path) -> None:
    """Without --port, ``perdure dev`` binds the project's ``dev.port`` (wrangler's 8787
    without one) and adds ``.dev.vars`` to ``vars``, as ``wrangler dev`` does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    project_dir(tmp_path, wrangler=WRANGLER.replace('GREETING = "hi"', 'GREETING = "hi"\n\n[dev]\nport = ' + str(port)))
    (tmp_path / ".dev.vars").write_text('GREETING="hello from .dev.vars"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [PERDURE, "dev", str(tmp_path), "--db", f"sqlite:///{tmp_path / 'dev.db'}"], env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/", headers={"x-who": "me"}, timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                    time.sleep(0.1)
            assert answer.text == "hello from .dev.vars GET me"
            assert f"on http://127.0.0.1:{port}  (its fetch" in log.read_text()
        finally:
            process.terminate()
            process.wait(10)
