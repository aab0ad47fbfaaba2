"""Build both distributions and test what a user would install, in fresh virtual environments.

``python tests/packaging/check_dist.py`` (``bash test.sh`` runs it after the tests):

1. builds the sdist and the wheel of ``perdure`` (the repository root) and of ``punderful``
   (``apps/punderful``) with ``python -m build``, and runs ``twine check`` on all four;
2. checks what the wheels hold: perdure's has ``py.typed``, the dashboard's templates and
   static files, and nothing of Punderful's; Punderful's has its templates, static files,
   tokenizer, data and ``py.typed``;
3. installs the perdure wheel with **no extras** into a new venv and runs, there: an import of
   every core module, a workflow with a durable sleep and an event wait to completion, the CLI
   on that database (``--db``), and the one-line answers of features whose extra is missing;
4. adds the ``[server]`` extra and serves an example app with ``perdure dev``, creates an
   instance over HTTP and waits for it to complete.

Packages come from the package index (PyPI) as for a user; only perdure's own wheel comes from
the build. Exits non-zero, with the step that failed, on any failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PUNDERFUL = ROOT / "apps" / "punderful"

SMOKE_APP = '''
"""A workflow with a step, a durable sleep and an event wait (the packaging smoke test)."""
from perdure import Engine, WorkflowEntrypoint

class Greet(WorkflowEntrypoint):
    async def run(self, event, step):
        name = await step.do("name", lambda: event.payload["name"].title())
        await step.sleep("pause", "1 second")  # longer than fast_wait: a durable timer wakes it
        approval = await step.wait_for_event("approve", "approval", timeout="1 minute")
        return {"greeting": f"hello {name}", "approved": approval["payload"]}

engine = Engine("sqlite:///smoke.db", fast_wait=0.1, poll_interval=0.02)
greet = engine.register(Greet, name="greet")
'''

SMOKE_RUN = """
import asyncio, json
from smoke_app import engine, greet

async def main():
    async with engine:
        instance = await greet.create(id="smoke-1", params={"name": "ada"})
        await instance.send_event(type="approval", payload=True)
        print(json.dumps(await instance.wait(timeout=30)))

asyncio.run(main())
"""

CORE_MODULES = [
    "perdure",
    "perdure.cli",
    "perdure.cli.worker",
    "perdure.testing",
    "perdure.triggers.queues",
    "perdure.server.operations",
    "perdure.server.formatting",
    "perdure.store.sqlite",
]


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600, check: bool = True) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd)} (exit {done.returncode})\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def expect(condition: bool, what: str, detail: str = "") -> None:
    if not condition:
        sys.exit(f"FAILED: {what}\n{detail}")
    print(f"   ok: {what}", flush=True)


def build(source: Path, out: Path) -> tuple[Path, Path]:
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)])
    wheels = sorted(out.glob("*.whl"))
    sdists = sorted(out.glob("*.tar.gz"))
    expect(len(wheels) == 1 and len(sdists) == 1, f"one wheel and one sdist of {source.name}", str(list(out.iterdir())))
    return wheels[0], sdists[0]


def check_wheels(perdure_wheel: Path, punderful_wheel: Path) -> None:
    names = set(zipfile.ZipFile(perdure_wheel).namelist())
    expect("perdure/py.typed" in names, "perdure's wheel has py.typed")
    expect(
        any(n.startswith("perdure/server/dashboard/templates/") and n.endswith(".html") for n in names),
        "perdure's wheel has the dashboard templates",
    )
    expect(any(n.startswith("perdure/server/dashboard/static/") for n in names), "perdure's wheel has static files")
    expect(not any(n.startswith("punderful/") for n in names), "perdure's wheel holds nothing of Punderful's")
    names = set(zipfile.ZipFile(punderful_wheel).namelist())
    for part in ("py.typed", "templates/", "static/", "ai/tokenizer/", "data/puns.json"):
        expect(any(n.startswith(f"punderful/{part}") for n in names), f"Punderful's wheel has {part}")
    expect(not any(n.startswith("perdure/") for n in names), "Punderful's wheel holds nothing of perdure's")


def venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", str(path)])
    python = path / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: object | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def core_smoke(python: Path, work: Path) -> None:
    bin_dir = python.parent
    code = f"import importlib\nfor m in {CORE_MODULES!r}: importlib.import_module(m)\nprint('imported')"
    expect("imported" in run([str(python), "-c", code], cwd=work), "core modules import without any extra")
    out = run([str(python), "smoke_run.py"], cwd=work, timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    expect(
        result.get("status") == "complete" and result.get("output") == {"greeting": "hello Ada", "approved": True},
        "a workflow with a durable sleep and an event wait completes",
        out,
    )
    perdure = str(bin_dir / "perdure")
    out = run([perdure, "--db", "sqlite:///smoke.db", "instances", "list", "greet", "--json"], cwd=work)
    listed = json.loads(out)
    expect("smoke-1" in json.dumps(listed) and "complete" in json.dumps(listed), "perdure --db lists the instance", out)
    out = run([perdure, "--db", "sqlite:///smoke.db", "instances", "describe", "greet", "smoke-1"], cwd=work)
    expect("pause" in out and "approve" in out, "perdure --db describes its steps", out)
    for cmd, extra in (
        (["serve", "smoke_app:engine"], "server"),
        (["--db", "postgresql://127.0.0.1:5432/test", "workflows", "list"], "postgres"),
    ):
        done = subprocess.run([perdure, *cmd], cwd=work, capture_output=True, text=True, timeout=60)
        said = (done.stdout + done.stderr).strip()
        expect(
            done.returncode != 0 and f"perdure[{extra}]" in said and "Traceback" not in said,
            f"`perdure {' '.join(cmd)}` without [{extra}] says which extra to install, in one line",
            said,
        )


def server_smoke(python: Path, wheel: Path, work: Path) -> None:
    run([str(python), "-m", "pip", "install", "-q", f"perdure[server] @ {wheel.as_uri()}"])
    port = free_port()
    (work / "smoke.db").unlink()
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [str(python.parent / "perdure"), "dev", "smoke_app:engine", "--port", str(port)],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                http("GET", f"{base}/api/health")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"FAILED: perdure dev did not answer\n{(work / 'server.log').read_text()}")
                time.sleep(0.2)
        created = http("POST", f"{base}/api/workflows/greet/instances", {"id": "http-1", "params": {"name": "bo"}})
        expect("http-1" in json.dumps(created), "an instance is created over HTTP", json.dumps(created))
        http("POST", f"{base}/api/workflows/greet/instances/http-1/events/approval", {"payload": True})
        deadline, status = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            detail = http("GET", f"{base}/api/workflows/greet/instances/http-1")
            status = str(detail.get("status"))
            if status in ("complete", "errored", "terminated"):
                break
            time.sleep(0.2)
        expect(status == "complete", "the instance completes under perdure dev", json.dumps(detail))
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="perdure-dist-"))
    try:
        step("build the sdists and wheels")
        perdure_wheel, perdure_sdist = build(ROOT, work / "dist-perdure")
        punderful_wheel, punderful_sdist = build(PUNDERFUL, work / "dist-punderful")
        step("twine check")
        run([sys.executable, "-m", "twine", "check", "--strict", perdure_wheel.as_posix(), perdure_sdist.as_posix()])
        run(
            [sys.executable, "-m", "twine", "check", "--strict", punderful_wheel.as_posix(), punderful_sdist.as_posix()]
        )
        print("   ok: twine check passes on all four", flush=True)
        step("what the wheels hold")
        check_wheels(perdure_wheel, punderful_wheel)
        step("perdure with no extras, in a fresh venv")
        python = venv(work / "venv")
        run([str(python), "-m", "pip", "install", "-q", str(perdure_wheel)])
        app = work / "app"
        app.mkdir()
        (app / "smoke_app.py").write_text(textwrap.dedent(SMOKE_APP))
        (app / "smoke_run.py").write_text(textwrap.dedent(SMOKE_RUN))
        core_smoke(python, app)
        step("perdure[server] in the same venv")
        server_smoke(python, perdure_wheel, app)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"check_dist": "passed", "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)  # the fresh venvs must not see this checkout
    sys.exit(main())
