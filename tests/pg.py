"""PostgreSQL test helpers: a fresh schema per test, dropped afterwards.

The server comes from ``PERDURE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets its own schema, selected with the
backend's ``?schema=`` URL parameter, so tests never see each other's rows and may run in
parallel against one server. When the server cannot be reached the test is skipped, except in CI
(``CI`` set), where it fails: a PostgreSQL test must never silently skip there.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import pytest

from tests.ci import unavailable

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The URL of the test server (without a schema)."""
    return os.environ.get("PERDURE_TEST_PG_URL", DEFAULT_URL)


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added or replaced."""
    parts = urlparse(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunparse(parts._replace(query=urlencode(query)))


def require_server() -> None:
    """Skip (or, in CI, fail) when the test server cannot be reached."""
    import psycopg

    try:
        psycopg.connect(server_url(), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL test server {server_url()} unreachable: {exc}")


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def schema_exists(schema: str) -> bool:
    import psycopg

    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return found is not None


def new_schema_name() -> str:
    return f"perdure_t_{uuid.uuid4().hex}"


def fresh_schema_url(request: pytest.FixtureRequest) -> str:
    """A URL selecting a new, empty schema (created by the store on open) that is dropped
    when the test ends."""
    require_server()
    schema = new_schema_name()
    request.addfinalizer(lambda: drop_schema(schema))
    return with_params(server_url(), schema=schema)
