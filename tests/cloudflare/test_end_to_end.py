"""examples/cloudflare_project, a Cloudflare Python Worker (wrangler.jsonc, src/entry.py with the
``workers`` imports, a legacy ``depends=`` DAG, a fetch handler creating and reading instances
through ``self.env.MY_WORKFLOW``), run unchanged by real ``perdure dev`` / ``serve`` / ``worker``
processes and driven over HTTP, on each backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from perdure.cli import main

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "cloudflare_project"
PERDURE = str(Path(sys.executable).parent / "perdure")

Start = Callable[..., str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``start("dev", PATH, ...)`` runs ``perdure dev PATH ...`` (a free ``--port`` added for
    ``dev``/``serve``) with its output in ``<tmp>/<command>.log``; every process is stopped at
    the end. Returns the log's path."""
    processes: list[tuple[subprocess.Popen[bytes], Any]] = []
    env = {key: value for key, value in os.environ.items() if not key.startswith("PERDURE_")}
    env["PYTHONUNBUFFERED"] = "1"

    def launch(command: str, *args: str) -> Path:
        path = tmp_path / f"{command}.log"
        log = open(path, "w")  # noqa: SIM115 - closed below
        process = subprocess.Popen([PERDURE, command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append((process, log))
        return path

    yield launch
    for process, log in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_up(url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or "Traceback" in log.read_text():
            raise AssertionError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)


def follow(http: httpx.Client, instance_id: str, until: str) -> dict[str, Any]:
    """``GET /orders/<id>`` (the Worker's own fetch) until the status is ``until``."""
    body: dict[str, Any] = {}
    for _ in range(300):
        answer = http.get(f"/orders/{instance_id}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["details"]["status"] == until:
            return body["details"]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{instance_id} never {until}: {body}")


def drive(base: str, log: Path) -> None:
    """What a user does with the example, over HTTP: the Worker's fetch and Perdure's API."""
    with httpx.Client(base_url=base, timeout=10) as http:
        assert "POST /orders" in http.get("/").text
        created = http.post("/orders", json={"quantity": 3})
        assert created.status_code == 201 and created.headers["content-type"] == "application/json"
        order = created.json()["id"]
        assert follow(http, order, "complete") == {
            "status": "complete",
            "output": {"order": {"quantity": 3}, "price": {"cents": 750, "currency": "EUR"}},
            "error": None,
        }
        approval = http.post("/orders", json={"quantity": 2, "approval": True}).json()["id"]
        follow(http, approval, "waiting")
        assert http.post(f"/orders/{approval}/approve", json={"ok": True}).status_code == 202
        assert follow(http, approval, "complete")["output"]["price"] == {"cents": 500, "currency": "EUR"}
        refused = http.post("/orders", json={"quantity": 0}).json()["id"]
        assert follow(http, refused, "errored")["error"] == {
            "name": "NonRetryableError",
            "message": "quantity must be a whole number >= 1, got 0",
        }
        assert http.get("/orders/nope").status_code == 404

        listed = http.get("/perdure/api/workflows/order-pipeline/instances").json()["instances"]
        statuses = {i["id"]: i["status"] for i in listed}
        assert statuses.items() >= {order: "complete", approval: "complete", refused: "errored"}.items()
        detail = http.get(f"/perdure/api/workflows/order-pipeline/instances/{order}").json()
        assert sorted(s["name"] for s in detail["steps"]) == ["check order", "final step", "look up price"]
        assert detail["last_successful_step"] == "final step-1"  # the DAG ran its dependencies first
        assert http.get("/perdure/api/workflows", headers={"host": "evil.example"}).status_code == 403  # the guard
    cli = CliRunner().invoke(main, ["--url", f"{base}/perdure", "--json", "instances", "list", "order-pipeline"])
    assert cli.exit_code == 0 and order in cli.stdout
    deadline = time.monotonic() + 5
    while f"[order-pipeline/{order}] pricing 3 x 250 (attempt 1)" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()  # print() went to the log with the instance
        time.sleep(0.05)


@pytest.mark.slow
def test_perdure_dev_runs_the_project_unchanged(start: Callable[..., Path], db_url: str) -> None:
    port = free_port()
    log = start("dev", "examples/cloudflare_project", "--port", str(port), "--db", db_url)
    base = f"http://127.0.0.1:{port}"
    wait_up(base, log)
    said = log.read_text()
    assert f"Worker 'order-worker' (wrangler.jsonc) on {base}" in said
    assert f"CLI: perdure --url {base}/perdure instances list order-pipeline" in said
    drive(base, log)
    cache = httpx.get(f"{base}/cache")
    assert cache.status_code == 500 and cache.text.startswith(
        "UnsupportedBindingError: env.CACHE is a KV namespace binding (kv_namespaces in wrangler.jsonc)"
    )


@pytest.mark.slow
def test_perdure_serve_and_worker_split_the_work(start: Callable[..., Path], db_url: str) -> None:
    port = free_port()
    wrangler = str(PROJECT / "wrangler.jsonc")
    served = start("serve", wrangler, "--port", str(port), "--db", db_url)
    base = f"http://127.0.0.1:{port}"
    wait_up(base, served)
    with httpx.Client(base_url=base, timeout=10) as http:
        waiting = http.post("/orders", json={"quantity": 1}).json()["id"]
        time.sleep(0.5)
        assert http.get(f"/orders/{waiting}").json()["details"]["status"] == "queued"  # no worker yet
        worked = start("worker", wrangler, "--db", db_url)
        follow(http, waiting, "complete")
    drive(base, worked)
