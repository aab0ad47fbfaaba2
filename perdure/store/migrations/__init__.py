"""Versioned schema migrations for the server backends.

SQLite creates its few tables in place (one file, one writer); a PostgreSQL schema is shared by
many processes of possibly different Perdure versions, so its layout evolves through numbered,
append-only migrations (:mod:`perdure.store.migrations.postgres`).
"""
