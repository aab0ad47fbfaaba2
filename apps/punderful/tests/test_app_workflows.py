"""The workflows end to end, with the real offline model, real SQLite files and a real engine."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from perdure import Instance, NonRetryableError

from punderful.app import Punderful, import_id
from punderful.generator import LLMPunWriter, PunWriterError, RecombinationWriter, split_pun
from punderful.importer import import_puns
from punderful.judge import JudgeError, LLMJudge, LocalJudge, validate_rating
from punderful.workflows import LEADERBOARD_CRON, puntificator_pun_id
from tests.conftest import OpenAIStandIn
from tests.test_app_helpers import (
    CALCULATOR,
    CHEESE,
    COMPUTER,
    GUITAR,
    OWL,
    PUBLISH_STEPS,
    PUNS,
    SKIER,
    JumpingClock,
    client_for,
    eventually,
    fixture_app,  # noqa: F401  (a fixture, with its dependencies below)
    fixture_client,  # noqa: F401
    fixture_config,  # noqa: F401
    make_config,
    publish_all,
    running,
    submit,
    wait_done,
)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


async def step_names(app: Punderful, instance_id: str) -> list[str]:
    instance = await app.bindings["publish"].get(instance_id)
    steps = await app.engine.store.load_steps(instance.pk)
    return [s.name for s in sorted(steps, key=lambda s: s.seq)]


# -- publish --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("funny lines about stringed instruments", GUITAR),
        ("jokes featuring birds", OWL),
        ("a veteran laptop", COMPUTER),
        ("snow slopes", SKIER),
        ("dairy", CHEESE),
    ],
)
async def test_publish_then_search_by_meaning_finds_the_related_pun_first(
    app: Punderful, client: httpx.AsyncClient, query: str, expected: str
) -> None:
    puns = await publish_all(app, client, PUNS)
    assert not words(query) & words(expected), "the query must share no word with the pun"
    for pun in puns:
        assert await step_names(app, pun["id"]) == PUBLISH_STEPS
        assert (await client.get(f"/api/puns/{pun['id']}")).json()["status"] == "published"
    results = (await client.get("/api/puns/search", params={"q": query})).json()["results"]
    assert results and results[0]["pun"] == expected


async def test_publish_writes_both_vectors_with_the_original_ids_and_metadata(
    app: Punderful, client: httpx.AsyncClient
) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    vectors, pun_id = app.services.vectors, pun["id"]
    (content,) = vectors.get_by_ids("content", [f"content-{pun_id}"])
    (categories,) = vectors.get_by_ids("categories", [f"categories-{pun_id}"])
    stored = (await client.get(f"/api/puns/{pun_id}")).json()
    expected = {"punId": pun_id, "pun": CHEESE, "categories": stored["categories"]}
    assert content.metadata == expected and categories.metadata == expected
    assert content.values.shape == (384,) and "food" in stored["categories"]
    assert app.services.db.status_changes(pun_id) == ["published"]
    output = (await wait_done(app, "publish", pun_id))["output"]
    assert output == {"punId": pun_id, "categories": stored["categories"], "moderation": "local"}


async def test_rerunning_every_publish_step_changes_nothing(app: Punderful, client: httpx.AsyncClient) -> None:
    """Steps run at least once; their effects must count once. A restart re-runs them all."""
    (pun,) = await publish_all(app, client, [GUITAR])
    instance = await app.bindings["publish"].get(pun["id"])
    await instance.restart()
    assert (await instance.wait(timeout=30))["status"] == "complete"
    steps = await app.engine.store.load_steps(instance.pk)
    assert next(s for s in steps if s.name == "update-status-to-published").result == {
        "status": "published",
        "changed": False,
    }
    assert app.services.vectors.count("content") == 1 and app.services.vectors.count("categories") == 1
    assert app.services.db.status_changes(pun["id"]) == ["published"]


async def test_profanity_is_flagged_and_stops_the_workflow(app: Punderful, client: httpx.AsyncClient) -> None:
    pun = await submit(client, "This shit pun\nis full of crap")
    status = await wait_done(app, "publish", pun["id"])
    assert status["status"] == "errored"
    assert status["error"] == {"name": "NonRetryableError", "message": f"Pun {pun['id']} failed moderation"}
    assert await step_names(app, pun["id"]) == ["content-moderation"]
    stored = (await client.get(f"/api/puns/{pun['id']}")).json()
    assert stored["status"] == "flagged" and stored["moderation"] == "local"
    assert app.services.vectors.count("content") == 0
    assert (await client.get("/api/puns")).json()["results"] == []
    instance = await app.bindings["publish"].get(pun["id"])
    (step,) = await app.engine.store.load_steps(instance.pk)
    assert len(step.attempts) == 1, "a flagged pun is not retried"


async def test_moderation_off_skips_the_step_and_records_skipped(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, moderation="off")) as app, client_for(app) as http:
        (pun,) = await publish_all(app, http, [OWL])
        assert await step_names(app, pun["id"]) == PUBLISH_STEPS[1:]
        assert (await http.get(f"/api/puns/{pun['id']}")).json()["moderation"] == "skipped"


async def test_openai_moderation_and_llm_categories_through_a_compatible_server(
    tmp_path: Path, openai_standin: OpenAIStandIn
) -> None:
    """The remote code paths, against a real HTTP server on 127.0.0.1 (see conftest)."""
    openai_standin.chat_reply = "Animals, then maybe Food."
    config = make_config(
        tmp_path,
        moderation="auto",
        openai_api_key="test-key",
        moderation_base_url=openai_standin.base_url,
        llm_base_url=openai_standin.base_url,
        llm_model="stand-in",
        llm_api_key="test-key",
    )
    async with running(config) as app, client_for(app) as http:
        (pun,) = await publish_all(app, http, [OWL])
        stored = (await http.get(f"/api/puns/{pun['id']}")).json()
        assert stored["moderation"] == "openai" and stored["categories"] == ["animals", "food"]
        flagged = await submit(http, "What a nasty-insult of a pun")
        assert (await wait_done(app, "publish", flagged["id"]))["status"] == "errored"
        assert (await http.get(f"/api/puns/{flagged['id']}")).json()["status"] == "flagged"
    paths = [r["path"] for r in openai_standin.requests]
    assert paths.count("/v1/moderations") == 2 and "/v1/chat/completions" in paths


async def test_a_failing_model_endpoint_is_retried_with_the_step_config(
    tmp_path: Path, openai_standin: OpenAIStandIn
) -> None:
    """The stand-in answers HTTP 500 to texts containing 'please-fail-500': the categorize step
    fails, is retried (3 retries, 2 s exponential backoff), and the instance errors with the
    last error; the pun stays a draft."""
    config = make_config(tmp_path, llm_base_url=openai_standin.base_url, llm_model="stand-in", llm_api_key="test-key")
    clock = JumpingClock()
    async with running(config, clock=clock) as app, client_for(app) as http:
        pun = await submit(http, "A pun that makes the server please-fail-500")
        instance = await app.bindings["publish"].get(pun["id"])
        # Retry delays (2, 4, 8 s) pass on the engine's clock; each jump stays under the
        # 1-minute attempt timeout so that no attempt times out instead.
        for _ in range(100):
            if (await instance.status())["status"] == "errored":
                break
            clock.advance(10)
            await asyncio.sleep(0.1)
        status = await instance.wait(timeout=30)
        assert status["status"] == "errored" and status["error"]["name"] == "CategorizerError"
        steps = {s.name: s for s in await app.engine.store.load_steps(instance.pk)}
        assert len(steps["categorize-pun"].attempts) == 4  # 1 attempt + 3 retries
        assert (await http.get(f"/api/puns/{pun['id']}")).json()["status"] == "draft"


async def test_drafts_without_an_instance_are_published_on_start(tmp_path: Path) -> None:
    """A crash between the pun insert and the instance create leaves a draft with no instance;
    the next start creates it (the instance id is the pun id)."""
    config = make_config(tmp_path)
    async with running(config.with_(workers=False)) as app:
        app.services.db.insert_pun("orphan-draft", CALCULATOR, "anon-x")
        assert await app.resume_drafts() == 1
        assert await app.resume_drafts() == 0
    async with running(config) as app:
        assert (await wait_done(app, "publish", "orphan-draft"))["status"] == "complete"
        assert app.services.db.get_pun("orphan-draft").status == "published"  # type: ignore[union-attr]


# -- interaction ----------------------------------------------------------------------------------
async def test_interaction_for_an_unknown_user_fails_without_retrying(
    app: Punderful, client: httpx.AsyncClient
) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    interaction = app.bindings["interaction"]
    params = {"userId": "user-42", "punId": pun["id"], "interactionType": "like"}
    missing = await interaction.create(params=params)
    status = await missing.wait(timeout=30)
    assert status["error"] == {"name": "NonRetryableError", "message": "User user-42 does not exist"}

    app.services.db.add_user("user-42", "punny")
    ok = await interaction.create(params=params)
    assert (await ok.wait(timeout=30))["status"] == "complete"
    assert app.services.db.liked_ids("user-42", [pun["id"]]) == {pun["id"]}
    steps = await app.engine.store.load_steps(ok.pk)
    assert [s.name for s in steps] == ["ensure-user-exists", "record-valid-interaction"]


async def test_an_anonymous_like_creates_the_session_once(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    await client.post(f"/api/puns/{pun['id']}/like")
    await client.get(f"/puns/{pun['id']}")  # a view: a second interaction, same session
    db = app.services.db
    await eventually(lambda: db.count_interactions(pun["id"], "like") and db.count_interactions(pun["id"], "detail"))
    identity = client.cookies["userId"]
    assert db.ensure_session(identity) is False, "the session row already exists"


# -- leaderboard ----------------------------------------------------------------------------------
async def test_leaderboard_ranks_recent_likes_and_runs_on_a_cron(app: Punderful, client: httpx.AsyncClient) -> None:
    assert app.engine.workflows["leaderboard"].schedules == [LEADERBOARD_CRON] == ["*/30 * * * *"]
    cheese, guitar, owl = await publish_all(app, client, [CHEESE, GUITAR, OWL])
    voters = [client_for(app) for _ in range(3)]
    for i, voter in enumerate(voters):
        await voter.post(f"/api/puns/{guitar['id']}/like")
        if i < 2:
            await voter.post(f"/api/puns/{owl['id']}/like")
        if i < 1:
            await voter.post(f"/api/puns/{cheese['id']}/like")
    for voter in voters:
        await voter.aclose()
    db = app.services.db
    await eventually(lambda: db.count_interactions(guitar["id"], "like") == 3)
    await eventually(lambda: db.count_interactions(cheese["id"], "like") == 1)
    await eventually(lambda: db.count_interactions(owl["id"], "like") == 2)
    run = await app.bindings["leaderboard"].create()
    status = await run.wait(timeout=30)
    assert [t["punId"] for t in status["output"]["trending"]] == [guitar["id"], owl["id"], cheese["id"]]
    steps = await app.engine.store.load_steps(run.pk)
    assert [s.name for s in steps] == ["gather-trending-posts", "store-trends"]
    home = await client.get("/")
    assert 'class="trending-list"' in home.text and 'id="trending-empty"' not in home.text


# -- puntificator ---------------------------------------------------------------------------------
NEW_PUN = "The astronaut quit his job at the bakery.\nHe needed more space to rise."


class FixedPunWriterTestDouble:
    """A test double for the pun writer: always writes ``NEW_PUN`` (a pun in no data set), so
    the real local judge's accept path can be tested offline."""

    method = "test-double"

    def write(self, trending: Sequence[str], seed: str) -> str:
        return NEW_PUN


async def test_puntificator_writes_publishes_sleeps_and_counts_likes(tmp_path: Path) -> None:
    clock = JumpingClock()
    async with running(make_config(tmp_path), clock=clock) as app, client_for(app) as http:
        app.services.writer = FixedPunWriterTestDouble()
        cheese, guitar = await publish_all(app, http, [CHEESE, GUITAR])
        await http.post(f"/api/puns/{guitar['id']}/like")
        db = app.services.db
        await eventually(lambda: db.count_interactions(guitar["id"], "like"))
        assert (await (await app.bindings["leaderboard"].create()).wait(timeout=30))["status"] == "complete"

        run = await app.bindings["puntificator"].create(id="punt-1")
        pun_id = puntificator_pun_id("punt-1")
        # Runs until its 30-second sleep; the child publish instance runs meanwhile.
        await _until_step(app, run.pk, "wait-for-publish")
        await _until_status(run, "waiting")
        assert (await wait_done(app, "publish", pun_id))["status"] == "complete"
        clock.advance(31)
        await _until_step(app, run.pk, "wait-to-see-feedback")
        await _until_status(run, "waiting")
        await http.post(f"/api/puns/{pun_id}/like")
        await eventually(lambda: db.count_interactions(pun_id, "like"))
        clock.advance(24 * 3600 + 1)
        status = await run.wait(timeout=30)
        assert status["status"] == "complete", status
        output = status["output"]
        assert output["method"] == "test-double" and output["likes"] == 1
        assert output["pun"] == NEW_PUN and output["rating"] >= 8
        assert output["pun"] == db.get_pun(pun_id).pun  # type: ignore[union-attr]
        assert db.get_pun(pun_id).creator == "puntificator"  # type: ignore[union-attr]
        steps = await app.engine.store.load_steps(run.pk)
        assert [s.name for s in sorted(steps, key=lambda s: s.seq)] == [
            "retrieve-trending-puns",
            "create-new-pun-based-on-trends",
            "judge-pun",
            "save-pun",
            "publish",
            "wait-for-publish",
            "ensure-published",
            "wait-to-see-feedback",
            "check-feedback",
        ]


async def _until_step(app: Punderful, pk: int, name: str) -> None:
    async def has() -> bool:
        return any(s.name == name for s in await app.engine.store.load_steps(pk))

    for _ in range(600):
        if await has():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {name!r} never started")


async def _until_status(instance: Instance, status: str) -> None:
    for _ in range(600):
        if (await instance.status())["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance never became {status!r}: {await instance.status()}")


async def test_puntificator_without_any_puns_gives_up(app: Punderful) -> None:
    status = await (await app.bindings["puntificator"].create()).wait(timeout=30)
    assert status["status"] == "errored"
    assert status["error"] == {
        "name": "NonRetryableError",
        "message": "No trending or published puns to learn from yet",
    }


async def test_puntificator_offline_judge_rejects_a_copy_and_the_instance_errors(tmp_path: Path) -> None:
    # The real offline writer with one published pun can only rerun it ("Remember this
    # one? ..."): the real local judge finds the near-copy and the run ends errored.
    async with running(make_config(tmp_path)) as app, client_for(app) as http:
        (cheese,) = await publish_all(app, http, [CHEESE])
        run = await app.bindings["puntificator"].create(id="punt-copy")
        status = await run.wait(timeout=60)
        assert status["status"] == "errored", status
        assert status["error"]["name"] == "NonRetryableError"
        message = status["error"]["message"]
        assert message.startswith("Rating was 1 for 'Remember this one?") and "near-copy" in message
        assert app.services.db.get_pun(puntificator_pun_id("punt-copy")) is None  # never saved
        steps = await app.engine.store.load_steps(run.pk)
        assert [s.name for s in sorted(steps, key=lambda s: s.seq)][-1] == "judge-pun"


async def test_puntificator_with_the_llm_judge_accepts_and_rejects(
    tmp_path: Path, openai_standin: OpenAIStandIn
) -> None:
    config = make_config(tmp_path).with_(
        llm_base_url=openai_standin.base_url, llm_model="stand-in", llm_api_key="test-key"
    )
    openai_standin.chat_reply = NEW_PUN
    async with running(config) as app, client_for(app) as http:
        await publish_all(app, http, [CHEESE, GUITAR])
        openai_standin.tool_arguments = {"rating": 4, "explanation": "meh", "feedback": "Sharper wordplay."}
        rejected = await (await app.bindings["puntificator"].create(id="punt-low")).wait(timeout=60)
        assert rejected["status"] == "errored"
        assert "Rating was 4" in rejected["error"]["message"] and "Sharper wordplay." in rejected["error"]["message"]
        judge_requests = [r["body"] for r in openai_standin.requests if r["body"].get("tools")]
        assert judge_requests[-1]["tools"][0]["function"]["name"] == "ratePun"
        assert judge_requests[-1]["messages"][0]["content"].startswith("You are a pun critic.")
        assert judge_requests[-1]["messages"][1]["content"] == NEW_PUN

        openai_standin.tool_arguments = {"rating": 9, "explanation": "space/rise", "feedback": ""}
        run = await app.bindings["puntificator"].create(id="punt-high")
        await _until_step(app, run.pk, "wait-for-publish")
        steps = {s.name: s for s in await app.engine.store.load_steps(run.pk)}
        assert steps["judge-pun"].result["rating"] == 9 and steps["judge-pun"].result["method"] == "llm"
        assert app.services.db.get_pun(puntificator_pun_id("punt-high")) is not None


def test_llm_judge_validates_the_tool_answer(openai_standin: OpenAIStandIn) -> None:
    judge = LLMJudge(openai_standin.base_url, "stand-in", "test-key")
    try:
        openai_standin.tool_arguments = {"rating": 8.5, "feedback": "ok"}
        verdict = judge.judge(NEW_PUN)
        assert verdict.passed and verdict.rating == 8.5
        for bad in ({"rating": 11}, {"rating": "nine"}, {"feedback": "no rating"}, {"rating": True}):
            openai_standin.tool_arguments = bad
            with pytest.raises(JudgeError):
                judge.judge(NEW_PUN)
        openai_standin.tool_arguments = None  # a plain text answer: no tool call
        with pytest.raises(JudgeError, match="tool_calls not found"):
            judge.judge(NEW_PUN)
    finally:
        judge.close()
    with pytest.raises(JudgeError, match="not JSON"):
        validate_rating("{rating: 9")


def test_local_judge_checks(embedder: Any) -> None:
    judge = LocalJudge(embedder)
    assert judge.judge(NEW_PUN).passed
    copy = judge.judge("Remember this one? " + GUITAR, [GUITAR])
    assert not copy.passed and copy.checks and copy.checks["decidedBy"] == "near-copy"
    stitched = judge.judge(f"{split_pun(CHEESE)[0]}\n{split_pun(GUITAR)[1]}", [CHEESE, GUITAR])
    assert not stitched.passed and stitched.checks and stitched.checks["decidedBy"] == "stitched"
    offtopic = judge.judge("The penguin opened a bakery.\nMy phone battery died during the meeting.")
    assert not offtopic.passed and offtopic.checks and offtopic.checks["decidedBy"] == "incoherent"
    assert judge.judge("No punchline here at all").rating == 3


def test_recombination_is_honest_and_deterministic() -> None:
    writer = RecombinationWriter()
    trending = [CHEESE, GUITAR, OWL]
    first = writer.write(trending, "seed-1")
    assert first == writer.write(trending, "seed-1")
    setup, punchline = split_pun(first)
    assert setup in {split_pun(t)[0] for t in trending} and punchline in {split_pun(t)[1] for t in trending}
    assert first not in trending
    assert writer.method == "offline-recombination"
    assert writer.write([CHEESE], "x").startswith("Remember this one?")
    with pytest.raises(PunWriterError):
        writer.write([], "x")
    assert split_pun("Why? Because.") == ("Why?", "Because.")
    assert split_pun("No punchline") == ("No punchline", "")


def test_llm_pun_writer_against_a_compatible_server(openai_standin: OpenAIStandIn) -> None:
    openai_standin.chat_reply = '"Why do cows wear bells?\n\nBecause their horns don\'t work."'
    writer = LLMPunWriter(openai_standin.base_url, "stand-in", "test-key")
    assert writer.write([CHEESE], "seed") == "Why do cows wear bells?\nBecause their horns don't work."
    request = openai_standin.requests[-1]["body"]
    assert "<trending-pun>" in request["messages"][0]["content"]
    openai_standin.chat_reply = "   "
    with pytest.raises(PunWriterError):
        writer.write([CHEESE], "seed")
    writer.close()


def test_non_retryable_error_is_perdures() -> None:
    # The workflows import it from perdure; a flagged pun's error name depends on it.
    assert NonRetryableError.__module__.startswith("perdure")


# -- batch import ---------------------------------------------------------------------------------
async def test_import_publishes_the_data_set_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = await import_puns(config, limit=25, wait=True)
    assert first.total == 25 and first.new_instances == 25
    assert first.statuses == {"published": 25}
    assert all(pun_id.startswith("opun-") for pun_id in first.pun_ids)
    again = await import_puns(config, limit=30, wait=False)
    assert again.new_instances == 5, "the first 25 are skipped by id"
    async with running(config) as app:
        for pun_id in again.pun_ids:
            await wait_done(app, "publish", pun_id)
        assert app.services.db.count_puns("published") == 30
        assert app.services.vectors.count("content") == 30
        first_pun = app.services.db.get_pun(first.pun_ids[0])
        assert first_pun is not None and first_pun.creator == "oPun" and import_id(first_pun.pun) == first_pun.id
