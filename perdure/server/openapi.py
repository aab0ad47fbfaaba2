"""The OpenAPI 3.1 document of the REST API, written by hand so it says exactly what the
server does (the test suite checks the server against it with schemathesis).

:func:`openapi_document` builds it; ``GET /openapi.json`` serves it. Every error response
has the same body, ``{"error": {"code", "message"}}``; :data:`ERROR_CODES` lists the codes.
"""

from __future__ import annotations

from typing import Any

from ..flow import KEY_CONTROL, MAX_KEY_LENGTH, MAX_PRIORITY
from ..records import STATUSES
from ..retention import MAX_RETENTION_MS, MAX_RETENTION_TEXT, MIN_RETENTION_MS
from ..validators import MAX_BATCH, MAX_EVENT_TYPE, MAX_INSTANCE_ID, MAX_STEP_NAME, MAX_WORKFLOW_NAME
from .operations import CURSOR_MAX_LENGTH, CURSOR_PATTERN, MAX_LIST_LIMIT

#: Every ``error.code`` the API returns, with its HTTP status.
ERROR_CODES: dict[str, int] = {
    "invalid_json": 400,
    "validation_error": 400,
    "unauthorized": 401,
    "forbidden_origin": 403,
    "not_found": 404,
    "workflow_not_found": 404,
    "instance_not_found": 404,
    "step_not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "instance_exists": 409,
    "invalid_state": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "too_many_requests": 429,
    "internal_error": 500,
}

ID_PATTERN = "^[a-zA-Z0-9_][a-zA-Z0-9_-]*$"
ID_PREFIX_PATTERN = "^[a-zA-Z0-9_-]*$"
STEP_NAME_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # no control characters
HISTORY_TYPES = [
    "WORKFLOW_QUEUED",
    "WORKFLOW_START",
    "WORKFLOW_SUCCESS",
    "WORKFLOW_FAILURE",
    "WORKFLOW_TERMINATED",
    "WORKFLOW_PAUSED",
    "STEP_START",
    "STEP_SUCCESS",
    "STEP_FAILURE",
    "ATTEMPT_START",
    "ATTEMPT_SUCCESS",
    "ATTEMPT_FAILURE",
    "SLEEP_START",
    "SLEEP_COMPLETE",
    "WAIT_START",
    "WAIT_COMPLETE",
    "WAIT_TIMED_OUT",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_TIME = {"type": "string", "format": "date-time"}
#: A page cursor as the server issues it (``next_cursor``): opaque, signed by the server.
CURSOR = {
    "type": "string",
    "format": "perdure-cursor",
    "pattern": CURSOR_PATTERN,
    "maxLength": CURSOR_MAX_LENGTH,
    "description": "an opaque page cursor: `<position>.<signature>` in base64url, signed by the server with a "
    "key of its database (any server on the same database accepts it)",
}
#: The ``cursor`` parameter: only a cursor a server issued is accepted, however well formed
#: another string is, so the parameter names the format rather than a pattern a client (or a
#: schema-driven test tool) could fill in; tools that can make real cursors use the format.
CURSOR_PARAMETER = {
    "type": "string",
    "format": "perdure-cursor",
}
_MS = {"type": "integer", "minimum": 0}


# A retention, as perdure.retention accepts it: milliseconds in [1, MAX_RETENTION_MS], or
# "<n> <unit>" with n > 0 (the pattern has no lookahead: a non-zero integer part, or a zero one
# with a non-zero digit after the point), ASCII digits and spaces, at most MAX_RETENTION_TEXT long.
_SPACE = r"[ \t\n\r\f\v]"
_RETENTION = {
    "anyOf": [
        {"type": "number", "minimum": MIN_RETENTION_MS, "maximum": MAX_RETENTION_MS, "description": "milliseconds"},
        {
            "type": "string",
            "maxLength": MAX_RETENTION_TEXT,
            "pattern": f"^{_SPACE}*(0*[1-9][0-9]*(\\.[0-9]+)?|0+\\.[0-9]*[1-9][0-9]*){_SPACE}+"
            f"(second|minute|hour|day|week|month|year)s?{_SPACE}*$",
            "description": "'<n> <unit>', e.g. '7 days'",
        },
    ]
}


def _schemas() -> dict[str, Any]:
    error_info = {
        "type": "object",
        "required": ["name", "message"],
        "properties": {"name": {"type": "string"}, "message": {"type": "string"}},
    }
    summary_props: dict[str, Any] = {
        "id": {"type": "string"},
        "workflow": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "trigger": {"type": "object", "required": ["source"], "properties": {"source": {"type": "string"}}},
        "queued": _TIME,
        "start": _nullable(_TIME),
        "end": _nullable(_TIME),
        "duration_ms": _nullable(_MS),
        "error": _nullable(_ref("ErrorInfo")),
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        "concurrency_key": _nullable({"type": "string"}),
    }
    step_ref = {
        "type": "object",
        "required": ["name", "count", "type"],
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer"},
            "type": {"type": "string", "enum": ["step", "sleep", "waitForEvent"]},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": list(ERROR_CODES)},
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "ErrorInfo": error_info,
        "Workflow": {
            "type": "object",
            "required": [
                "name",
                "registered",
                "class_name",
                "schedules",
                "step_limit",
                "last_registered_at",
                "instances",
                "total",
                "flow",
                "queued_by_reason",
            ],  # fmt: skip
            "properties": {
                "name": {"type": "string"},
                "registered": {
                    "type": "boolean",
                    "description": "registered on this server's engine (class_name, schedules and step_limit are then "
                    "its own; otherwise those of the last engine that started with it on this database)",
                },
                "class_name": _nullable({"type": "string"}),
                "schedules": {"type": "array", "items": {"type": "string"}},
                "step_limit": _nullable({"type": "integer"}),
                "last_registered_at": _nullable(
                    {
                        "type": "string",
                        "format": "date-time",
                        "description": "when an engine last started with it on this database (null: never)",
                    }
                ),
                "instances": {
                    "type": "object",
                    "description": "number of instances by status (statuses with none are left out)",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
                "total": {"type": "integer", "minimum": 0},
                "flow": _nullable(
                    {
                        "type": "object",
                        "description": "its flow control as registered: concurrency, concurrency_per_key,"
                        " rate_limit {limit, period (seconds)}",
                        "properties": {
                            "concurrency": {"type": "integer", "minimum": 1},
                            "concurrency_per_key": {"type": "integer", "minimum": 1},
                            "rate_limit": {
                                "type": "object",
                                "properties": {"limit": {"type": "integer"}, "period": {"type": "number"}},
                            },
                        },
                    }
                ),
                "queued_by_reason": {
                    "type": "object",
                    "description": "why its queued instances wait, by reason: concurrency (the workflow's limit"
                    " is reached), concurrency_key (their key's is), rate_limit (the start rate limit's window"
                    " is full), ready (the next claim takes them)",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
            },
        },
        "WorkflowList": {
            "type": "object",
            "required": ["workflows"],
            "properties": {"workflows": {"type": "array", "items": _ref("Workflow")}},
        },
        "InstanceSummary": {"type": "object", "required": list(summary_props), "properties": summary_props},
        "InstanceList": {
            "type": "object",
            "required": ["instances", "next_cursor"],
            "properties": {
                "instances": {"type": "array", "items": _ref("InstanceSummary")},
                "next_cursor": _nullable(CURSOR),
            },
        },
        "BatchCreated": {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": {"type": "array", "items": _ref("InstanceSummary")}},
        },
        "DeleteBatch": {
            "type": "object",
            "required": ["ids"],
            "additionalProperties": False,
            "properties": {
                "ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_INSTANCE_ID, "pattern": ID_PATTERN},
                }
            },
        },
        "BatchDeleted": {
            "type": "object",
            "required": ["deleted", "errors"],
            "description": "Cloudflare's deleteBatch result: code 10400 for an unknown id",
            "properties": {
                "deleted": {
                    "type": "array",
                    "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                },
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "code", "message"],
                        "properties": {
                            "id": {"type": "string"},
                            "code": {"type": "integer"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Deleted": {
            "type": "object",
            "required": ["id", "workflow", "deleted"],
            "properties": {
                "id": {"type": "string"},
                "workflow": {"type": "string"},
                "deleted": {"type": "boolean", "const": True},
            },
        },
        "Attempt": {
            "type": "object",
            "required": ["start", "end", "duration_ms", "success", "error"],
            "properties": {
                "start": _nullable(_TIME),
                "end": _nullable(_TIME),
                "duration_ms": _nullable(_MS),
                "success": _nullable({"type": "boolean"}),
                "error": _nullable(_ref("ErrorInfo")),
            },
        },
        "Step": {
            "type": "object",
            "required": [
                "type",
                "name",
                "count",
                "label",
                "status",
                "success",
                "start",
                "end",
                "duration_ms",
                "wake_at",
                "attempts",
                "output",
                "error",
                "config",
            ],  # fmt: skip
            "properties": {
                "type": {"type": "string", "enum": ["step", "sleep", "waitForEvent"]},
                "name": {"type": "string"},
                "count": {"type": "integer", "minimum": 1},
                "label": {"type": "string", "description": "<name>-<count>"},
                "status": {
                    "type": "string",
                    "enum": ["running", "retrying", "waiting", "sleeping", "complete", "failed", "timedOut"],
                },
                "success": _nullable({"type": "boolean"}),
                "start": _nullable(_TIME),
                "end": _nullable(_TIME),
                "duration_ms": _nullable(_MS),
                "wake_at": _nullable(_TIME),
                "attempts": {"type": "array", "items": _ref("Attempt")},
                "output": {"description": "the step's result (any JSON value)"},
                "error": _nullable(_ref("ErrorInfo")),
                "config": _nullable({"type": "object"}),
            },
        },
        "HistoryEvent": {
            "type": "object",
            "required": ["type", "timestamp"],
            "properties": {
                "type": {"type": "string", "enum": HISTORY_TYPES},
                "timestamp": _nullable(_TIME),
                "step": step_ref,
                "attempt": {"type": "integer", "minimum": 1},
                "trigger": {"type": "string"},
                "error": _ref("ErrorInfo"),
            },
        },
        "InstanceDetail": {
            "allOf": [
                _ref("InstanceSummary"),
                {
                    "type": "object",
                    "required": [
                        "params",
                        "schedule",
                        "wake_at",
                        "success",
                        "output",
                        "last_successful_step",
                        "steps",
                        "history",
                    ],  # fmt: skip
                    "properties": {
                        "params": {"description": "the create params (any JSON value)"},
                        "schedule": _nullable({"type": "object"}),
                        "wake_at": _nullable(_TIME),
                        "success": _nullable({"type": "boolean"}),
                        "output": {"description": "run()'s return value once complete (any JSON value)"},
                        "last_successful_step": _nullable({"type": "string"}),
                        "steps": {"type": "array", "items": _ref("Step")},
                        "history": {"type": "array", "items": _ref("HistoryEvent")},
                    },
                },
            ]
        },
        "CreateInstance": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "id": _nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_INSTANCE_ID,
                        "pattern": ID_PATTERN,
                        "description": "instance id; absent or null: a random UUID",
                    }
                ),
                "params": {"description": "any JSON value, at most 1 MiB encoded; absent or null: {}"},
                "retention": _nullable(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "description": "how long the instance is kept once it ends: after success, after an"
                        " error or termination (absent: kept for ever, or the workflow's register(retention=))",
                        "properties": {key: _nullable(_RETENTION) for key in ("success_retention", "error_retention")},
                    }
                ),
                "concurrency_key": _nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_KEY_LENGTH,
                        "pattern": f"^[^{KEY_CONTROL}]+$",
                        "description": "the key it counts under for the workflow's concurrency_per_key",
                    }
                ),
                "priority": _nullable(
                    {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_PRIORITY,
                        "description": "lower runs first among queued instances of the workflow (default 0)",
                    }
                ),
            },
        },
        "StatusChange": {
            "description": "pause or resume; terminate, optionally running the rollback handlers first;"
            " or restart, optionally from a step",
            "anyOf": [
                {
                    "type": "object",
                    "required": ["status"],
                    "additionalProperties": False,
                    "properties": {"status": {"type": "string", "enum": ["pause", "resume"]}},
                },
                {
                    "type": "object",
                    "required": ["status"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"type": "string", "enum": ["terminate"]},
                        "rollback": {
                            "type": "boolean",
                            "description": "run the rollback handlers of the finished steps (newest first) before"
                            " the instance ends terminated (Cloudflare's terminate({rollback: true}))",
                        },
                    },
                },
                {
                    "type": "object",
                    "required": ["status"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"type": "string", "enum": ["restart"]},
                        "from_step": _nullable(
                            {
                                "type": "object",
                                "description": "keep the results of the steps before this one (null: from the start)",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": MAX_STEP_NAME,
                                        "pattern": STEP_NAME_PATTERN,
                                    },
                                    "count": {"type": "integer", "minimum": 1},
                                    "type": {"type": "string", "enum": ["do", "sleep", "waitForEvent"]},
                                },
                            }
                        ),
                    },
                },
            ],
        },
        "EventAccepted": {
            "type": "object",
            "required": ["id", "workflow", "type"],
            "properties": {"id": {"type": "string"}, "workflow": {"type": "string"}, "type": {"type": "string"}},
        },
        "Health": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    texts = {
        400: "invalid_json or validation_error: the message says what was wrong",
        401: "unauthorized: a bearer token is required and was missing or wrong",
        403: "forbidden_origin: a state-changing request from another web origin or an opaque (null) one",
        404: "workflow_not_found, instance_not_found, step_not_found (restart from_step) or not_found",
        405: "method_not_allowed",
        408: "request_timeout: the body did not arrive in time (30 s by default)",
        409: "instance_exists or invalid_state",
        413: "payload_too_large: the body is over the limit (1 MiB plus a small margin)",
        415: "unsupported_media_type: a body sent without a JSON Content-Type (application/json or application/*+json)",
        429: "too_many_requests: too many wrong tokens from this address; see Retry-After",
    }
    responses = dict(ok)
    for code in (400, 401, 403, 404, 405, 429, *codes):
        responses[str(code)] = _error(texts[code])
    return responses


def _param(name: str, where: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
        **extra,
    }


_NAME = _param(
    "name",
    "path",
    {"type": "string", "minLength": 1, "maxLength": MAX_WORKFLOW_NAME, "pattern": ID_PATTERN},
    "workflow name",
)
_ID = _param(
    "id",
    "path",
    {"type": "string", "minLength": 1, "maxLength": MAX_INSTANCE_ID, "pattern": ID_PATTERN},
    "instance id; `latest` names the newest instance unless one has that id",
)
_TYPE = _param(
    "type",
    "path",
    {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_TYPE, "pattern": ID_PATTERN},
    "event type (matches the `wait_for_event` type)",
)


def openapi_document(*, examples: dict[str, str] | None = None) -> dict[str, Any]:
    """The document. ``examples`` may give a real ``workflow`` / ``instance`` for the path
    parameters' examples (the test suite points them at instances that exist)."""
    name, ident, event = dict(_NAME), dict(_ID), dict(_TYPE)
    if examples:
        if "workflow" in examples:
            name["example"] = examples["workflow"]
        if "instance" in examples:
            ident["example"] = examples["instance"]
        if "event" in examples:
            event["example"] = examples["event"]
    instance_path = "/api/workflows/{name}/instances/{id}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Perdure",
            "version": "1",
            "description": "Durable workflows: trigger, inspect and control instances. Errors are "
            '`{"error": {"code", "message"}}` with a 4xx status.',
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness (needs no token)",
                    "responses": {**_ok("the server is up", "Health"), "405": _error("method_not_allowed")},
                }
            },
            "/api/workflows": {
                "get": {
                    "operationId": "listWorkflows",
                    "summary": "Workflows with their instance counts by status",
                    "responses": _responses(
                        _ok(
                            "workflows registered here or by any engine on the database, and those with instances",
                            "WorkflowList",
                        )
                    ),
                }
            },
            "/api/workflows/{name}": {
                "get": {
                    "operationId": "describeWorkflow",
                    "parameters": [name],
                    "responses": _responses(_ok("the workflow", "Workflow")),
                }
            },
            "/api/workflows/{name}/instances": {
                "get": {
                    "operationId": "listInstances",
                    "summary": "Instances, newest first, with cursor pagination",
                    "parameters": [
                        name,
                        _param("status", "query", {"type": "string", "enum": list(STATUSES)}, "only this status"),
                        _param(
                            "cursor",
                            "query",
                            CURSOR_PARAMETER,
                            "`next_cursor` of the previous page, as it was issued (`<position>.<signature>`, "
                            f"base64url, at most {CURSOR_MAX_LENGTH} characters); any other string is refused with 400 "
                            "validation_error",
                        ),
                        _param(
                            "id_prefix",
                            "query",
                            {"type": "string", "maxLength": MAX_INSTANCE_ID, "pattern": ID_PREFIX_PATTERN},
                            "only instances whose id starts with this (case-sensitive, no wildcards; empty: all)",
                        ),
                        _param(
                            "limit",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 50},
                            "page size",
                        ),
                    ],
                    "responses": _responses(_ok("one page", "InstanceList")),
                },
                "post": {
                    "operationId": "createInstances",
                    "summary": "Create an instance (an object) or a batch (a list of 1-100 objects)",
                    "description": "A batch skips ids that already exist and returns the instances it created.",
                    "parameters": [name],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        _ref("CreateInstance"),
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH,
                                            "items": _ref("CreateInstance"),
                                        },
                                        {"type": "null", "description": "same as an empty body: {}"},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": _responses(
                        {
                            "201": {
                                "description": "created: one instance's summary, or {instances: [...]} for a batch",
                                "content": {
                                    "application/json": {
                                        "schema": {"anyOf": [_ref("InstanceSummary"), _ref("BatchCreated")]}
                                    }
                                },
                            }
                        },
                        408,
                        409,
                        413,
                        415,
                    ),
                },
                "delete": {
                    "operationId": "deleteInstances",
                    "summary": "Delete 1-100 instances with their steps, events and history (unfinished ones are "
                    "terminated first); Cloudflare's deleteBatch",
                    "parameters": [name],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DeleteBatch")}}},
                    "responses": _responses(
                        _ok("what was deleted, and why the rest was not", "BatchDeleted"), 408, 413, 415
                    ),
                },
            },
            instance_path: {
                "get": {
                    "operationId": "describeInstance",
                    "summary": "Status, params, trigger, times, output, error, steps and event history",
                    "parameters": [name, ident],
                    "responses": _responses(_ok("the instance", "InstanceDetail")),
                },
                "delete": {
                    "operationId": "deleteInstance",
                    "summary": "Delete the instance with its steps, events and history"
                    " (terminated first if unfinished)",
                    "parameters": [name, ident],
                    "responses": _responses(_ok("deleted", "Deleted")),
                },
            },
            instance_path + "/status": {
                "patch": {
                    "operationId": "changeInstanceStatus",
                    "summary": "pause, resume, terminate or restart (optionally from a step)",
                    "parameters": [name, ident],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("StatusChange")}},
                    },
                    "responses": _responses(
                        _ok("the instance after the change", "InstanceSummary"), 408, 409, 413, 415
                    ),
                }
            },
            instance_path + "/events/{type}": {
                "post": {
                    "operationId": "sendEvent",
                    "summary": "Send an event; the body is its payload (any JSON value, empty means null)",
                    "parameters": [name, ident, event],
                    "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}},
                    "responses": _responses(
                        _ok("stored; delivered now or later", "EventAccepted", "202"), 408, 409, 413, 415
                    ),
                }
            },
        },
    }
