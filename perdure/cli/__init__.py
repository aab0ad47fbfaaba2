"""The ``perdure`` command line, mirroring ``wrangler workflows``.

Client commands talk to a running server over HTTP (``--url``, default
``http://127.0.0.1:8080``; ``--token`` or ``PERDURE_TOKEN`` for a server that needs one) or
straight to a database (``--db sqlite:///perdure.db`` or ``--db postgresql://...``)::

    perdure workflows list
    perdure workflows describe NAME
    perdure workflows trigger NAME '{"key": "value"}' --id my-id
    perdure instances list NAME --status errored --limit 20 --id-prefix order-
    perdure instances describe NAME latest
    perdure instances pause|resume|terminate|restart NAME ID
    perdure instances send-event NAME ID --type approval --payload '{"ok": true}'

Durable queues (:mod:`perdure.triggers.queues`) need ``--db``: the REST API has no queue endpoints::

    perdure --db URL queues list                       # ready / delayed / in flight / dead
    perdure --db URL queues send NAME '{"n": 1}' --delay 30
    perdure --db URL queues dead NAME --limit 20       # the newest dead letters
    perdure --db URL queues redrive NAME               # dead letters back to ready

Server commands load an application's engine from ``module:attribute``::

    perdure serve APP     # REST API + dashboard + /metrics (workers run elsewhere)
    perdure worker APP    # a worker process
    perdure dev APP       # all three in one process: the local-development loop

``--json`` prints machine-readable output. Errors print one line on stderr and exit with
1 (failure, e.g. server unreachable), 2 (bad input), 3 (not found), 4 (conflict: the
instance exists or is in the wrong state) or 5 (unauthorized).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..records import STATUSES
from ..server.formatting import (
    STATUS_LABELS,
    STEP_TYPE_LABELS,
    TRIGGER_LABELS,
    human_ms,
    human_time,
    iso,
)

if TYPE_CHECKING:
    from ..triggers.queues import Queue

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILURE, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_AUTH = 1, 2, 3, 4, 5
_CODE_EXITS = {
    "invalid_json": EXIT_INPUT,
    "validation_error": EXIT_INPUT,
    "payload_too_large": EXIT_INPUT,
    "not_found": EXIT_NOT_FOUND,
    "workflow_not_found": EXIT_NOT_FOUND,
    "instance_not_found": EXIT_NOT_FOUND,
    "step_not_found": EXIT_NOT_FOUND,
    "instance_exists": EXIT_CONFLICT,
    "invalid_state": EXIT_CONFLICT,
    "unauthorized": EXIT_AUTH,
    "forbidden_origin": EXIT_AUTH,
}


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- backends ---------------------------------------------------------------------------------
class HttpBackend:
    """Calls the REST API of a running ``perdure serve``."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)

    async def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        query = {k: v for k, v in (params or {}).items() if v is not None}
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            response = await self.client.request(method, path, content=content, params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the Perdure server at {self.url} ({type(exc).__name__}): is `perdure serve` running? "
                "Pass --url, or --db to use a database directly."
            ) from None
        try:
            data = response.json()
        except ValueError:
            raise CliError(f"unexpected answer from {self.url}{path}: HTTP {response.status_code}") from None
        if response.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            code = str(error.get("code", "error"))
            raise CliError(str(error.get("message", f"HTTP {response.status_code}")), _CODE_EXITS.get(code, 1))
        return data

    async def close(self) -> None:
        await self.client.aclose()

    async def workflows(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/api/workflows")
        return list(data["workflows"])

    async def workflow(self, name: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}"))

    async def trigger(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.call("POST", f"/api/workflows/{_seg(name)}/instances", body=body))

    async def instances(
        self, name: str, status: str | None, limit: int, cursor: str | None, id_prefix: str | None = None
    ) -> dict[str, Any]:
        params = {"status": status, "limit": limit, "cursor": cursor, "id_prefix": id_prefix}
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}/instances", params=params))

    async def describe(self, name: str, instance_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}"))

    async def control(self, name: str, instance_id: str, action: str, from_step: dict[str, Any] | None) -> Any:
        body: dict[str, Any] = {"status": action}
        if from_step is not None:
            body["from_step"] = from_step
        path = f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}/status"
        return await self.call("PATCH", path, body=body)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> Any:
        path = f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}/events/{_seg(event_type)}"
        return await self.call("POST", path, body=payload)


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


class DbBackend:
    """Reads and writes the database directly (no server needed)."""

    def __init__(self, url: str) -> None:
        from ..engine import Engine
        from ..errors import ValidationError
        from ..server.operations import Operations

        if url.startswith("sqlite://"):
            path = url[len("sqlite://") :]
            path = path[1:] if path.startswith("/") else path
            if path and not Path(path).exists():
                raise CliError(f"no database file at {path!r} (from --db {url})", EXIT_INPUT)
        try:
            self.engine = Engine(url)
        except ValidationError as exc:
            raise CliError(str(exc), EXIT_INPUT) from None
        self.ops = Operations(self.engine)

    async def close(self) -> None:
        await self.engine.stop()

    async def workflows(self) -> list[dict[str, Any]]:
        return await self.ops.list_workflows()

    async def workflow(self, name: str) -> dict[str, Any]:
        return await self.ops.describe_workflow(name)

    async def trigger(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await self.ops.create(name, body, trigger="api")
        assert isinstance(created, dict)
        return created

    async def instances(
        self, name: str, status: str | None, limit: int, cursor: str | None, id_prefix: str | None = None
    ) -> dict[str, Any]:
        return await self.ops.list_instances(name, status=status, limit=limit, cursor=cursor, id_prefix=id_prefix)

    async def describe(self, name: str, instance_id: str) -> dict[str, Any]:
        return await self.ops.describe(name, instance_id)

    async def control(self, name: str, instance_id: str, action: str, from_step: dict[str, Any] | None) -> Any:
        return await self.ops.control(name, instance_id, action, from_step=from_step)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> Any:
        return await self.ops.send_event(name, instance_id, event_type, payload)

    async def _queue(self, name: str) -> Queue:
        from ..triggers.queues import Queue

        return Queue(self.engine, name)  # checks the name

    async def queues(self) -> list[dict[str, Any]]:
        from ..triggers.queues import queue_names

        return [{"name": name, **await (await self._queue(name)).stats()} for name in await queue_names(self.engine)]

    async def queue_send(self, name: str, body: Any, delay: float) -> dict[str, Any]:
        queue = await self._queue(name)
        return {"queue": name, "id": await queue.send(body, delay=delay), "delay": delay}

    async def queue_dead(self, name: str, limit: int) -> dict[str, Any]:

        letters = await (await self._queue(name)).dead_letters(limit)
        return {"queue": name, "dead_letters": [{**d, "failed_at": iso(d["failed_at"])} for d in letters]}

    async def queue_redrive(self, name: str) -> dict[str, Any]:
        return {"queue": name, "redriven": await (await self._queue(name)).redrive()}


Backend = HttpBackend | DbBackend


def _db_only(backend: Backend) -> DbBackend:
    if not isinstance(backend, DbBackend):
        raise CliError(
            "`perdure queues` needs --db URL (or PERDURE_DB): the REST API has no queue endpoints", EXIT_INPUT
        )
    return backend


def _exit_code(exc: Exception) -> int:
    from ..errors import (
        InstanceAlreadyExistsError,
        InstanceNotFoundError,
        InvalidStateError,
        WorkflowNotFoundError,
    )
    from ..server.operations import StepNotFoundError

    if isinstance(exc, (InstanceNotFoundError, WorkflowNotFoundError, StepNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InstanceAlreadyExistsError, InvalidStateError)):
        return EXIT_CONFLICT
    if isinstance(exc, ValueError):
        return EXIT_INPUT
    return EXIT_FAILURE


def _run(ctx: click.Context, action: Callable[[Backend], Awaitable[T]]) -> T:
    """Open the backend the options name, run ``action``, turn errors into exits."""
    from ..errors import PerdureError

    options = ctx.obj

    async def main() -> T:
        backend: Backend
        if options.get("db"):
            backend = DbBackend(options["db"])
        else:
            backend = HttpBackend(options.get("url") or DEFAULT_URL, options.get("token"))
        try:
            return await action(backend)
        finally:
            await backend.close()

    try:
        return asyncio.run(main())
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except (PerdureError, ValueError) as exc:
        _fail(str(exc), _exit_code(exc))
    except Exception as exc:  # a database that cannot be opened or reached, and the like
        _fail(f"{type(exc).__name__}: {exc}".strip(), EXIT_FAILURE)
    raise AssertionError("unreachable")


def _fail(message: str, code: int) -> None:
    Console(stderr=True).print(f"[bold red]✘[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _emit(ctx: click.Context, data: Any, render: Callable[[Console, Any], None]) -> None:
    if ctx.obj.get("json"):
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        render(Console(highlight=False, soft_wrap=True), data)


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--db``, ``--token`` and ``--json`` on a command (also accepted before it)."""

    @click.option("--url", help="server URL (env PERDURE_URL; default http://127.0.0.1:8080)")
    @click.option("--db", help="use this database directly instead of a server (env PERDURE_DB)")
    @click.option("--token", help="bearer token for the server (env PERDURE_TOKEN)")
    @click.option("--json", "as_json", is_flag=True, default=None, help="print JSON")
    @click.pass_context
    def wrapper(
        ctx: click.Context, /, url: str | None, db: str | None, token: str | None, as_json: bool | None, **kw: Any
    ) -> Any:
        for key, value in (("url", url), ("db", db), ("token", token), ("json", as_json)):
            if value is not None:
                ctx.obj[key] = value
        if ctx.obj.get("url") and ctx.obj.get("db"):
            _fail("pass either --url or --db, not both", EXIT_INPUT)
        return ctx.invoke(fn, **kw)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _parse_json(text: str | None, what: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        _fail(f"{what} is not valid JSON: {exc}", EXIT_INPUT)
    return None


# -- rendering ----------------------------------------------------------------------------------
def _short(value: Any, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def _table(*headers: str) -> Table:
    table = Table(box=None, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=header not in ("Instances", "Error"))
    return table


def _render_workflows(console: Console, workflows: list[dict[str, Any]]) -> None:
    if not workflows:
        console.print("No workflows: no engine registered one on this database, and it has no instances.")
        return
    table = _table("Name", "Class", "Instances", "Total", "Last registered")
    for wf in workflows:
        counts = ", ".join(f"{status} {n}" for status, n in wf["instances"].items()) or "-"
        table.add_row(
            wf["name"],
            wf["class_name"] or "(not registered)",
            counts,
            str(wf["total"]),
            human_time(wf.get("last_registered_at")),
        )
    console.print(table)


def _render_workflow(console: Console, wf: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("Name:", wf["name"])
    grid.add_row("Class:", wf["class_name"] or "(not registered)")
    grid.add_row("Schedules:", ", ".join(wf["schedules"]) or "-")
    grid.add_row("Step limit:", str(wf["step_limit"] or "-"))
    grid.add_row("Last registered:", human_time(wf.get("last_registered_at")))
    grid.add_row("Instances:", f"{wf['total']} ({', '.join(f'{s} {n}' for s, n in wf['instances'].items()) or 'none'})")
    console.print(grid)


def _render_instances(console: Console, page: dict[str, Any]) -> None:
    if not page["instances"]:
        console.print("No instances.")
        return
    table = _table("Id", "Status", "Trigger", "Queued", "Start", "End", "Duration")
    for inst in page["instances"]:
        table.add_row(
            inst["id"],
            STATUS_LABELS.get(inst["status"], inst["status"]),
            inst["trigger"]["source"],
            human_time(inst["queued"]),
            human_time(inst["start"]),
            human_time(inst["end"]),
            human_ms(inst["duration_ms"]),
        )
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"[dim]More: --cursor {page['next_cursor']}[/]")


def _bar(step: dict[str, Any], t0: float, span: float, width: int = 24) -> Text:
    from datetime import datetime

    def ts(v: str | None) -> float | None:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None

    start = ts(step["start"]) or t0
    end = ts(step["end"]) or start
    a = int((start - t0) / span * width)
    b = max(a + 1, int((end - t0) / span * width + 0.999))
    colour = {"complete": "green", "failed": "red", "timedOut": "red", "retrying": "yellow", "running": "blue"}
    text = Text(" " * a)
    text.append("█" * (min(b, width) - a), style=colour.get(step["status"], "grey50"))
    return text


def render_instance(console: Console, d: dict[str, Any], *, step_output: bool = True, limit: int = 5000) -> None:
    """A readable timeline like ``wrangler workflows instances describe``."""
    from datetime import datetime

    grid = Table.grid(padding=(0, 2))
    rows = [
        ("Workflow Name:", d["workflow"]),
        ("Instance Id:", d["id"]),
        ("Status:", STATUS_LABELS.get(d["status"], d["status"])),
        ("Trigger:", TRIGGER_LABELS.get(d["trigger"]["source"], d["trigger"]["source"])),
        ("Queued:", human_time(d["queued"])),
        ("Start:", human_time(d["start"])),
        ("End:", human_time(d["end"])),
        ("Duration:", human_ms(d["duration_ms"])),
        ("Last Successful Step:", d["last_successful_step"] or "-"),
    ]
    if d.get("wake_at"):
        rows.append(("Wakes At:", human_time(d["wake_at"])))
    for key, value in rows:
        grid.add_row(key, value)
    if d.get("error"):
        grid.add_row("Error:", Text(f"{d['error']['name']}: {d['error']['message']}", style="red"))
    if d.get("output") is not None and step_output:
        grid.add_row("Output:", _short(d["output"], limit))
    console.print(grid)
    steps = d["steps"]
    if not steps:
        console.print("\nNo steps yet.")
        return

    def ts(v: str | None) -> float | None:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None

    t0 = min(t for t in [ts(d["start"]) or ts(d["queued"])] + [ts(s["start"]) for s in steps] if t is not None)
    t1 = max([t0 + 0.001] + [ts(s["end"]) or ts(s["start"]) or t0 for s in steps])
    console.print()
    table = _table("Step", "Type", "Status", "Start", "Duration", "Attempts", "Timeline")
    for s in steps:
        failed = sum(1 for a in s["attempts"] if a["error"])
        attempts = f"{len(s['attempts'])}" + (f" ({failed} failed)" if failed else "") if s["type"] == "step" else "-"
        kind, start, took = (
            STEP_TYPE_LABELS.get(s["type"], s["type"]),
            human_time(s["start"]),
            human_ms(s["duration_ms"]),
        )
        table.add_row(s["label"], kind, s["status"], start, took, attempts, _bar(s, t0, t1 - t0))
    console.print(table)
    for s in steps:
        details = []
        for number, a in enumerate(s["attempts"], start=1):
            if a["error"]:
                details.append(
                    Text(
                        f"  attempt {number}: {human_time(a['start'])} ({human_ms(a['duration_ms'])}) ", style="dim"
                    ).append(f"{a['error']['name']}: {a['error']['message']}", style="red")
                )
        if s["error"] and s["type"] != "step":
            details.append(Text(f"  {s['error']['name']}: {s['error']['message']}", style="red"))
        if step_output and s["status"] == "complete" and s["type"] != "sleep":
            details.append(Text(f"  output: {_short(s['output'], limit)}"))
        if details:
            console.print(Text(s["label"], style="bold"))
            for line in details:
                console.print(line)


# -- commands -----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PERDURE_URL", help="server URL (default http://127.0.0.1:8080)")
@click.option("--db", envvar="PERDURE_DB", help="use this database directly instead of a server")
@click.option("--token", envvar="PERDURE_TOKEN", help="bearer token for the server")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.version_option(package_name="perdure")
@click.pass_context
def main(ctx: click.Context, url: str | None, db: str | None, token: str | None, as_json: bool) -> None:
    """Perdure: durable workflows. Inspect and control them, or serve them."""
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, db=db, token=token, json=as_json)


@main.group()
def workflows() -> None:
    """List, describe and trigger workflows."""


@workflows.command("list")
@client_options
@click.pass_context
def workflows_list(ctx: click.Context) -> None:
    """Workflows and their instance counts."""
    data = _run(ctx, lambda b: b.workflows())
    _emit(ctx, {"workflows": data} if ctx.obj.get("json") else data, _render_workflows)


@workflows.command("describe")
@click.argument("name")
@client_options
@click.pass_context
def workflows_describe(ctx: click.Context, name: str) -> None:
    """One workflow."""
    _emit(ctx, _run(ctx, lambda b: b.workflow(name)), _render_workflow)


@workflows.command("trigger")
@click.argument("name")
@click.argument("params", required=False)
@click.option("--id", "instance_id", help="instance id (default: a random UUID)")
@client_options
@click.pass_context
def workflows_trigger(ctx: click.Context, name: str, params: str | None, instance_id: str | None) -> None:
    """Create an instance of NAME with PARAMS (a JSON document)."""
    body: dict[str, Any] = {}
    if params:
        body["params"] = _parse_json(params, "PARAMS")
    if instance_id is not None:
        body["id"] = instance_id
    created = _run(ctx, lambda b: b.trigger(name, body))
    _emit(ctx, created, lambda c, d: c.print(f'🚀 Workflow instance "{d["id"]}" has been queued successfully'))


@main.group()
def instances() -> None:
    """List, describe and control instances."""


@instances.command("list")
@click.argument("name")
@click.option("--status", type=click.Choice(STATUSES), help="only instances with this status")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="continue from a previous page")
@click.option("--id-prefix", help="only instances whose id starts with this")
@client_options
@click.pass_context
def instances_list(
    ctx: click.Context, name: str, status: str | None, limit: int, cursor: str | None, id_prefix: str | None
) -> None:
    """Instances of NAME, newest first."""
    _emit(ctx, _run(ctx, lambda b: b.instances(name, status, limit, cursor, id_prefix)), _render_instances)


@instances.command("describe")
@click.argument("name")
@click.argument("instance_id", default="latest", metavar="[ID|latest]")
@click.option("--step-output/--no-step-output", default=True, show_default=True, help="show step outputs")
@click.option("--truncate-output-limit", type=click.IntRange(1), default=5000, show_default=True)
@client_options
@click.pass_context
def instances_describe(
    ctx: click.Context, name: str, instance_id: str, step_output: bool, truncate_output_limit: int
) -> None:
    """One instance's status and step timeline (ID defaults to the latest)."""
    detail = _run(ctx, lambda b: b.describe(name, instance_id))
    _emit(ctx, detail, lambda c, d: render_instance(c, d, step_output=step_output, limit=truncate_output_limit))


def _control_command(action: str, help_text: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @client_options
    @click.pass_context
    def command(ctx: click.Context, /, name: str, instance_id: str, **kw: Any) -> None:
        from_step = None
        if kw.get("from_step_name"):
            from_step = {"name": kw["from_step_name"], "count": kw["from_step_count"], "type": kw["from_step_type"]}
        summary = _run(ctx, lambda b: b.control(name, instance_id, action, from_step))
        past = {"pause": "paused", "resume": "resumed", "terminate": "terminated", "restart": "restarted"}[action]
        _emit(ctx, summary, lambda c, d: c.print(f'Instance "{d["id"]}" {past}: now {d["status"]}'))

    command.__doc__ = help_text
    if action == "restart":
        command = click.option("--from-step-type", type=click.Choice(["do", "sleep", "waitForEvent"]), default="do")(
            command
        )
        command = click.option("--from-step-count", type=click.IntRange(1), default=1)(command)
        command = click.option("--from-step-name", help="keep the results of the steps before this one")(command)
    return instances.command(action)(command)


_control_command("pause", "Pause an instance (after its in-flight step).")
_control_command("resume", "Resume a paused instance.")
_control_command("terminate", "Terminate an instance for good.")
_control_command("restart", "Run an instance again from the start (or from a step).")


@instances.command("send-event")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--type", "event_type", required=True, help="event type (what wait_for_event waits for)")
@click.option("--payload", default="{}", show_default=True, help="JSON payload")
@client_options
@click.pass_context
def instances_send_event(ctx: click.Context, name: str, instance_id: str, event_type: str, payload: str) -> None:
    """Send an event to an instance."""
    value = _parse_json(payload, "--payload")
    sent = _run(ctx, lambda b: b.send_event(name, instance_id, event_type, value))
    _emit(ctx, sent, lambda c, d: c.print(f'📩 Event "{d["type"]}" sent to instance "{d["id"]}"'))


@main.group()
def queues() -> None:
    """Inspect durable queues (perdure.triggers.queues), send to them, redrive dead letters. Needs --db.

    A queue exists while it holds messages or dead letters: a NAME never used reads as empty."""


def _render_queues(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("No queues: this database holds no queue messages or dead letters.")
        return
    table = _table("Queue", "Ready", "Delayed", "In flight", "Dead", "Oldest message")
    for q in rows:
        age = None if q["oldest_age"] is None else int(q["oldest_age"] * 1000)
        table.add_row(q["name"], str(q["ready"]), str(q["delayed"]), str(q["in_flight"]), str(q["dead"]), human_ms(age))
    console.print(table)


def _render_dead(console: Console, data: dict[str, Any]) -> None:
    if not data["dead_letters"]:
        console.print(f'No dead letters in queue "{escape(data["queue"])}".')
        return
    table = _table("Id", "Message", "Attempts", "Failed", "Error", "Body")
    for d in data["dead_letters"]:
        table.add_row(
            str(d["id"]),
            d["message_id"],
            str(d["attempts"]),
            human_time(d["failed_at"]),
            d["error"] or "-",
            _short(d["body"], 60),
        )
    console.print(table)


@queues.command("list")
@client_options
@click.pass_context
def queues_list(ctx: click.Context) -> None:
    """Queues with their message counts by state.

    Ready, delayed, in flight (leased by a consumer), dead, and the age of the oldest message
    not yet acknowledged."""
    data = _run(ctx, lambda b: _db_only(b).queues())
    _emit(ctx, {"queues": data} if ctx.obj.get("json") else data, _render_queues)


@queues.command("send")
@click.argument("name")
@click.argument("body", metavar="BODY_JSON")
@click.option("--delay", type=click.FloatRange(0), default=0.0, help="seconds before it can be received")
@client_options
@click.pass_context
def queues_send(ctx: click.Context, name: str, body: str, delay: float) -> None:
    """Send one message to queue NAME.

    BODY_JSON is any JSON value up to 1 MiB."""
    if not math.isfinite(delay):
        _fail(f"--delay must be a finite number of seconds, got {delay}", EXIT_INPUT)
    if not body.strip():
        _fail("BODY_JSON is empty: pass a JSON value, e.g. '{\"n\": 1}' or 'null'", EXIT_INPUT)
    value = _parse_json(body, "BODY_JSON")
    sent = _run(ctx, lambda b: _db_only(b).queue_send(name, value, delay))
    later = f" (receivable in {sent['delay']:g} s)" if sent["delay"] else ""
    _emit(ctx, sent, lambda c, d: c.print(f'📬 Message "{d["id"]}" sent to queue "{escape(d["queue"])}"{later}'))


@queues.command("dead")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@client_options
@click.pass_context
def queues_dead(ctx: click.Context, name: str, limit: int) -> None:
    """The newest dead letters of queue NAME.

    A queue never used reads as empty (it is not an error)."""
    _emit(ctx, _run(ctx, lambda b: _db_only(b).queue_dead(name, limit)), _render_dead)


@queues.command("redrive")
@click.argument("name")
@client_options
@click.pass_context
def queues_redrive(ctx: click.Context, name: str) -> None:
    """Move the dead letters of queue NAME back to ready.

    Their attempts start again from 0. Prints how many moved (0 for a queue never used)."""
    moved = _run(ctx, lambda b: _db_only(b).queue_redrive(name))
    _emit(
        ctx, moved, lambda c, d: c.print(f'Moved {d["redriven"]} dead letter(s) back to queue "{escape(d["queue"])}"')
    )


# -- servers ------------------------------------------------------------------------------------
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load(app_spec: str) -> Any:
    from .app_loader import AppLoadError, load_engine

    try:
        return load_engine(app_spec)
    except AppLoadError as exc:
        _fail(str(exc), EXIT_INPUT)


def _serve(app_spec: str, host: str, port: int, token: str | None, *, with_worker: bool, log_level: str) -> None:
    if not token and not is_loopback(host):
        _fail(
            f"refusing to listen on {host} without a token: anyone who can reach it could control your workflows. "
            "Pass --token (or set PERDURE_TOKEN), or bind 127.0.0.1.",
            EXIT_INPUT,
        )
    if token is not None and len(token) < 8:
        _fail("the token must be at least 8 characters long", EXIT_INPUT)
    import uvicorn

    from ..server.api import create_app

    engine = _load(app_spec)
    allowed = LOOPBACK_NAMES if not token and is_loopback(host) else None
    app = create_app(engine, token=token, allowed_hosts=allowed)

    async def main() -> None:
        await engine.ensure_store()
        if with_worker:
            await engine.start()
        try:
            config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
            server = uvicorn.Server(config)
            shown = f"[{host}]" if ":" in host else host
            click.echo(
                f"Perdure {'dev server' if with_worker else 'API'} on http://{shown}:{port}  "
                f"(dashboard /dashboard/, API /api, OpenAPI /openapi.json, metrics /metrics)"
                + ("; workers running" if with_worker else ""),
                err=True,
            )
            await server.serve()
        finally:
            await engine.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"cannot serve on {host}:{port}: {exc}", EXIT_FAILURE)


_SERVER_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True, help="address to bind"),
    click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True),
    click.option("--token", "server_token", envvar="PERDURE_TOKEN", help="require this bearer token"),
    click.option(
        "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
    ),
]


def _server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_SERVER_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.argument("app", metavar="APP")
@_server_options
def serve(app: str, host: str, port: int, server_token: str | None, log_level: str) -> None:
    """Serve the REST API, dashboard and metrics for APP (module:attribute naming an Engine).

    Binds 127.0.0.1 by default; any other address needs --token (or PERDURE_TOKEN)."""
    _serve(app, host, port, server_token, with_worker=False, log_level=log_level)


@main.command()
@click.argument("app", metavar="APP")
@_server_options
def dev(app: str, host: str, port: int, server_token: str | None, log_level: str) -> None:
    """API server, dashboard and a worker for APP in one process (local development)."""
    _serve(app, host, port, server_token, with_worker=True, log_level=log_level)


@main.command()
@click.argument("app", metavar="APP")
def worker(app: str) -> None:
    """Run a worker process for APP (module:attribute naming an Engine)."""
    from .app_loader import AppLoadError
    from .worker import run_worker

    try:
        run_worker(app)
    except AppLoadError as exc:
        _fail(str(exc), EXIT_INPUT)
