"""The JSON API and the pages: every endpoint, and bad input -> 4xx with nothing stored."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import httpx
import pytest

from punderful.app import Punderful
from tests.test_app_helpers import (
    CHEESE,
    COMPUTER,
    GUITAR,
    PUBLISH_STEPS,
    SKIER,
    client_for,
    eventually,
    fixture_app,  # noqa: F401  (a fixture, with its dependencies below)
    fixture_client,  # noqa: F401
    fixture_config,  # noqa: F401
    publish_all,
    submit,
    wait_done,
)


async def instance_count(app: Punderful, workflow: str = "publish") -> int:
    counts = await app.engine.store.count_by_status(workflow)
    return sum(counts.get(workflow, {}).values())


async def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# -- POST /api/puns -----------------------------------------------------------------------------
async def test_submit_stores_a_draft_sets_the_cookie_and_publishes(app: Punderful, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/puns", json={"pun": "  Why did the bicycle fall over?\r\n\r\n It was two-tired.  "}
    )
    assert response.status_code == 201
    assert client.cookies["userId"].startswith("anon-")
    body = response.json()
    pun = body["pun"]
    assert pun["pun"] == "Why did the bicycle fall over?\nIt was two-tired."  # normalised
    assert pun["status"] == "draft" and pun["mine"] is True and "creator" not in pun
    assert body["workflow"]["name"] == "publish" and body["workflow"]["id"] == pun["id"]

    assert (await wait_done(app, "publish", pun["id"]))["status"] == "complete"
    published = (await client.get(f"/api/puns/{pun['id']}")).json()
    assert published["status"] == "published"
    assert published["moderation"] == "local"
    assert published["categories"] and all(isinstance(c, str) for c in published["categories"])


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"pun": ""}, 400, "empty_pun"),
    ({"pun": "   \n\t  \r\n "}, 400, "empty_pun"),
    ({"pun": "x" * 1001}, 400, "pun_too_long"),
    ({"pun": 42}, 400, "invalid_pun"),
    ({"pun": None}, 400, "invalid_pun"),
    ({"pun": "null byte \x00 here"}, 400, "invalid_pun"),
    ({"text": "wrong key"}, 400, "invalid_body"),
    (["a list"], 400, "invalid_body"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_submit_rejects_bad_puns_and_stores_nothing(
    app: Punderful, client: httpx.AsyncClient, body: Any, status: int, code: str
) -> None:
    await assert_error(await client.post("/api/puns", json=body), status, code)
    assert await asyncio.to_thread(app.services.db.count_puns) == 0
    assert await instance_count(app) == 0


async def test_submit_rejects_bad_encodings_and_sizes(app: Punderful, client: httpx.AsyncClient) -> None:
    await assert_error(
        await client.post("/api/puns", content=b'{"pun": "x"', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    await assert_error(await client.post("/api/puns", data={"pun": "a form post"}), 415, "unsupported_media_type")
    await assert_error(
        await client.post("/api/puns", content=b"\xff\xfe", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    huge = b'{"pun": "' + b"x" * 70_000 + b'"}'
    await assert_error(
        await client.post("/api/puns", content=huge, headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )
    assert await asyncio.to_thread(app.services.db.count_puns) == 0
    assert await instance_count(app) == 0


async def test_a_pun_of_exactly_the_maximum_length_is_accepted(app: Punderful, client: httpx.AsyncClient) -> None:
    pun = await submit(client, "y" * app.config.max_pun_length)
    assert len(pun["pun"]) == 1000


# -- GET /api/puns ------------------------------------------------------------------------------
async def test_list_shows_published_puns_newest_first_with_paging(app: Punderful, client: httpx.AsyncClient) -> None:
    published = await publish_all(app, client, [CHEESE, GUITAR, COMPUTER])
    await asyncio.to_thread(app.services.db.insert_pun, "a-draft", "Not published yet", "anon-x")
    results = (await client.get("/api/puns")).json()["results"]
    assert [p["id"] for p in results] == [p["id"] for p in reversed(published)]

    first = (await client.get("/api/puns?limit=2")).json()
    assert len(first["results"]) == 2 and first["nextCursor"]
    rest = (await client.get("/api/puns", params={"limit": 2, "cursor": first["nextCursor"]})).json()
    assert [p["id"] for p in first["results"] + rest["results"]] == [p["id"] for p in results]
    assert rest["nextCursor"] is None

    for bad in ("0", "-1", "201", "ten"):
        await assert_error(await client.get(f"/api/puns?limit={bad}"), 400, "invalid_limit")


# -- GET /api/puns/{id} -------------------------------------------------------------------------
async def test_get_unknown_or_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    for pun_id in ("no-such-pun", "0" * 101, "bad%20id", "%2e%2e"):
        await assert_error(await client.get(f"/api/puns/{pun_id}"), 404, "not_found")
        await assert_error(await client.get(f"/api/puns/{pun_id}/similar"), 404, "not_found")
        await assert_error(await client.post(f"/api/puns/{pun_id}/like"), 404, "not_found")
        await assert_error(await client.get(f"/api/puns/{pun_id}/workflow"), 404, "not_found")


async def test_drafts_are_visible_only_to_their_creator(app: Punderful, client: httpx.AsyncClient) -> None:
    await asyncio.to_thread(app.services.db.insert_pun, "draft-1", "A draft", "anon-someone-else")
    await assert_error(await client.get("/api/puns/draft-1"), 404, "not_found")
    pun = await submit(client, "My own pun\nstill cooking")
    # The creator sees their pun whatever its status; a stranger only once it is published.
    assert (await client.get(f"/api/puns/{pun['id']}")).status_code == 200
    await wait_done(app, "publish", pun["id"])
    async with client_for(app) as stranger:
        seen = (await stranger.get(f"/api/puns/{pun['id']}")).json()
        assert seen["status"] == "published" and seen["mine"] is False


# -- search -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("/api/puns/search", "empty_query"),
        ("/api/puns/search?q=", "empty_query"),
        ("/api/puns/search?q=%20%20%09", "empty_query"),
        ("/api/puns/search?q=" + "a" * 201, "query_too_long"),
    ],
)
async def test_search_rejects_bad_queries(app: Punderful, client: httpx.AsyncClient, url: str, code: str) -> None:
    await assert_error(await client.get(url), 400, code)
    assert await asyncio.to_thread(app.services.db.count_puns) == 0


async def test_search_finds_published_puns_by_meaning(app: Punderful, client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/puns/search?q=anything")).json() == {"results": []}  # empty index
    cheese, guitar, *_ = await publish_all(app, client, [CHEESE, GUITAR, SKIER])
    results = (await client.get("/api/puns/search", params={"q": "funny lines about stringed instruments"})).json()[
        "results"
    ]
    assert results[0]["id"] == guitar["id"]
    assert results[0]["score"] > app.config.search_threshold and results[0]["via"] == "content"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


# -- similar ------------------------------------------------------------------------------------
async def test_similar_puns_come_from_content_and_categories(app: Punderful, client: httpx.AsyncClient) -> None:
    # Same category ("food") and the closest content: first, whichever vectors found it.
    cheese_2 = (
        "The cheddar skipped the party at the cheese grater's house.\nIt said the evening didn't sound very grate."
    )
    cheese, other_cheese, _ski = await publish_all(app, client, [CHEESE, cheese_2, SKIER])
    results = (await client.get(f"/api/puns/{cheese['id']}/similar")).json()["results"]
    ids = [r["id"] for r in results]
    assert cheese["id"] not in ids, "a pun is not similar to itself"
    assert ids[0] == other_cheese["id"]
    assert len(ids) == len(set(ids))
    assert {r["via"] for r in results} <= {"content", "categories"}


async def test_similar_of_an_unpublished_pun_is_empty(app: Punderful, client: httpx.AsyncClient) -> None:
    await asyncio.to_thread(
        app.services.db.insert_pun, "draft-2", "Mine, unpublished", client.cookies.get("userId") or ""
    )
    pun = await submit(client, "Just written\nand not yet indexed")
    response = await client.get(f"/api/puns/{pun['id']}/similar")
    assert response.status_code == 200  # the creator may ask; there are simply no vectors yet
    await wait_done(app, "publish", pun["id"])


# -- likes, mine, trending ----------------------------------------------------------------------
async def test_like_records_once_per_visitor_through_the_interaction_workflow(
    app: Punderful, client: httpx.AsyncClient
) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    first = await client.post(f"/api/puns/{pun['id']}/like")
    assert first.status_code == 202 and first.json() == {"success": True, "alreadyLiked": False}
    again = await client.post(f"/api/puns/{pun['id']}/like")
    assert again.status_code == 200 and again.json()["alreadyLiked"] is True

    db = app.services.db
    await eventually(lambda: db.count_interactions(pun["id"], "like"))
    seen = (await client.get(f"/api/puns/{pun['id']}")).json()
    assert seen["likes"] == 1 and seen["liked"] is True
    mine = (await client.get("/api/puns/mine")).json()
    assert [p["id"] for p in mine["liked"]] == [pun["id"]]

    async with client_for(app) as other:
        assert (await other.post(f"/api/puns/{pun['id']}/like")).status_code == 202
    await eventually(lambda: db.count_interactions(pun["id"], "like") == 2)


async def test_only_published_puns_can_be_liked(app: Punderful, client: httpx.AsyncClient) -> None:
    # Submitted with workers busy elsewhere is hard to arrange; a draft row is enough here.
    me = (await client.get("/api/puns/mine")).status_code
    assert me == 200
    identity = client.cookies["userId"]
    await asyncio.to_thread(app.services.db.insert_pun, "my-draft", "A draft of mine", identity)
    await assert_error(await client.post("/api/puns/my-draft/like"), 409, "not_published")
    assert await instance_count(app, "interaction") == 0


async def test_mine_lists_my_puns_in_any_status(app: Punderful, client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/puns/mine")).json() == {"created": [], "liked": []}
    pun = await submit(client, "A pun of mine\nin any status")
    identity = client.cookies["userId"]
    await asyncio.to_thread(app.services.db.insert_pun, "flag-me", "Flagged one", identity)
    await asyncio.to_thread(app.services.db.mark_flagged, "flag-me")
    created = (await client.get("/api/puns/mine")).json()["created"]
    assert {p["id"] for p in created} == {pun["id"], "flag-me"}
    assert {p["status"] for p in created} >= {"flagged"}
    async with client_for(app) as stranger:
        assert (await stranger.get("/api/puns/mine")).json()["created"] == []


async def test_trending_is_the_leaderboards_last_result(app: Punderful, client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/puns/trending")).json()["results"] == []
    (pun,) = await publish_all(app, client, [CHEESE])
    await client.post(f"/api/puns/{pun['id']}/like")
    db = app.services.db
    await eventually(lambda: db.count_interactions(pun["id"], "like"))
    instance = await app.bindings["leaderboard"].create()
    assert (await instance.wait(timeout=30))["status"] == "complete"
    trending = (await client.get("/api/puns/trending")).json()
    assert trending["results"] == [{"punId": pun["id"], "pun": CHEESE, "likes": 1}]
    assert trending["updatedAt"]


# -- the workflow timeline ----------------------------------------------------------------------
async def test_workflow_timeline_lists_every_publish_step(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, [COMPUTER])
    timeline = (await client.get(f"/api/puns/{pun['id']}/workflow")).json()
    assert timeline["status"] == "complete" and timeline["id"] == pun["id"]
    assert [s["name"] for s in timeline["steps"]] == PUBLISH_STEPS
    embedding = timeline["steps"][1]
    assert embedding["output"] == "[384 floats]" and embedding["durationMs"] >= 0
    assert len(embedding["attempts"]) == 1 and embedding["attempts"][0]["error"] is None


@pytest.mark.skipif(
    importlib.util.find_spec("perdure.server.api") is None, reason="perdure.server.api is not in this checkout"
)
async def test_the_perdure_dashboard_and_api_are_mounted(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    assert pun["workflow"]["url"] == f"/perdure/dashboard/workflows/publish/instances/{pun['id']}"
    described = await client.get(pun["workflow"]["api"])
    assert described.status_code == 200 and described.json()["status"] == "complete"
    page = await client.get(pun["workflow"]["url"])
    assert page.status_code == 200 and "update-status-to-published" in page.text


# -- pages --------------------------------------------------------------------------------------
async def test_pages_render(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    home = await client.get("/")
    assert home.status_code == 200 and "Latest puns" in home.text and "Our new cheese shop" in home.text
    new = await client.get("/new")
    assert 'placeholder="Enter your pun here..."' in new.text and "Submit Pun" in new.text
    search = await client.get("/search")
    assert 'placeholder="Search for a pun..."' in search.text
    found = await client.get("/search", params={"q": "dairy"})
    assert "Our new cheese shop" in found.text
    detail = await client.get(f"/puns/{pun['id']}")
    assert detail.status_code == 200 and "Similar Puns" in detail.text and pun["workflow"]["url"] in detail.text
    me = await client.get("/me")
    assert "Puns I created" in me.text and "Puns I liked" in me.text and "Our new cheese shop" in me.text
    assert (await client.get("/static/punderful.js")).status_code == 200


async def test_pun_text_is_escaped_in_pages(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, ["<script>alert('pun')</script>\n<b>bold</b> claims"])
    page = await client.get(f"/puns/{pun['id']}")
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text


async def test_viewing_a_pun_records_a_detail_interaction(app: Punderful, client: httpx.AsyncClient) -> None:
    (pun,) = await publish_all(app, client, [GUITAR])
    await client.get(f"/puns/{pun['id']}")
    db = app.services.db
    assert await eventually(lambda: db.count_interactions(pun["id"], "detail")) == 1


async def test_unknown_pages_and_methods(client: httpx.AsyncClient) -> None:
    page = await client.get("/puns/does-not-exist")
    assert page.status_code == 404 and "Pun not found" in page.text
    await assert_error(await client.get("/api/nothing-here"), 404, "not_found")
    await assert_error(await client.delete("/api/puns"), 405, "method_not_allowed")
    await assert_error(await client.get("/api/puns/x/like"), 405, "method_not_allowed")


async def test_an_invalid_user_cookie_is_replaced(client: httpx.AsyncClient) -> None:
    client.cookies.set("userId", "admin")
    response = await client.get("/api/puns/mine")
    assert "userId=anon-" in response.headers["set-cookie"]
    valid = "anon-12345678-1234-1234-1234-123456789abc"
    client.cookies.clear()
    client.cookies.set("userId", valid)
    response = await client.get("/api/puns/mine")
    assert "set-cookie" not in response.headers


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"ok": True, "engine": True}


async def test_favicon_is_served_and_linked(client: httpx.AsyncClient) -> None:
    icon = await client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg")
    assert '<link rel="icon" href="/static/favicon.svg"' in (await client.get("/")).text
    assert (await client.get("/static/favicon.svg")).status_code == 200


async def test_search_results_label_their_similarity_score(app: Punderful, client: httpx.AsyncClient) -> None:
    await publish_all(app, client, [CHEESE])
    page = await client.get("/search", params={"q": "dairy business"})
    assert ">similarity 0." in page.text


async def test_the_dashboard_disables_pause_resume_terminate_on_a_completed_instance(
    app: Punderful, client: httpx.AsyncClient
) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    page = (await client.get(f"/perdure/dashboard/workflows/publish/instances/{pun['id']}")).text
    for action in ("pause", "resume", "terminate"):
        assert f'id="action-{action}" class="{"danger" if action == "terminate" else ""}" disabled' in page
    assert 'id="action-restart" class="">' in page


async def test_a_new_sites_first_like_fills_trending_without_waiting_for_the_cron(
    app: Punderful, client: httpx.AsyncClient
) -> None:
    db = app.services.db
    await eventually(lambda: db.get_trends() is not None)  # the start's leaderboard run: nothing liked
    assert db.get_trends() == ([], db.get_trends()[1])  # type: ignore[index]
    home = (await client.get("/")).text
    assert 'id="trending-empty"' in home and 'class="trending-list"' not in home
    (pun,) = await publish_all(app, client, [CHEESE])
    await client.post(f"/api/puns/{pun['id']}/like")
    # no leaderboard instance is created by the test: the like starts one, as nothing trended
    await eventually(lambda: (db.get_trends() or ([], ""))[0])
    trending = (await client.get("/api/puns/trending")).json()["results"]
    assert trending == [{"punId": pun["id"], "pun": CHEESE, "likes": 1}]
    home = (await client.get("/")).text
    assert 'class="trending-list"' in home and CHEESE.split("\n")[0] in home
