"""The REST API (SPEC §4), the metrics endpoint and the dashboard, as one Starlette app.

``create_app(engine)`` returns an ASGI app; serve it with ``perdure serve APP`` or mount it
in your own (``Mount("/perdure", app=create_app(engine))``: links follow the mount point).
The app does not start workers: it reads and writes the store, and workers (``perdure
worker``, ``perdure dev``, or ``async with engine`` elsewhere) run the instances.

Every failure is a JSON body ``{"error": {"code", "message"}}`` with a 4xx status (see
:data:`perdure.server.openapi.ERROR_CODES`). Three guards run before any endpoint:

* the **body limit**: a request body over ``max_body_bytes`` (1 MiB plus 64 KiB) is refused
  with 413, from its ``Content-Length`` or while it streams in, before anything is parsed;
* the **bearer token**, when one is configured: ``Authorization: Bearer <token>`` on API
  calls, a cookie set by ``/dashboard/login`` in the browser;
* the **origin check**: a state-changing request whose ``Origin`` is another site is refused,
  so a web page cannot drive a server on localhost; with ``allowed_hosts`` the ``Host``
  header must name this server too (against DNS rebinding).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
from .metrics import Metrics
from .openapi import openapi_document
from .operations import Operations, StepNotFoundError

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("perdure.api")

MAX_BODY_BYTES = 1024 * 1024 + 64 * 1024
TOKEN_COOKIE = "perdure_token"
_PUBLIC = ("/api/health", "/dashboard/login", "/dashboard/static/")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiError(Exception):
    """An error response: ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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


class _TooLarge(Exception):
    pass


def route_path(scope: Scope) -> str:
    """The path inside this app (without the prefix it is mounted under)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Guard:
    """Body limit, bearer token and origin checks, as plain ASGI middleware."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, max_body_bytes: int, allowed_hosts: list[str] | None
    ) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large()(scope, receive, send)
        except Exception:
            log.exception("perdure api: unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(500, "internal_error", "unexpected server error; see the server log")
                await response(scope, receive, send)

    def _too_large(self) -> Response:
        return error_response(
            413, "payload_too_large", f"the request body is over the limit of {self.max_body_bytes} bytes"
        )

    def _refuse(self, scope: Scope) -> Response | None:
        path = route_path(scope)
        method = str(scope.get("method", "GET")).upper()
        if self.allowed_hosts is not None:
            host = (_header(scope, b"host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.allowed_hosts:
                return error_response(403, "forbidden_origin", f"host {host!r} is not served here")
        if method not in _SAFE_METHODS:
            origin = _header(scope, b"origin")
            if (
                origin
                and origin != "null"
                and urlsplit(origin).netloc.lower() != (_header(scope, b"host") or "").lower()
            ):
                return error_response(403, "forbidden_origin", f"cross-origin request from {origin!r} refused")
            if _header(scope, b"sec-fetch-site") == "cross-site":
                return error_response(403, "forbidden_origin", "cross-site request refused")
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if self.token is not None and not path.startswith(_PUBLIC) and not self._authorized(scope):
            if path.startswith("/dashboard"):
                root = str(scope.get("root_path", ""))
                return RedirectResponse(f"{root}/dashboard/login", status_code=303)
            return error_response(
                401, "unauthorized", "this server needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        return None

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        expected = self.token.encode()
        auth = _header(scope, b"authorization") or ""
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected):
            return True
        cookie = _cookie(scope, TOKEN_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), expected)


# -- request helpers ------------------------------------------------------------------------------
_ABSENT = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, *, required: bool) -> Any:
    """The body as JSON; ``_ABSENT`` for an empty optional body."""
    body = await request.body()
    if not body.strip():
        if required:
            raise ApiError(400, "invalid_json", "the request body must be a JSON document")
        return _ABSENT
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


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
    return JSONResponse(await ops.describe(request.path_params["name"], request.path_params["id"]))


@_endpoint
async def change_status(request: Request, ops: Operations) -> Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise ValidationError('the body must be an object {"status": "pause"|"resume"|"terminate"|"restart"}')
    unknown = set(body) - {"status", "from_step"}
    if unknown:
        raise ValidationError(f"unknown key(s) {sorted(unknown)}; allowed: status, from_step")
    if "status" not in body:
        raise ValidationError('the body needs "status": one of pause, resume, terminate, restart')
    summary = await ops.control(
        request.path_params["name"], request.path_params["id"], body["status"], from_step=body.get("from_step")
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
        Route("/api/workflows/{name}/instances", instances, methods=["GET", "POST"]),
        Route(instance, describe_instance, methods=["GET"]),
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
) -> Starlette:
    """The API (``/api``), ``/openapi.json``, ``/metrics`` and, with ``dashboard``, the
    dashboard (``/dashboard``) for ``engine``.

    ``token``: require ``Authorization: Bearer <token>`` (the dashboard asks for it once and
    keeps it in a cookie). ``allowed_hosts``: accept only these ``Host`` names.
    """
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValidationError("the API token must be a string of at least 8 characters")
    from starlette.middleware import Middleware

    routes = api_routes()
    if dashboard:
        from .dashboard import dashboard_routes

        routes += dashboard_routes()
        routes.append(Route("/", root, methods=["GET"]))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Guard,
                token=token,
                max_body_bytes=max_body_bytes,
                allowed_hosts=[h.lower() for h in allowed_hosts] if allowed_hosts is not None else None,
            )
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.engine = engine
    app.state.ops = Operations(engine)
    app.state.metrics = Metrics(engine)
    app.state.token = token
    app.state.openapi = openapi_document(examples=openapi_examples)
    return app
