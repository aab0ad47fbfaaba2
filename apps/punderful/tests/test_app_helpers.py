"""Fixtures and helpers shared by the Punderful app tests (this module holds no tests).

Everything is real: the app runs in-process with its engine, workers, SQLite files and the
offline MiniLM model, and requests go through the ASGI app with httpx. Subprocess helpers start
``python -m punderful`` for the crash and browser tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from perdure.testing import ManualClock

from punderful.app import Punderful
from punderful.config import Config

ROOT = Path(__file__).resolve().parents[1]  # apps/punderful

# Puns whose topics the model tells apart; the queries below share no word with their pun.
CHEESE = "Our new cheese shop only sells aged cheddar.\nBusiness is slow, but it gets sharper every year."
GUITAR = "The guitar went to therapy.\nIt was tired of everyone picking on it."
OWL = "The owl took a job as a night-shift nurse.\nThe patients agree she's a hoot."
COMPUTER = "The old computer refused to retire.\nIt said it still had plenty of memory left."
SKIER = "The skier bought a house at the top of the mountain.\nThe price was steep, but it was all downhill from there."
CALCULATOR = "The calculator moved to the countryside.\nIt was counting on a quieter life."
PUNS = [CHEESE, GUITAR, OWL, COMPUTER, SKIER, CALCULATOR]


def make_config(tmp_path: Path, **changes: Any) -> Config:
    """A config on fresh files under ``tmp_path``, independent of the caller's environment."""
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "moderation": "local"}
    values.update(changes)
    return Config.from_env({}, **values)


@asynccontextmanager
async def running(config: Config, **engine_options: Any) -> AsyncIterator[Punderful]:
    """A started app with a fast-polling engine."""
    engine_options.setdefault("poll_interval", 0.02)
    async with Punderful(config, **engine_options) as app:
        yield app


def client_for(app: Punderful) -> httpx.AsyncClient:
    """An HTTP client that talks to the ASGI app directly (cookies are kept per client), as if
    the app listened on 127.0.0.1:8787 (its ``Host`` must be one the app serves)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi), base_url="http://127.0.0.1:8787")


# Fixtures are named through ``name=`` so that test modules can import them (as
# ``fixture_app`` ...) without shadowing the parameter names ``app`` and ``client``.
@pytest.fixture(name="config")
def fixture_config(tmp_path: Path) -> Config:
    """A fresh local-moderation config under ``tmp_path``."""
    return make_config(tmp_path)


@pytest.fixture(name="app")
async def fixture_app(config: Config) -> AsyncIterator[Punderful]:
    """A started app on that config."""
    async with running(config) as started:
        yield started


@pytest.fixture(name="client")
async def fixture_client(app: Punderful) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for that app."""
    async with client_for(app) as http:
        yield http


FIXTURES = (fixture_config, fixture_app, fixture_client)


async def submit(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    """POST a pun; returns the created pun's JSON."""
    response = await client.post("/api/puns", json={"pun": text})
    assert response.status_code == 201, response.text
    pun: dict[str, Any] = response.json()["pun"]
    return pun


async def wait_done(app: Punderful, workflow: str, instance_id: str, timeout: float = 60) -> dict[str, Any]:
    """Wait for an instance to end; returns its final status dict."""
    instance = await app.bindings[workflow].get(instance_id)
    return await instance.wait(timeout=timeout)


async def publish_all(app: Punderful, client: httpx.AsyncClient, texts: list[str]) -> list[dict[str, Any]]:
    """Submit puns and wait until each publish instance completed."""
    puns = [await submit(client, text) for text in texts]
    for pun in puns:
        status = await wait_done(app, "publish", pun["id"])
        assert status["status"] == "complete", status
    return puns


#: The publish workflow's steps, by the seed's exact names, in order.
PUBLISH_STEPS = [
    "content-moderation",
    "create-pun-embedding",
    "categorize-pun",
    "create-categories-embedding",
    "add-embeddings-to-vector-store",
    "update-status-to-published",
]

JumpingClock = ManualClock  # the engine's test clock, under the name these tests use


async def eventually(check: Callable[[], Any], timeout: float = 30, interval: float = 0.05) -> Any:
    """Poll ``check`` (a plain function, run in a thread since it may touch the database)
    until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# -- a real server process ----------------------------------------------------------------------
class ServerProcess:
    """``python -m punderful`` running in a subprocess on a free port; with ``--no-seed`` unless
    ``seed`` (the tests that need puns import their own)."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        args: Sequence[str] = (),
        *,
        seed: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log or data_dir.with_suffix(".log")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("PUNDERFUL_", "OPENAI_", "PERDURE_"))}
        environment.update(env or {})
        environment["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("ab")
        self._offset = self.log_path.stat().st_size  # the log is appended to across restarts
        self.process = subprocess.Popen(
            [sys.executable, "-m", "punderful", "--port", "0", "--data-dir", str(data_dir), "--moderation", "local"]
            + ([] if seed else ["--no-seed"])
            + list(args),
            cwd=ROOT,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as fh:
                fh.seek(self._offset)
                text = fh.read().decode(errors="replace")
            found = re.findall(r"Punderful is running at (http://\S+/)", text)
            if found:
                return str(found[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"punderful exited with {self.process.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"punderful did not print its URL within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def output(self) -> str:
        """What this run (not an earlier one on the same log) printed so far."""
        with self.log_path.open("rb") as fh:
            fh.seek(self._offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL (by pid): no shutdown code runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


@contextmanager
def server_process(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess` stopped at the end, whatever happens."""
    server = ServerProcess(data_dir, env)
    try:
        yield server
    finally:
        server.stop()
