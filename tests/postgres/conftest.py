"""Fixtures of the multi-process PostgreSQL tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres.helpers import Schema


@pytest.fixture
def schema() -> Iterator[Schema]:
    """A fresh schema for the workers and the test's side-effect table, dropped afterwards."""
    created = Schema()
    created.create()
    yield created
    created.drop()
