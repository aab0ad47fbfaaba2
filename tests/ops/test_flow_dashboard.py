"""The dashboard in headless Chromium shows a workflow's flow control and why its instances are
queued (perdure.flow)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from perdure import Engine
from tests.ops.test_dashboard import _browser, csp_violations, served, until
from tests.ops.test_flow_api import limited

__all__ = ["served"]  # the fixture, imported for this module's tests


@pytest.fixture
def engine(engine: Engine) -> Engine:
    return limited(engine)


async def test_the_dashboard_shows_flow_control_and_queued_reasons(
    engine: Engine, served: str, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = await asyncio.to_thread(_browser)
    api = httpx.AsyncClient(base_url=served)
    try:
        await api.post(
            "/api/workflows/limited/instances", json={"id": "a1", "params": {"ms": 3000}, "concurrency_key": "a"}
        )
        for body in ({"id": "a2", "concurrency_key": "a"}, {"id": "b1", "concurrency_key": "b"}):
            await api.post("/api/workflows/limited/instances", json=body)
        await asyncio.to_thread(driver.get, f"{served}/dashboard/")
        row = await until(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-workflow="limited"]').text)
        assert "flow control: at most 1 running, 1 per key, 100 starts per 60 s" in row
        await until(
            lambda: (
                "queued: 1 key's limit, 1 concurrency limit"
                in driver.find_element(By.CSS_SELECTOR, 'tr[data-workflow="limited"]').text
                or driver.refresh()
            )
        )
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-flow-control.png"))
        await asyncio.to_thread(driver.get, f"{served}/dashboard/workflows/limited")
        line = await until(lambda: driver.find_element(By.CSS_SELECTOR, "p.flow").text)
        assert line.startswith("Flow control: at most 1 running") and "queued: 1 key's limit" in line
        await asyncio.to_thread(driver.save_screenshot, str(artifacts / "dashboard-flow-control-workflow.png"))
        assert await asyncio.to_thread(csp_violations, driver) == []
    finally:
        await api.aclose()
        await asyncio.to_thread(driver.quit)
