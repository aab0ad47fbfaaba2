"""The dashboard: server-rendered pages (Jinja2) with a little htmx, under ``/dashboard``.

* ``/dashboard/`` - workflows with their instance counts by status and the last hour's
  throughput (instances created and finished per minute);
* ``/dashboard/workflows/{name}`` - instances, newest first, filtered by status and by id
  prefix (the instance with exactly the typed id, or ``latest``, comes first), with a form to
  trigger a new one;
* ``/dashboard/workflows/{name}/instances/{id}`` - one instance: status, params, output,
  error, a Gantt-like timeline (a bar per step, a segment per attempt; output, error, config
  and attempts in ``<details>``), the event history, and buttons for pause / resume /
  terminate / restart (also from a given step) and a send-event form.

Pages work without JavaScript (forms post and redirect back). htmx, served from
``/dashboard/static`` (never a CDN), boosts links and forms into in-page swaps and refreshes
the live parts while an instance runs. Actions answer with a redirect carrying a one-line
``flash`` message, so an error (say, terminating a finished instance) shows on the page.
Terminate and Restart first answer with a page that asks to confirm (``confirm.html``: its
button posts the same form again with ``confirmed=yes``), so they need two deliberate clicks,
with or without JavaScript.

The pages run under a strict Content-Security-Policy (:mod:`perdure.server.headers`): no
inline script, no inline style, no ``style`` attribute. Scripts and CSS are files under
``static/``; bars and sparklines are SVG shapes placed by their attributes; htmx is told not
to add its inline indicator style (``<meta name="htmx-config">`` in ``base.html``).
"""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

try:
    import jinja2  # noqa: F401 - Jinja2Templates needs it, and says so only with an AssertionError
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import BaseRoute, Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates
except ModuleNotFoundError as exc:  # one line naming the extra, not a traceback
    from ..._optional import missing_extra

    raise missing_extra("server", "the dashboard (perdure.server.dashboard)", exc.name) from None

from ... import validators
from ...errors import PerdureError, ValidationError
from ...records import STATUSES, TERMINAL
from ..auth import SESSION_COOKIE, LoginThrottle, Sessions, client_address
from ..formatting import describe_flow, describe_reasons, human_ms, human_time, pretty_json, shorten
from ..operations import ACTIONS, Operations, instance_summary

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
_LIVE = {"queued", "running", "waitingForPause"}
#: Actions the dashboard asks to confirm on a page of their own before doing them.
CONFIRMED_ACTIONS = ("terminate", "restart")


templates.env.filters["ms"] = human_ms
templates.env.filters["flow"] = describe_flow
templates.env.filters["reasons"] = describe_reasons
templates.env.filters["time"] = human_time
templates.env.filters["pretty"] = pretty_json
templates.env.filters["pretty_short"] = lambda value: pretty_json(value, short=True)
templates.env.tests["shortened"] = lambda value: shorten(value) != value


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (what the dashboard's forms send) as a dict.
    Parsed here so the dashboard needs no multipart library; the body limit applies."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def _ops(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _url(request: Request, *parts: str, **query: Any) -> str:
    path = "/".join(quote(p, safe="") for p in parts)
    url = f"{_base(request)}/dashboard/{path}"
    args = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{url}?{urlencode(args)}" if args else url


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    context.update(
        base=_base(request),
        url=lambda *parts, **query: _url(request, *parts, **query),
        flash=request.query_params.get("flash"),
        flash_level=request.query_params.get("level", "info"),
        statuses=STATUSES,
        token_required=request.app.state.token is not None,
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _error_page(request: Request, exc: Exception, status_code: int) -> Response:
    return _render(request, "error.html", {"message": str(exc), "title": "Not found"}, status_code)


async def workflows_page(request: Request) -> Response:
    ops = _ops(request)
    metrics = request.app.state.metrics
    await metrics.refresh()
    workflows = await ops.list_workflows()
    now = time.time()
    for workflow in workflows:
        series = metrics.throughput.recent(workflow["name"], now)
        workflow["throughput"] = series
        workflow["recent"] = metrics.throughput.totals(workflow["name"], now)
        workflow["peak"] = max([1] + [b["created"] + b["complete"] + b["errored"] for b in series])
    return _render(request, "workflows.html", {"workflows": workflows, "title": "Workflows"})


async def instances_page(request: Request) -> Response:
    ops = _ops(request)
    name = request.path_params["name"]
    query = request.query_params
    search = (query.get("id") or "").strip()
    status = query.get("status") or None
    cursor = query.get("cursor") or None
    try:
        workflow = await ops.describe_workflow(name)
        error = None
        page: dict[str, Any]
        try:
            validators.instance_id_prefix(search)
        except ValidationError as exc:  # said next to the search box, not as an error page
            page, error = {"instances": [], "next_cursor": None}, str(exc)
        else:
            page = await ops.list_instances(
                name, status=status, cursor=cursor, limit=query.get("limit") or None, id_prefix=search
            )
            if search:
                page["instances"] = await _exact_first(ops, name, search, status, page["instances"], first=not cursor)
    except ValidationError as exc:
        return _error_page(request, exc, 400)
    except PerdureError as exc:
        return _error_page(request, exc, 404)
    context = {
        "workflow": workflow,
        "page": page,
        "status": status or "",
        "cursor": cursor or "",
        "search": search,
        "search_error": error,
        "title": name,
    }
    return _render(request, "instances.html", context)


async def _exact_first(
    ops: Operations, name: str, search: str, status: str | None, found: list[dict[str, Any]], *, first: bool
) -> list[dict[str, Any]]:
    """The prefix matches, with the instance the search names exactly (its id, or ``latest``)
    on top of the first page and left out of later ones: typing a whole id finds that one
    instance first, however many newer ids it is a prefix of."""
    try:
        exact = await ops.get_record(name, search)
    except PerdureError:  # no such id (or not a whole id): the prefix matches are the answer
        return found
    if status and exact.status != status:
        return found
    rest = [i for i in found if i["id"] != exact.id]
    return [instance_summary(exact), *rest] if first else rest


def _timeline(detail: dict[str, Any]) -> dict[str, Any]:
    """Bar geometry (percentages of the instance's span) for each step and attempt."""
    from datetime import datetime

    def ts(value: str | None) -> float | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None

    now = time.time()
    starts = [ts(detail["queued"])] + [ts(s["start"]) for s in detail["steps"]]
    t0 = min(t for t in starts if t is not None)
    ends = [ts(detail["end"]) or now] + [ts(s["end"]) or now for s in detail["steps"]]
    t1 = max([t0 + 0.001] + [t for t in ends if t is not None])
    span = t1 - t0

    def bar(start: str | None, end: str | None) -> dict[str, float]:
        a = ts(start) or t0
        b = ts(end) or (now if detail["status"] not in TERMINAL else a)
        left = max(0.0, min(100.0, (a - t0) / span * 100))
        width = max(0.4, min(100.0 - left, (max(b, a) - a) / span * 100))
        return {"left": round(left, 3), "width": round(width, 3)}

    rows = []
    for step in detail["steps"]:
        rows.append(
            {
                "step": step,
                "bar": bar(step["start"], step["end"]),
                "attempts": [
                    {"attempt": a, "number": i, "bar": bar(a["start"], a["end"])}
                    for i, a in enumerate(step["attempts"], start=1)
                ],
            }
        )
    return {"rows": rows, "span_ms": round(span * 1000), "start": detail["queued"]}


async def instance_page(request: Request) -> Response:
    ops = _ops(request)
    name, instance_id = request.path_params["name"], request.path_params["id"]
    try:
        detail = await ops.describe(name, instance_id)
    except ValidationError as exc:
        return _error_page(request, exc, 400)
    except PerdureError as exc:
        return _error_page(request, exc, 404)
    context = {
        "workflow_name": name,
        "detail": detail,
        "timeline": _timeline(detail),
        "live": detail["status"] in _LIVE,
        "actions": ACTIONS,
        "title": f"{name} / {detail['id']}",
        # The whole document (every output in full), for outputs the page shows shortened.
        "api_url": f"{_base(request)}/api/workflows/{quote(name, safe='')}/instances/{quote(detail['id'], safe='')}",
    }
    return _render(request, "instance.html", context)


def _confirm_page(request: Request, name: str, instance_id: str, action: str, form: dict[str, str]) -> Response:
    """The page that asks "really terminate / restart?": its button posts the same form again
    with ``confirmed=yes``. A second page rather than a script's ``confirm()``, so it works
    without JavaScript, and a click on a framed or forged button changes nothing by itself."""
    context = {
        "title": f"{action.capitalize()} {instance_id}?",
        "workflow_name": name,
        "instance_id": instance_id,
        "action": action,
        "from_step": form.get("from_step_name") or None,
        "fields": {k: v for k, v in form.items() if k != "confirmed"},
    }
    return _render(request, "confirm.html", context)


def _back(request: Request, *parts: str, flash: str, level: str = "info") -> RedirectResponse:
    return RedirectResponse(_url(request, *parts, flash=flash, level=level), status_code=303)


async def instance_action(request: Request) -> Response:
    ops = _ops(request)
    name, instance_id = request.path_params["name"], request.path_params["id"]
    form = await _form(request)
    action = str(form.get("action", ""))
    if action in CONFIRMED_ACTIONS and form.get("confirmed") != "yes":
        return _confirm_page(request, name, instance_id, action, form)
    from_step = None
    if form.get("from_step_name"):
        count = str(form.get("from_step_count") or "1")
        from_step = {
            "name": str(form["from_step_name"]),
            "count": int(count) if count.isdigit() else count,  # a non-number is refused with a message
            "type": str(form.get("from_step_type") or "do"),
        }
    try:
        summary = await ops.control(name, instance_id, action, from_step=from_step)
    except PerdureError as exc:
        return _back(request, "workflows", name, "instances", instance_id, flash=str(exc), level="error")
    return _back(
        request, "workflows", name, "instances", instance_id, flash=f"{action}: the instance is {summary['status']}"
    )


async def instance_event(request: Request) -> Response:
    ops = _ops(request)
    name, instance_id = request.path_params["name"], request.path_params["id"]
    form = await _form(request)
    event_type = str(form.get("type", "")).strip()
    raw = str(form.get("payload", "")).strip()
    parts = ("workflows", name, "instances", instance_id)
    try:
        payload = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:  # bad JSON, or nested too deep to parse
        return _back(request, *parts, flash=f"the payload is not valid JSON: {exc}", level="error")
    try:
        await ops.send_event(name, instance_id, event_type, payload)
    except PerdureError as exc:
        return _back(request, *parts, flash=str(exc), level="error")
    return _back(request, *parts, flash=f"event {event_type!r} sent")


async def trigger(request: Request) -> Response:
    ops = _ops(request)
    name = request.path_params["name"]
    form = await _form(request)
    raw = str(form.get("params", "")).strip()
    body: dict[str, Any] = {}
    if str(form.get("id", "")).strip():
        body["id"] = str(form["id"]).strip()
    try:
        if raw:
            body["params"] = json.loads(raw)
        created = await ops.create(name, body, trigger="api")
    except (ValueError, RecursionError) as exc:  # bad JSON (or nested too deep) or a ValidationError
        return _back(request, "workflows", name, flash=str(exc), level="error")
    except PerdureError as exc:
        return _back(request, "workflows", name, flash=str(exc), level="error")
    assert isinstance(created, dict)
    return _back(request, "workflows", name, "instances", created["id"], flash="instance queued")


async def login(request: Request) -> Response:
    """The sign-in form. A right token sets a signed session cookie (never the token itself);
    a client with too many wrong tokens in a minute is answered 429 (:mod:`..auth`)."""
    token = request.app.state.token
    if request.method != "POST":
        return _render(request, "login.html", {"title": "Sign in", "failed": False})
    throttle: LoginThrottle = request.app.state.throttle
    client = client_address(request.scope)
    wait = throttle.retry_after(client)
    if wait is not None:
        context = {"title": "Sign in", "failed": False, "retry_after": wait}
        response = _render(request, "login.html", context, 429)
        response.headers["Retry-After"] = str(wait)
        return response
    form = await _form(request)
    presented = str(form.get("token", ""))
    if token is not None and hmac.compare_digest(presented.encode(), token.encode()):
        throttle.succeeded(client)
        sessions: Sessions = request.app.state.sessions
        response = RedirectResponse(_url(request), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            await sessions.issue(),
            max_age=int(sessions.max_age),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    throttle.failed(client)
    return _render(request, "login.html", {"title": "Sign in", "failed": True}, 401)


def dashboard_routes() -> list[BaseRoute]:
    instance = "/dashboard/workflows/{name}/instances/{id}"
    return [
        Route("/dashboard/", workflows_page, methods=["GET"]),
        Route("/dashboard/login", login, methods=["GET", "POST"]),
        Route("/dashboard/workflows/{name}", instances_page, methods=["GET"]),
        Route("/dashboard/workflows/{name}/trigger", trigger, methods=["POST"]),
        Route(instance, instance_page, methods=["GET"]),
        Route(instance + "/action", instance_action, methods=["POST"]),
        Route(instance + "/event", instance_event, methods=["POST"]),
        Mount("/dashboard/static", app=StaticFiles(directory=str(HERE / "static")), name="dashboard-static"),
    ]
