"""Fixtures of the multi-process PostgreSQL tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ci import unavailable
from tests.postgres.cluster import OwnedCluster, find_bindir
from tests.postgres.helpers import Schema


@pytest.fixture
def schema() -> Iterator[Schema]:
    """A fresh schema for the workers and the test's side-effect table, dropped afterwards."""
    created = Schema()
    created.create()
    yield created
    created.drop()


@pytest.fixture
def owned_cluster() -> Iterator[OwnedCluster]:
    """A PostgreSQL cluster of this test's own (see tests/postgres/cluster.py), running; it may
    be restarted at will. Stopped and removed afterwards. Without PostgreSQL's server binaries
    the test is skipped, except in CI (``CI`` set), where it fails."""
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    cluster = OwnedCluster(bindir)
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
