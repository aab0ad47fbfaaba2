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

__all__ = ["ImportResult", "import_puns"]

BATCH: Final = 100
CREATOR: Final = "oPun"


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


async def import_puns(
    config: Config, *, limit: int | None = None, wait: bool = False, console: Console | None = None
) -> ImportResult:
    """Import (and with ``wait``, publish) the data set; see the module docstring."""
    console = console or Console(stderr=True)
    rows, invalid = _dataset(limit, config.max_pun_length)
    result = ImportResult(total=len(rows), skipped_invalid=invalid, pun_ids=[pun_id for pun_id, _ in rows])
    app = Punderful(config.with_(workers=wait))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with app:
        publish = app.bindings["publish"]
        with Progress(*columns, console=console) as progress:
            queued = progress.add_task("Importing", total=len(rows))
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                await asyncio.to_thread(app.services.db.insert_puns, [(i, t, CREATOR) for i, t in chunk])
                created = await publish.create_batch([{"id": i, "params": publish_params(i, t)} for i, t in chunk])
                result.new_instances += len(created)
                progress.advance(queued, len(chunk))
            if wait:
                published = progress.add_task("Publishing", total=len(rows))
                instances = [await publish.get(pun_id) for pun_id, _ in rows]
                for finished in asyncio.as_completed([inst.wait() for inst in instances]):
                    await finished
                    progress.advance(published)
        statuses = await asyncio.to_thread(app.services.db.statuses, result.pun_ids)
    for status in statuses.values():
        result.statuses[status] = result.statuses.get(status, 0) + 1
    return result
