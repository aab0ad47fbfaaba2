"""Punderful's four workflows, ported from the original app with its exact step names.

* ``publish`` -- moderate, embed, categorise and index a new pun, then mark it published.
* ``interaction`` -- record a like or a view in the background.
* ``leaderboard`` -- every 30 minutes (cron), find the most-liked recent puns.
* ``puntificator`` -- write a new pun from the trending ones, publish it through a child
  ``publish`` instance, sleep 30 seconds, check it was published, sleep a day, count its likes.

``self.env`` is the app's :class:`~punderful.services.Services`.

Every step function here is a plain ``def``, so Perdure runs it in a worker thread: model
inference and SQLite never block the event loop. Steps run *at least once* (a step whose process
died mid-way runs again), so each side effect is idempotent -- see :mod:`punderful.db` -- and
the vector upsert replaces by id.

Code outside steps runs again on every replay, so it only reads the payload and the config.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from perdure import InstanceAlreadyExistsError, NonRetryableError, WorkflowEntrypoint

from punderful.vectors import VectorItem

if TYPE_CHECKING:
    from perdure import Engine, Step, WorkflowBinding, WorkflowEvent

    from punderful.services import Services

__all__ = [
    "InteractionWorkflow",
    "LEADERBOARD_CRON",
    "LeaderboardWorkflow",
    "PublishWorkflow",
    "PuntificatorWorkflow",
    "register_workflows",
]

#: Model calls: a local model fails only on a bug or a broken install, a remote endpoint on
#: rate limits and outages; a few retries with exponential backoff (2 s, 4 s, 8 s) ride out the
#: latter without hammering the service, and a timeout stops a hung HTTP call.
MODEL_STEP: Final[dict[str, Any]] = {
    "retries": {"limit": 3, "delay": "2 seconds", "backoff": "exponential"},
    "timeout": "1 minute",
}
#: Database writes: only transient failures (a locked SQLite file, a PostgreSQL failover).
DB_STEP: Final[dict[str, Any]] = {
    "retries": {"limit": 5, "delay": "1 second", "backoff": "exponential"},
    "timeout": "30 seconds",
}

LEADERBOARD_CRON: Final = "*/30 * * * *"
#: How many of the latest likes the leaderboard looks at (the original's CTE).
LIKES_WINDOW: Final = 100


def publish_params(pun_id: str, pun: str) -> dict[str, str]:
    """The ``publish`` payload, as in the original: ``{punId, pun}``."""
    return {"punId": pun_id, "pun": pun}


class PublishWorkflow(WorkflowEntrypoint):
    """Make a submitted pun searchable, then publish it.

    The instance id is the pun's id, so a pun has exactly one publish instance and the app can
    link to it (and re-create it idempotently after a crash between the insert and the create).
    """

    env: Services

    async def run(self, event: WorkflowEvent, step: Step) -> dict[str, Any]:
        services = self.env
        pun_id = str(event.payload["punId"])
        pun = str(event.payload["pun"])
        moderator = services.moderator
        moderation = "skipped"

        if moderator is not None:

            def content_moderation() -> dict[str, Any]:
                verdict = moderator.moderate(pun)
                services.db.set_moderation(pun_id, verdict.method)
                if verdict.flagged:
                    services.db.mark_flagged(pun_id)
                    # Not retryable: the same text would be flagged again.
                    raise NonRetryableError(f"Pun {pun_id} failed moderation")
                services.step_delay()
                return verdict.to_dict()

            verdict = await step.do("content-moderation", content_moderation, config=MODEL_STEP)
            moderation = str(verdict["method"])

        def create_pun_embedding() -> list[float]:
            vector = services.embed(pun)
            services.step_delay()
            return vector

        embedding: list[float] = await step.do("create-pun-embedding", create_pun_embedding, config=MODEL_STEP)

        def categorize_pun() -> list[str]:
            categories = services.categorize(pun, embedding)
            services.step_delay()
            return categories

        categories: list[str] = await step.do("categorize-pun", categorize_pun, config=MODEL_STEP)

        def create_categories_embedding() -> list[float]:
            vector = services.embed(", ".join(categories))
            services.step_delay()
            return vector

        categories_embedding: list[float] = await step.do(
            "create-categories-embedding", create_categories_embedding, config=MODEL_STEP
        )

        def add_embeddings_to_vector_store() -> dict[str, str]:
            metadata = {"punId": pun_id, "pun": pun, "categories": categories}
            content_id, categories_id = f"content-{pun_id}", f"categories-{pun_id}"
            # Upserts replace by id, so running this step twice leaves one row per id.
            services.vectors.upsert("content", [VectorItem(content_id, np.asarray(embedding), metadata)])
            services.vectors.upsert(
                "categories", [VectorItem(categories_id, np.asarray(categories_embedding), metadata)]
            )
            services.step_delay()
            return {"content": content_id, "categories": categories_id}

        await step.do("add-embeddings-to-vector-store", add_embeddings_to_vector_store, config=DB_STEP)

        def update_status_to_published() -> dict[str, Any]:
            changed = services.db.mark_published(pun_id, categories)
            services.step_delay()
            return {"status": "published", "changed": changed}

        await step.do("update-status-to-published", update_status_to_published, config=DB_STEP)
        return {"punId": pun_id, "categories": categories, "moderation": moderation}


class InteractionWorkflow(WorkflowEntrypoint):
    """Record a like or a view (the original's ``InteractionWorkfow``).

    Params ``{userId, punId, interactionType: "like" | "detail"}``. Anonymous visitors
    (``anon-<uuid>``) get an ``anonymous_sessions`` row; other ids must be registered users.
    The interaction is keyed by this instance's id, so it is stored once however often the
    step runs; a like's instance id is derived from visitor and pun, so liking twice is one like.
    """

    env: Services

    async def run(self, event: WorkflowEvent, step: Step) -> bool:
        services = self.env
        user_id = str(event.payload["userId"])
        pun_id = str(event.payload["punId"])
        kind = event.payload["interactionType"]
        if kind not in ("like", "detail"):
            raise NonRetryableError(f"unknown interaction type {kind!r}")

        if user_id.startswith("anon-"):
            await step.do("ensure-session-exists", lambda: services.db.ensure_session(user_id), config=DB_STEP)
        else:

            def ensure_user_exists() -> bool:
                if not services.db.user_exists(user_id):
                    raise NonRetryableError(f"User {user_id} does not exist")
                return True

            await step.do("ensure-user-exists", ensure_user_exists, config=DB_STEP)

        def record_valid_interaction() -> bool:
            if services.db.get_pun(pun_id) is None:
                raise NonRetryableError(f"Pun {pun_id} does not exist")
            services.db.record_interaction(event.instance_id, user_id, pun_id, kind)
            return True

        result: bool = await step.do("record-valid-interaction", record_valid_interaction, config=DB_STEP)
        return result


class LeaderboardWorkflow(WorkflowEntrypoint):
    """Crunch the latest likes into the "trending" list the home page shows (cron: every 30 min)."""

    env: Services

    async def run(self, event: WorkflowEvent, step: Step) -> dict[str, Any]:
        services = self.env
        size = services.config.trending_size

        def gather_trending_posts() -> list[dict[str, Any]]:
            return [t.to_dict() for t in services.db.trending_from_likes(LIKES_WINDOW, size)]

        trending: list[dict[str, Any]] = await step.do("gather-trending-posts", gather_trending_posts, config=DB_STEP)
        await step.do("store-trends", lambda: services.db.store_trends(trending), config=DB_STEP)
        return {"trending": trending}


def puntificator_pun_id(instance_id: str) -> str:
    """The id of the pun a puntificator instance writes: derived from the instance id, so the
    ``save-pun`` step inserts the same row however often it runs (and fits the 100-char limit)."""
    return "puntificator-" + hashlib.sha256(instance_id.encode()).hexdigest()[:20]


class PuntificatorWorkflow(WorkflowEntrypoint):
    """Write a pun inspired by the trending ones, publish it, and later see how it did.

    Trigger it by hand (``perdure workflows trigger puntificator`` or the dashboard), as in the
    original. With no OpenAI-compatible endpoint configured the "new" pun is an offline
    recombination of trending puns (see :mod:`punderful.generator`), and its output says so.
    """

    env: Services

    async def run(self, event: WorkflowEvent, step: Step) -> dict[str, Any]:
        services = self.env
        pun_id = puntificator_pun_id(event.instance_id)

        def retrieve_trending_puns() -> dict[str, Any]:
            stored = services.db.get_trends()
            if stored and stored[0]:
                return {"source": "leaderboard", "puns": [str(t["pun"]) for t in stored[0]]}
            # The original gave up here; on a fresh site nothing is trending yet, so the
            # newest published puns stand in (and the output says which source was used).
            latest = services.db.latest_published(limit=3)
            if not latest:
                raise NonRetryableError("No trending or published puns to learn from yet")
            return {"source": "latest", "puns": [p.pun for p in latest]}

        trending = await step.do("retrieve-trending-puns", retrieve_trending_puns, config=DB_STEP)

        def create_new_pun_based_on_trends() -> dict[str, str]:
            text = services.writer.write(trending["puns"], event.instance_id)
            return {"pun": text[: services.config.max_pun_length], "method": services.writer.method}

        created = await step.do("create-new-pun-based-on-trends", create_new_pun_based_on_trends, config=MODEL_STEP)
        new_pun = str(created["pun"])

        def judge_pun() -> dict[str, Any]:
            # The original's third step: a rating below 8 ends the run here (not retried: the
            # same pun would get the same verdict), so a bad pun is never saved or published.
            published = [p.pun for p in services.db.latest_published(limit=1000)]
            verdict = services.judge.judge(new_pun, [*trending["puns"], *published])
            if not verdict.passed:
                raise NonRetryableError(
                    f"Rating was {verdict.rating:g} for {new_pun!r} ({verdict.method} judge): "
                    f"{verdict.explanation} Feedback: {verdict.feedback}"
                )
            return verdict.to_dict()

        rating = await step.do("judge-pun", judge_pun, config=MODEL_STEP)

        def save_pun() -> str:
            services.db.insert_pun(pun_id, new_pun, "puntificator")  # no-op if it exists
            return pun_id

        await step.do("save-pun", save_pun, config=DB_STEP)

        async def publish() -> str:
            # A child instance, created inside a step with a deterministic id: a re-run of this
            # step finds it already there instead of starting a second one.
            try:
                await services.binding("publish").create(id=pun_id, params=publish_params(pun_id, new_pun))
            except InstanceAlreadyExistsError:
                pass
            return pun_id

        await step.do("publish", publish, config=DB_STEP)
        await step.sleep("wait-for-publish", "30 seconds")

        async def ensure_published() -> str:
            status = await (await services.binding("publish").get(pun_id)).status()
            if status["status"] != "complete":
                raise NonRetryableError(f"Pun {pun_id} was not published: its publish instance is {status['status']}")
            return str(status["status"])

        await step.do("ensure-published", ensure_published, config=DB_STEP)
        await step.sleep("wait-to-see-feedback", "1 day")

        def check_feedback() -> dict[str, int]:
            return {"likes": services.db.count_interactions(pun_id, "like")}

        feedback = await step.do("check-feedback", check_feedback, config=DB_STEP)
        return {
            "punId": pun_id,
            "pun": new_pun,
            "method": created["method"],
            "rating": rating["rating"],
            "likes": feedback["likes"],
        }


def register_workflows(engine: Engine, services: Services) -> dict[str, WorkflowBinding]:
    """Register the four workflows on ``engine`` with ``services`` as their env."""
    services.engine = engine
    return {
        "publish": engine.register(PublishWorkflow, name="publish", env=services),
        "interaction": engine.register(InteractionWorkflow, name="interaction", env=services),
        "leaderboard": engine.register(
            LeaderboardWorkflow, name="leaderboard", env=services, schedules=[LEADERBOARD_CRON]
        ),
        "puntificator": engine.register(PuntificatorWorkflow, name="puntificator", env=services),
    }
