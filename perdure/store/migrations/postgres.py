"""The PostgreSQL schema, as numbered migrations.

Each migration is a list of statements that run in one transaction together with the row that
records it in ``<schema>.schema_migrations``. :func:`migrate` holds a transaction-level advisory
lock named after the schema while it checks and applies them, so when twenty workers start at
once exactly one of them creates the tables and the others find them done.

Rules for new migrations: append, never edit a released one (databases in the field already ran
it); keep each one safe to run while older workers are connected (add columns with defaults, add
indexes, do not rename).

Layout (migration 1) mirrors the SQLite backend table by table, with PostgreSQL types:
``pk``/``seq`` are ``BIGSERIAL``; JSON values are ``TEXT`` holding exactly the encoded text the
engine produced (``JSONB`` would reorder keys and normalise numbers, and a step's replayed value
must equal the value first returned); timestamps are ``DOUBLE PRECISION`` seconds since the
epoch, as the engine's clock gives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from ...errors import PerdureError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]  # ``{s}`` stands for the quoted schema name


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instances, steps, events, history",
        (
            # fillfactor < 100 leaves room on each page so the frequent updates of an instance
            # (claim, lease renewal, suspend) and of a step (attempt start, result) can be HOT
            # updates that do not touch the indexes.
            """CREATE TABLE {s}.instances (
                pk BIGSERIAL PRIMARY KEY,
                workflow TEXT NOT NULL,
                id TEXT NOT NULL,
                status TEXT NOT NULL,
                params TEXT NOT NULL,
                trigger TEXT NOT NULL,
                schedule TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                ended_at DOUBLE PRECISION,
                output TEXT,
                error TEXT,
                wake_at DOUBLE PRECISION,
                wait_types TEXT,
                wake_requested BOOLEAN NOT NULL DEFAULT FALSE,
                paused_at DOUBLE PRECISION,
                epoch BIGINT NOT NULL DEFAULT 0,
                owner TEXT,
                lease_until DOUBLE PRECISION,
                UNIQUE (workflow, id)
            ) WITH (fillfactor = 80)""",
            "CREATE INDEX ix_instances_runnable ON {s}.instances (status, wake_at)",
            "CREATE INDEX ix_instances_list ON {s}.instances (workflow, status, pk)",
            "CREATE INDEX ix_instances_newest ON {s}.instances (workflow, pk)",
            "CREATE INDEX ix_instances_owner ON {s}.instances (owner) WHERE owner IS NOT NULL",
            # The two other claim queries: queued instances oldest first, and expired leases.
            "CREATE INDEX ix_instances_queued ON {s}.instances (pk) WHERE status = 'queued'",
            "CREATE INDEX ix_instances_leased ON {s}.instances (lease_until)"
            " WHERE status IN ('running', 'waitingForPause')",
            """CREATE TABLE {s}.steps (
                seq BIGSERIAL PRIMARY KEY,
                instance_pk BIGINT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                count INTEGER NOT NULL,
                status TEXT NOT NULL,
                config TEXT,
                attempts TEXT NOT NULL,
                result TEXT,
                error TEXT,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                wake_at DOUBLE PRECISION,
                UNIQUE (instance_pk, kind, name, count)
            ) WITH (fillfactor = 80)""",
            """CREATE TABLE {s}.events (
                pk BIGSERIAL PRIMARY KEY,
                instance_pk BIGINT NOT NULL,
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                consumed_by BIGINT
            )""",
            "CREATE INDEX ix_events_pending ON {s}.events (instance_pk, type, consumed_by, pk)",
            """CREATE TABLE {s}.history (
                seq BIGSERIAL PRIMARY KEY,
                instance_pk BIGINT NOT NULL,
                type TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                data TEXT
            )""",
            "CREATE INDEX ix_history_instance ON {s}.history (instance_pk, seq)",
        ),
    ),
    Migration(
        2,
        "workflows registered by engines",
        (
            # One row per workflow name, upserted by each engine that starts with it, so that
            # tools in other processes know which workflows exist before any has instances.
            """CREATE TABLE {s}.workflows (
                name TEXT PRIMARY KEY,
                class_name TEXT NOT NULL,
                schedules TEXT NOT NULL,
                step_limit INTEGER NOT NULL,
                registered_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "index for instance id prefix search",
        (
            # UNIQUE (workflow, id) sorts ids in the database's collation, where a range like
            # id >= 'ab' AND id < 'ab\U0010FFFF' need not mean "starts with ab" (en_US ignores
            # '-' and '_' at first); the store compares ids COLLATE "C" (bytes), served by
            # this index. It is built under a lock that holds back instance writes meanwhile:
            # a migration runs in a transaction, so CONCURRENTLY is not available.
            'CREATE INDEX ix_instances_id_prefix ON {s}.instances (workflow, id COLLATE "C")',
        ),
    ),
    Migration(
        4,
        "instance counts by workflow and status, kept by triggers",
        (
            # Counting instances by status with GROUP BY reads the whole table; these tables
            # keep the counts instead, so reading them costs (workflows x statuses) rows.
            #
            # Triggers on instances never update a shared counter: a counter row per status
            # would be locked by every worker's transaction that moves an instance into or out
            # of that status, serialising the workers on it. They append rows to
            # instance_count_deltas (inserts take no row locks, so writers never wait for one
            # another), and the store folds the deltas into instance_counts now and then
            # (COMPACT_COUNTS in pg_sql.py). The count of (workflow, status) is its
            # instance_counts.n plus the sum of its deltas, read in one statement (one
            # snapshot, so a fold that commits meanwhile is seen entirely or not at all).
            #
            # Writers are held back from here to the end of this migration, so the counts
            # taken at its end are exact and every later change goes through the triggers.
            # (CREATE TRIGGER would take this lock anyway; taking it first says so.) Readers
            # are not held back. The count at the end reads every instance once.
            "LOCK TABLE {s}.instances IN SHARE ROW EXCLUSIVE MODE",
            """CREATE TABLE {s}.instance_counts (
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                n BIGINT NOT NULL,
                PRIMARY KEY (workflow, status)
            )""",
            # No index, no key: appending is all that writers do, and only a fold reads and
            # deletes the rows (a handful of seconds' worth).
            """CREATE TABLE {s}.instance_count_deltas (
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                delta BIGINT NOT NULL
            )""",
            # Without a key, a publication FOR ALL TABLES (logical replication, change data
            # capture) would refuse the folds' DELETEs; this identity lets them through (and
            # costs nothing without logical replication).
            "ALTER TABLE {s}.instance_count_deltas REPLICA IDENTITY FULL",
            # Inserts and deletes: one trigger call per statement, reading the statement's
            # rows (a transition table), so creating 1,000 instances at once (or a COPY of
            # 50,000) appends one delta per (workflow, status), not one per instance.
            """CREATE FUNCTION {s}.instance_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {s}.instance_count_deltas (workflow, status, delta)
                SELECT workflow, status, count(*) FROM inserted GROUP BY workflow, status;
                RETURN NULL;
            END $$""",
            """CREATE FUNCTION {s}.instance_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {s}.instance_count_deltas (workflow, status, delta)
                SELECT workflow, status, -count(*) FROM deleted GROUP BY workflow, status;
                RETURN NULL;
            END $$""",
            # Updates: one call per row whose status (or workflow, which the store never
            # changes) changed. A statement-level trigger would need transition tables, which
            # PostgreSQL refuses with a column list, and would then run for every UPDATE of
            # instances, lease renewals included; the row trigger's WHEN is checked in the
            # server without calling the function.
            """CREATE FUNCTION {s}.instance_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {s}.instance_count_deltas (workflow, status, delta)
                VALUES (OLD.workflow, OLD.status, -1), (NEW.workflow, NEW.status, 1);
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER instance_counts_insert AFTER INSERT ON {s}.instances"
            " REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION {s}.instance_counts_inserted()",
            "CREATE TRIGGER instance_counts_delete AFTER DELETE ON {s}.instances"
            " REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION {s}.instance_counts_deleted()",
            "CREATE TRIGGER instance_counts_update AFTER UPDATE OF workflow, status ON {s}.instances FOR EACH ROW"
            " WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.workflow IS DISTINCT FROM NEW.workflow)"
            " EXECUTE FUNCTION {s}.instance_counts_updated()",
            "INSERT INTO {s}.instance_counts (workflow, status, n)"
            " SELECT workflow, status, count(*) FROM {s}.instances GROUP BY workflow, status",
        ),
    ),
    Migration(
        5,
        "durable queues: messages and dead letters",
        (
            # Perdure 0.1 created these tables on first use of a queue, outside the migrations,
            # with exactly these columns: IF NOT EXISTS keeps such a schema's messages as they are.
            """CREATE TABLE IF NOT EXISTS {s}.perdure_queue_messages (
                id BIGSERIAL PRIMARY KEY,
                queue TEXT NOT NULL,
                body TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION NOT NULL,
                visible_at DOUBLE PRECISION NOT NULL,
                lease TEXT,
                last_error TEXT)""",
            "CREATE INDEX IF NOT EXISTS ix_perdure_queue_ready ON {s}.perdure_queue_messages (queue, visible_at, id)",
            """CREATE TABLE IF NOT EXISTS {s}.perdure_queue_dead (
                id BIGSERIAL PRIMARY KEY,
                queue TEXT NOT NULL,
                message_id BIGINT NOT NULL,
                body TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                failed_at DOUBLE PRECISION NOT NULL,
                error TEXT)""",
            "CREATE INDEX IF NOT EXISTS ix_perdure_queue_dead ON {s}.perdure_queue_dead (queue, id)",
        ),
    ),
    Migration(
        6,
        "perdure_meta: keys the API server signs cursors and sessions with",
        (
            # The table SQLite's layout has had from the start (perdure_meta), so the store
            # reads and writes it with one statement for both: Store.secret keeps each key as
            # hex text under "secret:<name>".
            "CREATE TABLE IF NOT EXISTS {s}.perdure_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    Migration(
        7,
        "terminate with rollback, retention, lifecycle subscriptions",
        (
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS terminating TEXT",
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS success_retention DOUBLE PRECISION",
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS error_retention DOUBLE PRECISION",
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS expires_at DOUBLE PRECISION",
            "CREATE INDEX IF NOT EXISTS ix_instances_expires ON {s}.instances (expires_at)"
            " WHERE expires_at IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS {s}.perdure_subscriptions (name TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
        ),
    ),
    Migration(
        8,
        "flow control: concurrency keys, priorities, workflow limits, rate-limit slots",
        (
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS concurrency_key TEXT",
            "ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE {s}.workflows ADD COLUMN IF NOT EXISTS flow TEXT",
            "CREATE INDEX IF NOT EXISTS ix_instances_queued ON {s}.instances (priority, pk) WHERE status = 'queued'",
            "CREATE INDEX IF NOT EXISTS ix_instances_keys ON {s}.instances (workflow, concurrency_key, status)"
            " WHERE concurrency_key IS NOT NULL",
            """CREATE TABLE IF NOT EXISTS {s}.perdure_rate_slots (
                limiter TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                holder TEXT NOT NULL,
                PRIMARY KEY (limiter, holder))""",
            "CREATE INDEX IF NOT EXISTS ix_perdure_rate_slots ON {s}.perdure_rate_slots (limiter, at)",
            """CREATE TABLE IF NOT EXISTS {s}.perdure_key_turns (
                workflow TEXT NOT NULL,
                key TEXT NOT NULL,
                served_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (workflow, key))""",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


class SchemaTooNewError(PerdureError):
    """The database was migrated by a newer Perdure than this one."""


def _statement(template: str, schema: str) -> sql.Composed:
    # Statements are trusted constants of this module; only the schema name is interpolated,
    # quoted as an identifier.
    return sql.SQL(template).format(s=sql.Identifier(schema))


async def migrate(conn: AsyncConnection[tuple[object, ...]], schema: str) -> list[int]:
    """Bring ``schema`` up to :data:`LATEST`; return the versions applied now (often none).

    ``conn`` must be in autocommit mode; this opens and commits its own transaction.
    """
    applied: list[int] = []
    async with conn.transaction():
        # Serialise concurrent starters on this schema (released at commit).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"perdure.migrate.{schema}",))
        await conn.execute(_statement("CREATE SCHEMA IF NOT EXISTS {s}", schema))
        await conn.execute(
            _statement(
                "CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)",
                schema,
            )
        )
        cur = await conn.execute(_statement("SELECT COALESCE(MAX(version), 0) FROM {s}.schema_migrations", schema))
        row = await cur.fetchone()
        current = int(row[0]) if row is not None else 0  # type: ignore[call-overload]
        if current > LATEST:
            raise SchemaTooNewError(
                f"schema {schema!r} is at migration {current}, but this Perdure knows only up to {LATEST}: "
                "upgrade Perdure, or use another schema"
            )
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                await conn.execute(_statement(statement, schema))
            await conn.execute(
                _statement(
                    "INSERT INTO {s}.schema_migrations (version, description, applied_at) VALUES (%s, %s, %s)", schema
                ),
                (migration.version, migration.description, time.time()),
            )
            applied.append(migration.version)
    return applied
