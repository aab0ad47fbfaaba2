"""The Punderful runtime: engine, workers, services and web app in one object.

:class:`Punderful` is what ``python -m punderful`` runs and what the tests start in-process::

    async with Punderful(Config.from_env(data_dir=tmp)) as app:
        pun = await app.submit_pun("I'm reading a book about anti-gravity...", "anon-...")
        ...                                  # app.asgi is the ASGI app to serve

It owns the operations behind the HTTP API (submit, search, similar, like, view), so the web
layer (:mod:`punderful.web`) only parses requests and renders answers. Blocking work (models,
SQLite) runs in worker threads via ``asyncio.to_thread``; the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from perdure import Engine, InstanceAlreadyExistsError, InstanceNotFoundError

from punderful.config import Config
from punderful.db import PUBLISHED, Pun
from punderful.services import Services, open_services
from punderful.workflows import publish_params, register_workflows

if TYPE_CHECKING:
    from perdure import Instance, WorkflowBinding
    from starlette.types import ASGIApp

__all__ = ["InputError", "Punderful", "ScoredPun", "clean_pun", "import_id"]

log = logging.getLogger("punderful")

#: Vectorize-like result sizes of the original: 20 content hits for a search, and for "similar
#: puns" 20 content plus 10 category neighbours.
SEARCH_TOP_K: Final = 20
SIMILAR_CONTENT_TOP_K: Final = 20
SIMILAR_CATEGORIES_TOP_K: Final = 10
SIMILAR_LIMIT: Final = 12

_PUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")


class InputError(ValueError):
    """Bad input from a visitor: becomes a 4xx JSON error ``{"error": {"code", "message"}}``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ScoredPun:
    """A search or similarity hit: the pun, its cosine similarity and which vectors matched."""

    pun: Pun
    score: float
    via: str = "content"


def clean_pun(raw: object, max_length: int) -> str:
    """Validate and normalise submitted pun text, or raise :class:`InputError`.

    Line endings become ``\\n``, blank lines and surrounding spaces go (the first line is the
    setup, the rest the punchline), and control characters other than newlines and tabs are
    refused rather than silently stripped."""
    if not isinstance(raw, str):
        raise InputError("invalid_pun", "'pun' must be a string")
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise InputError("invalid_pun", "the pun contains control characters")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    cleaned = "\n".join(line for line in lines if line)
    if not cleaned:
        raise InputError("empty_pun", "the pun is empty: write something punny")
    if len(cleaned) > max_length:
        raise InputError("pun_too_long", f"the pun is {len(cleaned)} characters long; the limit is {max_length}")
    return cleaned


def clean_query(raw: object, max_length: int) -> str:
    """Validate a search query, or raise :class:`InputError`."""
    if not isinstance(raw, str) or not raw.strip():
        raise InputError("empty_query", "the search query 'q' is missing or empty")
    query = " ".join(raw.split())
    if len(query) > max_length:
        raise InputError("query_too_long", f"the query is {len(query)} characters long; the limit is {max_length}")
    return query


def check_pun_id(pun_id: str) -> str:
    """Pun ids are UUIDs or ``<prefix>-<hash>``; anything else cannot exist (404, not a query)."""
    if not _PUN_ID_RE.fullmatch(pun_id):
        raise InputError("not_found", f"no pun with id {pun_id!r}", 404)
    return pun_id


def import_id(text: str) -> str:
    """Deterministic id of an imported pun: importing the same text twice is a no-op."""
    return "opun-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def like_instance_id(identity: str, pun_id: str) -> str:
    """One ``interaction`` instance per visitor and pun: liking twice is one like."""
    return "like-" + hashlib.sha256(f"{identity}\n{pun_id}".encode()).hexdigest()[:40]


class Punderful:
    """The whole app. ``async with Punderful(config):`` starts it; ``.asgi`` serves it.

    ``engine_options`` go to :class:`perdure.Engine` (e.g. ``poll_interval`` in tests).
    """

    def __init__(self, config: Config, **engine_options: Any) -> None:
        self.config = config
        self.engine = Engine(config.engine_url, **engine_options)
        self._services: Services | None = None
        self.bindings: dict[str, WorkflowBinding] = {}
        #: Where the perdure dashboard/API is mounted, if the package provides one.
        self.perdure_mount: str | None = None
        #: Small jobs started by requests (see :meth:`like`), cancelled by :meth:`stop`.
        self._tasks: set[asyncio.Task[None]] = set()
        from punderful.web import create_web_app

        self.asgi: ASGIApp = create_web_app(self)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def services(self) -> Services:
        """The shared resources; only available between :meth:`start` and :meth:`stop`."""
        if self._services is None:
            raise RuntimeError("Punderful is not started")
        return self._services

    async def start(self) -> None:
        """Open databases, load the models, register workflows, start the workers."""
        services = await asyncio.to_thread(open_services, self.config)
        self._services = services
        try:
            self.bindings = register_workflows(self.engine, services)
            if self.config.workers:
                # Loaded before the workers start, so the first pun does not pay for it.
                seconds = await asyncio.to_thread(services.warm_up)
                log.info("models ready in %.2f s", seconds)
                await self.engine.start()
            else:
                await self.engine.ensure_store()
            await self.resume_drafts()
            if self.config.workers and await asyncio.to_thread(services.db.get_trends) is None:
                # A first leaderboard now, so a new site does not wait for the next half hour.
                await self.bindings["leaderboard"].create()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the workers (running instances resume on the next start) and close everything."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.engine.stop()
        if self._services is not None:
            await asyncio.to_thread(self._services.close)
            self._services = None

    async def __aenter__(self) -> Punderful:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def resume_drafts(self) -> int:
        """Create the publish instance of every draft that has none; returns how many.

        A pun row and its publish instance live in different databases, so a crash between the
        two writes can leave a draft with no instance. The instance id is the pun id, so
        ``create_batch`` (which skips existing ids) repairs exactly those."""
        drafts = await asyncio.to_thread(self.services.db.draft_ids)
        created = 0
        for start in range(0, len(drafts), 100):
            chunk = drafts[start : start + 100]
            batch: list[Mapping[str, Any]] = [
                {"id": pun_id, "params": publish_params(pun_id, text)} for pun_id, text in chunk
            ]
            created += len(await self.bindings["publish"].create_batch(batch))
        if created:
            log.info("created %d missing publish instances for drafts", created)
        return created

    # -- operations behind the API --------------------------------------------------------------
    async def submit_pun(self, raw: object, creator: str) -> Pun:
        """Store a draft and start its ``publish`` instance (whose id is the pun's id)."""
        text = clean_pun(raw, self.config.max_pun_length)
        pun_id = str(uuid.uuid4())
        db = self.services.db
        await asyncio.to_thread(db.insert_pun, pun_id, text, creator)
        await self.bindings["publish"].create(id=pun_id, params=publish_params(pun_id, text))
        pun = await asyncio.to_thread(db.get_pun, pun_id)
        assert pun is not None
        return pun

    async def get_pun(self, pun_id: str, viewer: str) -> Pun:
        """A pun by id; drafts and flagged puns only for their creator (else 404, as in the original)."""
        check_pun_id(pun_id)
        pun = await asyncio.to_thread(self.services.db.get_pun, pun_id)
        if pun is None or (pun.status != PUBLISHED and pun.creator != viewer):
            raise InputError("not_found", f"no pun with id {pun_id!r}", 404)
        return pun

    async def latest(self, limit: int, before: str | None = None) -> list[Pun]:
        """Published puns, newest first."""
        return await asyncio.to_thread(self.services.db.latest_published, limit, before)

    async def search(self, raw_query: object) -> list[ScoredPun]:
        """Semantic search: embed the query, nearest ``content`` vectors above the threshold."""
        query = clean_query(raw_query, self.config.max_query_length)
        return await asyncio.to_thread(self._search, query)

    def _search(self, query: str) -> list[ScoredPun]:
        services = self.services
        vector = services.embedder.embed_one(query)
        matches = services.vectors.query("content", vector, SEARCH_TOP_K)
        hits = [(str(m.metadata["punId"]), m.score) for m in matches if m.score > self.config.search_threshold]
        puns = services.db.get_puns([pun_id for pun_id, _ in hits])
        return [
            ScoredPun(puns[pun_id], score)
            for pun_id, score in hits
            if pun_id in puns and puns[pun_id].status == PUBLISHED
        ]

    async def similar(self, pun_id: str, viewer: str) -> list[ScoredPun]:
        """Puns near this one, as in the original: its two stored vectors are looked up by id
        and used as queries, ``content`` (top 20) then ``categories`` (top 10), each hit above
        the similarity threshold. Unlike the original, the pun itself and duplicates are left
        out, and the category hits are ordered by content similarity: every pun with the same
        category set scores 1.0 in the ``categories`` namespace, so that score cannot rank them.
        ``score`` is always the cosine similarity of the two puns' content vectors."""
        await self.get_pun(pun_id, viewer)
        return await asyncio.to_thread(self._similar, pun_id)

    def _similar(self, pun_id: str) -> list[ScoredPun]:
        vectors = self.services.vectors
        threshold = self.config.similar_threshold
        stored_content = vectors.get_by_ids("content", [f"content-{pun_id}"])
        stored_categories = vectors.get_by_ids("categories", [f"categories-{pun_id}"])
        if not stored_content:
            return []  # not published yet: no vectors
        content_vector = np.asarray(stored_content[0].values, dtype=np.float32)
        hits: dict[str, tuple[float, str]] = {}
        for match in vectors.query("content", content_vector, SIMILAR_CONTENT_TOP_K + 1):
            other = str(match.metadata["punId"])
            if other != pun_id and match.score > threshold:
                hits.setdefault(other, (match.score, "content"))
        if stored_categories:
            by_category = [
                str(m.metadata["punId"])
                for m in vectors.query("categories", stored_categories[0].values, SIMILAR_CATEGORIES_TOP_K + 1)
                if m.score > threshold
            ]
            new = [other for other in dict.fromkeys(by_category) if other != pun_id and other not in hits]
            items = vectors.get_by_ids("content", [f"content-{other}" for other in new])
            scored = [(float(np.dot(item.values, content_vector)), str(item.metadata["punId"])) for item in items]
            for score, other in sorted(scored, reverse=True):
                hits[other] = (score, "categories")
        puns = self.services.db.get_puns(list(hits))
        results = [
            ScoredPun(puns[other], score, via)
            for other, (score, via) in hits.items()
            if other in puns and puns[other].status == PUBLISHED
        ]
        return results[:SIMILAR_LIMIT]

    async def like(self, pun_id: str, identity: str) -> bool:
        """Start an ``interaction`` instance for a like; False if this visitor already liked it."""
        pun = await self.get_pun(pun_id, identity)
        if pun.status != PUBLISHED:
            raise InputError("not_published", "only published puns can be liked", 409)
        params = {"userId": identity, "punId": pun_id, "interactionType": "like"}
        try:
            liked = await self.bindings["interaction"].create(id=like_instance_id(identity, pun_id), params=params)
        except InstanceAlreadyExistsError:
            return False
        if self.config.workers and not (await self.trending())[0]:
            task = asyncio.create_task(self._first_trends(liked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _first_trends(self, like: Instance) -> None:
        """Nothing was trending when this like came (a new site): once it is recorded, run the
        leaderboard now rather than at the next half hour, so Trending shows the first likes."""
        try:
            await like.wait(timeout=60)
            await self.bindings["leaderboard"].create()
        except Exception as exc:  # the cron run catches up; a like must not fail for this
            log.warning("could not refresh the leaderboard after a first like: %r", exc)

    async def record_view(self, pun_id: str, identity: str) -> None:
        """Start an ``interaction`` instance for a detail-page view (as the original did)."""
        params = {"userId": identity, "punId": pun_id, "interactionType": "detail"}
        await self.bindings["interaction"].create(params=params)

    async def mine(self, identity: str) -> tuple[list[Pun], list[Pun]]:
        """``(created, liked)`` for this visitor."""
        db = self.services.db
        created = await asyncio.to_thread(db.puns_by_creator, identity)
        liked = await asyncio.to_thread(db.liked_by, identity)
        return created, liked

    async def liked_ids(self, identity: str, puns: list[Pun]) -> set[str]:
        """Which of these puns the visitor liked (to fill in the hearts)."""
        return await asyncio.to_thread(self.services.db.liked_ids, identity, [p.id for p in puns])

    async def trending(self) -> tuple[list[dict[str, Any]], str | None]:
        """The leaderboard's last result and when it was computed."""
        stored = await asyncio.to_thread(self.services.db.get_trends)
        return (stored[0], stored[1]) if stored else ([], None)

    async def workflow_timeline(self, pun_id: str, viewer: str) -> dict[str, Any]:
        """The pun's ``publish`` instance: status, error and every step's timing and attempts."""
        await self.get_pun(pun_id, viewer)
        try:
            instance = await self.bindings["publish"].get(pun_id)
        except InstanceNotFoundError:
            raise InputError("not_found", f"pun {pun_id!r} has no publish instance yet", 404) from None
        record = await instance.record()
        steps = await self.engine.store.load_steps(instance.pk)
        return {
            "workflow": "publish",
            "id": record.id,
            "status": record.status,
            "error": record.error,
            "createdAt": record.created_at,
            "startedAt": record.started_at,
            "endedAt": record.ended_at,
            "steps": [_step_summary(s) for s in sorted(steps, key=lambda s: (s.started_at, s.seq))],
        }

    def workflow_url(self, pun_id: str) -> str:
        """Where a person can inspect the pun's publish instance: the Perdure dashboard's
        instance page when it is mounted, else this app's own step timeline (JSON)."""
        if self.perdure_mount is not None:
            return f"{self.perdure_mount}/dashboard/workflows/publish/instances/{pun_id}"
        return f"/api/puns/{pun_id}/workflow"

    def workflow_api_url(self, pun_id: str) -> str:
        """The publish instance in Perdure's REST API (or this app's timeline without it)."""
        if self.perdure_mount is not None:
            return f"{self.perdure_mount}/api/workflows/publish/instances/{pun_id}"
        return f"/api/puns/{pun_id}/workflow"


def _summarise(value: Any) -> Any:
    """Step outputs for display: an embedding becomes ``"[384 floats]"`` instead of 8 KB."""
    if isinstance(value, list) and len(value) > 16 and all(isinstance(v, float) for v in value[:16]):
        return f"[{len(value)} floats]"
    if isinstance(value, dict):
        return {k: _summarise(v) for k, v in value.items()}
    return value


def _step_summary(step: Any) -> dict[str, Any]:
    attempts = [
        {
            "start": a.get("start"),
            "end": a.get("end"),
            "error": a.get("error"),
        }
        for a in step.attempts
    ]
    duration = None if step.ended_at is None else round((step.ended_at - step.started_at) * 1000, 1)
    return {
        "type": step.kind,
        "name": step.name,
        "count": step.count,
        "status": step.status,
        "start": step.started_at,
        "end": step.ended_at,
        "durationMs": duration,
        "attempts": attempts,
        "output": _summarise(step.result),
        "error": step.error,
    }
