"""HTTP: the pages and the JSON API (Starlette), on top of :class:`punderful.app.Punderful`.

Pages are rendered on the server with Jinja2 (autoescaped) and enhanced by one small vanilla
script, ``static/punderful.js``: live preview and status polling on ``/new``, debounced search,
likes, and "Similar Puns". The JSON API mirrors the original's routes:

=========================================  ====================================================
``GET  /api/puns``                          published puns, newest first (``?limit=&cursor=``)
``POST /api/puns``                          ``{"pun": "..."}`` -> stored as draft, publish starts
``GET  /api/puns/search?q=``                semantic search over published puns
``GET  /api/puns/mine``                     ``{"created": [...], "liked": [...]}``
``GET  /api/puns/trending``                 the leaderboard workflow's last result
``GET  /api/puns/{id}``                     one pun (drafts only for their creator)
``GET  /api/puns/{id}/similar``             neighbours by content, then by categories
``POST /api/puns/{id}/like``                records a like through the interaction workflow
``GET  /api/puns/{id}/workflow``            the pun's publish instance, step by step
=========================================  ====================================================

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status, never a stack trace.
Writes from another site and ``Host`` names this server does not answer to are refused with
403 ``forbidden_origin`` (see :func:`create_web_app`).
Visitors are anonymous and identified by a ``userId`` cookie ``anon-<uuid>`` (as in the
original), set on their first request.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Final

from perdure.server.api import MAX_BODY_BYTES, Guard, create_app
from perdure.server.headers import SecurityHeaders
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from punderful.app import InputError, Punderful, ScoredPun
from punderful.db import Pun

__all__ = ["create_web_app"]

log = logging.getLogger("punderful.web")

HERE: Final = Path(__file__).parent
COOKIE: Final = "userId"
COOKIE_MAX_AGE: Final = 365 * 24 * 3600
_ANON_RE: Final = re.compile(r"^anon-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Request bodies are a pun of at most a few KB; anything much larger is refused unread.
MAX_BODY: Final = 64 * 1024
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 200


# -- identity -----------------------------------------------------------------------------------
class IdentityMiddleware:
    """Give every visitor a ``userId`` cookie (``anon-<uuid>``) and put it in ``scope["state"]``.

    A cookie that is not of that form is replaced: the id decides whose drafts one may see, so
    arbitrary strings are not accepted as identities."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/perdure", "/static")):
            await self.app(scope, receive, send)
            return
        current = _cookie(scope)
        new = None if current is not None else f"anon-{uuid.uuid4()}"
        scope.setdefault("state", {})["user_id"] = current or new

        async def send_with_cookie(message: Message) -> None:
            if new is not None and message["type"] == "http.response.start":
                cookie = f"{COOKIE}={new}; Path=/; Max-Age={COOKIE_MAX_AGE}; SameSite=Lax; HttpOnly"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is treated as no cookie
                return None
            morsel = jar.get(COOKIE)
            if morsel is not None and _ANON_RE.fullmatch(morsel.value):
                return morsel.value
    return None


def viewer(request: Request) -> str:
    """The visitor's id (set by :class:`IdentityMiddleware`)."""
    return str(request.state.user_id)


# -- JSON helpers -------------------------------------------------------------------------------
def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The API's one error shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def pun_json(app: Punderful, pun: Pun, me: str, liked: set[str] | None = None) -> dict[str, Any]:
    """A pun as the API shows it. The creator's id is a cookie value, so it is never shown;
    ``mine`` says whether the viewer created it."""
    return {
        "id": pun.id,
        "pun": pun.pun,
        "status": pun.status,
        "categories": pun.categories,
        "moderation": pun.moderation,
        "likes": pun.likes,
        "liked": liked is not None and pun.id in liked,
        "mine": pun.creator == me,
        "createdAt": pun.created_at,
        "updatedAt": pun.updated_at,
        "url": f"/puns/{pun.id}",
        "workflow": {
            "name": "publish",
            "id": pun.id,
            "url": app.workflow_url(pun.id),
            "api": app.workflow_api_url(pun.id),
        },
    }


def scored_json(app: Punderful, hit: ScoredPun, me: str, liked: set[str]) -> dict[str, Any]:
    """A search or similarity hit: the pun plus ``score`` and ``via``."""
    return {**pun_json(app, hit.pun, me, liked), "score": round(hit.score, 4), "via": hit.via}


async def read_json(request: Request) -> Any:
    """The request body as JSON, with the checks a public endpoint needs."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        # Also a CSRF guard: a cross-site form cannot send application/json without a preflight.
        raise InputError("unsupported_media_type", "send the body as application/json", 415)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise InputError("body_too_large", f"the request body is over {MAX_BODY} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY:
            raise InputError("body_too_large", f"the request body is over {MAX_BODY} bytes", 413)
    try:
        return json.loads(body)
    except RecursionError:  # nesting deeper than the parser's recursion limit
        raise InputError("invalid_json", "the request body is nested too deeply to be read") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError("invalid_json", "the request body is not valid JSON") from None


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InputError("invalid_limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


# -- API handlers -------------------------------------------------------------------------------
def _app(request: Request) -> Punderful:
    app: Punderful = request.app.state.punderful
    return app


async def api_list(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    limit = _limit(request)
    cursor = request.query_params.get("cursor") or None
    puns = await app.latest(limit, cursor)
    liked = await app.liked_ids(me, puns)
    next_cursor = f"{puns[-1].created_at}|{puns[-1].id}" if len(puns) == limit else None
    return JSONResponse({"results": [pun_json(app, p, me, liked) for p in puns], "nextCursor": next_cursor})


async def api_create(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    body = await read_json(request)
    if not isinstance(body, dict) or "pun" not in body:
        raise InputError("invalid_body", 'send a JSON object {"pun": "..."}')
    pun = await app.submit_pun(body["pun"], me)
    data = pun_json(app, pun, me)
    # "workflow" as in the original's response, plus the pun itself.
    return JSONResponse({"pun": data, "workflow": data["workflow"]}, status_code=201)


async def api_search(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    hits = await app.search(request.query_params.get("q"))
    liked = await app.liked_ids(me, [h.pun for h in hits])
    return JSONResponse({"results": [scored_json(app, h, me, liked) for h in hits]})


async def api_mine(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    created, liked_puns = await app.mine(me)
    liked = await app.liked_ids(me, created + liked_puns)
    return JSONResponse(
        {
            "created": [pun_json(app, p, me, liked) for p in created],
            "liked": [pun_json(app, p, me, liked) for p in liked_puns],
        }
    )


async def api_trending(request: Request) -> Response:
    trending, updated = await _app(request).trending()
    return JSONResponse({"results": trending, "updatedAt": updated})


async def api_get(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    pun = await app.get_pun(request.path_params["pun_id"], me)
    liked = await app.liked_ids(me, [pun])
    return JSONResponse(pun_json(app, pun, me, liked))


async def api_similar(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    hits = await app.similar(request.path_params["pun_id"], me)
    liked = await app.liked_ids(me, [h.pun for h in hits])
    return JSONResponse({"results": [scored_json(app, h, me, liked) for h in hits]})


async def api_like(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    created = await app.like(request.path_params["pun_id"], me)
    return JSONResponse({"success": True, "alreadyLiked": not created}, status_code=202 if created else 200)


async def api_workflow(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    return JSONResponse(await app.workflow_timeline(request.path_params["pun_id"], me))


async def favicon(request: Request) -> Response:
    """``/favicon.ico``, which browsers ask for on every page: the SVG icon (no 404 in the console)."""
    return Response((HERE / "static" / "favicon.svg").read_bytes(), media_type="image/svg+xml")


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "engine": _app(request).engine.is_running})


# -- pages --------------------------------------------------------------------------------------
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    app = _app(request)
    context.setdefault("perdure_mount", app.perdure_mount)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def page_home(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    puns = await app.latest(60)
    trending, updated = await app.trending()
    liked = await app.liked_ids(me, puns)
    cards = [pun_json(app, p, me, liked) for p in puns]
    return _page(request, "home.html", puns=cards, trending=trending, trending_updated=updated, page="home")


async def page_new(request: Request) -> Response:
    return _page(request, "new.html", page="new", max_length=_app(request).config.max_pun_length)


async def page_search(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    query = request.query_params.get("q", "")
    results: list[dict[str, Any]] = []
    error = None
    if query.strip():
        try:
            hits = await app.search(query)
            liked = await app.liked_ids(me, [h.pun for h in hits])
            results = [scored_json(app, h, me, liked) for h in hits]
        except InputError as exc:
            error = exc.message
    return _page(
        request,
        "search.html",
        page="search",
        query=query,
        results=results,
        error=error,
        max_length=app.config.max_query_length,
    )


async def page_pun(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    pun = await app.get_pun(request.path_params["pun_id"], me)
    if pun.status == "published":
        await app.record_view(pun.id, me)  # the original recorded a "detail" interaction per view
    liked = await app.liked_ids(me, [pun])
    return _page(request, "pun.html", page="pun", pun=pun_json(app, pun, me, liked))


async def page_me(request: Request) -> Response:
    app, me = _app(request), viewer(request)
    created, liked_puns = await app.mine(me)
    liked = await app.liked_ids(me, created + liked_puns)
    return _page(
        request,
        "me.html",
        page="me",
        created=[pun_json(app, p, me, liked) for p in created],
        liked=[pun_json(app, p, me, liked) for p in liked_puns],
    )


# -- errors -------------------------------------------------------------------------------------
def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def on_input_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    if _wants_json(request):
        return error_response(exc.status, exc.code, exc.message)
    return _page(request, "error.html", exc.status, page="error", status=exc.status, message=exc.message)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: "no such page", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    response: Response
    if _wants_json(request):
        response = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message)
    else:
        response = _page(request, "error.html", exc.status_code, page="error", status=exc.status_code, message=message)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def on_server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    if _wants_json(request):
        return error_response(500, "internal_error", "something went wrong on our side")
    return HTMLResponse("<h1>Something went wrong</h1>", status_code=500)


# -- assembly -----------------------------------------------------------------------------------
def _perdure_mount(app: Punderful) -> Mount | None:
    """Perdure's REST API and dashboard at ``/perdure`` (unless ``--no-perdure``), with the
    rules of ``perdure serve``: its token when one is set (:class:`~punderful.config.Config`
    requires one off loopback) and only this server's ``Host`` names."""
    if not app.config.mount_perdure:
        return None
    sub_app = create_app(app.engine, token=app.config.perdure_token, allowed_hosts=app.config.served_hosts)
    app.perdure_mount = "/perdure"
    return Mount("/perdure", app=sub_app)


def create_web_app(app: Punderful) -> ASGIApp:
    """The ASGI app: pages, API, static files, and Perdure's dashboard under ``/perdure``.

    All of it sits behind Perdure's :class:`~perdure.server.api.Guard` (no token: Punderful's
    pages are public), so the rules are Perdure's: a ``Host`` this server does not answer to is
    refused (DNS rebinding), and so is a write (POST...) from another origin or marked
    ``Sec-Fetch-Site: cross-site`` (a page elsewhere cannot submit or like in a visitor's name).
    Its body limit is Perdure's, for the mount; Punderful's own endpoints read at most
    :data:`MAX_BODY`."""
    routes: list[BaseRoute] = [
        Route("/", page_home),
        Route("/new", page_new),
        Route("/search", page_search),
        Route("/me", page_me),
        Route("/puns/{pun_id}", page_pun),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/api/puns", api_list, methods=["GET"]),
        Route("/api/puns", api_create, methods=["POST"]),
        Route("/api/puns/search", api_search, methods=["GET"]),
        Route("/api/puns/mine", api_mine, methods=["GET"]),
        Route("/api/puns/trending", api_trending, methods=["GET"]),
        Route("/api/puns/{pun_id}", api_get, methods=["GET"]),
        Route("/api/puns/{pun_id}/similar", api_similar, methods=["GET"]),
        Route("/api/puns/{pun_id}/like", api_like, methods=["POST"]),
        Route("/api/puns/{pun_id}/workflow", api_workflow, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    mount = _perdure_mount(app)
    if mount is not None:
        routes.append(mount)
    web = Starlette(
        routes=routes,
        exception_handlers={
            InputError: on_input_error,
            HTTPException: on_http_error,
            Exception: on_server_error,
        },
    )
    web.state.punderful = app
    # Perdure's security headers on every response (no framing: a like cannot be clickjacked;
    # no inline script or style runs), outside the Guard so refusals carry them too.
    return SecurityHeaders(
        Guard(IdentityMiddleware(web), token=None, max_body_bytes=MAX_BODY_BYTES, allowed_hosts=app.config.served_hosts)
    )
