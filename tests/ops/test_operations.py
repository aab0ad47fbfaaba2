"""The pure views: ISO times, step views, the Cloudflare event history, cursors, input checks."""

from __future__ import annotations

import pytest

from perdure.records import InstanceRecord, StepRecord
from perdure.server.operations import (
    check_limit,
    check_status,
    decode_cursor,
    encode_cursor,
    event_history,
    instance_detail,
    iso,
    step_view,
)
from perdure.validators import from_step

T = 1_700_000_000.0


def record(**fields: object) -> InstanceRecord:
    base: dict[str, object] = dict(
        pk=1, workflow="wf", id="i", status="complete", params={}, trigger="api", created_at=T
    )
    base.update(fields)
    return InstanceRecord(**base)  # type: ignore[arg-type]


def test_iso_is_utc_with_milliseconds() -> None:
    assert iso(T + 0.1234) == "2023-11-14T22:13:20.123Z"
    assert iso(None) is None


def test_history_merges_steps_and_instance_events_in_time_order() -> None:
    boom = {"name": "ValueError", "message": "boom", "module": "builtins", "qualname": "ValueError"}
    steps = [
        StepRecord(
            "do",
            "fetch",
            1,
            "complete",
            T + 1,
            attempts=[
                {"start": T + 1, "end": T + 2, "error": boom},
                {"start": T + 4, "end": T + 5, "error": None},
            ],
            ended_at=T + 5,
            result={"ok": True},
        ),  # fmt: skip
        StepRecord("sleep", "nap", 1, "complete", T + 5, config={"duration": 10}, ended_at=T + 15),
        StepRecord(
            "waitForEvent",
            "approval",
            1,
            "failed",
            T + 15,
            ended_at=T + 20,
            error={"name": "EventTimeoutError", "message": "timed out"},
        ),  # fmt: skip
        StepRecord(
            "do",
            "cleanup",
            1,
            "failed",
            T + 20,
            attempts=[{"start": T + 20, "end": T + 21, "error": boom}],
            ended_at=T + 21,
            error=boom,
        ),  # fmt: skip
    ]
    history = [
        {"type": "WORKFLOW_QUEUED", "timestamp": T, "data": {"trigger": "api"}},
        {"type": "WORKFLOW_START", "timestamp": T + 1, "data": None},
        {"type": "WORKFLOW_FAILURE", "timestamp": T + 21, "data": {"error": boom}},
    ]
    events = event_history(record(status="errored"), steps, history)
    assert [e["type"] for e in events] == [
        "WORKFLOW_QUEUED", "WORKFLOW_START", "STEP_START", "ATTEMPT_START", "ATTEMPT_FAILURE", "ATTEMPT_START",
        "ATTEMPT_SUCCESS", "STEP_SUCCESS", "SLEEP_START", "SLEEP_COMPLETE", "WAIT_START", "WAIT_TIMED_OUT",
        "STEP_START", "ATTEMPT_START", "ATTEMPT_FAILURE", "STEP_FAILURE", "WORKFLOW_FAILURE",
    ]  # fmt: skip
    assert events[0]["trigger"] == "api"
    assert events[4]["error"] == {"name": "ValueError", "message": "boom"} and events[4]["attempt"] == 1
    assert events[2]["step"] == {"name": "fetch", "count": 1, "type": "step"}
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps)

    detail = instance_detail(record(status="errored", started_at=T + 1, ended_at=T + 21), steps, history)
    assert detail["last_successful_step"] == "fetch-1" and detail["duration_ms"] == 20_000
    assert [s["status"] for s in detail["steps"]] == ["complete", "complete", "timedOut", "failed"]


def test_step_view_shapes() -> None:
    sleeping = step_view(StepRecord("sleep", "nap", 2, "waiting", T, config={"duration": 5}, wake_at=T + 5))
    assert sleeping["type"] == "sleep" and sleeping["label"] == "nap-2" and sleeping["status"] == "sleeping"
    assert sleeping["attempts"] == [] and sleeping["wake_at"] == iso(T + 5) and sleeping["success"] is None
    running = step_view(StepRecord("do", "s", 1, "running", T, attempts=[{"start": T, "end": None, "error": None}]))
    assert running["attempts"][0]["success"] is None and running["duration_ms"] is None
    hidden = step_view(StepRecord("do", "s", 1, "complete", T, ended_at=T + 1, result=[1]), include_output=False)
    assert hidden["output"] is None


def test_a_queued_record_without_history_still_shows_queued() -> None:
    assert [e["type"] for e in event_history(record(status="queued"), [], [])] == ["WORKFLOW_QUEUED"]


def test_cursors_and_checks() -> None:
    token = encode_cursor("12345")
    assert token is not None and decode_cursor(token) == "12345"
    assert encode_cursor(None) is None and decode_cursor(None) is None and decode_cursor("") is None
    for bad in ("!!", "a", "x" * 401):
        with pytest.raises(ValueError):
            decode_cursor(bad)
    assert check_limit(None) == 50 and check_limit("1000") == 1000
    for bad_limit in ("", "0", "1001", "1.5", "x"):
        with pytest.raises(ValueError):
            check_limit(bad_limit)
    assert check_status(None) is None and check_status("waitingForPause") == "waitingForPause"
    with pytest.raises(ValueError):
        check_status("")
    assert from_step({"name": "a", "type": "step"}) == ("do", "a", 1)
    for bad_step in ([], {"name": ""}, {"name": "a", "count": 0}, {"name": "a", "type": {}}, {"name": "a", "x": 1}):
        with pytest.raises(ValueError):
            from_step(bad_step)
