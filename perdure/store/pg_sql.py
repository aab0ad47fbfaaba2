"""The SQL that carries the PostgreSQL store's load.

The hot statements are single round trips: each folds what the SQLite backend does in several
statements inside one transaction into one statement (CTEs, ``FOR UPDATE SKIP LOCKED``, and
``RETURNING``), so that a lone write needs no ``BEGIN``/``COMMIT`` either. ``{s}`` stands for
the quoted schema name (see ``PostgresStore._q``). Rows use the SQLite backend's encoding
(:mod:`perdure.store.rows`): JSON as compact text, timestamps as float seconds.
"""

from __future__ import annotations

from .rows import INSTANCE_COLUMNS, WORKFLOW_COLUMNS, WORKFLOW_UPSERT

# -- the statements that carry the load -----------------------------------------------------------
# ``{s}`` stands for the quoted schema name (see PostgresStore._q).

STEP_COLUMNS_IN = (
    "instance_pk, kind, name, count, status, config, attempts, result, error, started_at, ended_at, wake_at"
)
_STEP_UPSERT = """
    ON CONFLICT (instance_pk, kind, name, count) DO UPDATE SET
        status = excluded.status, config = excluded.config, attempts = excluded.attempts,
        result = excluded.result, error = excluded.error, ended_at = excluded.ended_at,
        wake_at = excluded.wake_at"""

# One step save. Lock the instance row if (and only if) its epoch still matches, then upsert
# the step from that row: no row, nothing inserted, nothing returned -> Fenced.
SAVE_STEP = f"""
    WITH fence AS (
        SELECT status FROM {{s}}.instances WHERE pk = %s AND epoch = %s FOR NO KEY UPDATE)
    INSERT INTO {{s}}.steps ({STEP_COLUMNS_IN})
    SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::float8, %s::float8, %s::float8 FROM fence
    {_STEP_UPSERT}
    RETURNING (SELECT status FROM fence)"""

# Many step saves at once, one array per column (``%b``: arrays travel in binary; the text
# form needs every string escaped, which costs more than the statement). Lock every instance
# row whose epoch still matches, upsert the steps of those, and return each saved step's key
# with its instance's status: a step missing from the result was fenced. The keys must be
# distinct, since one statement may not upsert a row twice.
SAVE_STEPS = f"""
    WITH input AS (
        SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::int[], %b::text[],
                             %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[],
                             %b::float8[])
            AS t(epoch, {STEP_COLUMNS_IN})),
    fence AS (
        SELECT pk, epoch, status FROM {{s}}.instances
        WHERE (pk, epoch) IN (SELECT instance_pk, epoch FROM input) FOR NO KEY UPDATE),
    saved AS (
        INSERT INTO {{s}}.steps ({STEP_COLUMNS_IN})
        SELECT i.instance_pk, i.kind, i.name, i.count, i.status, i.config, i.attempts, i.result, i.error,
               i.started_at, i.ended_at, i.wake_at
        FROM input i JOIN fence f ON f.pk = i.instance_pk AND f.epoch = i.epoch
        {_STEP_UPSERT}
        RETURNING instance_pk, kind, name, count)
    SELECT s.instance_pk, s.kind, s.name, s.count, f.status FROM saved s JOIN fence f ON f.pk = s.instance_pk"""

# A step upsert inside a transaction that already holds the fence (take_event).
UPSERT_STEP = f"""
    INSERT INTO {{s}}.steps ({STEP_COLUMNS_IN})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::float8, %s::float8, %s::float8)
    {_STEP_UPSERT}
    RETURNING seq"""

# Give up a running instance (suspend, release). Lock the row if the epoch still matches (no
# row: Fenced), update it if {when} holds for the status found, and NOTIFY the other workers
# when it is due within a second (CASE calls pg_notify only then). The fence says `found`, not
# `status`, so that `status` in the SET clause means the row's.
GIVE_UP = """
    WITH fence AS (
        SELECT pk AS fenced, status AS found FROM {s}.instances
        WHERE pk = %(pk)s AND epoch = %(epoch)s FOR NO KEY UPDATE),
    u AS (
        UPDATE {s}.instances SET {set} FROM fence WHERE pk = fence.fenced AND {when}
        RETURNING pk, status, wake_at),
    paused AS (  -- a pause that completes here is a lifecycle event (perdure.subscriptions)
        INSERT INTO {s}.history (instance_pk, type, ts, data)
        SELECT pk, 'WORKFLOW_PAUSED', %(now)s, NULL FROM u WHERE u.status = 'paused')
    SELECT fence.found, u.status,
           CASE WHEN u.status = 'waiting' AND u.wake_at < %(soon)s THEN pg_notify(%(channel)s, %(token)s) END
    FROM fence LEFT JOIN u ON TRUE"""

# create_instances: insert in the given order, skipping ids that exist; a history row for each
# instance created; one NOTIFY if any was (an uncorrelated sub-select runs once, and only if
# there is a row to return).
CREATE = """
    WITH created AS (
        INSERT INTO {s}.instances (workflow, id, status, params, trigger, schedule, created_at,
                                   success_retention, error_retention, concurrency_key, priority)
        SELECT %(workflow)s, u.id, 'queued', u.params, u.trigger, u.schedule, %(now)s, u.kept, u.kept_failed,
               u.key, u.priority
        FROM unnest(%(ids)s::text[], %(params)s::text[], %(triggers)s::text[], %(schedules)s::text[],
                    %(kept)s::float8[], %(kept_failed)s::float8[], %(keys)s::text[], %(priorities)s::int[])
            WITH ORDINALITY AS u(id, params, trigger, schedule, kept, kept_failed, key, priority, n)
        ORDER BY u.n
        ON CONFLICT (workflow, id) DO NOTHING
        RETURNING id, pk, trigger),
    queued AS (
        INSERT INTO {s}.history (instance_pk, type, ts, data)
        SELECT pk, 'WORKFLOW_QUEUED', %(now)s, '{"trigger":' || to_json(trigger)::text || '}' FROM created)
    SELECT id, pk, (SELECT pg_notify(%(channel)s, %(token)s)) FROM created"""

# Lone creates of one group commit (REST POSTs, create() calls arriving together), of any
# workflows, in one statement: the rows in the order queued; a (workflow, id) that exists, or
# that an earlier row of the batch inserts, is skipped (the caller tells who got which pk). A
# row with an owner is created claimed by it (LocalStart: running, epoch 1, leased), with its
# WORKFLOW_START; the NOTIFY goes out only for queued rows (nobody else need look).
CREATE_GROUP = """
    WITH created AS (
        INSERT INTO {s}.instances (workflow, id, status, params, trigger, schedule, created_at,
                                   success_retention, error_retention, concurrency_key, priority,
                                   owner, lease_until, epoch, started_at)
        SELECT u.workflow, u.id, CASE WHEN u.owner IS NULL THEN 'queued' ELSE 'running' END, u.params,
               u.trigger, u.schedule, u.now, u.kept, u.kept_failed, u.key, u.priority, u.owner, u.lease,
               CASE WHEN u.owner IS NULL THEN 0 ELSE 1 END, CASE WHEN u.owner IS NULL THEN NULL ELSE u.now END
        FROM unnest(%(workflows)s::text[], %(ids)s::text[], %(params)s::text[], %(triggers)s::text[],
                    %(schedules)s::text[], %(kept)s::float8[], %(kept_failed)s::float8[], %(keys)s::text[],
                    %(priorities)s::int[], %(nows)s::float8[], %(owners)s::text[], %(leases)s::float8[])
            WITH ORDINALITY AS u(workflow, id, params, trigger, schedule, kept, kept_failed, key, priority, now,
                                 owner, lease, n)
        ORDER BY u.n
        ON CONFLICT (workflow, id) DO NOTHING
        RETURNING workflow, id, pk, trigger, created_at, owner),
    queued AS (
        INSERT INTO {s}.history (instance_pk, type, ts, data)
        SELECT pk, 'WORKFLOW_QUEUED', created_at, '{"trigger":' || to_json(trigger)::text || '}' FROM created
        UNION ALL
        SELECT pk, 'WORKFLOW_START', created_at, NULL FROM created WHERE owner IS NOT NULL)
    SELECT workflow, id, pk,
           (SELECT pg_notify(%(channel)s, %(token)s) WHERE EXISTS (SELECT 1 FROM created WHERE owner IS NULL))
    FROM created"""

# Finishes of one group commit (PostgresStore.finish), one array per column: each instance still
# at its epoch ends with its status, output and error, keeps its row until its retention for
# that outcome runs out, and gets its history row; returns the pks that finished (a missing pk
# was fenced). No pk appears twice (one finish per instance and batch).
FINISH_GROUP = """
    WITH f AS (
        SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::float8[],
                             %s::text[], %s::text[]) AS f(pk, epoch, status, output, error, now, kind, data)),
    u AS (
        UPDATE {s}.instances i
        SET status = f.status, output = f.output, error = f.error, ended_at = f.now, owner = NULL,
            lease_until = NULL, wake_at = NULL, wait_types = NULL, terminating = NULL,
            expires_at = f.now + CASE WHEN f.status = 'complete' THEN i.success_retention ELSE i.error_retention END
        FROM f WHERE i.pk = f.pk AND i.epoch = f.epoch
        RETURNING i.pk, f.kind, f.now, f.data)
    INSERT INTO {s}.history (instance_pk, type, ts, data) SELECT pk, kind, now, data FROM u RETURNING instance_pk"""

# claim, sqlite's steps as one statement:
#   due / queued / expired: the three kinds of runnable instances, each locked FOR UPDATE SKIP
#     LOCKED (rows another worker is claiming right now are skipped, not waited for);
#   paused: an expired instance whose pause was requested pauses now (its worker died mid-step);
#   chosen: the first `limit` candidates: due timers first (by wake_at), then queued (by
#     priority, then oldest first), then expired running ones;
#   claimed: they become running for `owner`, with a lease and a new epoch;
#   started: WORKFLOW_START for those that never ran before.
# Data-modifying CTEs run exactly once, whether or not the final SELECT reads them.
CLAIM = f"""
    WITH due AS (
        SELECT pk, wake_at FROM {{s}}.instances
        WHERE status = 'waiting' AND wake_at <= %(now)s AND workflow = ANY(%(workflows)s::text[])
          AND (lease_until IS NULL OR lease_until < %(lease_now)s)  -- not one waited on in memory
        ORDER BY wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
    queued AS (
        SELECT pk, priority FROM {{s}}.instances
        WHERE status = 'queued' AND workflow = ANY(%(workflows)s::text[])
        ORDER BY priority, pk LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
    expired AS (
        SELECT pk, status FROM {{s}}.instances
        WHERE status IN ('running', 'waitingForPause') AND lease_until < %(lease_now)s
          AND workflow = ANY(%(workflows)s::text[])
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
    paused AS (
        UPDATE {{s}}.instances
        SET status = 'paused', paused_at = %(now)s, owner = NULL, lease_until = NULL, epoch = epoch + 1
        WHERE pk IN (SELECT pk FROM expired WHERE status = 'waitingForPause')
        RETURNING pk),
    paused_history AS (
        INSERT INTO {{s}}.history (instance_pk, type, ts, data)
        SELECT pk, 'WORKFLOW_PAUSED', %(now)s, NULL FROM paused),
    chosen AS (
        SELECT pk, tier, ord, ord2 FROM (
            SELECT pk, 1 AS tier, wake_at AS ord, 0::bigint AS ord2 FROM due
            UNION ALL SELECT pk, 2, priority::float8, pk FROM queued
            UNION ALL SELECT pk, 3, 0, 0 FROM expired WHERE status = 'running') candidates
        ORDER BY tier, ord, ord2 LIMIT %(limit)s),
    claimed AS (
        UPDATE {{s}}.instances
        SET status = 'running', owner = %(owner)s, lease_until = %(lease)s, epoch = epoch + 1,
            wake_requested = FALSE, wake_at = NULL, wait_types = NULL,
            started_at = COALESCE(started_at, GREATEST(%(now)s, created_at))
        WHERE pk IN (SELECT pk FROM chosen)
        RETURNING {INSTANCE_COLUMNS}),
    started AS (
        INSERT INTO {{s}}.history (instance_pk, type, ts, data)
        SELECT pk, 'WORKFLOW_START', started_at, NULL FROM claimed WHERE started_at = GREATEST(%(now)s, created_at))
    SELECT claimed.* FROM claimed JOIN chosen USING (pk) ORDER BY chosen.tier, chosen.ord, chosen.ord2"""

# An engine's registrations, one array per column, as one upsert (rows come sorted by name).
REGISTER_WORKFLOWS = f"""
    INSERT INTO {{s}}.workflows ({WORKFLOW_COLUMNS})
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::float8[], %s::float8[], %s::text[])
    {WORKFLOW_UPSERT}"""

# count_by_status: each (workflow, status)'s folded count plus its deltas not yet folded (see
# migration 4), in one statement, so in one snapshot: a fold committing meanwhile is seen whole
# or not at all. Also returns how many delta rows were read, to fold them when they pile up.
# {where} is empty, or restricts both tables to one workflow.
COUNTS = """
    SELECT workflow, status, sum(n)::bigint, sum(deltas)::bigint FROM (
        SELECT workflow, status, n, 0 AS deltas FROM {s}.instance_counts {where}
        UNION ALL
        SELECT workflow, status, delta, 1 FROM {s}.instance_count_deltas {where}) t
    GROUP BY workflow, status"""

# Fold the deltas into the counts: delete them all, add up what was deleted, one upsert per
# (workflow, status), in one statement (one transaction). Under a transaction-level advisory
# lock taken without waiting (it is released at commit): when another fold holds it, this one
# does nothing (no row is deleted) and returns false. Writers only append deltas, which takes
# no lock a fold holds, so a fold never makes a worker wait. The DELETE removes the rows its
# snapshot sees; a delta committed after that stays for the next fold. Returns whether the
# lock was taken and how many deltas were folded.
COMPACT_COUNTS = """
    WITH lock AS (SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0)) AS held),
    folded AS (
        DELETE FROM {s}.instance_count_deltas WHERE (SELECT held FROM lock)
        RETURNING workflow, status, delta),
    added AS (
        INSERT INTO {s}.instance_counts AS c (workflow, status, n)
        SELECT workflow, status, sum(delta) FROM folded GROUP BY workflow, status
        ON CONFLICT (workflow, status) DO UPDATE SET n = c.n + excluded.n)
    SELECT (SELECT held FROM lock), (SELECT count(*) FROM folded)"""
