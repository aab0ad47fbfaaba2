"""``perdure.testing.replay``: the replay checker (:mod:`perdure.replay`) from a test.

The same check as ``perdure replay APP --db URL``: the stored instances of ``engine``'s
workflows (or of ``workflow``, or the ids in ``instances``) are replayed against the code
registered on ``engine`` without running a step, and each gets a :class:`~perdure.replay.Report`
(``ok``, or its first divergence).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..engine import Engine
from ..errors import ValidationError
from ..replay import Report, check
from ..store import open_store


async def replay(
    engine: Engine,
    *,
    db: str | None = None,
    workflow: str | None = None,
    instances: Iterable[str] | None = None,
) -> list[Report]:
    """Replay the instances stored in ``db`` (default: the engine's own database) against the
    workflows registered on ``engine``; one report per instance. ``instances`` needs ``workflow``."""
    if not isinstance(engine, Engine):
        raise ValidationError(f"replay() takes the Engine the workflows are registered on, got {engine!r}")
    ids = None if instances is None else list(instances)
    if isinstance(instances, str):
        raise ValidationError("instances is a list of instance ids, not one string")
    if ids is not None and workflow is None:
        raise ValidationError("instances needs workflow= (instance ids are unique per workflow)")
    if workflow is not None and workflow not in engine.workflows:
        known = ", ".join(sorted(engine.workflows)) or "none"
        raise ValidationError(f"the engine has no workflow named {workflow!r}; it has {known}")
    if db is None:
        return await check(await engine.ensure_store(), engine.workflows, workflow=workflow, instance_ids=ids)
    store = open_store(db, read_only=True) if db.startswith("sqlite") else open_store(db)
    try:
        await store.open()
        return await check(store, engine.workflows, workflow=workflow, instance_ids=ids)
    finally:
        await store.close()
