"""The REST API (SPEC §4), the metrics endpoint and the dashboard, as one Starlette app.

``create_app(engine)`` returns an ASGI app; serve it with ``perdure serve APP`` or mount it
in your own (``Mount("/perdure", app=create_app(engine))``: links follow the mount point).
The app does not start workers: it reads and writes the store, and workers (``perdure
worker``, ``perdure dev``, or ``async with engine`` elsewhere) run the instances.

Every failure is a JSON body ``{"error": {"code", "message"}}`` with a 4xx status (see
:data:`perdure.server.openapi.ERROR_CODES`). Before any endpoint, :class:`~.guard.Guard`
checks the host, the origin, the body's size and time, and the token (see
:mod:`perdure.server.guard`); :class:`~.headers.SecurityHeaders` puts the browser security
headers on every response (no framing, a strict Content-Security-Policy, see
:mod:`perdure.server.headers`). An endpoint that reads a JSON body wants it sent with a JSON
content type (``application/json`` or ``application/*+json``): anything else is 415
``unsupported_media_type``, since a web page can post ``text/plain`` anywhere without asking.
Both stay importable from here (``from perdure.server.api import Guard``) for applications
that wrap their own app.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import BaseRoute, Route
except ModuleNotFoundError as exc:  # one line naming the extra, not a traceback
    from .._optional import missing_extra

    raise missing_extra("server", "the REST API, dashboard and metrics (perdure.server)", exc.name) from None

from ..errors import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    ValidationError,
    WorkflowNotFoundError,
)
from .auth import LoginThrottle, Sessions
from .guard import BODY_TIMEOUT, MAX_BODY_BYTES, Guard, error_response, route_path
from .headers import SecurityHeaders
from .metrics import Metrics
from .openapi import openapi_document
from .operations import Operations, StepNotFoundError

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("perdure.api")

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "Guard",
    "SecurityHeaders",
    "api_error",
    "create_app",
    "error_response",
    "route_path",
]


class ApiError(Exception):
    """An error response: ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def api_error(exc: Exception) -> ApiError:
    """Map Perdure's exceptions to API errors."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, WorkflowNotFoundError):
        return ApiError(404, "workflow_not_found", str(exc))
    if isinstance(exc, StepNotFoundError):
        return ApiError(404, "step_not_found", str(exc))
    if isinstance(exc, InstanceNotFoundError):
        return ApiError(404, "instance_not_found", str(exc))
    if isinstance(exc, InstanceAlreadyExistsError):
        return ApiError(409, "instance_exists", str(exc))
    if isinstance(exc, InvalidStateError):
        return ApiError(409, "invalid_state", str(exc))
    if isinstance(exc, ValidationError):
        return ApiError(400, "validation_error", str(exc))
    raise exc


# -- request helpers ------------------------------------------------------------------------------
_ABSENT = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names JSON: ``application/json`` or ``application/*+json``
    (parameters such as ``charset`` aside)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, slash, subtype = media.partition("/")
    return kind == "application" and bool(slash) and (subtype == "json" or subtype.endswith("+json"))


async def read_json(request: Request, *, required: bool) -> Any:
    """The body as JSON; ``_ABSENT`` for an empty optional body.

    A body needs a JSON content type: a browser may send ``text/plain`` (or a form) to any
    site without asking first, so accepting those would let a page elsewhere write here."""
    body = await request.body()
    if not body.strip():
        if required:
            raise ApiError(400, "invalid_json", "the request body must be a JSON document")
        return _ABSENT
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be sent as Content-Type application/json (or application/*+json); this request has {sent}",
        )
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
        # "\ud800" alone parses, but is no Unicode text: no store (nor a UTF-8 response) takes it
        raise ApiError(
            400, "invalid_json", "the request body has a string with a lone surrogate escape (\\ud800-\\udfff)"
        )
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # pairs too: then look closer


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (a key or a value, at any depth) is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _ops(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def _endpoint(
    fn: Callable[[Request, Operations], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request, _ops(request))
        except Exception as exc:
            error = api_error(exc)
            return error_response(error.status, error.code, error.message, error.headers)

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


# -- endpoints ------------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


@_endpoint
async def list_workflows(request: Request, ops: Operations) -> Response:
    return JSONResponse({"workflows": await ops.list_workflows()})


@_endpoint
async def describe_workflow(request: Request, ops: Operations) -> Response:
    return JSONResponse(await ops.describe_workflow(request.path_params["name"]))


@_endpoint
async def instances(request: Request, ops: Operations) -> Response:
    name = request.path_params["name"]
    if request.method == "DELETE":  # {"ids": [...]}: Cloudflare's deleteBatch
        body = await read_json(request, required=True)
        if not isinstance(body, dict) or set(body) != {"ids"}:
            raise ValidationError('the body must be an object {"ids": [1-100 instance ids]}')
        return JSONResponse(await ops.delete(name, body["ids"]))
    if request.method == "POST":
        body = await read_json(request, required=False)
        created = await ops.create(name, None if body is _ABSENT else body, trigger="api")
        return JSONResponse(created if isinstance(created, dict) else {"instances": created}, status_code=201)
    query = request.query_params
    page = await ops.list_instances(
        name,
        status=query.get("status"),
        cursor=query.get("cursor"),
        limit=query.get("limit"),
        id_prefix=query.get("id_prefix"),
    )
    return JSONResponse(page)


@_endpoint
async def describe_instance(request: Request, ops: Operations) -> Response:
    name, instance_id = request.path_params["name"], request.path_params["id"]
    if request.method == "DELETE":
        await ops.get_record(name, instance_id)  # unknown: 404 instance_not_found
        result = await ops.delete(name, [instance_id])
        if result["errors"]:
            raise InstanceNotFoundError(f"instance {instance_id!r} of workflow {name!r} could not be deleted")
        return JSONResponse({"id": instance_id, "workflow": name, "deleted": True})
    return JSONResponse(await ops.describe(name, instance_id))


@_endpoint
async def change_status(request: Request, ops: Operations) -> Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise ValidationError('the body must be an object {"status": "pause"|"resume"|"terminate"|"restart"}')
    unknown = set(body) - {"status", "from_step", "rollback"}
    if unknown:
        raise ValidationError(f"unknown key(s) {sorted(unknown)}; allowed: status, from_step, rollback")
    if "status" not in body:
        raise ValidationError('the body needs "status": one of pause, resume, terminate, restart')
    summary = await ops.control(
        request.path_params["name"],
        request.path_params["id"],
        body["status"],
        from_step=body.get("from_step"),
        rollback=body.get("rollback", False),
    )
    return JSONResponse(summary)


@_endpoint
async def send_event(request: Request, ops: Operations) -> Response:
    body = await read_json(request, required=False)
    accepted = await ops.send_event(
        request.path_params["name"],
        request.path_params["id"],
        request.path_params["type"],
        None if body is _ABSENT else body,
    )
    return JSONResponse(accepted, status_code=202)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def metrics(request: Request) -> Response:
    body, content_type = await request.app.state.metrics.render()
    return Response(body, media_type=content_type)


async def root(request: Request) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/dashboard/", status_code=307)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "validation_error" if exc.status_code < 500 else "internal_error")
    message = {404: f"no such path: {request.url.path}", 405: f"method {request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)


def api_routes() -> list[BaseRoute]:
    instance = "/api/workflows/{name}/instances/{id}"
    return [
        Route("/api/health", health, methods=["GET"]),
        Route("/api/workflows", list_workflows, methods=["GET"]),
        Route("/api/workflows/{name}", describe_workflow, methods=["GET"]),
        Route("/api/workflows/{name}/instances", instances, methods=["GET", "POST", "DELETE"]),
        Route(instance, describe_instance, methods=["GET", "DELETE"]),
        Route(instance + "/status", change_status, methods=["PATCH"]),
        Route(instance + "/events/{type}", send_event, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    dashboard: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
    allowed_hosts: list[str] | None = None,
    openapi_examples: dict[str, str] | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> Starlette:
    """The API (``/api``), ``/openapi.json``, ``/metrics`` and, with ``dashboard``, the
    dashboard (``/dashboard``) for ``engine``.

    ``token``: require ``Authorization: Bearer <token>`` (the dashboard asks for it once and
    keeps a signed session in a cookie, see :mod:`perdure.server.auth`). ``allowed_hosts``:
    accept only these ``Host`` names. ``body_timeout``: seconds a request body may take to
    arrive (408 after). Every response carries the headers of :mod:`perdure.server.headers`.
    """
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValidationError("the API token must be a string of at least 8 characters")
    from starlette.middleware import Middleware

    async def session_secret() -> bytes:
        store = await engine.ensure_store()
        return await store.secret("dashboard-sessions")

    sessions = Sessions(token, session_secret) if token is not None else None
    throttle = LoginThrottle()
    routes = api_routes()
    if dashboard:
        from .dashboard import dashboard_routes

        routes += dashboard_routes()
        routes.append(Route("/", root, methods=["GET"]))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),  # outermost: refusals carry the headers too
            Middleware(
                Guard,
                token=token,
                max_body_bytes=max_body_bytes,
                allowed_hosts=allowed_hosts,
                body_timeout=body_timeout,
                sessions=sessions,
                throttle=throttle,
            ),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.engine = engine
    app.state.ops = Operations(engine)
    app.state.metrics = Metrics(engine)
    app.state.token = token
    app.state.sessions = sessions
    app.state.throttle = throttle
    app.state.openapi = openapi_document(examples=openapi_examples)
    return app
