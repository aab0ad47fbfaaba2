"""Retention over REST: ``POST /api/workflows/{name}/instances`` takes ``retention`` as
``create()`` does, the OpenAPI document states it, and what the document calls valid is exactly
what the server accepts (a property over numbers and text, both ways)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema_rs
from hypothesis import given, settings
from hypothesis import strategies as st

from perdure import Engine
from perdure.errors import ValidationError
from perdure.retention import parse_retention
from perdure.server.openapi import _RETENTION
from tests.ops.conftest import wait_status

PATTERN = _RETENTION["anyOf"][1]["pattern"]
VALIDATOR = jsonschema_rs.validator_for(_RETENTION)  # what schemathesis checks bodies with


def accepted(value: Any) -> bool:
    try:
        parse_retention({"success_retention": value})
    except ValidationError:
        return False
    return True


def documented(value: Any) -> bool:
    return bool(VALIDATOR.is_valid(value))


texts = st.one_of(
    st.from_regex(PATTERN, fullmatch=True),
    st.from_regex(r"\A[ 0-9.]{1,70}(days?|seconds?|weeks?|x)?\s*\Z"),
    st.text(max_size=80),
)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**20), max_value=10**400))


@settings(max_examples=400, deadline=None, database=None)
@given(value=st.one_of(texts, numbers))
def test_the_document_states_what_the_server_accepts(value: Any) -> None:
    assert documented(value) == accepted(value), value


def test_edge_values() -> None:
    for value in ("1 day", "0.5 seconds", "01 minute", " 7 weeks ", 1, 1.5, 10**15):
        assert documented(value) and accepted(value), value
    for value in ("0 days", "00.000 hours", ".5 days", "1 fortnight", "x" * 70, 0, 0.5, 5e-324, 10**15 + 1, 10**400):
        assert not documented(value) and not accepted(value), value
    assert re.search(PATTERN, "٣ days") is None and not accepted("٣ days")  # ASCII digits only


async def test_rest_create_takes_a_retention(engine: Engine, client: httpx.AsyncClient) -> None:
    async with engine:
        created = await client.post(
            "/api/workflows/hello/instances",
            json={"id": "kept", "params": {"name": "x"}, "retention": {"success_retention": "1 day"}},
        )
        assert created.status_code == 201, created.text
        await wait_status(client, "hello", "kept", "complete")
        record = await (await engine.ensure_store()).get_instance("hello", "kept")
        assert record is not None
        for retention, says in (
            ({"success_retention": "0 days"}, "success_retention"),
            ({"error_retention": 0.5}, "between 1 and"),
            ({"error_retention": 10**400}, "between 1 and"),  # too large for a float: was a 500
            ({"forever": "1 day"}, "unknown key"),
            ("1 day", "mapping"),
        ):
            bad = await client.post("/api/workflows/hello/instances", json={"id": "bad", "retention": retention})
            assert bad.status_code == 400 and says in bad.text, (retention, bad.text)
        assert (await client.get("/api/workflows/hello/instances/bad")).status_code == 404
