"""Punderful in a real browser: headless Chromium driven by Selenium against ``python -m punderful``.

A person's path through the app: write a pun in the form (watching the live preview), submit
it, watch it go from draft to published without reloading, find it by meaning on the search
page, open it, and see its "Similar Puns". The site is first seeded with part of the bundled
data set through ``python -m punderful import``, run while the server is up (the server's
workers publish what the import queued). Screenshots go to ``test-artifacts/`` (gitignored).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package. Without them
the test is skipped on a developer machine but fails in CI (``CI`` set), so a CI run can never
pass without having driven the browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ci import unavailable
from tests.test_app_helpers import ROOT, ServerProcess

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
PUN_SETUP = "The penguin opened a bakery."
PUN = f"{PUN_SETUP}\nIts frozen croissants were a cool success."
QUERY = "antarctic bird bread shop"  # shares no word with the pun
SEED = 20  # the first test imports part of the data set by hand (its server runs with --no-seed)


def _missing(reason: str) -> None:
    unavailable(f"browser test cannot run: {reason}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if chromium is None or not Path(driver_path).exists():
        _missing("chromium / chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"punderful-chromium-{os.getpid()}"
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"punderful-{name}.png"))


def wait_for(driver: Any, condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def seed(data_dir: Path, url: str) -> None:
    """Import part of the data set while the server runs; its workers publish them."""
    subprocess.run(
        [sys.executable, "-m", "punderful", "import", "--limit", str(SEED), "--data-dir", str(data_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PUNDERFUL_", "OPENAI_"))},
    )
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=url) as http:
        while len(http.get("/api/puns", params={"limit": 100}).json()["results"]) < SEED:
            assert time.monotonic() < deadline, "the imported puns were not published"
            time.sleep(0.2)


def test_write_publish_search_open_and_see_similar_puns(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, log=tmp_path / "server.log")
    try:
        seed(data_dir, server.url)
        driver = browser

        # Write the pun: the preview follows the typing.
        driver.get(server.url + "new")
        textarea = driver.find_element(By.CSS_SELECTOR, "textarea[placeholder='Enter your pun here...']")
        textarea.send_keys(PUN_SETUP)
        wait_for(driver, lambda d: PUN_SETUP in d.find_element(By.ID, "preview").text, what="the live preview")
        textarea.send_keys("\nIts frozen croissants were a cool success.")
        wait_for(
            driver, lambda d: "cool success" in d.find_element(By.ID, "preview").text, what="the punchline preview"
        )
        shot(driver, "1-new-preview")

        # Over the limit (text set by a script, which maxlength does not stop) the counter is red.
        counter = driver.find_element(By.ID, "counter")
        assert "over" not in (counter.get_attribute("class") or "")
        driver.execute_script(
            "arguments[0].value = 'x'.repeat(1001); arguments[0].dispatchEvent(new Event('input'));", textarea
        )
        wait_for(driver, lambda d: "over" in (counter.get_attribute("class") or ""), what="a red counter")
        assert counter.text == "1001 / 1000"
        assert counter.value_of_css_property("color") == "rgba(239, 83, 80, 1)"
        shot(driver, "1b-new-counter-over")
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", textarea, PUN
        )
        wait_for(driver, lambda d: "over" not in (counter.get_attribute("class") or ""), what="the counter back")

        # Submit, and watch it publish without a reload.
        driver.find_element(By.XPATH, "//button[normalize-space()='Submit Pun']").click()
        status = wait_for(driver, lambda d: d.find_element(By.ID, "submission-status"), what="the status panel")
        wait_for(driver, lambda d: status.text == "published", timeout=60, what="the pun to be published")
        steps = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#submission-steps li")]
        assert "update-status-to-published" in steps
        pun_url = driver.find_element(By.ID, "submission-link").get_attribute("href")
        workflow_url = driver.find_element(By.ID, "submission-workflow").get_attribute("href")
        pun_id = pun_url.rstrip("/").rsplit("/", 1)[-1]
        assert pun_id in workflow_url
        shot(driver, "2-new-published")

        # The workflow link opens a page describing the instance.
        with httpx.Client() as http:
            assert http.get(workflow_url).status_code == 200

        # Find it by meaning, typing like a person (results appear after the debounce).
        driver.get(server.url + "search")
        search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search for a pun...']")
        for char in QUERY:
            search.send_keys(char)
            time.sleep(0.03)
        first = wait_for(
            driver,
            lambda d: (cards := d.find_elements(By.CSS_SELECTOR, "#search-results .pun-card")) and cards[0],
            what="search results",
        )
        assert first.get_attribute("data-pun-id") == pun_id, "the pun is the best match"
        assert PUN_SETUP in first.text
        shot(driver, "3-search")

        # Open it and see similar puns.
        first.find_element(By.CSS_SELECTOR, "a.open").click()
        wait_for(driver, lambda d: d.current_url.endswith(f"/puns/{pun_id}"), what="the pun page")
        assert PUN_SETUP in driver.find_element(By.CSS_SELECTOR, ".pun-full").text
        assert driver.find_element(By.ID, "pun-status").text == "published"
        similar = wait_for(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .pun-card"),
            what="similar puns",
        )
        assert pun_id not in [card.get_attribute("data-pun-id") for card in similar]
        driver.find_element(By.CSS_SELECTOR, ".pun-detail button.like").click()
        wait_for(
            driver,
            lambda d: d.find_element(By.CSS_SELECTOR, ".pun-detail .likes").text == "1",
            what="the like to count",
        )
        shot(driver, "4-pun-similar")

        # My page lists it, and my like.
        driver.get(server.url + "me")
        created = driver.find_element(By.ID, "created")
        assert pun_id in [c.get_attribute("data-pun-id") for c in created.find_elements(By.CSS_SELECTOR, ".pun-card")]
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#liked .pun-card") or d.refresh(), what="my likes")
        shot(driver, "5-me")

        # And the home page shows it among the latest.
        driver.get(server.url)
        latest = driver.find_element(By.ID, "latest").find_elements(By.CSS_SELECTOR, ".pun-card")
        assert latest[0].get_attribute("data-pun-id") == pun_id
        shot(driver, "6-home")
    finally:
        server.stop()


def test_a_fresh_site_has_puns_from_its_first_start(browser: Any, tmp_path: Path) -> None:
    """``python -m punderful`` on a new database (as ``bash run.sh`` starts it): the bundled puns
    are imported through the publish workflow, so the home page, search and Similar Puns have
    content within the first minute, without running the import by hand; the first like puts
    a pun in Trending at once."""
    from selenium.webdriver.common.by import By

    server = ServerProcess(tmp_path / "data", log=tmp_path / "server.log", seed=True)
    try:
        driver = browser
        driver.set_window_size(1280, 1000)
        started = time.monotonic()
        driver.get(server.url)

        def cards(d: Any) -> Any:
            found = d.find_elements(By.CSS_SELECTOR, "#latest .pun-card")
            return found if len(found) >= 10 else d.refresh()

        latest = wait_for(driver, cards, timeout=60, what="puns on the home page")
        assert time.monotonic() - started < 60
        assert not driver.find_elements(By.ID, "latest-empty")
        shot(driver, "7-first-run-home")
        assert "seeding it with the" in server.output()  # the progress is in the log
        first_id = latest[0].get_attribute("data-pun-id")
        assert first_id and first_id.startswith("opun-")

        driver.get(server.url + "search")
        search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search for a pun...']")
        search.send_keys("dairy products")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results .pun-card"), what="search hits")
        shot(driver, "8-first-run-search")

        wait_for(driver, lambda d: "Seeded" in server.output(), timeout=60, what="the seed to finish")
        driver.get(server.url + f"puns/{first_id}")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .pun-card"), what="similar puns")
        shot(driver, "9-first-run-similar")

        # Trending is empty until someone likes a pun; the site's first like fills it at once
        driver.get(server.url)
        assert driver.find_element(By.ID, "trending-empty").is_displayed()
        driver.get(server.url + f"puns/{first_id}")
        driver.find_element(By.CSS_SELECTOR, ".pun-detail button.like").click()
        driver.get(server.url)
        trending = wait_for(
            driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".trending-list li") or d.refresh(), what="trending"
        )
        assert first_id in (trending[0].find_element(By.TAG_NAME, "a").get_attribute("href") or "")
        assert time.monotonic() - started < 60, "the site was not alive within its first minute"
        shot(driver, "10-first-run-trending")
    finally:
        server.stop()


#: Characters drawn as emoji (empty boxes where no colour-emoji font is installed), in the page's
#: text or in a CSS ::before/::after content.
EMOJI_ON_PAGE = r"""
const emoji = /[\p{Extended_Pictographic}\u{FE0F}]/u;
const found = [];
if (emoji.test(document.body.innerText)) found.push(document.body.innerText.match(emoji)[0]);
for (const node of document.querySelectorAll("*")) {
  for (const pseudo of ["::before", "::after"]) {
    const content = getComputedStyle(node, pseudo).content;
    if (content && emoji.test(content)) found.push(`${node.tagName}${pseudo} ${content}`);
  }
}
return found;
"""
FITS = "return [document.documentElement.scrollWidth, window.innerWidth]"


def test_the_pages_fit_a_390_px_phone_and_draw_icons_not_emoji(browser: Any, tmp_path: Path) -> None:
    """At 390 px wide no Punderful page scrolls sideways; the nav, like, open, glove and trending
    icons are inline SVG and the step ticks are drawn in CSS, so no page shows an emoji."""
    from selenium.webdriver.common.by import By

    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, log=tmp_path / "server.log")
    driver = browser
    # not "mobile": a phone's browser would zoom out to fit a too-wide page, hiding the fault
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        seed(data_dir, server.url)

        def check(name: str) -> None:
            scroll_width, inner_width = driver.execute_script(FITS)
            assert inner_width == 390, inner_width
            shot(driver, f"390-{name}")
            assert scroll_width <= inner_width, f"{name} scrolls sideways: {scroll_width} > {inner_width}"
            assert driver.execute_script(EMOJI_ON_PAGE) == [], name
            nav = driver.find_elements(By.CSS_SELECTOR, ".site-header nav a")
            assert nav and all(a.find_elements(By.CSS_SELECTOR, "svg.icon") for a in nav)

        driver.get(server.url)
        cards = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#latest .pun-card"), what="puns")
        assert cards[0].find_elements(By.CSS_SELECTOR, "button.like svg.icon-heart")
        assert cards[0].find_elements(By.CSS_SELECTOR, "a.open svg.icon-link")
        check("home")
        # a like, so that Trending (a heart and a flame) and My page's likes have something
        pun_id = cards[0].get_attribute("data-pun-id")
        driver.get(server.url + f"puns/{pun_id}")
        like = driver.find_element(By.CSS_SELECTOR, ".pun-detail button.like")
        like.click()
        wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".pun-detail .likes").text == "1", what="a like")
        assert "liked" in (like.get_attribute("class") or "")
        assert like.find_element(By.CSS_SELECTOR, "svg").value_of_css_property("fill") == "rgb(229, 57, 53)"
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .pun-card"), what="similar puns")
        driver.find_element(By.CSS_SELECTOR, "#workflow-details summary").click()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#workflow-steps tr"), what="the steps table")
        check("pun")
        driver.get(server.url)  # the site's first like ran the leaderboard
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".trending li") or d.refresh(), what="trending")
        assert driver.find_elements(By.CSS_SELECTOR, "#trending-title svg.icon-flame")
        check("home-trending")

        driver.get(server.url + "search")
        driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search for a pun...']").send_keys("cheese")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results .pun-card"), what="hits")
        check("search")

        driver.get(server.url + "new")
        driver.find_element(By.ID, "pun-input").send_keys(PUN)
        driver.find_element(By.ID, "submit-pun").click()
        status = wait_for(driver, lambda d: d.find_element(By.ID, "submission-status"), what="the status panel")
        wait_for(driver, lambda d: status.text == "published", timeout=60, what="the pun to be published")
        ticks = driver.find_elements(By.CSS_SELECTOR, "#submission-steps li.complete")
        assert ticks
        tick = driver.execute_script(
            "const s = getComputedStyle(arguments[0], '::before'); return [s.content, s.borderRightWidth];", ticks[0]
        )
        assert tick == ['""', "3px"], tick  # the check mark is a CSS border, not a character
        check("new-published")

        driver.get(server.url + "me")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#liked .pun-card") or d.refresh(), what="likes")
        check("me")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        server.stop()
