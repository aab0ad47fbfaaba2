"""The CLI where users are: piped tables keep every column and whole ids, a narrow terminal gets
whole ids too, large outputs are shortened (``--full`` shows them), the URL comes from the
command line, the environment or the default, and a URL without Perdure's mount prefix gets a
hint naming it. (A missing extra: test_extras.py.)"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from perdure import Engine, WorkflowEntrypoint
from perdure.cli import main
from perdure.cli.serving import cli_hint, cli_url
from perdure.server.api import create_app
from perdure.server.formatting import STATUS_LABELS, shorten

from .test_cli import free_port, invoke

ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEADERS = ["Id", "Status", "Trigger", "Queued", "Start", "End", "Duration"]
VECTOR = [i / 384 for i in range(384)]


class Embed(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        if (event.payload or {}).get("wait"):
            await step.wait_for_event("approval", "go", timeout="1 hour")
        vector = await step.do("embed", lambda: VECTOR)
        await step.do("tag", lambda: {"vector": VECTOR[:20], "text": "x" * 600, "n": 1})
        return {"dimensions": len(vector)}


def run_cli(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


async def cli_env(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return await asyncio.to_thread(run_cli, *args, env=env)


@pytest.fixture
async def store_with_uuids(db_url: str) -> tuple[str, dict[str, str]]:
    """A database with complete instances and a waiting one, their ids uuid4s: ``{id: status}``."""
    engine = Engine(db_url, poll_interval=0.02)
    engine.register(Embed, name="embed")
    wanted: dict[str, str] = {}
    async with engine:
        for _ in range(3):
            handle = await engine.binding("embed").create(id=str(uuid.uuid4()))
            await handle.wait(10)
            wanted[handle.id] = "complete"
        waiting = await engine.binding("embed").create(id=str(uuid.uuid4()), params={"wait": True})
        for _ in range(500):
            if (await waiting.status())["status"] == "waiting":
                break
            await asyncio.sleep(0.02)
        wanted[waiting.id] = "waiting"
    await engine.stop()
    return db_url, wanted


async def test_piped_tables_keep_every_column_and_whole_ids(store_with_uuids: tuple[str, dict[str, str]]) -> None:
    db_url, wanted = store_with_uuids
    for env in (None, {"COLUMNS": "40"}):  # a pipe is not a terminal: its COLUMNS do not narrow the table
        result = await cli_env("instances", "list", "embed", "--db", db_url, env=env)  # CliRunner: not a terminal
        assert result.exit_code == 0, result.output
        header, *rows = result.stdout.strip().splitlines()
        assert header.split() == HEADERS  # no column dropped
        assert len(rows) == len(wanted)  # one row a line
        for row in rows:
            instance_id = row.split()[0]
            assert STATUS_LABELS[wanted[instance_id]] in row  # the id whole, the status whole, on one line
        assert "…" not in result.stdout and all(line == line.rstrip() for line in result.stdout.splitlines())


async def test_a_narrow_terminal_keeps_whole_ids_and_every_column(
    store_with_uuids: tuple[str, dict[str, str]],
) -> None:
    db_url, wanted = store_with_uuids
    terminal = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}  # rich takes the capture for a terminal
    narrow = await cli_env("instances", "list", "embed", "--db", db_url, env={**terminal, "COLUMNS": "40"})
    assert narrow.exit_code == 0, narrow.output
    lines = ANSI.sub("", narrow.stdout).splitlines()
    for instance_id, status in wanted.items():  # the table does not fit: one block of "Header: value" a row
        assert f"Id:       {instance_id}" in lines
        assert f"Status:   {STATUS_LABELS[status]}" in lines
    assert sum(line.startswith("Duration:") for line in lines) == len(wanted)  # no column dropped
    wide = await cli_env("instances", "list", "embed", "--db", db_url, env={**terminal, "COLUMNS": "120"})
    header, *rows = ANSI.sub("", wide.stdout).strip().splitlines()
    assert header.split() == HEADERS  # it fits: a table, other columns wrap, ids stay whole
    assert {row.split()[0] for row in rows if row.split()[0] in wanted} == set(wanted)


async def test_describe_shortens_outputs_and_full_shows_them(store_with_uuids: tuple[str, dict[str, str]]) -> None:
    db_url, wanted = store_with_uuids
    instance_id = next(i for i, status in wanted.items() if status == "complete")
    short = await cli_env("instances", "describe", "embed", instance_id, "--db", db_url)
    assert short.exit_code == 0, short.output
    assert 'output: "[384 floats]"' in short.stdout and str(VECTOR[1]) not in short.stdout
    assert '"vector": "[20 floats]"' in short.stdout and "... (100 more characters)" in short.stdout
    assert "--full shows them whole" in short.stdout
    cut = await cli_env("instances", "describe", "embed", instance_id, "--truncate-output-limit", "30", "--db", db_url)
    assert "more characters)" in cut.stdout and '"[384 floats]"' in cut.stdout  # shortened, then cut
    full = await cli_env("instances", "describe", "embed", instance_id, "--full", "--db", db_url)
    assert full.exit_code == 0 and str(VECTOR[1]) in full.stdout and "[384 floats]" not in full.stdout
    assert "x" * 600 in full.stdout and "--full shows them whole" not in full.stdout
    hidden = await cli_env("instances", "describe", "embed", instance_id, "--no-step-output", "--db", db_url)
    assert "[384 floats]" not in hidden.stdout and "embed" in hidden.stdout
    data = await cli_env("--json", "instances", "describe", "embed", instance_id, "--db", db_url)
    step = next(s for s in json.loads(data.stdout)["steps"] if s["name"] == "embed")
    assert step["output"] == VECTOR  # --json is the whole document


def test_shorten_reads_like_the_dashboard() -> None:
    assert shorten([0.5] * 384) == "[384 floats]"
    assert shorten({"vector": list(range(20)), "name": "x"}) == {"vector": "[20 numbers]", "name": "x"}
    assert shorten(list(range(5))) == [0, 1, 2, 3, 4]  # a short list stays
    assert shorten([True] * 30)[-1] == True and len(shorten([True] * 30)) == 30  # noqa: E712 - booleans are not numbers
    long = shorten(["a"] * 60)
    assert len(long) == 51 and long[-1] == "... 10 more items"
    assert shorten("x" * 600).endswith("... (100 more characters)")


def test_servers_say_which_url_the_cli_needs() -> None:
    assert cli_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert cli_url("0.0.0.0", 9000) == "http://127.0.0.1:9000"  # a wildcard bind is reached on loopback
    assert cli_url("::", 9000) == "http://[::1]:9000"
    assert cli_url("::1", 8080, "/perdure/") == "http://[::1]:8080/perdure"
    engine = Engine("sqlite:///unused.db")
    assert cli_hint("http://127.0.0.1:8080", engine) == (
        "CLI: perdure --url http://127.0.0.1:8080 workflows list   (or export PERDURE_URL=http://127.0.0.1:8080)"
    )
    engine.register(Embed, name="embed")
    engine.register(Embed, name="another")
    assert cli_hint("http://h:1/p", engine, token=True).startswith(
        "CLI: perdure --url http://h:1/p --token $PERDURE_TOKEN instances list another "
    )


# -- the URL: command line, environment, default; a URL without the mount prefix -------------------
def serve_app(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free port in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a host app: Perdure mounted at ``mount`` (or at the root with ``mount=""``), and a
    home page with ``home`` as its HTML; returns the host's URL."""
    servers: list[Iterator[str]] = []

    def start(mount: str | None, home: str = "<html><body>Welcome</body></html>") -> str:
        engine = Engine(f"sqlite:///{tmp_path / f'host{len(servers)}.db'}")
        engine.register(Embed, name="embed")
        perdure = create_app(engine)
        if mount == "":
            app: Any = perdure
        else:

            async def page(request: Any) -> HTMLResponse:
                return HTMLResponse(home)

            routes: list[Any] = [Route("/", page)]
            if mount is not None:
                routes.append(Mount(mount, app=perdure))
            app = Starlette(routes=routes)
        servers.append(serve_app(app))
        return next(servers[-1])

    yield start
    for server in servers:
        next(server, None)


def test_a_url_without_the_perdure_mount_gets_a_hint(host: Callable[..., str]) -> None:
    url = host("/perdure")
    wrong = invoke("workflows", "list", "--url", url)
    assert wrong.exit_code == 3 and wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.output
    assert wrong.stderr.strip() == (
        f"✘ {url} answered 404 for /api/workflows: Perdure's API is not at this URL; try --url {url}/perdure"
    )
    right = invoke("--json", "workflows", "list", "--url", f"{url}/perdure")
    assert right.exit_code == 0 and '"workflows"' in right.stdout
    # A Perdure 404 (no such instance) is an answer, not a wrong URL: no hint.
    missing = invoke("instances", "describe", "embed", "nope", "--url", f"{url}/perdure/")
    assert missing.exit_code == 3 and "no instance 'nope'" in missing.stderr and "try --url" not in missing.stderr


def test_the_hint_follows_the_host_pages_links_and_drops_a_prefix_too_many(host: Callable[..., str]) -> None:
    linked = host("/ops", '<a href="/ops/dashboard/">Workflows</a> <a href="/about">About</a>')
    wrong = invoke("instances", "list", "embed", "--url", linked)
    assert wrong.exit_code == 3 and wrong.stderr.strip().endswith(f"; try --url {linked}/ops")
    at_root = host("")  # Perdure itself at the root, asked under a prefix it does not have
    extra = invoke("workflows", "list", "--url", f"{at_root}/perdure")
    assert extra.exit_code == 3 and extra.stderr.strip().endswith(f"; try --url {at_root}")
    elsewhere = host(None)  # no Perdure anywhere
    lost = invoke("workflows", "list", "--url", elsewhere)
    assert lost.exit_code == 3 and "is it a Perdure server?" in lost.stderr and "try --url" not in lost.stderr


async def _create(db: str) -> None:
    """An empty database at ``db``."""
    engine = Engine(db)
    await engine.ensure_store()
    await engine.stop()


def test_the_url_comes_from_the_option_else_the_environment_else_the_default(
    host: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = host("")
    db = f"sqlite:///{tmp_path / 'other.db'}"
    asyncio.run(_create(db))
    ok: Callable[[Result], bool] = lambda r: r.exit_code == 0 and '"workflows"' in r.stdout  # noqa: E731
    assert ok(invoke("--url", url, "--json", "workflows", "list"))  # the root option
    assert ok(invoke("--json", "workflows", "list", "--url", url))  # the command's option
    assert ok(run_cli("--json", "workflows", "list", env={"PERDURE_URL": url}))  # the environment
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert ok(run_cli("--json", "workflows", "list", "--url", url, env={"PERDURE_URL": nowhere}))  # option wins
    from_env_db = run_cli("--json", "workflows", "list", "--url", url, env={"PERDURE_DB": db})
    assert ok(from_env_db)  # an explicit --url wins over PERDURE_DB (no "either --url or --db")
    from_env_url = run_cli("--json", "workflows", "list", "--db", db, env={"PERDURE_URL": url})
    assert from_env_url.exit_code == 0 and '"workflows": []' in from_env_url.stdout  # --db wins over PERDURE_URL
    both = run_cli("workflows", "list", env={"PERDURE_URL": url, "PERDURE_DB": db})
    assert both.exit_code == 2 and "PERDURE_URL and PERDURE_DB are both set" in both.stderr
    assert invoke("--url", url, "workflows", "list", "--db", db).exit_code == 2  # both on the command line
    monkeypatch.setattr("perdure.cli.commands.DEFAULT_URL", nowhere)
    default = run_cli("workflows", "list", env={"PERDURE_URL": None, "PERDURE_DB": None})
    assert default.exit_code == 1 and f"cannot reach the Perdure server at {nowhere}" in default.stderr
    bad = invoke("workflows", "list", "--url", "127.0.0.1:8080")
    assert bad.exit_code == 2 and "--url must be an http:// or https:// URL" in bad.stderr


async def test_the_dashboard_shortens_outputs_as_the_cli_does(store_with_uuids: tuple[str, dict[str, str]]) -> None:
    import httpx

    db_url, wanted = store_with_uuids
    instance_id = next(i for i, status in wanted.items() if status == "complete")
    engine = Engine(db_url)
    app = Mount("/perdure", app=create_app(engine))  # links follow the mount point
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        page = await client.get(f"/perdure/dashboard/workflows/embed/instances/{instance_id}")
        assert page.status_code == 200
        assert "&#34;[384 floats]&#34;" in page.text and str(VECTOR[1]) not in page.text
        whole = f'href="/perdure/api/workflows/embed/instances/{instance_id}">the whole output (JSON)</a>'
        assert page.text.count(whole) == 2  # the two shortened step outputs; the instance's output is short
        detail = (await client.get(f"/perdure/api/workflows/embed/instances/{instance_id}")).json()
        assert next(s for s in detail["steps"] if s["name"] == "embed")["output"] == VECTOR
    await engine.stop()
