"""Shared fixtures. ``db_url`` names the backend under test; engine tests take ``make_engine``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from perdure import Engine

BACKENDS = ["sqlite"]
if os.environ.get("PERDURE_TEST_POSTGRES", "1" if os.environ.get("CI") else "") == "1":
    BACKENDS.append("postgresql")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'perdure.db'}"
    from tests.pg import fresh_schema_url  # the PostgreSQL backend's test helper

    return fresh_schema_url(request)


@pytest.fixture
async def make_engine(db_url: str) -> AsyncIterator[Callable[..., Engine]]:
    """Build engines on the test's database; every one is stopped at the end of the test."""
    engines: list[Engine] = []

    def factory(**options: Any) -> Engine:
        options.setdefault("poll_interval", 0.02)
        engine = Engine(db_url, **options)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()
