"""The CLI where users are: piped tables keep every column and whole ids, large outputs are
shortened (``--full`` shows them), a URL without Perdure's mount prefix gets a hint, and a
missing extra is one line naming it."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from rich.console import Console
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from perdure import Engine, WorkflowEntrypoint
from perdure.cli.commands import cli_url
from perdure.cli.render import render_instances
from perdure.server.api import create_app
from perdure.server.formatting import STATUS_LABELS, shorten

from .test_cli import cli, free_port, invoke


class Embed(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        vector = await step.do("embed", lambda: [i / 384 for i in range(384)])
        return {"dimensions": len(vector)}


def _page(ids: list[str]) -> dict[str, Any]:
    instance = {"status": "complete", "trigger": {"source": "api"}, "queued": None, "start": None, "end": None}
    return {"instances": [{**instance, "id": i, "duration_ms": 12} for i in ids], "next_cursor": None}


async def test_piped_tables_keep_every_column_and_whole_ids(db_url: str) -> None:
    engine = Engine(db_url, poll_interval=0.02)
    engine.register(Embed, name="embed")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    async with engine:
        for instance_id in ids:
            await (await engine.binding("embed").create(id=instance_id)).wait(10)
    result = await cli("instances", "list", "embed", "--db", db_url)  # CliRunner: not a terminal
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["Id", "Status", "Trigger", "Queued", "Start", "End", "Duration"]
    assert sorted(row.split()[0] for row in rows) == sorted(ids)  # one row a line, the id whole
    assert all(STATUS_LABELS["complete"] in row for row in rows) and "…" not in result.stdout
    await engine.stop()


def test_a_narrow_terminal_wraps_other_columns_but_never_cuts_an_id() -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    out = io.StringIO()
    render_instances(Console(file=out, width=50, highlight=False), _page(ids))
    text = out.getvalue()
    assert all(any(line.lstrip().startswith(i) for line in text.splitlines()) for i in ids), text
    assert "…" not in text  # other columns fold onto more lines instead of being cut


def test_shorten_reads_like_the_dashboard() -> None:
    assert shorten([0.5] * 384) == "[384 floats]"
    assert shorten({"vector": list(range(20)), "name": "x"}) == {"vector": "[20 numbers]", "name": "x"}
    assert shorten(list(range(5))) == [0, 1, 2, 3, 4]  # a short list stays
    long = shorten(["a"] * 60)
    assert len(long) == 51 and long[-1] == "... 10 more items"
    assert shorten("x" * 600).endswith("... (100 more characters)")


async def test_describe_shortens_outputs_and_full_shows_them(db_url: str) -> None:
    engine = Engine(db_url, poll_interval=0.02)
    engine.register(Embed, name="embed")
    async with engine:
        await (await engine.binding("embed").create(id="e-1")).wait(10)
    await engine.stop()
    short = await cli("instances", "describe", "embed", "e-1", "--db", db_url)
    assert short.exit_code == 0 and 'output: "[384 floats]"' in short.stdout, short.output
    assert "0.0026041666666666665" not in short.stdout
    full = await cli("instances", "describe", "embed", "e-1", "--full", "--db", db_url)
    assert full.exit_code == 0 and "0.0026041666666666665" in full.stdout and "[384 floats]" not in full.stdout
    data = await cli("--json", "instances", "describe", "embed", "e-1", "--db", db_url)
    assert "0.0026041666666666665" in data.stdout  # --json is the whole document


def test_cli_url_names_what_the_cli_should_use() -> None:
    assert cli_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert cli_url("0.0.0.0", 9000) == "http://127.0.0.1:9000"  # a wildcard bind is reached on loopback
    assert cli_url("::1", 8080, "/perdure") == "http://[::1]:8080/perdure"


@pytest.fixture
def host_app(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server of a host app that mounts Perdure under /ops and links to its dashboard."""
    engine = Engine(f"sqlite:///{tmp_path / 'host.db'}")
    engine.register(Embed, name="embed")

    async def home(request: Any) -> HTMLResponse:
        return HTMLResponse('<html><body><a href="/ops/dashboard/">Workflows</a></body></html>')

    app = Starlette(routes=[Route("/", home), Mount("/ops", app=create_app(engine))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the host app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_url_without_the_mount_prefix_gets_a_hint(host_app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = invoke("workflows", "list", "--url", host_app)
    assert wrong.exit_code == 3
    assert wrong.stderr.strip() == (
        f"✘ {host_app} answered 404 for /api/workflows: Perdure's API is not at this URL; try --url {host_app}/ops"
    )
    right = invoke("--json", "workflows", "list", "--url", f"{host_app}/ops")
    assert right.exit_code == 0 and '"workflows"' in right.stdout
    monkeypatch.setenv("PERDURE_URL", f"{host_app}/ops")  # the URL may come from the environment
    assert invoke("--json", "workflows", "list").exit_code == 0
    # A Perdure 404 for a missing instance is not a wrong URL: no hint.
    missing = invoke("instances", "describe", "embed", "nope", "--url", f"{host_app}/ops")
    assert missing.exit_code == 3 and "try --url" not in missing.stderr


BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"starlette", "uvicorn", "jinja2", "prometheus_client", "psycopg", "psycopg_pool", "redis",
               "opentelemetry"}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    """
)


def _without_extras(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _cli_without_extras(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _without_extras(f"import sys\nfrom perdure.cli import main\nsys.argv = ['perdure', *{args!r}]\nmain()", cwd)


def test_the_core_works_without_any_extra(tmp_path: Path) -> None:
    imported = _without_extras(
        "import perdure, perdure.cli, perdure.testing, perdure.triggers.queues, perdure.server.operations\n"
        "import asyncio\n"
        "from perdure import Engine, WorkflowEntrypoint\n"
        "class W(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        return await step.do('one', lambda: 1)\n"
        "async def main():\n"
        "    engine = Engine('sqlite:///core.db')\n"
        "    engine.register(W, name='w')\n"
        "    async with engine:\n"
        "        print((await (await engine.binding('w').create(id='a')).wait(10))['status'])\n"
        "asyncio.run(main())\n",
        tmp_path,
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "complete", imported.stderr
    listed = _cli_without_extras(["--db", "sqlite:///core.db", "instances", "list", "w"], tmp_path)
    assert listed.returncode == 0 and "a " in listed.stdout, listed.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["serve", "app:engine"], "✘ perdure serve needs the server extra"),
        (["dev", "app:engine"], "✘ perdure dev needs the server extra"),
        (["--db", "postgresql://127.0.0.1:5432/test", "workflows", "list"],
         "✘ the PostgreSQL backend needs the postgres extra"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path, args: list[str], line: str) -> None:
    done = _cli_without_extras(args, tmp_path)
    extra = "server" if "needs the server" in line else "postgres"
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(line) and done.stderr.strip().endswith(f"pip install 'perdure[{extra}]'")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_missing_extra_is_an_import_error_with_the_extra(tmp_path: Path) -> None:
    done = _without_extras(
        "from perdure import MissingExtraError\n"
        "try:\n"
        "    import perdure.server.api\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, isinstance(exc, ImportError))\n",
        tmp_path,
    )
    assert done.stdout.strip() == "server True", done.stderr
