"""Property-based check of the API against its own OpenAPI document (schemathesis).

Every operation is exercised with generated requests, valid and invalid, plus the document's
examples (which point at a workflow and an instance that exist, so the happy paths run too).
The checks: no 5xx ever, every status code and content type documented, every body matches its
response schema, and requests that break the schema are refused with a 4xx. Examples are
bounded so the whole module runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from perdure import Engine
from perdure.server.api import create_app

from .sample_app import register

_DIR = Path(tempfile.mkdtemp(prefix="perdure-schemathesis-"))
engine = register(Engine(f"sqlite:///{_DIR / 'api.db'}"))


async def _seed() -> None:
    await engine.binding("approval").create(id="example", params={"x": 1})
    await engine.binding("hello").create(id="done")


asyncio.run(_seed())
app = create_app(engine, openapi_examples={"workflow": "approval", "instance": "example", "event": "approve"})
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    # A cursor is any string by schema, but only those the server issued can be used: a made-up
    # one is refused with 400 validation_error, which the "valid data is accepted" check flags.
    forged_cursor = bool(case.query and case.query.get("cursor"))
    case.call_and_validate(excluded_checks=[positive_data_acceptance] if forged_cursor else None)
