"""The SQLite layout, created and upgraded in place when a file is opened.

One file has one writer at a time, so its layout needs no numbered migrations: every table and
index is created ``IF NOT EXISTS``, and a file an older Perdure wrote gains what it lacks (the
kept counts are taken from the instances it has, in the same transaction). ``perdure_meta``
records the newest layout the file has had; an older Perdure may still open it.
"""

from __future__ import annotations

import re
import sqlite3

from ...errors import ReadOnlyStoreError

# The layout is created in place (``IF NOT EXISTS``): a file from an older version gains the
# tables it lacks when opened. 2 added ``workflows``; the prefix search of instance ids needs no
# index of its own, since the UNIQUE (workflow, id) index is in binary order. 3 added
# ``instance_counts`` and the triggers that keep it (see _COUNTS below; created apart from
# _SCHEMA, because a file that predates them needs its counts taken in the same transaction).
# 4 added the durable queues' tables, which Perdure 0.1 created on a queue's first use with the
# same columns (so IF NOT EXISTS keeps the messages of such a file). 5 made the message ids
# AUTOINCREMENT: a plain INTEGER PRIMARY KEY reuses the id of an acked (deleted) message, and
# a queue consumer's default instance id ``<queue>-<message id>`` then names an instance that
# exists, so a new message was acked without starting one (see _never_reuse_message_ids).
# 6 added the instances' ``terminating`` (a terminate that runs the rollback handlers first),
# their retention (``success_retention``, ``error_retention``, seconds, and ``expires_at``, set
# when they finish) and ``perdure_subscriptions`` (how far each lifecycle subscription has
# delivered the history); the columns are added in place (see _add_columns). 7 added flow
# control (perdure.flow): the instances' ``concurrency_key`` and ``priority``, the workflows'
# ``flow`` (their limits, for tools in other processes), ``perdure_rate_slots`` (the slots
# each rate limit handed out, a sliding-window log) and ``perdure_key_turns`` (when each
# concurrency key last had an instance started, for round-robin across keys).
SCHEMA_VERSION = 7
# Columns added after a table was first created, by layout: (table, column, type).
_ADDED_COLUMNS = (
    ("instances", "terminating", "TEXT"),
    ("instances", "success_retention", "REAL"),
    ("instances", "error_retention", "REAL"),
    ("instances", "expires_at", "REAL"),
    ("instances", "concurrency_key", "TEXT"),
    ("instances", "priority", "INTEGER NOT NULL DEFAULT 0"),
    ("workflows", "flow", "TEXT"),
)
# Indexes on added columns: made after the columns (an older file's table lacks them).
_LATER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_instances_expires ON instances (expires_at) WHERE expires_at IS NOT NULL",
    # the claim's queued tier: by priority, then oldest first
    "CREATE INDEX IF NOT EXISTS ix_instances_queued ON instances (priority, pk) WHERE status = 'queued'",
    # a limited workflow's claim counts what runs under each key
    "CREATE INDEX IF NOT EXISTS ix_instances_keys ON instances (workflow, concurrency_key, status)"
    " WHERE concurrency_key IS NOT NULL",
)
# The queue messages' table and index: in the layout, and again when layout 5 rebuilds them.
_QUEUE_MESSAGES = (
    """CREATE TABLE IF NOT EXISTS perdure_queue_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    lease TEXT,
    last_error TEXT
)""",
    "CREATE INDEX IF NOT EXISTS ix_perdure_queue_ready ON perdure_queue_messages (queue, visible_at, id)",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS perdure_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    pk INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    trigger TEXT NOT NULL,
    schedule TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    output TEXT,
    error TEXT,
    wake_at REAL,
    wait_types TEXT,
    wake_requested INTEGER NOT NULL DEFAULT 0,
    paused_at REAL,
    epoch INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    terminating TEXT,
    success_retention REAL,
    error_retention REAL,
    expires_at REAL,
    UNIQUE (workflow, id)
);
CREATE INDEX IF NOT EXISTS ix_instances_runnable ON instances (status, wake_at);
CREATE INDEX IF NOT EXISTS ix_instances_list ON instances (workflow, status, pk);
CREATE INDEX IF NOT EXISTS ix_instances_newest ON instances (workflow, pk);
CREATE INDEX IF NOT EXISTS ix_instances_owner ON instances (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    count INTEGER NOT NULL,
    status TEXT NOT NULL,
    config TEXT,
    attempts TEXT NOT NULL,
    result TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    wake_at REAL,
    UNIQUE (instance_pk, kind, name, count)
);
CREATE TABLE IF NOT EXISTS events (
    pk INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    consumed_by INTEGER
);
CREATE INDEX IF NOT EXISTS ix_events_pending ON events (instance_pk, type, consumed_by, pk);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    instance_pk INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS ix_history_instance ON history (instance_pk, seq);
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT PRIMARY KEY,
    class_name TEXT NOT NULL,
    schedules TEXT NOT NULL,
    step_limit INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS perdure_queue_dead (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ix_perdure_queue_dead ON perdure_queue_dead (queue, id);
CREATE TABLE IF NOT EXISTS perdure_rate_slots (
    limiter TEXT NOT NULL,
    at REAL NOT NULL,
    holder TEXT NOT NULL,
    PRIMARY KEY (limiter, holder)
);
CREATE INDEX IF NOT EXISTS ix_perdure_rate_slots ON perdure_rate_slots (limiter, at);
CREATE TABLE IF NOT EXISTS perdure_key_turns (
    workflow TEXT NOT NULL,
    key TEXT NOT NULL,
    served_at REAL NOT NULL,
    PRIMARY KEY (workflow, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS perdure_subscriptions (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
""" + "".join(f"{statement};\n" for statement in _QUEUE_MESSAGES)

# The number of instances of each (workflow, status), kept by triggers on instances, so that
# count_by_status reads a few rows instead of an index of every instance. SQLite has one writer
# at a time, so one row per (workflow, status) updated in place costs no contention. The
# triggers live in the file: every writer keeps the counts, an older Perdure's too. Rows whose
# n fell to 0 stay (they are read past). The update trigger also covers a change of workflow,
# which the store never makes. One kind of write escapes triggers: the rows an INSERT OR
# REPLACE deletes, unless recursive_triggers is on, which _connect turns on (the store never
# replaces instances; a tool that does so on its own connection would skew the counts).
_COUNT_TRIGGERS = ("instance_counts_insert", "instance_counts_update", "instance_counts_delete")
_ADD = (
    "INSERT INTO instance_counts (workflow, status, n) VALUES ({wf}, {st}, {n})"
    " ON CONFLICT (workflow, status) DO UPDATE SET n = n + excluded.n;"
)
_COUNTS = (
    """CREATE TABLE IF NOT EXISTS instance_counts (
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (workflow, status)
) WITHOUT ROWID""",
    "CREATE TRIGGER instance_counts_insert AFTER INSERT ON instances BEGIN "
    + _ADD.format(wf="NEW.workflow", st="NEW.status", n=1)
    + " END",
    "CREATE TRIGGER instance_counts_update AFTER UPDATE OF workflow, status ON instances"
    " WHEN OLD.status IS NOT NEW.status OR OLD.workflow IS NOT NEW.workflow BEGIN "
    + _ADD.format(wf="OLD.workflow", st="OLD.status", n=-1)
    + " "
    + _ADD.format(wf="NEW.workflow", st="NEW.status", n=1)
    + " END",
    "CREATE TRIGGER instance_counts_delete AFTER DELETE ON instances BEGIN "
    + _ADD.format(wf="OLD.workflow", st="OLD.status", n=-1)
    + " END",
)


# Every table, index and trigger of the layout: a file that has them all needs no upgrade.
_LAYOUT_NAMES = frozenset(
    re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA + _COUNTS[0] + "".join(_LATER_INDEXES))
    + list(_COUNT_TRIGGERS)
)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Add the columns of later layouts that a file's tables lack (inside a write transaction)."""
    for table, column, kind in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    for statement in _LATER_INDEXES:
        conn.execute(statement)


def _ensure_counts(conn: sqlite3.Connection) -> None:
    """Create the counts and their triggers if the file lacks them, counting the instances it
    has. Run inside a write transaction: no other writer (of this process or another) can
    change an instance between the count and the triggers taking over."""
    present = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'instances'")
    }
    if present.issuperset(_COUNT_TRIGGERS):
        return
    for name in _COUNT_TRIGGERS:  # a partial set (never made by Perdure): start over
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute(_COUNTS[0])
    conn.execute("DELETE FROM instance_counts")
    conn.execute(
        "INSERT INTO instance_counts (workflow, status, n)"
        " SELECT workflow, status, COUNT(*) FROM instances GROUP BY workflow, status"
    )
    for trigger in _COUNTS[1:]:
        conn.execute(trigger)


def _never_reuse_message_ids(conn: sqlite3.Connection) -> None:
    """Rebuild a layout-4 messages table with AUTOINCREMENT, its counter past every id the file
    may have handed out: the messages left, the dead letters, and the ``-<n>`` suffixes of
    queue-started instances (acked messages left no other trace). Inside a write transaction."""
    (table,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'perdure_queue_messages'").fetchone()
    if "AUTOINCREMENT" in table.upper():
        return
    conn.execute("ALTER TABLE perdure_queue_messages RENAME TO perdure_queue_messages_old")
    conn.execute("DROP INDEX IF EXISTS ix_perdure_queue_ready")
    for statement in _QUEUE_MESSAGES:
        conn.execute(statement)
    conn.execute("INSERT INTO perdure_queue_messages SELECT * FROM perdure_queue_messages_old")
    conn.execute("DROP TABLE perdure_queue_messages_old")
    suffixes = conn.execute("SELECT id FROM instances WHERE trigger = 'queue' AND id GLOB '*-[0-9]*'").fetchall()
    used = [int(i.rsplit("-", 1)[1]) for (i,) in suffixes if i.rsplit("-", 1)[1].isdigit()]
    (messages,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM perdure_queue_messages").fetchone()
    (dead,) = conn.execute("SELECT COALESCE(MAX(message_id), 0) FROM perdure_queue_dead").fetchone()
    high = max([int(messages), int(dead), *used])
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'perdure_queue_messages'")
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('perdure_queue_messages', ?)", (high,))


def stored_layout(conn: sqlite3.Connection) -> int | None:
    """The layout the file records (``perdure_meta.schema_version``), or None for a file that
    Perdure never wrote (an empty one, or another application's). Reads only."""
    try:
        row = conn.execute("SELECT value FROM perdure_meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else int(row[0])


def check_layout(conn: sqlite3.Connection, path: str) -> None:
    """Refuse to read, on a read-only connection, a file in a layout older than this Perdure's:
    only a writable open upgrades it (in place, see :func:`create_or_upgrade`)."""
    layout = stored_layout(conn)
    if layout is None:
        raise ReadOnlyStoreError(
            f"{path} is not a Perdure database (it has no perdure_meta table): a read-only open cannot create one"
        )
    if layout < SCHEMA_VERSION:
        raise ReadOnlyStoreError(
            f"{path} has layout {layout} and this Perdure reads layout {SCHEMA_VERSION}: a read-only open cannot"
            " upgrade it; open it once for writing (start a worker, or run a command that writes) and it upgrades"
            " in place"
        )


def _up_to_date(conn: sqlite3.Connection) -> bool:
    """Whether the file has this layout (or a newer one) whole, so that opening it needs no write
    (nor the write lock, which another process may hold)."""
    layout = stored_layout(conn)
    if layout is None or layout < SCHEMA_VERSION:
        return False
    names = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')")
    }
    return names.issuperset(_LAYOUT_NAMES)


def create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Bring the file behind ``conn`` (autocommit, not in a transaction) to :data:`SCHEMA_VERSION`.

    A file already there is only read: no write transaction, so a worker or a server opens it
    while another process holds the write lock (it waits for the lock at its first write)."""
    if _up_to_date(conn):
        return
    conn.executescript(_SCHEMA)  # each statement on its own (executescript commits first)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _ensure_counts(conn)
        _never_reuse_message_ids(conn)
        _add_columns(conn)
        conn.execute(  # the newest layout the file has had (an older Perdure may open it too)
            "INSERT INTO perdure_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE"
            " SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
