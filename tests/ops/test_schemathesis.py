"""Property-based check of the API against its own OpenAPI document (schemathesis).

Every operation is exercised with generated requests, valid and invalid, plus the document's
examples (which point at a workflow and an instance that exist, so the happy paths run too).
All of schemathesis's checks run (the equivalent of ``--checks all``): no 5xx ever, every
status code, content type and header documented, every body matches its response schema,
requests that break the schema are refused with a 4xx, and requests that keep to it are
accepted. That last one holds for page cursors too: a cursor is signed by the server, so a
string that merely matches the cursor's pattern is rightly refused; the schema names the
cursor's format (``perdure-cursor``), and this module gives schemathesis cursors the server
issued for it. Examples are bounded so the whole module runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks

from perdure import Engine
from perdure.server.api import create_app
from perdure.server.operations import Operations

from .sample_app import register

_DIR = Path(tempfile.mkdtemp(prefix="perdure-schemathesis-"))
engine = register(Engine(f"sqlite:///{_DIR / 'api.db'}"))


async def _seed() -> list[str]:
    """Instances for the examples, and page cursors the server issued over them."""
    await engine.binding("approval").create(id="example", params={"x": 1})
    await engine.binding("approval").create(id="other")
    await engine.binding("hello").create(id="done")
    await engine.binding("hello").create(id="done-too")
    ops = Operations(engine)
    pages = [await ops.list_instances(name, limit=1) for name in ("approval", "hello")]
    return [page["next_cursor"] for page in pages if page["next_cursor"]]


ISSUED_CURSORS = asyncio.run(_seed())
schemathesis.openapi.format("perdure-cursor", st.sampled_from(ISSUED_CURSORS))
app = create_app(engine, openapi_examples={"workflow": "approval", "instance": "example", "event": "approve"})
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
load_all_checks()
ALL_CHECKS = CHECKS.get_all()


def test_every_check_runs() -> None:
    assert {c.__name__ for c in ALL_CHECKS} >= {"positive_data_acceptance", "negative_data_rejection"}
    assert len(ISSUED_CURSORS) == 2


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=ALL_CHECKS)
