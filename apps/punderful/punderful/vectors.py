"""A small vector index with Cloudflare Vectorize's shape, on SQLite or PostgreSQL.

The original app keeps two vectors per published pun in Vectorize: the
pun's own embedding in namespace ``content`` (id ``content-<punId>``) and
the embedding of its category list in namespace ``categories`` (id
``categories-<punId>``), each with metadata ``{punId, pun, categories}``.
Search embeds the query and asks for the nearest ``content`` vectors;
"similar puns" looks up a pun's two vectors by id and queries with them.

This module offers the same operations -- ``upsert``, ``query``,
``get_by_ids``, ``delete``, ``count`` -- over two back ends:

* :class:`VectorIndex`: a ``vec0`` virtual table of the sqlite-vec
  extension per namespace. Python's stdlib ``sqlite3`` on this platform
  cannot load extensions, so the connection comes from ``sqlean-py``, a
  drop-in build of the same module that can.
* :class:`PgVectorIndex`: PostgreSQL, with the pgvector extension when the
  server has it, otherwise vectors as float32 bytes and an exact search in
  numpy (Debian's PostgreSQL packages ship no pgvector).

Search is exact (brute force) in every case: at pun-app scale (10k-100k
rows) that takes milliseconds and never misses a neighbour, which an
approximate index can. Scores are cosine similarities, ``1 - cosine
distance``: 1 for the same direction, 0 for unrelated, negative for
opposite.

The puns table stays the source of truth; the index is derived data that
can be rebuilt by re-embedding. Each namespace records the model id and
dimension of its vectors in a ``vector_meta`` table, because vectors from
two different models are not comparable even when their lengths agree.

All methods are synchronous and serialise on a lock: run them in a worker
thread, not on the event loop.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DimensionMismatchError",
    "Match",
    "PgVectorIndex",
    "VectorIndex",
    "VectorIndexError",
    "VectorItem",
    "VectorStore",
]

log = logging.getLogger(__name__)

# Namespaces become part of table names, so they are restricted to
# identifier characters instead of being quoted.
_NAMESPACE_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# vec0's KNN limit.
MAX_TOP_K: Final = 4096


class VectorIndexError(ValueError):
    """Invalid use of the index (bad namespace, wrong vector length, ...)."""


class DimensionMismatchError(VectorIndexError):
    """A vector's length or model does not match what the namespace already holds."""


@dataclass(frozen=True)
class VectorItem:
    """One stored vector: its id, its values and a JSON-serialisable metadata dict."""

    id: str
    values: NDArray[np.float32]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    """A query hit; ``score`` is the cosine similarity (higher is closer)."""

    id: str
    score: float
    metadata: dict[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """The operations the app uses; both back ends implement them."""

    def upsert(self, namespace: str, items: Sequence[VectorItem]) -> None:
        """Insert or replace items by id."""
        ...

    def query(self, namespace: str, vector: Any, top_k: int = 10) -> list[Match]:
        """Nearest neighbours of ``vector``, best first."""
        ...

    def get_by_ids(self, namespace: str, ids: Sequence[str]) -> list[VectorItem]:
        """Stored items by id."""
        ...

    def delete(self, namespace: str, ids: Sequence[str]) -> None:
        """Remove items by id."""
        ...

    def count(self, namespace: str) -> int:
        """Number of items in a namespace."""
        ...

    def dimension(self, namespace: str) -> int | None:
        """Vector length of a namespace, ``None`` if it does not exist yet."""
        ...

    def drop_namespace(self, namespace: str) -> None:
        """Delete a namespace and its recorded model and dimension."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise VectorIndexError(
            f"namespace {namespace!r} must match {_NAMESPACE_RE.pattern} (lower-case letters, digits and underscores)"
        )
    return namespace


def _as_vector(values: Any, what: str) -> NDArray[np.float32]:
    # float32 always: NumPy 2 silently promotes float32 arithmetic results to
    # float64, and float64 bytes read as float32 have twice the length.
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if vector.size == 0 or not np.all(np.isfinite(vector)):
        raise VectorIndexError(f"{what}: vector must be non-empty and finite")
    return vector


def _prepare(items: Sequence[VectorItem]) -> tuple[list[tuple[VectorItem, NDArray[np.float32]]], int]:
    """Validate a batch: float32 vectors of one length, one entry per id (the last wins)."""
    latest = {item.id: (item, _as_vector(item.values, item.id)) for item in items}
    rows = list(latest.values())
    dims = {vec.size for _, vec in rows}
    if len(dims) > 1:
        raise DimensionMismatchError(f"items have mixed vector lengths {sorted(dims)}")
    return rows, (dims.pop() if dims else 0)


def _check_top_k(top_k: int) -> int:
    if not 1 <= top_k <= MAX_TOP_K:
        raise VectorIndexError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return top_k


def _mismatch(namespace: str, what: str, stored: object, given: object) -> DimensionMismatchError:
    return DimensionMismatchError(
        f"namespace {namespace!r} holds vectors with {what} {stored!r}, got {given!r}; "
        "vectors from different models cannot be compared -- drop the namespace "
        "and re-embed everything to switch models"
    )


class VectorIndex:
    """Vectorize-like index in a SQLite file, using sqlite-vec ``vec0`` tables.

    ``path`` may be the app's own database file (the index then lives in
    tables ``vector_meta`` and ``vec_<namespace>`` next to the app's tables)
    or a separate file. The index opens its own connection in WAL mode, so
    the app's readers are not blocked while it writes.

    ``model_id``, when given, is recorded for new namespaces and checked
    against existing ones.
    """

    def __init__(self, path: str | Path, *, model_id: str | None = None) -> None:
        """Open (creating if needed) the database at ``path`` and load sqlite-vec."""
        import sqlean  # type: ignore[import-untyped, unused-ignore]
        import sqlite_vec  # type: ignore[import-untyped, unused-ignore]

        self._model_id = model_id
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; writes use explicit
        # BEGIN IMMEDIATE so a delete + insert pair is atomic.
        self._db: Any = sqlean.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.enable_load_extension(True)
        sqlite_vec.load(self._db)
        # Loading stays disabled afterwards: SQL must not be able to load code.
        self._db.enable_load_extension(False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vector_meta ("
            " namespace TEXT PRIMARY KEY, model_id TEXT, dimension INTEGER NOT NULL)"
        )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _dimension(self, namespace: str) -> int | None:
        row = self._db.execute(
            "SELECT model_id, dimension FROM vector_meta WHERE namespace = ?",
            (namespace,),
        ).fetchone()
        if row is None:
            return None
        if self._model_id and row[0] and row[0] != self._model_id:
            raise _mismatch(namespace, "model id", row[0], self._model_id)
        return int(row[1])

    def dimension(self, namespace: str) -> int | None:
        """The vector length stored in ``namespace`` (``None`` if it is empty and new)."""
        with self._lock:
            return self._dimension(_check_namespace(namespace))

    def upsert(self, namespace: str, items: Sequence[VectorItem]) -> None:
        """Insert or replace ``items`` (atomically; calling twice leaves one row per id)."""
        table = f"vec_{_check_namespace(namespace)}"
        rows, dim = _prepare(items)
        if not rows:
            return
        with self._transaction():
            stored = self._dimension(namespace)
            if stored is None:
                self._db.execute(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
                    f" id TEXT PRIMARY KEY, embedding float[{dim}] distance_metric=cosine,"
                    " +metadata TEXT)"
                )
                self._db.execute(
                    "INSERT INTO vector_meta (namespace, model_id, dimension) VALUES (?, ?, ?)",
                    (namespace, self._model_id, dim),
                )
            elif stored != dim:
                raise _mismatch(namespace, "dimension", stored, dim)
            # vec0 has no INSERT OR REPLACE / ON CONFLICT, hence delete + insert.
            self._db.executemany(f"DELETE FROM {table} WHERE id = ?", [(item.id,) for item, _ in rows])
            self._db.executemany(
                f"INSERT INTO {table} (id, embedding, metadata) VALUES (?, ?, ?)",
                [(item.id, vec.tobytes(), json.dumps(item.metadata)) for item, vec in rows],
            )

    def query(self, namespace: str, vector: Any, top_k: int = 10) -> list[Match]:
        """The ``top_k`` nearest vectors to ``vector``, best first."""
        table = f"vec_{_check_namespace(namespace)}"
        query = _as_vector(vector, "query")
        _check_top_k(top_k)
        with self._lock:
            stored = self._dimension(namespace)
            if stored is None:
                return []
            if stored != query.size:
                raise _mismatch(namespace, "dimension", stored, query.size)
            rows = self._db.execute(
                f"SELECT id, distance, metadata FROM {table} WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                (query.tobytes(), top_k),
            ).fetchall()
        return [Match(id=r[0], score=1.0 - float(r[1]), metadata=json.loads(r[2])) for r in rows]

    def get_by_ids(self, namespace: str, ids: Sequence[str]) -> list[VectorItem]:
        """The stored items with these ids, in the order asked; unknown ids are skipped."""
        table = f"vec_{_check_namespace(namespace)}"
        found: dict[str, VectorItem] = {}
        with self._lock:
            if self._dimension(namespace) is None:
                return []
            for item_id in dict.fromkeys(ids):
                row = self._db.execute(f"SELECT embedding, metadata FROM {table} WHERE id = ?", (item_id,)).fetchone()
                if row is not None:
                    values = np.frombuffer(row[0], dtype=np.float32).copy()
                    found[item_id] = VectorItem(item_id, values, json.loads(row[1]))
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def delete(self, namespace: str, ids: Sequence[str]) -> None:
        """Remove these ids (unknown ids are ignored)."""
        table = f"vec_{_check_namespace(namespace)}"
        with self._transaction():
            if self._dimension(namespace) is not None:
                self._db.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids])

    def count(self, namespace: str) -> int:
        """Number of vectors in ``namespace``."""
        table = f"vec_{_check_namespace(namespace)}"
        with self._lock:
            if self._dimension(namespace) is None:
                return 0
            return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def drop_namespace(self, namespace: str) -> None:
        """Delete a namespace with its recorded model and dimension (to switch models)."""
        table = f"vec_{_check_namespace(namespace)}"
        with self._transaction():
            self._db.execute(f"DROP TABLE IF EXISTS {table}")
            self._db.execute("DELETE FROM vector_meta WHERE namespace = ?", (namespace,))


_PGVECTOR_WARNED = False
_PGVECTOR_WARNED_LOCK = threading.Lock()


def _warn_no_pgvector(reason: str) -> None:
    global _PGVECTOR_WARNED
    with _PGVECTOR_WARNED_LOCK:
        if not _PGVECTOR_WARNED:
            _PGVECTOR_WARNED = True
            log.warning(
                "pgvector is not available on this PostgreSQL server (%s); storing vectors "
                "as float32 bytes and searching them exactly in numpy. Fine for tens of "
                "thousands of rows; install pgvector for more.",
                reason,
            )


@dataclass
class _Matrix:
    version: int
    ids: list[str]
    matrix: NDArray[np.float32]


class PgVectorIndex:
    """The same index on PostgreSQL (psycopg 3, synchronous).

    On connect it runs ``CREATE EXTENSION IF NOT EXISTS vector``. If that
    works, each namespace is a table with a ``vector(n)`` column and queries
    use pgvector's ``<=>`` cosine distance. If it fails (no pgvector on the
    server, or no privilege), a warning is logged once and vectors are stored
    as float32 ``bytea``; queries then load the namespace into a numpy matrix
    and search it exactly. The matrix is cached per namespace and reloaded
    only when ``vector_meta.version`` changes, which every write bumps in the
    same transaction -- so the cache stays correct even when other processes
    write to the same database.

    The storage kind is recorded per namespace, so a namespace created in
    fallback mode keeps working if pgvector is installed later.

    ``schema`` (created if missing) holds ``vector_meta`` and the
    ``vec_<namespace>`` tables.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        model_id: str | None = None,
        use_pgvector: bool | None = None,
    ) -> None:
        """Connect to ``conninfo`` (a libpq URL or key=value string).

        ``use_pgvector``: ``None`` (default) tries the extension and falls
        back if it is missing; ``False`` always uses the bytea fallback for
        new namespaces (e.g. when the role may not create extensions);
        ``True`` raises if pgvector cannot be enabled.
        """
        import psycopg
        from psycopg import sql

        if not _NAMESPACE_RE.fullmatch(schema):
            raise VectorIndexError(f"schema {schema!r} must match {_NAMESPACE_RE.pattern}")
        self._sql = sql
        self._schema_name = schema
        self._schema = sql.Identifier(schema)
        self._model_id = model_id
        self._lock = threading.Lock()
        self._cache: dict[str, _Matrix] = {}
        # Autocommit, with explicit transaction blocks around writes: a failed
        # CREATE EXTENSION must not poison a surrounding transaction.
        self._db = psycopg.connect(conninfo, autocommit=True)
        #: Whether new namespaces are stored as pgvector ``vector`` columns.
        self.has_pgvector = False
        if use_pgvector is not False:
            try:
                self._db.execute("CREATE EXTENSION IF NOT EXISTS vector")
                self.has_pgvector = True
            except psycopg.Error as exc:
                if use_pgvector:
                    self._db.close()
                    raise
                _warn_no_pgvector(str(exc).strip().splitlines()[0])
        self._db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
        self._db.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.vector_meta (namespace text PRIMARY KEY,"
                " model_id text, dimension integer NOT NULL, storage text NOT NULL,"
                " version bigint NOT NULL DEFAULT 0)"
            ).format(self._schema)
        )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _table(self, namespace: str) -> Any:
        return self._sql.Identifier(self._schema_name, f"vec_{_check_namespace(namespace)}")

    def _meta(self, namespace: str) -> tuple[int, str, int] | None:
        row = self._db.execute(
            self._sql.SQL(
                "SELECT model_id, dimension, storage, version FROM {}.vector_meta WHERE namespace = %s"
            ).format(self._schema),
            (namespace,),
        ).fetchone()
        if row is None:
            return None
        if self._model_id and row[0] and row[0] != self._model_id:
            raise _mismatch(namespace, "model id", row[0], self._model_id)
        return int(row[1]), str(row[2]), int(row[3])

    def dimension(self, namespace: str) -> int | None:
        """The vector length stored in ``namespace`` (``None`` if it is new)."""
        with self._lock:
            meta = self._meta(_check_namespace(namespace))
        return None if meta is None else meta[0]

    def storage(self, namespace: str) -> str | None:
        """``"pgvector"`` or ``"bytea"`` for an existing namespace."""
        with self._lock:
            meta = self._meta(_check_namespace(namespace))
        return None if meta is None else meta[1]

    @staticmethod
    def _literal(vector: NDArray[np.float32]) -> str:
        # pgvector's text format; avoids a dependency on the pgvector package.
        return "[" + ",".join(repr(float(x)) for x in vector) + "]"

    def upsert(self, namespace: str, items: Sequence[VectorItem]) -> None:
        """Insert or replace ``items`` in one transaction."""
        table = self._table(namespace)
        rows, dim = _prepare(items)
        if not rows:
            return
        sql = self._sql
        with self._lock, self._db.transaction():
            meta = self._meta(namespace)
            if meta is None:
                storage = "pgvector" if self.has_pgvector else "bytea"
                column = sql.SQL(f"vector({dim})" if storage == "pgvector" else "bytea")
                self._db.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY,"
                        " embedding {} NOT NULL, metadata jsonb NOT NULL)"
                    ).format(table, column)
                )
                self._db.execute(
                    sql.SQL(
                        "INSERT INTO {}.vector_meta (namespace, model_id, dimension, storage) VALUES (%s, %s, %s, %s)"
                    ).format(self._schema),
                    (namespace, self._model_id, dim, storage),
                )
            else:
                stored, storage, _ = meta
                if stored != dim:
                    raise _mismatch(namespace, "dimension", stored, dim)
            value = sql.SQL("%s::vector" if storage == "pgvector" else "%s")
            with self._db.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (id, embedding, metadata) VALUES (%s, {}, %s::jsonb)"
                        " ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding,"
                        " metadata = EXCLUDED.metadata"
                    ).format(table, value),
                    [
                        (
                            item.id,
                            self._literal(vec) if storage == "pgvector" else vec.tobytes(),
                            json.dumps(item.metadata),
                        )
                        for item, vec in rows
                    ],
                )
            self._bump(namespace)

    def _bump(self, namespace: str) -> None:
        self._db.execute(
            self._sql.SQL("UPDATE {}.vector_meta SET version = version + 1 WHERE namespace = %s").format(self._schema),
            (namespace,),
        )

    def query(self, namespace: str, vector: Any, top_k: int = 10) -> list[Match]:
        """The ``top_k`` nearest vectors to ``vector``, best first."""
        table = self._table(namespace)
        query = _as_vector(vector, "query")
        _check_top_k(top_k)
        with self._lock:
            meta = self._meta(namespace)
            if meta is None:
                return []
            dim, storage, version = meta
            if dim != query.size:
                raise _mismatch(namespace, "dimension", dim, query.size)
            if storage == "pgvector":
                rows = self._db.execute(
                    self._sql.SQL(
                        "SELECT id, 1 - (embedding <=> %s::vector), metadata FROM {}"
                        " ORDER BY embedding <=> %s::vector LIMIT %s"
                    ).format(table),
                    (self._literal(query), self._literal(query), top_k),
                ).fetchall()
                return [Match(r[0], float(r[1]), r[2]) for r in rows]
            cached = self._cache.get(namespace)
            if cached is None or cached.version != version:
                cached = self._load_matrix(table, version)
                self._cache[namespace] = cached
            if not cached.ids:
                return []
            # Rows are unit length (normalised at load), so one mat-vec gives
            # every cosine similarity; argpartition avoids sorting all of them.
            scores = cached.matrix @ (query / max(float(np.linalg.norm(query)), 1e-12))
            k = min(top_k, len(cached.ids))
            best = np.argpartition(-scores, k - 1)[:k]
            best = best[np.argsort(-scores[best], kind="stable")]
            ids = [cached.ids[i] for i in best]
            meta_rows = self._db.execute(
                self._sql.SQL("SELECT id, metadata FROM {} WHERE id = ANY(%s)").format(table),
                (ids,),
            ).fetchall()
        metadata = {r[0]: r[1] for r in meta_rows}
        return [
            Match(cached.ids[i], float(scores[i]), metadata[cached.ids[i]]) for i in best if cached.ids[i] in metadata
        ]

    def _load_matrix(self, table: Any, version: int) -> _Matrix:
        rows = self._db.execute(self._sql.SQL("SELECT id, embedding FROM {} ORDER BY id").format(table)).fetchall()
        if not rows:
            return _Matrix(version, [], np.empty((0, 0), dtype=np.float32))
        matrix = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        norms = np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return _Matrix(version, [r[0] for r in rows], (matrix / norms).astype(np.float32))

    def get_by_ids(self, namespace: str, ids: Sequence[str]) -> list[VectorItem]:
        """The stored items with these ids, in the order asked; unknown ids are skipped."""
        table = self._table(namespace)
        with self._lock:
            meta = self._meta(namespace)
            if meta is None:
                return []
            column = self._sql.SQL("embedding::real[]" if meta[1] == "pgvector" else "embedding")
            rows = self._db.execute(
                self._sql.SQL("SELECT id, {}, metadata FROM {} WHERE id = ANY(%s)").format(column, table),
                (list(ids),),
            ).fetchall()
        found = {
            r[0]: VectorItem(
                r[0],
                np.asarray(r[1], dtype=np.float32)
                if meta[1] == "pgvector"
                else np.frombuffer(r[1], dtype=np.float32).copy(),
                r[2],
            )
            for r in rows
        }
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def delete(self, namespace: str, ids: Sequence[str]) -> None:
        """Remove these ids (unknown ids are ignored)."""
        table = self._table(namespace)
        with self._lock, self._db.transaction():
            if self._meta(namespace) is not None:
                self._db.execute(
                    self._sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table),
                    (list(ids),),
                )
                self._bump(namespace)

    def count(self, namespace: str) -> int:
        """Number of vectors in ``namespace``."""
        table = self._table(namespace)
        with self._lock:
            if self._meta(namespace) is None:
                return 0
            row = self._db.execute(self._sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        return int(row[0]) if row else 0

    def drop_namespace(self, namespace: str) -> None:
        """Delete a namespace with its recorded model and dimension (to switch models)."""
        table = self._table(namespace)
        with self._lock, self._db.transaction():
            self._db.execute(self._sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            self._db.execute(
                self._sql.SQL("DELETE FROM {}.vector_meta WHERE namespace = %s").format(self._schema),
                (namespace,),
            )
            self._cache.pop(namespace, None)
