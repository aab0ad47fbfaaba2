"""Perdure's pytest plugin, loaded by pytest when perdure is installed (entry point ``pytest11``).

Fixtures (async ones need pytest-asyncio; nothing is built until a test asks for it):

* ``perdure_engine``: a started :class:`perdure.Engine` on a fresh SQLite file in the test's
  ``tmp_path``, stopped when the test ends. Register workflows on it in the test.
* ``perdure_make_engine``: ``perdure_make_engine(**options)`` builds more engines (not started)
  on that same file, with Engine options of your choice; all are stopped at the end.
* ``perdure_postgres_engine``: the same on PostgreSQL, in a fresh schema of the server named by
  ``--perdure-postgres-url``, the ini option ``perdure_postgres_url`` or the environment variable
  ``PERDURE_TEST_POSTGRES_URL``; skipped when none is set. Override the ``perdure_postgres_url``
  fixture to choose (and drop) the schema yourself.
* ``perdure_time_skipping``: a :class:`~perdure.testing.ManualClock` with ``auto_advance=True``.
  A test that asks for it and for ``perdure_engine`` (or ``perdure_postgres_engine``,
  ``perdure_make_engine``) gets engines on that clock: whenever every instance waits on time,
  time jumps to the next deadline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import pytest

if TYPE_CHECKING:
    from ..engine import Engine
    from .clock import ManualClock

F = TypeVar("F", bound=Callable[..., Any])


def async_fixture(fn: F) -> F:
    """pytest-asyncio's fixture decorator (strict mode wants it; auto mode takes either)."""
    try:
        from pytest_asyncio import fixture
    except ImportError:  # pragma: no cover - without pytest-asyncio the async fixtures cannot run anyway
        return cast(F, pytest.fixture(fn))
    return cast(F, fixture(fn))


ENV_URL = "PERDURE_TEST_POSTGRES_URL"
POLL_INTERVAL = 0.02  # a test engine notices other processes' writes quickly


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("perdure")
    group.addoption(
        "--perdure-postgres-url",
        default=None,
        help=f"PostgreSQL server for the perdure_postgres_engine fixture (else ini perdure_postgres_url or ${ENV_URL})",
    )
    parser.addini("perdure_postgres_url", "PostgreSQL server for the perdure_postgres_engine fixture", default="")


def _configured_url(config: pytest.Config) -> str | None:
    value = (
        config.getoption("--perdure-postgres-url") or config.getini("perdure_postgres_url") or os.environ.get(ENV_URL)
    )
    return str(value) if value else None


def _clock(request: pytest.FixtureRequest) -> ManualClock | None:
    if "perdure_time_skipping" in request.fixturenames:
        clock: ManualClock = request.getfixturevalue("perdure_time_skipping")
        return clock
    return None


async def _engines(url: str, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Engine]]:
    from ..engine import Engine

    made: list[Engine] = []
    clock = _clock(request)

    def factory(**options: Any) -> Engine:
        options.setdefault("poll_interval", POLL_INTERVAL)
        if clock is not None:
            options.setdefault("clock", clock)
        engine = Engine(url, **options)
        made.append(engine)
        return engine

    try:
        yield factory
    finally:
        for engine in made:
            await engine.stop()


@pytest.fixture
def perdure_sqlite_url(tmp_path: Path) -> str:
    """The URL of the test's SQLite file (fresh for each test)."""
    return f"sqlite:///{tmp_path / 'perdure.db'}"


@async_fixture
async def perdure_make_engine(
    perdure_sqlite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Engine]]:
    """``perdure_make_engine(**options)``: an Engine (not started) on the test's SQLite file."""
    async for factory in _engines(perdure_sqlite_url, request):
        yield factory


@async_fixture
async def perdure_engine(perdure_make_engine: Callable[..., Engine]) -> AsyncIterator[Engine]:
    """A started Engine on a fresh SQLite file, stopped when the test ends."""
    engine = perdure_make_engine()
    await engine.start()
    yield engine


@pytest.fixture
def perdure_postgres_url(request: pytest.FixtureRequest) -> str:
    """The configured PostgreSQL server with a fresh ``?schema=`` for this test (skips when no
    server is configured). ``perdure_postgres_engine`` drops the schema afterwards."""
    server = _configured_url(request.config)
    if server is None:
        pytest.skip(f"no PostgreSQL server configured (--perdure-postgres-url, ini perdure_postgres_url or ${ENV_URL})")
    parts = urlparse(server)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query["schema"] = f"perdure_pytest_{uuid.uuid4().hex[:16]}"
    return urlunparse(parts._replace(query=urlencode(query)))


@async_fixture
async def perdure_postgres_engine(perdure_postgres_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """A started Engine on a fresh PostgreSQL schema, stopped when the test ends."""
    async for factory in _engines(perdure_postgres_url, request):
        engine = factory()
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()
            drop = getattr(engine.store, "drop", None)  # PostgreSQL's store removes its own schema
            if drop is not None:
                try:
                    await drop()
                finally:
                    await engine.store.close()


@pytest.fixture
def perdure_time_skipping() -> Iterator[ManualClock]:
    """A ManualClock(auto_advance=True): time jumps to the next deadline whenever every instance
    of the engines on it waits on time."""
    from .clock import ManualClock

    clock = ManualClock(auto_advance=True)
    yield clock
    clock.close()
