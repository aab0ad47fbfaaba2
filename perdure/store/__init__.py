"""The only door to the database: every SQL statement Perdure runs is in this package.

:func:`open_store` picks a backend from a URL; :class:`~perdure.store.base.Store` is what the
rest of Perdure may ask of it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from ..errors import ValidationError
from .base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str, *, read_only: bool = False, **options: Any) -> Store:
    """A store for ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``postgresql://…``.

    ``read_only=True`` (SQLite) opens the file for reading only: it writes nothing, not even
    an upgrade of its layout, reads while another process holds the write lock, and reads a
    file it may not write; a write through it raises
    :class:`~perdure.errors.ReadOnlyStoreError`."""
    if not isinstance(url, str):
        raise ValidationError(f"database url must be a string, got {type(url).__name__}")
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ValidationError(f"database url {url!r} names no file: use sqlite:///path/to/file.db")
        return SQLiteStore(path, read_only=read_only, **options)
    scheme = urlparse(url).scheme
    if scheme in ("postgresql", "postgres"):
        if read_only:
            raise ValidationError(f"read_only=True is for SQLite files (sqlite:///path.db), not {scheme}:// URLs")
        from .._optional import require_extra

        require_extra("postgres", "the PostgreSQL backend")
        from .postgres import PostgresStore

        store: Store = PostgresStore(url, **options)
        return store
    raise ValidationError(f"unsupported database url {url!r}: use sqlite:///file.db or postgresql://user@host/db")
