"""The web surface's defences, through the ASGI app: security headers and a CSP the pages keep
to, confirmation of Terminate and Restart, origins and content types of writes, Host parsing
(IPv6 too), signed cursors, signed sessions and the failed-login throttle."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from perdure import Engine
from perdure.cli.serving import LOOPBACK_NAMES
from perdure.server.api import create_app
from perdure.server.auth import SESSION_COOKIE, LoginThrottle, Sessions
from perdure.server.guard import parse_host, same_origin

from .conftest import wait_status
from .test_api import error_of

TOKEN = "s3cret-token"


def asgi(app: Any, base_url: str = "http://127.0.0.1", client: tuple[str, int] = ("127.0.0.1", 5000)) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client), base_url=base_url)


# -- item 4: headers, CSP-clean pages, confirmation -------------------------------------------------
def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-frame-options"] == "DENY", (response.url, dict(headers))
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"


async def test_every_response_carries_the_security_headers(engine: Engine) -> None:
    await engine.binding("hello").create(id="h1")
    app = create_app(engine, token=TOKEN, allowed_hosts=["127.0.0.1"])
    async with asgi(app) as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        responses = [
            await c.get("/dashboard/login"),  # a page
            await c.get("/dashboard/"),  # a redirect to sign in
            await c.get("/dashboard/static/style.css"),  # a static file
            await c.get("/api/health"),
            await c.get("/api/workflows", headers=bearer),  # API JSON
            await c.get("/api/workflows"),  # 401
            await c.get("/api/nothing", headers=bearer),  # 404
            await c.post("/api/workflows/hello/instances", headers={**bearer, "Origin": "https://evil.example"}),
            await c.get("/openapi.json"),
            await c.get("/metrics", headers=bearer),
        ]
    async with asgi(app, base_url="http://evil.example") as c:
        responses.append(await c.get("/api/health"))  # refused by the host check
    assert [r.status_code for r in responses] == [200, 303, 200, 200, 200, 401, 404, 403, 401, 200, 403]
    for response in responses:
        assert_security_headers(response)


class _InlineFinder(HTMLParser):
    """Everything in a page that a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if "style" in names:
            self.blocked.append(f"<{tag} style=...>")
        self.blocked += [f"<{tag} {name}=...>" for name in names if name.startswith("on")]
        if tag == "style":
            self.blocked.append("<style>")
        if tag == "script" and "src" not in names:
            self.blocked.append("inline <script>")
        for name, value in attrs:
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.blocked.append(f"<{tag} {name}=javascript:...>")


def inline_content(html: str) -> list[str]:
    finder = _InlineFinder()
    finder.feed(html)
    return finder.blocked


async def test_the_pages_need_no_inline_script_or_style(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/flaky/instances", json={"id": "f1"})
    await client.post("/api/workflows/approval/instances", json={"id": "a1"})
    async with engine:
        await wait_status(client, "flaky", "f1", "complete")
        await wait_status(client, "approval", "a1", "waiting")
        pages = [
            "/dashboard/",
            "/dashboard/workflows/flaky",
            "/dashboard/workflows/flaky/instances/f1",  # a timeline with a failed attempt
            "/dashboard/workflows/approval/instances/a1",
            "/dashboard/workflows/nope",  # the error page
        ]
        for path in pages:
            response = await client.get(path)
            assert response.status_code in (200, 404), path
            assert inline_content(response.text) == [], path
            assert_security_headers(response)
        timeline = (await client.get("/dashboard/workflows/flaky/instances/f1")).text
        assert '<rect class="tl-attempt fail"' in timeline  # the bars are still drawn
        confirm = await client.post("/dashboard/workflows/approval/instances/a1/action", data={"action": "terminate"})
        assert inline_content(confirm.text) == []
    app = create_app(engine, token=TOKEN)
    async with asgi(app) as c:
        assert inline_content((await c.get("/dashboard/login")).text) == []


async def test_terminate_and_restart_ask_to_confirm(engine: Engine, client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/approval/instances", json={"id": "c1"})
    action = "/dashboard/workflows/approval/instances/c1/action"
    async with engine:
        await wait_status(client, "approval", "c1", "waiting")
        # Terminate: the first post only asks; nothing changes
        asked = await client.post(action, data={"action": "terminate"})
        assert asked.status_code == 200 and 'id="confirm-action"' in asked.text
        assert 'name="confirmed" value="yes"' in asked.text and 'name="action" value="terminate"' in asked.text
        assert (await client.get("/api/workflows/approval/instances/c1")).json()["status"] == "waiting"
        # the confirmed post terminates
        done = await client.post(action, data={"action": "terminate", "confirmed": "yes"})
        assert done.status_code == 303 and "terminate" in done.headers["location"]
        assert (await client.get("/api/workflows/approval/instances/c1")).json()["status"] == "terminated"
        # Restart from a step: asked with the step named, the step's fields carried over
        fields = {"action": "restart", "from_step_name": "approval", "from_step_type": "waitForEvent"}
        asked = await client.post(action, data=fields)
        assert asked.status_code == 200 and "from step" in asked.text
        assert 'name="from_step_name" value="approval"' in asked.text
        assert (await client.get("/api/workflows/approval/instances/c1")).json()["status"] == "terminated"
        again = await client.post(action, data={**fields, "confirmed": "yes"})
        assert again.status_code == 303
        await wait_status(client, "approval", "c1", "waiting")
        # Pause is not destructive: it acts at once
        paused = await client.post(action, data={"action": "pause"})
        assert paused.status_code == 303
        assert (await client.get("/api/workflows/approval/instances/c1")).json()["status"] == "paused"


# -- item 5: origins and content types of writes ----------------------------------------------------
async def test_null_origins_and_non_json_bodies_cannot_write(engine: Engine, client: httpx.AsyncClient) -> None:
    base = "/api/workflows/hello/instances"
    await client.post(base, json={"id": "w0"})
    # Origin: null (sandboxed frame, file: page) without Sec-Fetch-Site: refused for writes
    nulled = await client.post(base, content=b'{"id": "n1"}', headers={"Origin": "null", "Content-Type": "text/plain"})
    error_of(nulled, 403, "forbidden_origin")
    error_of(await client.post(base, json={"id": "n2"}, headers={"Origin": "null"}), 403, "forbidden_origin")
    error_of(
        await client.post("/dashboard/workflows/hello/trigger", data={"id": "n3"}, headers={"Origin": "null"}),
        403,
        "forbidden_origin",
    )
    assert (await client.get(f"{base}/n1", headers={"Origin": "null"})).status_code == 404  # reads are fine
    # a JSON body sent as text/plain (what a page elsewhere may send without asking): 415
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        message = error_of(
            await client.post(base, content=b'{"id": "t1"}', headers={"Content-Type": content_type}),
            415,
            "unsupported_media_type",
        )
        assert "application/json" in message
    error_of(await client.post(base, content=b'{"id": "t1"}'), 415, "unsupported_media_type")  # none at all
    error_of(
        await client.patch(f"{base}/w0/status", content=b'{"status": "pause"}', headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    error_of(
        await client.post(f"{base}/w0/events/go", content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    listed = (await client.get(base)).json()["instances"]
    assert [i["id"] for i in listed] == ["w0"]  # none of the above created anything
    # JSON content types, with parameters or a +json suffix; an empty optional body needs none
    vendor = await client.post(
        base, content=b'{"id": "v1"}', headers={"Content-Type": "application/vnd.perdure+json; charset=utf-8"}
    )
    assert vendor.status_code == 201
    assert (await client.post(base)).status_code == 201
    assert (await client.post(f"{base}/w0/events/go")).status_code == 202
    # the dashboard's forms post urlencoded, and keep working
    trigger = await client.post("/dashboard/workflows/hello/trigger", data={"id": "form-1"})
    assert trigger.status_code == 303 and "form-1" in trigger.headers["location"]


# -- item 6: Host parsing ---------------------------------------------------------------------------
def test_parse_host() -> None:
    assert parse_host("[::1]") == ("::1", None)
    assert parse_host("[::1]:8080") == ("::1", 8080)
    assert parse_host("[2001:DB8::1]:443") == ("2001:db8::1", 443)
    assert parse_host("LocalHost") == ("localhost", None)
    assert parse_host("localhost:8080") == ("localhost", 8080)
    assert parse_host("127.0.0.1:80") == ("127.0.0.1", 80)
    for bad in (None, "", "::1", "[::1", "[::1]x", "[nope]:80", "host:", "host:port", "host:99999", "a b", ":80"):
        assert parse_host(bad) is None, bad
    assert same_origin("http://[::1]:8080", "[::1]:8080")
    assert same_origin("http://127.0.0.1", "127.0.0.1:80") and same_origin("https://example.com:443", "example.com")
    assert not same_origin("http://[::1]:8080", "[::1]:9090") and not same_origin("http://127.0.0.1", "localhost")
    assert not same_origin("https://example.com", "example.com:80") and not same_origin("null", "example.com")


async def test_ipv6_hosts_are_served(engine: Engine) -> None:
    app = create_app(engine, allowed_hosts=LOOPBACK_NAMES)  # what `perdure serve` uses on loopback
    for base in ("http://[::1]", "http://[::1]:8080", "http://localhost:8080", "http://127.0.0.1"):
        async with asgi(app, base_url=base) as c:
            assert (await c.get("/api/workflows")).status_code == 200, base
            created = await c.post("/api/workflows/hello/instances", json={}, headers={"Origin": base})
            assert created.status_code == 201, (base, created.text)
    async with asgi(app, base_url="http://[::1]:8080") as c:
        other_port = await c.post("/api/workflows/hello/instances", json={}, headers={"Origin": "http://[::1]:9999"})
        error_of(other_port, 403, "forbidden_origin")
        error_of(await c.get("/api/workflows", headers={"Host": "[::1"}), 400, "validation_error")
        error_of(await c.get("/api/workflows", headers={"Host": "[::2]"}), 403, "forbidden_origin")
        error_of(await c.get("/api/workflows", headers={"Host": "evil.example:8080"}), 403, "forbidden_origin")


# -- item 7: signed cursors -------------------------------------------------------------------------
def _tampered(cursor: str) -> list[str]:
    payload, _, signature = cursor.partition(".")
    position = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    forged = base64.urlsafe_b64encode(str(int(position) + 1).encode()).decode().rstrip("=")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    return [f"{forged}.{signature}", f"{payload}.{flipped}", payload, forged, f"{payload}."]


async def test_cursors_are_signed_by_the_database(engine: Engine, client: httpx.AsyncClient, make_engine: Any) -> None:
    base = "/api/workflows/hello/instances"
    await client.post(base, json=[{"id": f"p{i}"} for i in range(5)])
    first = (await client.get(base, params={"limit": 2})).json()
    cursor = first["next_cursor"]
    document = (await client.get("/openapi.json")).json()
    parameters = document["paths"]["/api/workflows/{name}/instances"]["get"]["parameters"]
    (param,) = [p for p in parameters if p["name"] == "cursor"]
    assert param["schema"]["format"] == "perdure-cursor" and "issued" in param["description"]
    issued = document["components"]["schemas"]["InstanceList"]["properties"]["next_cursor"]["anyOf"][0]
    assert issued["format"] == "perdure-cursor" and re.match(issued["pattern"], cursor)
    assert len(cursor) <= issued["maxLength"]
    second = (await client.get(base, params={"limit": 2, "cursor": cursor})).json()
    assert [i["id"] for i in second["instances"]] == ["p2", "p1"]
    for bad in _tampered(cursor):
        error_of(await client.get(base, params={"cursor": bad}), 400, "validation_error")
    # another server on the same database (another process, say) accepts the cursor
    other = create_app(make_engine())
    async with asgi(other) as c:
        same = (await c.get(base, params={"limit": 2, "cursor": cursor})).json()
        assert [i["id"] for i in same["instances"]] == ["p2", "p1"]


# -- item 9: sessions and the login throttle --------------------------------------------------------
async def test_the_session_cookie_is_signed_not_the_token(engine: Engine, make_engine: Any) -> None:
    app = create_app(engine, token=TOKEN)
    async with asgi(app) as c:
        signed_in = await c.post("/dashboard/login", data={"token": TOKEN})
        assert signed_in.status_code == 303
        set_cookie = signed_in.headers["set-cookie"]
        value = signed_in.cookies[SESSION_COOKIE]
        assert TOKEN not in set_cookie and value.startswith("v1.")
        assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
        assert "secure" not in set_cookie.lower().replace("httponly", "")  # plain http here
        assert (await c.get("/dashboard/")).status_code == 200
        assert (await c.get("/api/workflows")).status_code == 200
    async with asgi(app) as c:
        for forged in (TOKEN, value[:-2] + "xx", "v1.99999999999." + value.rsplit(".", 1)[1]):
            page = await c.get("/dashboard/", headers={"Cookie": f"{SESSION_COOKIE}={forged}"})
            assert page.status_code == 303 and page.headers["location"] == "/dashboard/login", forged
        assert (
            await c.get("/dashboard/", headers={"Cookie": f"perdure_token={TOKEN}"})
        ).status_code == 303  # the old cookie
        # another server on the same database with the same token accepts it: one key per database
        async with asgi(create_app(make_engine(), token=TOKEN)) as same:
            assert (await same.get("/dashboard/", headers={"Cookie": f"{SESSION_COOKIE}={value}"})).status_code == 200
        # a new token signs everybody out
        async with asgi(create_app(make_engine(), token="another-token")) as changed:
            assert (
                await changed.get("/dashboard/", headers={"Cookie": f"{SESSION_COOKIE}={value}"})
            ).status_code == 303
    async with asgi(app, base_url="https://127.0.0.1") as c:
        secure = await c.post("/dashboard/login", data={"token": TOKEN})
        assert "secure" in secure.headers["set-cookie"].lower().replace("httponly", "")


async def test_sessions_expire() -> None:
    now = [1000.0]

    async def secret() -> bytes:
        return b"k" * 32

    sessions = Sessions(TOKEN, secret, max_age=60, clock=lambda: now[0])
    value = await sessions.issue()
    assert await sessions.valid(value)
    now[0] += 59
    assert await sessions.valid(value)
    now[0] += 2
    assert not await sessions.valid(value)
    assert not await Sessions("other-token", secret, clock=lambda: 1000.0).valid(value)


async def test_failed_logins_are_rate_limited_per_client(engine: Engine) -> None:
    app = create_app(engine, token=TOKEN)
    throttle: LoginThrottle = app.state.throttle
    now = [0.0]
    throttle.clock = lambda: now[0]
    async with asgi(app, client=("10.0.0.1", 1000)) as attacker, asgi(app, client=("10.0.0.2", 1000)) as other:
        for _ in range(5):
            assert (await attacker.post("/dashboard/login", data={"token": "wrong-token"})).status_code == 401
        refused = await attacker.post("/dashboard/login", data={"token": TOKEN})  # even the right one, now
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) == 60
        assert "try again" in refused.text and SESSION_COOKIE not in refused.cookies
        # the API's bearer token counts too
        limited = await attacker.get("/api/workflows", headers={"Authorization": f"Bearer {TOKEN}"})
        assert error_of(limited, 429, "too_many_requests") and limited.headers["retry-after"] == "60"
        # another address is not affected
        assert (await other.post("/dashboard/login", data={"token": TOKEN})).status_code == 303
        now[0] += 61
        assert (await attacker.post("/dashboard/login", data={"token": TOKEN})).status_code == 303
        # wrong bearer tokens alone lead there as well
        for _ in range(5):
            error_of(await other.get("/api/workflows", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        error_of(
            await other.get("/api/workflows", headers={"Authorization": f"Bearer {TOKEN}"}), 429, "too_many_requests"
        )


@pytest.mark.parametrize("limit", [1, 3])
def test_the_throttle_forgets_old_failures(limit: int) -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=limit, window=10, clock=lambda: now[0])
    for _ in range(limit):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        now[0] += 1
    assert throttle.retry_after("a") == 10 - limit
    now[0] = 10.5  # the first failure (at 0) is now over a window old
    assert throttle.retry_after("a") is None
    now[0] = 20
    assert throttle.retry_after("a") is None
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after("a") is None
