"""The dashboard end to end in headless Chromium: load the pages, search instances by id prefix,
click Pause, see the status change, resume, send the event, see the instance complete. Screenshots go to
test-artifacts/ops/.

Skipped only when Chromium or ChromeDriver is missing and CI is not set; in CI it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from perdure import Engine
from perdure.server.api import create_app
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
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
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
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-timeline.png"))

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
        # terminating a finished instance shows the error on the page instead of failing
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "action-terminate").click())
        await until(lambda: "already complete" in text("#flash"))
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-instance-complete.png"))
    finally:
        await api.aclose()
        profile = getattr(driver, "__perdure_profile", None)
        await asyncio.to_thread(driver.quit)
        if profile:
            with contextlib.suppress(OSError):
                shutil.rmtree(profile)
