"""Fixtures for the operations tests: an engine with the sample workflows, the ASGI app, and an
HTTP client bound to it (no network)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from perdure import Engine
from perdure.server.api import create_app

from .sample_app import register

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ops"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    """An engine with the sample workflows; not started (a client) until a test starts it."""
    return register(make_engine(fast_wait=1.0))


@pytest.fixture
def app(engine: Engine) -> Any:
    return create_app(engine)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        yield c


async def wait_status(
    client: httpx.AsyncClient, workflow: str, instance: str, *statuses: str, timeout: float = 10
) -> Any:
    """Poll the API until the instance has one of ``statuses``; returns its detail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/api/workflows/{workflow}/instances/{instance}")
        detail = response.json()
        if detail.get("status") in statuses:
            return detail
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{workflow}/{instance} is {detail.get('status')}, wanted {statuses}")
        await asyncio.sleep(0.02)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))
