"""``pip install perdure`` is the core: the engine, SQLite and the CLI import and work with none
of the extras, and a feature whose extra is missing says so in one line naming it, never with a
traceback. Each test runs a fresh interpreter in which the extras' modules cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perdure._optional import EXTRAS, missing_extra, require, require_extra
from perdure.errors import MissingExtraError, PerdureError

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = sorted({module for modules in EXTRAS.values() for module in modules})

# Installed first in each interpreter: every module of every extra fails to import.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {set(BLOCKED)!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    sys.path.insert(0, {str(ROOT)!r})
    """
)

APP = """
from perdure import Engine, WorkflowEntrypoint

class W(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.sleep("nap", 10)  # milliseconds
        return await step.do("one", lambda: 1)

engine = Engine("sqlite:///core.db", poll_interval=0.02)
engine.register(W, name="w")
"""


def without_extras(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def cli_without_extras(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return without_extras(f"import sys\nfrom perdure.cli import main\nsys.argv = ['perdure', *{args!r}]\nmain()", cwd)


def test_the_blocker_blocks() -> None:
    done = without_extras("import starlette", ROOT)
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr


def test_the_core_imports_and_runs_without_any_extra(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    done = without_extras(
        """
        import asyncio, sys
        import perdure, perdure.cli, perdure.testing, perdure.triggers.queues
        import perdure.server.operations, perdure.server.formatting  # the CLI's --db backend
        sys.path.insert(0, ".")
        from app import engine

        async def main():
            async with engine:
                handle = await engine.binding("w").create(id="a")
                print((await handle.wait(10))["status"])

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["complete", "[]"]
    listed = cli_without_extras(["--db", "sqlite:///core.db", "workflows", "list"], tmp_path)
    assert listed.returncode == 0 and "w " in listed.stdout and "Traceback" not in listed.stderr, listed.stderr
    instances = cli_without_extras(["--db", "sqlite:///core.db", "instances", "list", "w"], tmp_path)
    assert instances.returncode == 0 and "a " in instances.stdout, instances.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["serve", "app:engine"], "✘ perdure serve needs the server extra: pip install 'perdure[server]'"),
        (["dev", "app:engine", "--port", "0"], "✘ perdure dev needs the server extra: pip install 'perdure[server]'"),
        (
            ["--db", "postgresql://127.0.0.1:5432/test", "workflows", "list"],
            "✘ the PostgreSQL backend needs the postgres extra: pip install 'perdure[postgres]'",
        ),
        (
            ["instances", "list", "w", "--db", "postgres://127.0.0.1/test"],
            "✘ the PostgreSQL backend needs the postgres extra: pip install 'perdure[postgres]'",
        ),
        (
            ["worker", "pg_app:engine"],
            "✘ the PostgreSQL backend needs the postgres extra: pip install 'perdure[postgres]'",
        ),
    ],
)  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path, args: list[str], line: str) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "pg_app.py").write_text(APP.replace("sqlite:///core.db", "postgresql://127.0.0.1:5432/test"))
    done = cli_without_extras(args, tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == line and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_server_module_names_its_extra(tmp_path: Path) -> None:
    done = without_extras(
        """
        from perdure.errors import MissingExtraError
        try:
            import perdure.server.api
        except MissingExtraError as exc:
            print(exc, "|", exc.extra, exc.module, isinstance(exc, ImportError))
        try:
            from perdure.triggers.redis_streams import RedisStreamConsumer
            RedisStreamConsumer("redis://127.0.0.1:6379", "orders", lambda message: None)
        except MissingExtraError as exc:
            print(exc)
        from perdure import tracing  # OpenTelemetry missing: no spans, no error
        with tracing.span("run", {}):
            print("traced")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "the REST API, dashboard and metrics (perdure.server) needs the server extra: pip install 'perdure[server]'"
        " | server starlette True",
        "the Redis Streams trigger needs the redis extra: pip install 'perdure[redis]'",
        "traced",
    ]


def test_require_imports_or_names_the_extra() -> None:
    assert require("json", "server", "anything").__name__ == "json"
    with pytest.raises(MissingExtraError) as caught:
        require("perdure_no_such_module", "redis", "the thing")
    assert str(caught.value) == "the thing needs the redis extra: pip install 'perdure[redis]'"
    assert isinstance(caught.value, PerdureError) and isinstance(caught.value, ImportError)
    assert caught.value.extra == "redis" and caught.value.module == "perdure_no_such_module"
    require_extra("server", "the tests")  # installed here
    assert missing_extra("otel", "tracing").extra == "otel"
    with pytest.raises(KeyError):
        require_extra("nope", "x")


@pytest.mark.parametrize(
    ("module", "feature"),
    [
        ("perdure.server.metrics", "the Prometheus metrics (perdure.server.metrics)"),
        ("perdure.server.dashboard", "the dashboard (perdure.server.dashboard)"),
    ],
)
def test_each_server_module_names_the_extra_alone(tmp_path: Path, module: str, feature: str) -> None:
    done = without_extras(
        f"""
        try:
            import {module}
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """,
        tmp_path,
    )
    assert done.stdout.strip() == f"MissingExtraError {feature} needs the server extra: pip install 'perdure[server]'"
