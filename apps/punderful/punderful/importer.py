"""Batch import of the bundled pun data set (the course's episode 2), through ``create_batch``.

``python -m punderful import [--limit N] [--wait]`` stores each pun of
``punderful/data/puns.json`` as a draft (creator ``oPun``, as in the original) and starts its
``publish`` instance, 100 per ``create_batch`` call (Perdure's and Cloudflare's batch limit).

Ids are derived from the text (:func:`punderful.app.import_id`) and the instance id is the pun
id, so running the import again skips what is already there -- also after an interrupted run:
``create_batch`` skips existing instance ids and the insert ignores existing rows.

Without ``--wait`` the command only queues the work: a running ``python -m punderful`` on the same
database publishes the puns (watch them in the dashboard or with ``perdure instances list
publish``). With ``--wait`` the command runs the workers itself and waits until every pun is
published or flagged.

``python -m punderful`` does the same on its first start (:func:`seed_if_fresh`): a database
with no puns that was never seeded gets the whole data set, queued through the same batches and
published by the server's workers while the site already answers, so the home page, search,
Similar Puns and the puntificator have material from the first minute. The progress bars go to
the log (stderr). ``--no-seed`` skips it. Once the puns are queued the database is marked
seeded (``app_meta``), so a later start never seeds again, even after every pun was deleted; an
interrupted seed (marked started, not done) is finished on the next start, and a database that
already has puns of its own is never seeded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from punderful.app import InputError, Punderful, clean_pun, import_id
from punderful.config import Config
from punderful.data import load_puns
from punderful.workflows import publish_params

__all__ = ["SEED_KEY", "ImportResult", "import_puns", "seed_if_fresh"]

BATCH: Final = 100
CREATOR: Final = "oPun"
#: The ``app_meta`` entry that says whether the bundled puns were seeded: ``started`` or ``done``.
SEED_KEY: Final = "seed"
_COLUMNS: Final = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


@dataclass
class ImportResult:
    """What an import did."""

    total: int = 0
    new_instances: int = 0
    skipped_invalid: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    pun_ids: list[str] = field(default_factory=list)


def _dataset(limit: int | None, max_length: int) -> tuple[list[tuple[str, str]], int]:
    """``([(id, text)], invalid)``: the data set cleaned like a submitted pun, duplicates dropped."""
    rows: dict[str, str] = {}
    invalid = 0
    for raw in load_puns():
        try:
            text = clean_pun(raw, max_length)
        except InputError:
            invalid += 1
            continue
        rows.setdefault(import_id(text), text)
        if limit is not None and len(rows) >= limit:
            break
    return list(rows.items()), invalid


async def _queue(app: Punderful, rows: list[tuple[str, str]], progress: Progress) -> int:
    """Store the drafts and create their publish instances, a batch at a time; returns how many
    instances were new."""
    publish = app.bindings["publish"]
    queued = progress.add_task("Importing", total=len(rows))
    new = 0
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        await asyncio.to_thread(app.services.db.insert_puns, [(i, t, CREATOR) for i, t in chunk])
        created = await publish.create_batch([{"id": i, "params": publish_params(i, t)} for i, t in chunk])
        new += len(created)
        progress.advance(queued, len(chunk))
    return new


async def _wait_published(app: Punderful, pun_ids: list[str], progress: Progress) -> None:
    publish = app.bindings["publish"]
    published = progress.add_task("Publishing", total=len(pun_ids))
    instances = [await publish.get(pun_id) for pun_id in pun_ids]
    for finished in asyncio.as_completed([inst.wait() for inst in instances]):
        await finished
        progress.advance(published)


async def _result(app: Punderful, rows: list[tuple[str, str]], invalid: int, new: int) -> ImportResult:
    result = ImportResult(
        total=len(rows), new_instances=new, skipped_invalid=invalid, pun_ids=[pun_id for pun_id, _ in rows]
    )
    statuses = await asyncio.to_thread(app.services.db.statuses, result.pun_ids)
    for status in statuses.values():
        result.statuses[status] = result.statuses.get(status, 0) + 1
    return result


async def import_puns(
    config: Config, *, limit: int | None = None, wait: bool = False, console: Console | None = None
) -> ImportResult:
    """Import (and with ``wait``, publish) the data set; see the module docstring."""
    console = console or Console(stderr=True)
    rows, invalid = _dataset(limit, config.max_pun_length)
    app = Punderful(config.with_(workers=wait))
    async with app:
        with Progress(*_COLUMNS, console=console) as progress:
            new = await _queue(app, rows, progress)
            if wait:
                await _wait_published(app, [pun_id for pun_id, _ in rows], progress)
        return await _result(app, rows, invalid, new)


async def seed_if_fresh(
    app: Punderful, *, wait: bool | None = None, limit: int | None = None, console: Console | None = None
) -> ImportResult | None:
    """Seed a started app's database with the bundled puns if it is fresh; None if it is not.

    Fresh means: never seeded (no ``seed`` entry in ``app_meta``) and no puns at all, or a seed
    that was started and interrupted (it is finished: the import skips what is already there).
    With ``wait`` (default: when this process runs the workers) it also shows the publishing
    progress and returns once every seeded pun is published or flagged. ``limit`` is for tests.
    """
    db = app.services.db
    state = await asyncio.to_thread(db.get_meta, SEED_KEY)
    if state == "done" or (state is None and await asyncio.to_thread(db.count_puns) > 0):
        return None
    console = console or Console(stderr=True)
    wait = app.config.workers if wait is None else wait
    rows, invalid = _dataset(limit, app.config.max_pun_length)
    await asyncio.to_thread(db.set_meta, SEED_KEY, "started")
    console.print(
        f"A new database: seeding it with the {len(rows)} bundled puns through the publish workflow "
        "(start with --no-seed to skip this).",
        highlight=False,
    )
    with Progress(*_COLUMNS, console=console) as progress:
        new = await _queue(app, rows, progress)
        await asyncio.to_thread(db.set_meta, SEED_KEY, "done")
        if wait:
            await _wait_published(app, [pun_id for pun_id, _ in rows], progress)
    result = await _result(app, rows, invalid, new)
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(result.statuses.items()))
    console.print(f"Seeded {result.total} puns: {statuses}.", highlight=False)
    if wait:
        # A leaderboard now that there are puns, rather than at the next half hour.
        await app.bindings["leaderboard"].create()
    return result
