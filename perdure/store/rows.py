"""Rows to records and back, the same for every SQL backend: one column order, JSON as text."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..records import QUEUED, RUNNING, InstanceRecord, LocalStart, NewInstance, StepRecord, WorkflowRecord

INSTANCE_COLUMNS = (
    "pk, workflow, id, status, params, trigger, created_at, epoch, started_at, ended_at, "
    "output, error, wake_at, schedule, owner, terminating, concurrency_key, priority"
)
STEP_COLUMNS = "kind, name, count, status, started_at, config, attempts, result, error, ended_at, wake_at, seq"
WORKFLOW_COLUMNS = "name, class_name, schedules, step_limit, registered_at, updated_at, flow"
# The tail of both backends' ``INSERT INTO workflows (WORKFLOW_COLUMNS) ...``: a new registration
# replaces what an older one said, except when the workflow was first seen.
WORKFLOW_UPSERT = """
    ON CONFLICT (name) DO UPDATE SET
        class_name = excluded.class_name, schedules = excluded.schedules, step_limit = excluded.step_limit,
        updated_at = excluded.updated_at, flow = excluded.flow"""

# -- row conversion ------------------------------------------------------------------------------


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def instance_from_row(row: tuple[Any, ...]) -> InstanceRecord:
    return InstanceRecord(
        pk=row[0],
        workflow=row[1],
        id=row[2],
        status=row[3],
        params=json.loads(row[4]),
        trigger=row[5],
        created_at=row[6],
        epoch=row[7],
        started_at=row[8],
        ended_at=row[9],
        output=loads(row[10]),
        error=loads(row[11]),
        wake_at=row[12],
        schedule=loads(row[13]),
        owner=row[14],
        terminating=loads(row[15]),
        concurrency_key=row[16],
        priority=row[17],
    )


def created_record(
    workflow: str, pk: int, item: NewInstance, now: float, start: LocalStart | None = None
) -> InstanceRecord:
    """The record of ``item`` as both backends' creates insert it: queued, or with ``start``
    created claimed (running for ``start.owner``, epoch 1, started now)."""
    record = InstanceRecord(
        pk=pk,
        workflow=workflow,
        id=item.id,
        status=QUEUED,
        params=json.loads(item.params_json),
        trigger=item.trigger,
        created_at=now,
        schedule=item.schedule,
        concurrency_key=item.concurrency_key,
        priority=item.priority,
    )
    if start is not None:
        record.status, record.epoch, record.started_at, record.owner = RUNNING, 1, now, start.owner
        record.steps = []  # a new row: its run starts from an empty history, nothing to read
    return record


def finish_history(status: str, output_json: str | None, error: dict[str, str] | None) -> tuple[str, Any]:
    """The history row that ends an instance with ``status`` (``finish``, both backends)."""
    if status == "complete":
        return "WORKFLOW_SUCCESS", {"output": loads(output_json)}
    if status == "terminated":  # after terminate(rollback=True) ran the handlers
        return "WORKFLOW_TERMINATED", {"rollback": True}
    return "WORKFLOW_FAILURE", {"error": error}


def attach_steps(records: list[InstanceRecord], rows: Iterable[tuple[Any, ...]]) -> None:
    """Give each claimed record its steps from ``rows`` of ``instance_pk, STEP_COLUMNS`` in
    ``instance_pk, seq`` order; a record without rows gets an empty history."""
    by_pk = {record.pk: record for record in records}
    for record in records:
        record.steps = []
    for row in rows:
        steps = by_pk[row[0]].steps
        assert steps is not None
        steps.append(step_from_row(row[1:]))


def step_from_row(row: tuple[Any, ...]) -> StepRecord:
    return StepRecord(
        kind=row[0],
        name=row[1],
        count=row[2],
        status=row[3],
        started_at=row[4],
        config=loads(row[5]),
        attempts=json.loads(row[6]),
        result=loads(row[7]),
        error=loads(row[8]),
        ended_at=row[9],
        wake_at=row[10],
        seq=row[11],
    )


def step_row(pk: int, step: StepRecord) -> tuple[Any, ...]:
    """Values for inserting one step: instance_pk, kind, name, count, status, config, attempts,
    result, error, started_at, ended_at, wake_at (the order of both backends' upserts)."""
    return (
        pk,
        step.kind,
        step.name,
        step.count,
        step.status,
        dumps(step.config),
        json.dumps(step.attempts, separators=(",", ":")),
        step.result_json if step.result_json is not None else dumps(step.result),
        dumps(step.error),
        step.started_at,
        step.ended_at,
        step.wake_at,
    )


def workflow_rows(workflows: list[WorkflowRecord], now: float) -> list[tuple[Any, ...]]:
    """Values for upserting registrations, in :data:`WORKFLOW_COLUMNS` order, sorted by name (so
    that workers starting at once lock the rows in one order and cannot deadlock)."""
    return [
        (
            w.name,
            w.class_name,
            json.dumps(list(w.schedules), separators=(",", ":")),
            w.step_limit,
            now,
            now,
            dumps(w.flow),
        )
        for w in sorted(workflows, key=lambda w: w.name)
    ]


def workflow_from_row(row: tuple[Any, ...]) -> WorkflowRecord:
    return WorkflowRecord(
        name=row[0],
        class_name=row[1],
        schedules=json.loads(row[2]),
        step_limit=row[3],
        registered_at=row[4],
        updated_at=row[5],
        flow=loads(row[6]),
    )


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """``(low, high)`` such that the strings starting with ``prefix`` satisfy ``low <= s < high``
    in binary (code point) order: a range an index on the column serves, unlike ``LIKE``
    (case-insensitive in SQLite, and ``%``/``_`` would be wildcards). U+10FFFF is the greatest
    code point, so only a string continuing ``prefix`` with that very noncharacter would be
    missed; instance ids are ASCII."""
    return prefix, prefix + "\U0010ffff"
