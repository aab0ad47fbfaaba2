"""The dashboard end to end in headless Chromium: load the pages, search instances by id prefix,
click Pause, see the status change, resume, send the event, see the instance complete (and only
Restart left enabled); a stale page that terminates a finished instance shows the error; Terminate
and Restart ask to confirm first; the browser's console shows no Content-Security-Policy
violation on any page, and a page of another origin cannot frame the dashboard. Screenshots go
to test-artifacts/ops/.

Skipped only when Chromium or ChromeDriver is missing and CI is not set; in CI it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from perdure import Engine
from perdure.server.api import create_app
from perdure.server.http_server import server_config
from tests.ci import unavailable

from .conftest import wait_status

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser() -> Any:
    if not (CHROMIUM and CHROMEDRIVER):
        unavailable("Chromium or ChromeDriver is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for CSP reports
    profile = tempfile.mkdtemp(prefix="perdure-chromium-")
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.__perdure_profile = profile  # type: ignore[attr-defined]
    return driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(engine: Engine) -> AsyncIterator[str]:
    """The app on a real port, in this event loop, with the engine's workers running."""
    port = _free_port()
    app = create_app(engine, allowed_hosts=["127.0.0.1", "localhost"])
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning"))
    await engine.start()
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    await engine.stop()


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll a blocking check (run in a thread) until it returns something truthy; an element that
    is missing or was just replaced counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def attempt() -> Any:
        try:
            return check()
        except (NoSuchElementException, StaleElementReferenceException):  # htmx is swapping the page
            return None

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(attempt)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the page did not reach the expected state in time")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def another_origin(html: str) -> Iterator[str]:
    """A page of another origin (another port of this machine: a data: URL may not reach the
    loopback address at all, which would prove nothing) that serves ``html``."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def csp_violations(driver: Any) -> list[str]:
    """Console messages since the last call that report something the page's CSP blocked."""
    entries = driver.get_log("browser")
    return [
        str(e["message"])
        for e in entries
        if "Content Security Policy" in str(e["message"]) or "Refused to" in str(e["message"])
    ]


async def test_dashboard_in_chromium(engine: Engine, served: str, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = await asyncio.to_thread(_browser)
    api = httpx.AsyncClient(base_url=served)
    try:
        await api.post("/api/workflows/flaky/instances", json={"id": "ui-flaky"})
        await api.post("/api/workflows/approval/instances", json={"id": "ui-1", "params": {"order": 42}})
        await api.post("/api/workflows/hello/instances", json=[{"id": i} for i in ("find-a1", "find-a2", "find-b1")])
        await wait_status(api, "flaky", "ui-flaky", "complete")
        await wait_status(api, "approval", "ui-1", "waiting")

        def text(selector: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, selector).text)

        # the workflows overview
        await asyncio.to_thread(driver.get, f"{served}/dashboard/")
        rows = await until(lambda: driver.find_elements(By.CSS_SELECTOR, "#workflows tr[data-workflow]"))
        assert {r.get_attribute("data-workflow") for r in rows} == {"hello", "approval", "flaky", "fails"}
        assert "waiting 1" in text('tr[data-workflow="approval"]')
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-workflows.png"))
        assert await asyncio.to_thread(csp_violations, driver) == []
        assert driver.find_elements(By.CSS_SELECTOR, "svg.spark rect")  # the sparklines are drawn

        # the instance list, filtered by status, then the flaky instance's timeline
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/approval?status=waiting")
        assert "ui-1" in await until(lambda: text("#instances"))
        # search by id prefix: type the beginning of an id, submit, see only the matches
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/hello")
        await until(lambda: "find-b1" in text("#instances"))

        def search(prefix: str) -> None:
            box = driver.find_element(By.ID, "id-search")
            box.clear()
            box.send_keys(prefix)
            box.submit()

        def listed() -> list[str]:
            return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#instances td a.mono")]

        await asyncio.to_thread(search, "find-a")
        await until(lambda: listed() == ["find-a2", "find-a1"])  # newest first, find-b1 left out
        await asyncio.to_thread(search, "find-a1")
        await until(lambda: listed() == ["find-a1"])
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-search.png"))
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/flaky/instances/ui-flaky")
        await until(lambda: driver.find_elements(By.CSS_SELECTOR, ".tl-attempt.fail"))
        assert len(driver.find_elements(By.CSS_SELECTOR, ".tl-row")) == 3
        # the bars are placed and sized (by SVG attributes, which the CSP allows): not all at one spot
        widths = {round(r.rect["width"]) for r in driver.find_elements(By.CSS_SELECTOR, "rect.tl-bar")}
        lefts = {round(r.rect["x"]) for r in driver.find_elements(By.CSS_SELECTOR, "rect.tl-bar")}
        assert len(widths) > 1 and len(lefts) > 1, (widths, lefts)
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-timeline.png"))
        assert await asyncio.to_thread(csp_violations, driver) == []

        # one instance: pause it with the button and watch the status change
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/approval/instances/ui-1")
        assert await until(lambda: text("#instance-status")) == "waiting"
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-instance-waiting.png"))
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-pause").click())
        await until(lambda: text("#instance-status") == "paused")
        assert "pause" in text("#flash")
        assert (await (await engine.binding("approval").get("ui-1")).status())["status"] == "paused"
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-instance-paused.png"))

        # resume, then approve through the send-event form
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-resume").click())
        await until(lambda: text("#instance-status") in ("waiting", "queued", "running"))

        def send() -> None:
            driver.find_element(By.ID, "event-type").send_keys("approve")
            driver.find_element(By.ID, "event-payload").send_keys('{"by": "browser"}')
            driver.find_element(By.ID, "send-event").click()

        await asyncio.to_thread(send)
        await wait_status(api, "approval", "ui-1", "complete")
        await asyncio.to_thread(driver.refresh)
        assert await until(lambda: text("#instance-status")) == "complete"
        assert '"by": "browser"' in text("#instance-output")
        # a finished instance can only be restarted: Pause, Resume and Terminate are disabled
        enabled = {
            a: driver.find_element(By.ID, f"action-{a}").is_enabled()
            for a in ("pause", "resume", "terminate", "restart")
        }
        assert enabled == {"pause": False, "resume": False, "terminate": False, "restart": True}, enabled
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-instance-complete.png"))
        # a page opened while the instance ran is stale once it finishes: terminating it then (once
        # confirmed) shows the error on the page instead of failing
        await api.post("/api/workflows/approval/instances", json={"id": "ui-stale"})
        await wait_status(api, "approval", "ui-stale", "waiting")
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/approval/instances/ui-stale")
        assert await until(lambda: text("#instance-status")) == "waiting"
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-terminate").click())
        assert "Terminate this instance?" in await until(lambda: text("#confirm"))
        await api.post("/api/workflows/approval/instances/ui-stale/events/approve", json={"by": "api"})
        await wait_status(api, "approval", "ui-stale", "complete")
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "confirm-action").click())
        await until(lambda: "already complete" in text("#flash"))
        assert (await api.get("/api/workflows/approval/instances/ui-stale")).json()["status"] == "complete"
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-instance-stale-terminate.png"))

        # Terminate and Restart ask first: one click changes nothing, Cancel goes back
        await api.post("/api/workflows/approval/instances", json={"id": "ui-2"})
        await wait_status(api, "approval", "ui-2", "waiting")
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/approval/instances/ui-2")
        assert await until(lambda: text("#instance-status")) == "waiting"
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-terminate").click())
        assert "Terminate this instance?" in await until(lambda: text("#confirm"))
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-confirm-terminate.png"))
        assert (await api.get("/api/workflows/approval/instances/ui-2")).json()["status"] == "waiting"
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "cancel-action").click())
        assert await until(lambda: text("#instance-status")) == "waiting"
        assert (await api.get("/api/workflows/approval/instances/ui-2")).json()["status"] == "waiting"
        # confirmed, it terminates (the click submits a form: wait for the confirmation page)
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-terminate").click())
        assert "Terminate this instance?" in await until(lambda: text("#confirm"))
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "confirm-action").click())
        await until(lambda: text("#instance-status") == "terminated")
        assert "terminate" in text("#flash")
        # Restart: asked, then confirmed, and the instance runs again up to its wait
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-restart").click())
        assert "Restart this instance?" in await until(lambda: text("#confirm"))
        assert (await api.get("/api/workflows/approval/instances/ui-2")).json()["status"] == "terminated"
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "confirm-action").click())
        await wait_status(api, "approval", "ui-2", "waiting")
        assert "restart" in await until(lambda: text("#flash"))
        assert await asyncio.to_thread(csp_violations, driver) == []

        # a page of another origin cannot frame the dashboard (X-Frame-Options, frame-ancestors):
        # the frame holds the browser's error page, not the instance and its buttons
        framing = f"<iframe id='victim' src='{served}/dashboard/workflows/approval/instances/ui-2'></iframe>"
        with another_origin(framing) as elsewhere:
            await asyncio.to_thread(driver.get, elsewhere)

        def framed() -> dict[str, Any] | None:
            driver.switch_to.frame(driver.find_element(By.ID, "victim"))
            try:
                state = driver.execute_script("return document.readyState")
                if state != "complete":
                    return None
                return {
                    "buttons": len(driver.find_elements(By.ID, "action-terminate")),
                    "url": driver.execute_script("return document.URL"),
                }
            finally:
                driver.switch_to.default_content()

        await asyncio.sleep(1)  # let the frame's navigation settle
        inside = await until(framed)
        assert inside["buttons"] == 0 and "/dashboard/" not in inside["url"], inside
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-framed-elsewhere.png"))
    finally:
        await api.aclose()
        profile = getattr(driver, "__perdure_profile", None)
        await asyncio.to_thread(driver.quit)
        if profile:
            with contextlib.suppress(OSError):
                shutil.rmtree(profile)


#: A page fits the phone when nothing widens it past the viewport (tables scroll in their box).
FITS = "return [document.documentElement.scrollWidth, window.innerWidth]"
#: Whether an input shows its whole placeholder: the text's width against the box's inner width.
PLACEHOLDER_FITS = """
const input = arguments[0], style = getComputedStyle(input);
const context = document.createElement("canvas").getContext("2d");
context.font = style.font;
const inner = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
return [context.measureText(input.placeholder).width, inner];
"""


async def test_dashboard_fits_a_390_px_phone(engine: Engine, served: str, artifacts: Path) -> None:
    """At 390 px wide no dashboard page scrolls sideways, the instance-id search shows its whole
    placeholder, and the step kinds are drawn (SVG), not characters a font may lack."""
    from selenium.webdriver.common.by import By

    driver = await asyncio.to_thread(_browser)
    api = httpx.AsyncClient(base_url=served)
    try:
        # not "mobile": a phone's browser would zoom out to fit a too-wide page, hiding the fault
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": False}
        await asyncio.to_thread(driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", metrics)
        long_id = "order-2026-12-04-customer-0000012345-retry"
        await api.post("/api/workflows/flaky/instances", json={"id": "phone-flaky"})
        await api.post("/api/workflows/approval/instances", json={"id": long_id, "params": {"order": 7}})
        await api.post("/api/workflows/fails/instances", json={"id": "phone-fails"})
        await wait_status(api, "flaky", "phone-flaky", "complete")
        await wait_status(api, "approval", long_id, "waiting")
        await wait_status(api, "fails", "phone-fails", "errored")
        pages = {
            "workflows": "/dashboard/",
            "instances": "/dashboard/workflows/approval",
            "instance-timeline": "/dashboard/workflows/flaky/instances/phone-flaky",
            "instance-waiting": f"/dashboard/workflows/approval/instances/{long_id}",
            "instance-errored": "/dashboard/workflows/fails/instances/phone-fails",
        }
        for name, path in pages.items():
            await asyncio.to_thread(driver.get, served + path)
            await until(lambda: driver.find_elements(By.CSS_SELECTOR, "main h1"))
            scroll_width, inner_width = await asyncio.to_thread(driver.execute_script, FITS)
            assert inner_width == 390, inner_width
            await asyncio.to_thread(driver.save_screenshot, str(artifacts / f"dashboard-390-{name}.png"))
            assert scroll_width <= inner_width, f"{path} scrolls sideways: {scroll_width} > {inner_width}"
            emoji = r"return document.body.innerText.match(/[\p{Extended_Pictographic}\u{FE0F}]/gu)"
            assert await asyncio.to_thread(driver.execute_script, emoji) is None, f"emoji on {path}"
            if name == "instances":
                box = driver.find_element(By.ID, "id-search")
                text_width, inner = await asyncio.to_thread(driver.execute_script, PLACEHOLDER_FITS, box)
                assert text_width <= inner, f"the placeholder is cut: {text_width:.0f} px of text in {inner:.0f} px"
            if name.startswith("instance-"):
                kinds = driver.find_elements(By.CSS_SELECTOR, ".tl-label .kind")
                assert kinds and all(k.find_elements(By.CSS_SELECTOR, "svg") and not k.text for k in kinds)
        # the confirmation page too
        await asyncio.to_thread(driver.get, served + pages["instance-waiting"])
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-terminate").click())
        await until(lambda: driver.find_elements(By.ID, "confirm"))
        scroll_width, inner_width = await asyncio.to_thread(driver.execute_script, FITS)
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-390-confirm.png"))
        assert scroll_width <= inner_width
        assert await asyncio.to_thread(csp_violations, driver) == []
    finally:
        await api.aclose()
        profile = getattr(driver, "__perdure_profile", None)
        await asyncio.to_thread(driver.quit)
        if profile:
            with contextlib.suppress(OSError):
                shutil.rmtree(profile)
