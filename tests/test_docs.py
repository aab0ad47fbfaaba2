"""The README and the docs say what is true: every code block marked runnable runs as written,
every relative link points at a file, and the docs site builds with warnings as errors.

A block is runnable when the line before its fence is ``<!-- runnable -->``. The runnable blocks
of one page run in order, in one fresh folder (a later ``bash`` block may read the database an
earlier ``python`` block wrote), with the venv's ``bin`` first on ``PATH`` as after
``. .venv/bin/activate``. A python block marked ``<!-- runnable pytest -->`` is a test file: it is
saved as ``test_block_N.py`` there and run with pytest (``asyncio_mode = auto``, as the testing
guide tells users to set), with the test server's URL for the PostgreSQL fixture.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.ci import unavailable

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts and p.name != "rest.md"]  # rest.md is generated
BLOCK = re.compile(r"<!-- runnable( pytest)? -->\n```(python|bash)\n(.*?)\n```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def runnable(page: Path) -> list[tuple[str, str]]:
    """The page's runnable blocks as (kind, code): kind is python, bash or pytest."""
    return [("pytest" if as_test else language, code) for as_test, language, code in BLOCK.findall(page.read_text())]


def command_for(kind: str, code: str, number: int, folder: Path) -> list[str]:
    if kind == "python":
        return [sys.executable, "-c", code]
    if kind == "bash":
        return ["bash", "-euo", "pipefail", "-c", code]
    (folder / f"test_block_{number}.py").write_text(code)
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
            "-o", "asyncio_default_fixture_loop_scope=function", f"test_block_{number}.py"]  # fmt: skip


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_run_as_written(page: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    env.pop("PYTEST_ADDOPTS", None)
    if any(kind == "pytest" for kind, _ in runnable(page)):
        from tests.pg import require_server, server_url

        require_server()  # the guide's PostgreSQL example runs too (fails instead of skipping in CI)
        env.setdefault("PERDURE_TEST_POSTGRES_URL", server_url())
    for number, (kind, code) in enumerate(runnable(page), start=1):
        command = command_for(kind, code, number, tmp_path)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"block {number} of {page.name} failed:\n{code}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr


def test_the_readme_example_stays_marked_runnable() -> None:
    blocks = runnable(ROOT / "README.md")
    assert [language for language, _ in blocks][:2] == ["python", "bash"]  # the example, then the CLI on its file


@pytest.mark.slow
def test_the_orders_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/orders.py``: orders complete (after two failed charges, a sleep and the
    "shipped" event); Ctrl-C stops it cleanly; started again, it carries on with the same file."""

    def run_until(pattern: str, seconds: float) -> str:
        process = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", str(ROOT / "examples" / "orders.py")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
        reader.start()  # the example prints forever: read it beside the test
        deadline = time.monotonic() + seconds
        while not re.search(pattern, "".join(lines)) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a hang: SIGABRT makes faulthandler print every thread
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=10)
            reader.join(5)
            raise AssertionError("orders.py did not stop within 60 s of Ctrl-C:\n" + "".join(lines)[-6000:]) from None
        reader.join(5)
        said = "".join(lines)
        assert re.search(pattern, said), said
        assert process.returncode == 0 and "Traceback" not in said and "stopped;" in said, said
        return said

    first = run_until(r"complete +\{.*'tracking': 'TRK", 40)
    earlier = re.findall(r"created ([0-9a-f-]{36})", first)
    # wait for the listing printed after the first create (stopping at "created " raced it)
    again = run_until(r"created [^\n]*\n(  [0-9a-f]{8} [^\n]*\n){2}", 20)
    assert any(order[:8] in again for order in earlier)  # the same orders, read back from orders.db


def test_relative_links_point_at_files() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists() and not (path.name == "rest.md" and path.parent.name == "reference"):
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


@pytest.mark.slow
def test_the_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    try:
        import furo  # noqa: F401
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
        import sphinx_click  # noqa: F401
    except ImportError as exc:
        unavailable(f"the docs tools are not installed ({exc.name}): pip install --group docs")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path / "html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    built = {p.relative_to(tmp_path / "html").as_posix() for p in (tmp_path / "html").rglob("*.html")}
    for page in ("index.html", "cloudflare.html", "reference/api.html", "reference/rest.html", "reference/cli.html"):
        assert page in built
    rest = (tmp_path / "html" / "reference" / "rest.html").read_text()
    assert "/api/workflows/{name}/instances" in rest  # generated from the OpenAPI document
    cli = (tmp_path / "html" / "reference" / "cli.html").read_text()
    assert "send-event" in cli and "--full" in cli  # generated from the click commands
