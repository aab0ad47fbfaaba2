"""What Punderful lets in: the Perdure mount's token and allowed hosts, cross-site writes, and
malformed JSON.

Perdure's REST API and dashboard are mounted at ``/perdure`` with the rules ``perdure serve``
applies: ``Host`` must name this server (against DNS rebinding), and a token is required when
the app listens on anything but loopback (else it refuses to start, unless ``--no-perdure``).
The whole app is wrapped in Perdure's own :class:`~perdure.server.api.Guard`, so a page on
another site cannot submit puns or like them in a visitor's name. Punderful's pages and API
never need the token.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from punderful.__main__ import build_parser, main
from punderful.app import Punderful
from punderful.config import Config, ConfigError
from tests.test_app_helpers import (
    CHEESE,
    GUITAR,
    ROOT,
    ServerProcess,
    eventually,
    make_config,
    publish_all,
    running,
    submit,
    wait_done,
)
from tests.test_browser import browser, shot, wait_for  # noqa: F401  (browser is a fixture)

TOKEN = "s3cret-token-for-tests"
HERE = "http://127.0.0.1:8787"  # where the in-process clients say they are (Host and Origin)
EVIL = "http://evil.example"
CROSS_SITE = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}


def client_at(app: Punderful, base_url: str = HERE, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi), base_url=base_url, **options)


@pytest.fixture(name="app")
async def fixture_app(tmp_path: Path) -> AsyncIterator[Punderful]:
    async with running(make_config(tmp_path)) as started:
        yield started


@pytest.fixture(name="client")
async def fixture_client(app: Punderful) -> AsyncIterator[httpx.AsyncClient]:
    async with client_at(app) as http:
        yield http


async def instance_count(app: Punderful, workflow: str) -> int:
    counts = await app.engine.store.count_by_status(workflow)
    return sum(counts.get(workflow, {}).values())


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUNDERFUL_", "OPENAI_", "PERDURE_"))}
    env.update(extra)
    return env


# -- 10. the Perdure mount: token and allowed hosts -------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "puns.example.com"])
def test_a_public_address_needs_a_token_or_no_perdure(host: str) -> None:
    with pytest.raises(ConfigError, match="--perdure-token"):
        Config.from_env({}, host=host)
    assert Config.from_env({}, host=host, perdure_token=TOKEN).perdure_token == TOKEN
    assert Config.from_env({"PERDURE_TOKEN": TOKEN}, host=host).perdure_token == TOKEN
    assert Config.from_env({}, host=host, mount_perdure=False).mount_perdure is False


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host: str) -> None:
    config = Config.from_env({}, host=host)
    assert config.perdure_token is None and config.mount_perdure is True


def test_token_and_host_settings() -> None:
    assert Config.from_env({"PERDURE_TOKEN": TOKEN}).perdure_token == TOKEN  # perdure serve's variable
    assert Config.from_env({"PUNDERFUL_DASHBOARD_TOKEN": TOKEN}).perdure_token == TOKEN  # the older name
    assert Config.from_env({"PERDURE_TOKEN": TOKEN}, perdure_token="another-long-token").perdure_token == (
        "another-long-token"
    )
    with pytest.raises(ConfigError, match="at least 8 characters"):
        Config.from_env({"PERDURE_TOKEN": "short"})
    with pytest.raises(ConfigError, match="PUNDERFUL_DASHBOARD_TOKEN"):
        Config.from_env({"PERDURE_TOKEN": TOKEN, "PUNDERFUL_DASHBOARD_TOKEN": "a-different-token"})

    assert Config.from_env({}).served_hosts == ["127.0.0.1", "localhost", "::1"]
    config = Config.from_env({"PUNDERFUL_ALLOWED_HOSTS": "Puns.Example.com, other.example"}, host="::1")
    assert config.served_hosts == ["::1", "127.0.0.1", "localhost", "puns.example.com", "other.example"]
    config = Config.from_env({}, host="10.1.2.3", perdure_token=TOKEN, allowed_hosts=["[fd00::1]"])
    assert config.served_hosts == ["10.1.2.3", "127.0.0.1", "localhost", "::1", "fd00::1"]
    for bad in (["http://x.example"], ["x.example:8787"], [" "]):
        with pytest.raises(ConfigError, match="allowed host"):
            Config.from_env({}, allowed_hosts=bad)


def test_the_command_line_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--perdure-token", TOKEN, "--allowed-host", "a.example", "--allowed-host", "b.example", "--no-perdure"]
    )
    assert args.perdure_token == TOKEN and args.allowed_host == ["a.example", "b.example"] and args.no_perdure
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--perdure-token", TOKEN])
    assert args.host == "0.0.0.0" and args.perdure_token == TOKEN


def test_serving_publicly_without_a_token_exits_with_one_line(tmp_path: Path) -> None:
    """The issue's ``python -m punderful --host 0.0.0.0``: it must not start."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "punderful", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"it started serving on 0.0.0.0 without a token: {exc.stdout!r}") from None
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("punderful: refusing") and "--perdure-token" in lines[0] and "--no-perdure" in lines[0]
    assert "Punderful is running" not in result.stdout


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads the real environment: no token or host names from the developer's shell."""
    for name in ("PERDURE_TOKEN", "PUNDERFUL_DASHBOARD_TOKEN", "PUNDERFUL_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_token_env")
def test_main_names_a_bad_token_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--perdure-token", "short", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 8 characters" in err


@pytest.mark.usefixtures("no_token_env")
def test_an_address_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--data-dir", str(tmp_path), "--moderation", "local"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"punderful: cannot listen on 127.0.0.1:{port}: "), err


def test_a_public_server_asks_for_the_token_on_perdure_only(tmp_path: Path) -> None:
    """``--host 0.0.0.0 --perdure-token``, a real process: Perdure's API and dashboard need the
    token; Punderful's pages and API do not; a foreign ``Host`` is refused everywhere."""
    server = ServerProcess(
        tmp_path / "data",
        log=tmp_path / "server.log",
        args=["--host", "0.0.0.0", "--perdure-token", TOKEN],
        env={"PERDURE_TOKEN": "not-this-one-the-flag-wins"},
    )
    try:
        port = server.url.rstrip("/").rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            assert_error(http.get("/perdure/api/workflows"), 401, "unauthorized")
            created = http.post("/perdure/api/workflows/interaction/instances", json={"params": {}})
            assert_error(created, 401, "unauthorized")
            assert http.get("/perdure/api/workflows/interaction/instances", headers=bearer).json()["instances"] == []
            wrong = {"Authorization": "Bearer not-this-one-the-flag-wins"}
            assert_error(http.get("/perdure/api/workflows", headers=wrong), 401, "unauthorized")
            assert http.get("/perdure/api/workflows", headers=bearer).status_code == 200
            dashboard = http.get("/perdure/dashboard/")
            assert dashboard.status_code == 303 and dashboard.headers["location"] == "/perdure/dashboard/login"

            assert http.get("/").status_code == 200
            pun = http.post("/api/puns", json={"pun": CHEESE}, headers={"Origin": base})
            assert pun.status_code == 201, pun.text
            assert http.get(f"/api/puns/{pun.json()['pun']['id']}").status_code == 200

            rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            assert_error(http.get("/perdure/api/workflows", headers={**bearer, **rebound}), 403, "forbidden_origin")
            assert_error(http.post("/api/puns", json={"pun": GUITAR}, headers=rebound), 403, "forbidden_origin")
        log = server.log_path.read_text()
        assert "--token $PERDURE_TOKEN" in log and "--allowed-host" in log
    finally:
        server.stop()


async def test_a_foreign_host_is_refused_on_loopback(app: Punderful) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, so its page is same-origin with
    itself; only the ``Host`` header tells. Nothing is created, on Perdure's API or Punderful's."""
    rebound = "http://evil.example:8787"
    async with client_at(app, rebound, headers={"Origin": rebound}) as http:
        assert_error(await http.post("/perdure/api/workflows/interaction/instances", json={}), 403, "forbidden_origin")
        assert_error(await http.get("/perdure/api/workflows"), 403, "forbidden_origin")
        assert_error(await http.post("/api/puns", json={"pun": CHEESE}), 403, "forbidden_origin")
        assert_error(await http.get("/"), 403, "forbidden_origin")
    assert await instance_count(app, "interaction") == 0
    assert await instance_count(app, "publish") == 0
    for name in ("127.0.0.1", "localhost", "[::1]"):
        async with client_at(app, f"http://{name}:8787") as http:
            assert (await http.get("/perdure/api/workflows")).status_code == 200, name
            assert (await http.get("/")).status_code == 200, name


async def test_allowed_hosts_add_names(tmp_path: Path) -> None:
    config = make_config(tmp_path, allowed_hosts=["puns.example.com"])
    async with running(config) as app:
        async with client_at(app, "https://puns.example.com") as http:
            assert (await http.get("/")).status_code == 200
            assert (await http.get("/perdure/api/workflows")).status_code == 200
            assert (await submit(http, CHEESE))["status"] == "draft"
        async with client_at(app, "https://other.example.com") as http:
            assert_error(await http.get("/"), 403, "forbidden_origin")


async def test_with_a_token_punderful_works_and_perdure_asks_for_it(tmp_path: Path) -> None:
    """Even on loopback, a configured token guards the mount; a visitor's pages, submitting,
    the step timeline and likes go on without it, and the dashboard link leads to its login."""
    async with running(make_config(tmp_path, perdure_token=TOKEN)) as app, client_at(app) as http:
        (pun,) = await publish_all(app, http, [CHEESE])
        page = await http.get(f"/puns/{pun['id']}")
        assert page.status_code == 200 and pun["workflow"]["url"] in page.text
        assert 'href="/perdure/dashboard/"' in page.text
        assert (await http.get(f"/api/puns/{pun['id']}/workflow")).json()["status"] == "complete"
        assert (await http.post(f"/api/puns/{pun['id']}/like", headers={"Origin": HERE})).status_code == 202

        dashboard = await http.get(pun["workflow"]["url"])
        assert dashboard.status_code == 303 and dashboard.headers["location"] == "/perdure/dashboard/login"
        assert_error(await http.get(pun["workflow"]["api"]), 401, "unauthorized")
        described = await http.get(pun["workflow"]["api"], headers={"Authorization": f"Bearer {TOKEN}"})
        assert described.status_code == 200 and described.json()["status"] == "complete"


async def test_no_perdure_serves_punderful_without_the_mount(tmp_path: Path) -> None:
    config = make_config(tmp_path, host="0.0.0.0", mount_perdure=False)
    async with running(config) as app, client_at(app, "http://0.0.0.0:8787") as http:
        assert app.perdure_mount is None
        assert (await http.get("/perdure/api/workflows")).status_code == 404
        (pun,) = await publish_all(app, http, [CHEESE])
        assert pun["workflow"]["url"] == pun["workflow"]["api"] == f"/api/puns/{pun['id']}/workflow"
        page = await http.get(f"/puns/{pun['id']}")
        assert page.status_code == 200 and "/perdure" not in page.text


# -- 11. JSON too deeply nested to parse -------------------------------------------------------------
DEEP = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/puns", '{"pun": ' + DEEP + "}"),
        ("POST", "/api/puns", DEEP),
        ("POST", "/perdure/api/workflows/interaction/instances", '{"params": ' + DEEP + "}"),
        ("PATCH", "/perdure/api/workflows/interaction/instances/x/status", DEEP),
        ("POST", "/perdure/api/workflows/interaction/instances/x/events/e", DEEP),
    ],
    ids=["pun", "body", "perdure-create", "perdure-status", "perdure-event"],
)
async def test_deeply_nested_json_is_a_400(
    app: Punderful, client: httpx.AsyncClient, method: str, path: str, body: str
) -> None:
    response = await client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert await asyncio.to_thread(app.services.db.count_puns) == 0
    assert await instance_count(app, "publish") == 0 and await instance_count(app, "interaction") == 0


# -- 12. cross-site writes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [CROSS_SITE, {"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://127.0.0.1:9999"}],
    ids=["origin-and-fetch-site", "origin", "fetch-site", "other-port"],
)
async def test_cross_site_likes_and_submissions_are_refused(
    app: Punderful, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    (pun,) = await publish_all(app, client, [CHEESE])
    assert_error(await client.post(f"/api/puns/{pun['id']}/like", headers=headers), 403, "forbidden_origin")
    assert_error(await client.post("/api/puns", json={"pun": GUITAR}, headers=headers), 403, "forbidden_origin")
    assert await instance_count(app, "interaction") == 0
    assert await asyncio.to_thread(app.services.db.count_puns) == 1
    assert (await client.get(f"/api/puns/{pun['id']}")).json()["likes"] == 0


async def test_same_origin_writes_and_cross_site_reads_still_work(app: Punderful, client: httpx.AsyncClient) -> None:
    same = {"Origin": HERE, "Sec-Fetch-Site": "same-origin"}
    created = await client.post("/api/puns", json={"pun": CHEESE}, headers=same)
    assert created.status_code == 201, created.text
    pun = created.json()["pun"]
    await wait_done(app, "publish", pun["id"])
    assert (await client.post(f"/api/puns/{pun['id']}/like", headers=same)).status_code == 202
    await eventually(lambda: app.services.db.count_interactions(pun["id"], "like") == 1)
    # A link from another site to a pun (a GET) is not a write: it opens.
    assert (await client.get(f"/puns/{pun['id']}", headers=CROSS_SITE)).status_code == 200
    assert (await client.get("/api/puns", headers=CROSS_SITE)).status_code == 200


# -- in a real browser --------------------------------------------------------------------------------
@pytest.fixture
def evil_site() -> Iterator[tuple[str, list[str]]]:
    """Another site (``http://localhost:<port>``, cross-site to 127.0.0.1): its page at
    ``/?target=URL`` posts a form to URL as soon as it loads, the classic forged like."""
    targets: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            target = self.path.partition("?target=")[2]
            targets.append(target)
            body = (
                f'<!doctype html><title>Win a prize</title><form method="post" action="{target}"></form>'
                "<script>document.forms[0].submit()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/", targets
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.slow
def test_in_a_browser_with_a_token_punderful_works_and_forged_likes_do_not_count(
    browser: Any,  # noqa: F811  (the fixture imported above)
    evil_site: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    """A person writes a pun and likes it, with the mount behind a token; the workflow link
    leads to the dashboard's sign-in; a page on another site that posts a like form gets 403."""
    from selenium.webdriver.common.by import By

    driver = browser
    server = ServerProcess(tmp_path / "data", log=tmp_path / "server.log", args=["--perdure-token", TOKEN])
    try:
        driver.get(server.url + "new")
        driver.find_element(By.ID, "pun-input").send_keys(CHEESE)
        driver.find_element(By.ID, "submit-pun").click()
        status = wait_for(driver, lambda d: d.find_element(By.ID, "submission-status"), what="the status panel")
        wait_for(driver, lambda d: status.text == "published", timeout=60, what="the pun to be published")
        steps = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#submission-steps li")]
        assert "update-status-to-published" in steps  # Punderful's own timeline, no token needed
        pun_url = driver.find_element(By.ID, "submission-link").get_attribute("href")
        pun_id = pun_url.rstrip("/").rsplit("/", 1)[-1]
        workflow_url = driver.find_element(By.ID, "submission-workflow").get_attribute("href")

        driver.get(workflow_url)
        wait_for(driver, lambda d: d.current_url.endswith("/perdure/dashboard/login"), what="the dashboard sign-in")
        shot(driver, "token-dashboard-login")

        evil_url, targets = evil_site
        driver.get(f"{evil_url}?target={server.url}api/puns/{pun_id}/like")
        wait_for(driver, lambda d: d.current_url.endswith(f"/api/puns/{pun_id}/like"), what="the forged form post")
        assert "forbidden_origin" in driver.find_element(By.TAG_NAME, "body").text
        assert targets, "the other site's page was loaded"
        with httpx.Client(base_url=server.url) as http:
            assert http.get(f"/api/puns/{pun_id}").json()["likes"] == 0

        driver.get(pun_url)
        driver.find_element(By.CSS_SELECTOR, ".pun-detail button.like").click()
        wait_for(
            driver,
            lambda d: d.find_element(By.CSS_SELECTOR, ".pun-detail .likes").text == "1",
            what="the like to count",
        )
        shot(driver, "token-liked")
    finally:
        server.stop()


async def test_every_page_sends_perdures_security_headers(client: httpx.AsyncClient) -> None:
    """No other site may frame Punderful (a like button under a decoy), and no inline script runs."""
    for path in ("/", "/new", "/search", "/static/punderful.js", "/api/puns", "/nope"):
        response = await client.get(path)
        assert response.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        assert response.headers["x-content-type-options"] == "nosniff", path
    page = (await client.get("/")).text
    assert "<script>" not in page and "<style" not in page and 'style="' not in page


async def test_deeply_nested_json_in_the_dashboards_forms_is_a_400(client: httpx.AsyncClient) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    response = await client.post(
        "/perdure/dashboard/workflows/interaction/trigger",
        content="params=" + deep,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": HERE},
    )
    assert response.status_code < 500, response.text[:200]


def test_a_db_that_is_not_a_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(tmp_path / "x.db"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("punderful: --db must be a database URL: sqlite:///path/to/file.db") and "Traceback" not in err
    )
