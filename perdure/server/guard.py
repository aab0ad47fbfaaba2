"""``Guard``: the checks every HTTP request passes before an endpoint sees it, as plain ASGI
middleware (wrap any ASGI app in it: ``Guard(app, token=..., allowed_hosts=[...])``).

In order:

* **hosts**: with ``allowed_hosts``, the ``Host`` header must name one of them (against DNS
  rebinding: a page on ``evil.example`` that resolves to 127.0.0.1 still says
  ``Host: evil.example``). ``Host`` is parsed by :func:`parse_host`: a name or an IPv4 address
  with or without ``:port``, an IPv6 address in brackets with or without ``:port``;
* **origin**: a state-changing request (not GET, HEAD, OPTIONS) is refused with 403 when its
  ``Origin`` is another origin than the ``Host`` it was sent to (:func:`same_origin`), when it
  is ``null`` (sandboxed frames, ``file:`` pages and data URLs send that: no page of this
  server ever does), or when ``Sec-Fetch-Site`` says ``cross-site``. Requests without an
  ``Origin`` (curl, the CLI, other programs) pass: only browsers send one, and a browser
  always sends it on a cross-origin write;
* **body size**: over ``max_body_bytes`` is 413, from ``Content-Length`` or while it streams;
* **body time**: the whole body must arrive within ``body_timeout`` seconds of the endpoint's
  first read, or the answer is 408 and the connection is closed (a client that announces 100
  bytes and sends 7 no longer holds a request open);
* **token**: when one is configured, API calls need ``Authorization: Bearer <token>`` and the
  dashboard a signed session cookie (:mod:`perdure.server.auth`); a wrong bearer token counts
  as a failed sign-in for the client's address, and too many of them answer 429.

Every refusal is a JSON error ``{"error": {"code", "message"}}`` (the dashboard's pages
redirect to the sign-in page instead of answering 401). An unexpected exception is logged and
answered with 500 ``internal_error`` when no response has started.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, RedirectResponse, Response

from .auth import SESSION_COOKIE, LoginThrottle, Sessions, client_address

log = logging.getLogger("perdure.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024 + 64 * 1024
BODY_TIMEOUT = 30.0
_PUBLIC = ("/api/health", "/dashboard/login", "/dashboard/static/")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_.])?$")  # a DNS name or an IPv4 address


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def parse_host(value: str | None) -> tuple[str, int | None] | None:
    """A ``Host`` header (or a URL's authority) as ``(name, port)``: the name lowercased and an
    IPv6 address without its brackets; ``port`` None when absent. None when malformed::

        parse_host("[::1]")            # ('::1', None)
        parse_host("[::1]:8080")       # ('::1', 8080)
        parse_host("Example.com:443")  # ('example.com', 443)
        parse_host("::1")              # None: an IPv6 address needs its brackets
    """
    if value is None:
        return None
    value = value.strip().lower()
    port_text: str | None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text = value.partition(":")
        if not colon:
            port_text = None
        if not _NAME.match(name):
            return None
    if port_text is None:
        return name, None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and int(port_text) <= 65535):
        return None
    return name, int(port_text)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's ``Origin`` names the server that ``Host`` names: the same name and
    port, a missing port meaning the default one of the origin's scheme (a browser leaves the
    port out of both exactly when it is the default)."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or "@" in parts.netloc or parts.path not in ("", "/"):
        return False
    theirs, ours = parse_host(parts.netloc), parse_host(host)
    if theirs is None or ours is None:
        return False
    default = _DEFAULT_PORTS[parts.scheme]
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


def route_path(scope: Scope) -> str:
    """The path inside this app (without the prefix it is mounted under)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lowercase bytes), decoded as Latin-1."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def cookie(scope: Scope, name: str) -> str | None:
    raw = header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class Guard:
    """Host, origin, body size, body time and token checks, as plain ASGI middleware (module
    doc). ``sessions`` and ``throttle`` may be shared with the dashboard's sign-in page (the
    app does); by default a token gets its own, with a key of this process."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed_hosts: list[str] | None = None,
        body_timeout: float = BODY_TIMEOUT,
        sessions: Sessions | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.strip().strip("[]").lower() for h in allowed_hosts}
        self.body_timeout = body_timeout
        self.sessions = sessions if sessions is not None or token is None else Sessions(token)
        self.throttle = throttle if throttle is not None else LoginThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0
        started = False
        body_done = False
        deadline: float | None = None
        loop = asyncio.get_running_loop()

        async def limited_receive() -> Message:
            nonlocal received, body_done, deadline
            if body_done:  # after the body, receive() only waits for a disconnect: unbounded
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.body_timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
                body_done = not message.get("more_body", False)
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
        except _TooSlow:
            if not started:
                response = error_response(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self.body_timeout:g} seconds",
                    {"Connection": "close"},  # the rest of the body may still be on its way
                )
                await response(scope, receive, send)
        except Exception:
            log.exception("perdure api: unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(500, "internal_error", "unexpected server error; see the server log")
                await response(scope, receive, send)

    def _too_large(self) -> Response:
        return error_response(
            413, "payload_too_large", f"the request body is over the limit of {self.max_body_bytes} bytes"
        )

    async def _refuse(self, scope: Scope) -> Response | None:
        path = route_path(scope)
        method = str(scope.get("method", "GET")).upper()
        host = header(scope, b"host")
        if self.allowed_hosts is not None:
            parsed = parse_host(host)
            if parsed is None:
                return error_response(400, "validation_error", f"the Host header {host!r} is malformed")
            if parsed[0] not in self.allowed_hosts:
                return error_response(403, "forbidden_origin", f"host {parsed[0]!r} is not served here")
        if method not in _SAFE_METHODS:
            origin = header(scope, b"origin")
            if origin is not None and origin.strip() == "null":
                return error_response(
                    403, "forbidden_origin", "a request from an opaque origin (Origin: null) cannot change anything"
                )
            if origin and not same_origin(origin.strip(), host):
                return error_response(403, "forbidden_origin", f"cross-origin request from {origin!r} refused")
            if header(scope, b"sec-fetch-site") == "cross-site":
                return error_response(403, "forbidden_origin", "cross-site request refused")
        length = header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if self.token is not None and not path.startswith(_PUBLIC):
            return await self._authenticate(scope, path)
        return None

    async def _authenticate(self, scope: Scope, path: str) -> Response | None:
        """None when the request carries the token or a valid session; else the refusal."""
        assert self.token is not None
        auth = header(scope, b"authorization") or ""
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() == "bearer":
            client = client_address(scope)
            wait = self.throttle.retry_after(client)
            if wait is not None:
                return error_response(
                    429,
                    "too_many_requests",
                    f"too many wrong tokens from {client}; try again in {wait} s",
                    {"Retry-After": str(wait)},
                )
            if hmac.compare_digest(presented.strip().encode(), self.token.encode()):
                return None
            self.throttle.failed(client)
        else:
            session = cookie(scope, SESSION_COOKIE)
            if session and self.sessions is not None and await self.sessions.valid(session):
                return None
        if path.startswith("/dashboard"):
            return RedirectResponse(f"{scope.get('root_path', '')}/dashboard/login", status_code=303)
        return error_response(
            401, "unauthorized", "this server needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
