"""The plugin's PostgreSQL fixture, in this suite, gets the suite's own fresh schema (dropped
afterwards, and failing instead of skipping in CI: see tests/pg.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def perdure_postgres_url(request: pytest.FixtureRequest) -> str:
    from tests.pg import fresh_schema_url

    return fresh_schema_url(request)


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    from tests.testing.workflows import CALLS

    CALLS.clear()
