"""The puntificator's judge-pun step, end to end (issue 14 item 1, Verify): accept and reject,
with the offline local judge and with an LLM judge behind the OpenAI-compatible stand-in server
(a test double: real HTTP, answers the test sets). The instance ends ``complete`` when the
judge accepts and ``errored`` with the judge's reason when it rejects, and the Perdure
dashboard's instance page shows that reason.

Which parts already had tests (tests/test_app_workflows.py): the offline reject (errored, the
reason), the offline accept run to ``complete`` (with a fixed-pun writer test double), the LLM
reject (errored, the reason) and the LLM accept up to the publish. Added here: the LLM accept
run to ``complete``, and the dashboard page of each rejected instance.
"""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path

import httpx
from perdure import Instance

from punderful.app import Punderful
from punderful.workflows import puntificator_pun_id
from tests.conftest import OpenAIStandIn
from tests.test_app_helpers import (
    CHEESE,
    GUITAR,
    JumpingClock,
    client_for,
    make_config,
    publish_all,
    running,
    wait_done,
)
from tests.test_app_workflows import NEW_PUN

_ERROR_RE = re.compile(r'<p class="flash error" id="instance-error">(.*?)</p>', re.S)


async def dashboard_error(app: Punderful, http: httpx.AsyncClient, workflow: str, instance_id: str) -> str:
    """The error paragraph of the instance's page in the Perdure dashboard, as text."""
    assert app.perdure_mount is not None
    page = await http.get(f"{app.perdure_mount}/dashboard/workflows/{workflow}/instances/{instance_id}")
    assert page.status_code == 200
    found = _ERROR_RE.search(page.text)
    assert found, "the instance page shows no error"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1)))


async def until_status(instance: Instance, status: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        if (await instance.status())["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance never became {status!r}: {await instance.status()}")


async def until_step(app: Punderful, instance: Instance, name: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        if any(s.name == name for s in await app.engine.store.load_steps(instance.pk)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {name!r} never started")


async def test_the_offline_judges_rejection_is_on_the_dashboard(tmp_path: Path) -> None:
    # With one published pun the offline writer can only rerun it ("Remember this one? ..."),
    # which the local judge rejects as a near-copy.
    async with running(make_config(tmp_path)) as app, client_for(app) as http:
        await publish_all(app, http, [CHEESE])
        status = await (await app.bindings["puntificator"].create(id="punt-offline")).wait(timeout=60)
        assert status["status"] == "errored", status
        reason = status["error"]["message"]
        assert "near-copy" in reason
        shown = await dashboard_error(app, http, "puntificator", "punt-offline")
        assert shown == f"NonRetryableError: {reason}"


async def test_the_llm_judge_accepts_to_complete_and_rejects_to_errored_with_its_reason(
    tmp_path: Path, openai_standin: OpenAIStandIn
) -> None:
    config = make_config(tmp_path).with_(
        llm_base_url=openai_standin.base_url, llm_model="stand-in", llm_api_key="test-key"
    )
    openai_standin.chat_reply = NEW_PUN  # the writer's answer
    clock = JumpingClock()
    async with running(config, clock=clock) as app, client_for(app) as http:
        await publish_all(app, http, [CHEESE, GUITAR])

        # reject: the rating is below 8, the instance ends errored with the judge's feedback
        openai_standin.tool_arguments = {"rating": 5, "explanation": "flat", "feedback": "Land the space pun."}
        rejected = await (await app.bindings["puntificator"].create(id="punt-llm-low")).wait(timeout=60)
        assert rejected["status"] == "errored", rejected
        assert rejected["error"]["name"] == "NonRetryableError"
        reason = rejected["error"]["message"]
        assert "Rating was 5" in reason and "Land the space pun." in reason
        assert app.services.db.get_pun(puntificator_pun_id("punt-llm-low")) is None  # never saved
        assert await dashboard_error(app, http, "puntificator", "punt-llm-low") == f"NonRetryableError: {reason}"

        # accept: 8 is enough; the pun is saved, published, and the instance runs to complete
        openai_standin.tool_arguments = {"rating": 8, "explanation": "space / rise", "feedback": ""}
        run = await app.bindings["puntificator"].create(id="punt-llm-ok")
        await until_step(app, run, "wait-for-publish")
        await until_status(run, "waiting")  # the 30-second wait for the publish
        assert (await wait_done(app, "publish", puntificator_pun_id("punt-llm-ok")))["status"] == "complete"
        clock.advance(31)
        await until_step(app, run, "wait-to-see-feedback")
        await until_status(run, "waiting")  # the day-long wait for feedback
        clock.advance(24 * 3600 + 1)
        accepted = await run.wait(timeout=60)
        assert accepted["status"] == "complete", accepted
        assert accepted["output"]["rating"] == 8 and accepted["output"]["pun"] == NEW_PUN
        pun = app.services.db.get_pun(puntificator_pun_id("punt-llm-ok"))
        assert pun is not None and pun.status == "published" and pun.creator == "puntificator"
        page = await http.get(f"{app.perdure_mount}/dashboard/workflows/puntificator/instances/punt-llm-ok")
        assert 'id="instance-status">complete<' in page.text and 'id="instance-error"' not in page.text
