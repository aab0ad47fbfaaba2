"""Punderful on PostgreSQL: the engine, the app tables and the vector index in one database.

Runs against the PostgreSQL at ``PUNDERFUL_TEST_PG`` (default 127.0.0.1:5432/test) and skips
when it is unreachable. Debian's PostgreSQL has no pgvector, so the vector index uses its
documented fallback (float32 bytes + exact search in numpy) there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from punderful.db import PunDB
from tests.ci import unavailable
from tests.conftest import PG_URL
from tests.test_app_helpers import CHEESE, GUITAR, OWL, client_for, make_config, publish_all, running


@pytest.fixture
def pg_schemas() -> Iterator[tuple[str, str]]:
    """``(engine_schema, app_schema)``: fresh schemas, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    suffix = uuid.uuid4().hex[:10]
    schemas = (f"pe_{suffix}", f"pa_{suffix}")
    try:
        yield schemas
    finally:
        for schema in schemas:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def test_the_app_tables_on_postgres(pg_schemas: tuple[str, str]) -> None:
    db = PunDB.postgres(PG_URL, schema=pg_schemas[1])
    try:
        assert db.insert_pun("p1", "50% of puns\nare half-funny?", "anon-1") is True
        assert db.insert_pun("p1", "again", "anon-1") is False
        assert db.mark_published("p1", ["math"]) is True
        assert db.mark_published("p1", ["math"]) is False
        pun = db.get_pun("p1")
        assert pun is not None and pun.status == "published" and pun.moderation == "skipped"
        assert pun.pun == "50% of puns\nare half-funny?"  # '%' survives the placeholder rewrite
        assert db.status_changes("p1") == ["published"]
        assert db.ensure_session("anon-1") is True and db.ensure_session("anon-1") is False
        assert db.record_interaction("k1", "anon-1", "p1", "like") is True
        assert db.record_interaction("k1", "anon-1", "p1", "like") is False
        assert [t.pun_id for t in db.trending_from_likes()] == ["p1"]
        db.store_trends([{"punId": "p1", "pun": "x", "likes": 1}])
        db.store_trends([{"punId": "p1", "pun": "x", "likes": 2}])
        stored = db.get_trends()
        assert stored is not None and stored[0][0]["likes"] == 2
        assert [p.id for p in db.liked_by("anon-1")] == ["p1"]
        assert db.get_puns([]) == {}
    finally:
        db.close()


async def test_publish_and_search_on_postgres(pg_schemas: tuple[str, str], tmp_path: object) -> None:
    engine_schema, app_schema = pg_schemas
    config = make_config(
        tmp_path,  # type: ignore[arg-type]
        db_url=f"{PG_URL}?schema={engine_schema}",
        pg_schema=app_schema,
    )
    assert config.uses_postgres and "schema=" not in config.pg_conninfo
    async with running(config) as app, client_for(app) as http:
        cheese, guitar, owl = await publish_all(app, http, [CHEESE, GUITAR, OWL])
        found = (await http.get("/api/puns/search", params={"q": "jokes featuring birds"})).json()["results"]
        assert found[0]["id"] == owl["id"]
        assert app.services.vectors.count("content") == 3
        listed = (await http.get("/api/puns")).json()["results"]
        assert [p["id"] for p in listed] == [owl["id"], guitar["id"], cheese["id"]]
        response = await http.get(f"/api/puns/{cheese['id']}/similar")
        assert response.status_code == 200
        assert isinstance(http, httpx.AsyncClient)
