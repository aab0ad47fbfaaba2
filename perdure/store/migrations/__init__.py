"""Versioned schemas of the two backends.

SQLite creates its tables in place (one file, one writer): :mod:`.sqlite` brings any file
Perdure ever wrote up to the current layout when it is opened. A PostgreSQL schema is shared by
many processes of possibly different Perdure versions, so its layout evolves through numbered,
append-only migrations (:mod:`.postgres`).
"""
