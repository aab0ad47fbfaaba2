"""The ``perdure`` click commands: the option plumbing and every command.

``main`` is the group; ``workflows``, ``instances`` and ``queues`` are client commands that run
against a :mod:`~perdure.cli.backends` backend (a server over HTTP, or ``--db``) and print through
:mod:`~perdure.cli.render` (or as JSON); ``serve``, ``dev`` and ``worker`` load an application's
engine and run it. :func:`_run` turns every error into one line on stderr and an exit code.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from ..records import STATUSES
from .backends import (
    DEFAULT_URL,
    EXIT_FAILURE,
    EXIT_INPUT,
    Backend,
    CliError,
    DbBackend,
    HttpBackend,
    db_only,
    exit_code,
)
from .render import (
    console_for_output,
    fail,
    render_dead,
    render_instance,
    render_instances,
    render_queues,
    render_workflow,
    render_workflows,
)
from .replaying import replay
from .serving import dev, serve, worker

T = TypeVar("T")


def _run(ctx: click.Context, action: Callable[[Backend], Awaitable[T]], *, read_only: bool = False) -> T:
    """Open the backend the options name, run ``action``, turn errors into exits.

    ``read_only``: the command only reads, so a SQLite file is opened read-only (it reads while
    another process holds the write lock, and reads a file it may not write)."""
    from ..errors import PerdureError

    options = ctx.obj
    url, db = _target(options)

    async def main() -> T:
        backend: Backend
        if db:
            backend = DbBackend(db, read_only=read_only)
        else:
            backend = HttpBackend(url or DEFAULT_URL, options.get("token"))
        try:
            return await action(backend)
        finally:
            await backend.close()

    try:
        return asyncio.run(main())
    except CliError as exc:
        fail(str(exc), exc.exit_code)
    except (PerdureError, ValueError) as exc:
        fail(str(exc), exit_code(exc))
    except Exception as exc:  # a database that cannot be opened or reached, and the like
        fail(f"{type(exc).__name__}: {exc}".strip(), EXIT_FAILURE)
    raise AssertionError("unreachable")


def _target(options: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ``(url, db)`` a client command uses: ``--url`` or ``--db`` given on the command line
    (before or after the command) win over ``PERDURE_URL`` and ``PERDURE_DB``, which win over
    the default URL. Both given the same way is an error: it is unclear which was meant."""
    url, db = options.get("url"), options.get("db")
    if url and db:
        fail("pass either --url or --db, not both", EXIT_INPUT)
    if url or db:
        return url, db
    url, db = options.get("env_url"), options.get("env_db")
    if url and db:
        fail("PERDURE_URL and PERDURE_DB are both set: pass --url or --db to choose", EXIT_INPUT)
    return url, db


def _emit(ctx: click.Context, data: Any, render: Callable[[Console, Any], None]) -> None:
    if ctx.obj.get("json"):
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        render(console_for_output(), data)


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--db``, ``--token`` and ``--json`` on a command (also accepted before it)."""

    @click.option(
        "--url",
        help=f"server URL, with the prefix an app mounts Perdure under (env PERDURE_URL; default {DEFAULT_URL})",
    )
    @click.option("--db", help="use this database directly instead of a server (env PERDURE_DB)")
    @click.option("--token", help="bearer token for the server (env PERDURE_TOKEN)")
    @click.option("--json", "as_json", is_flag=True, default=None, help="print JSON instead of tables")
    @click.pass_context
    def wrapper(
        ctx: click.Context, /, url: str | None, db: str | None, token: str | None, as_json: bool | None, **kw: Any
    ) -> Any:
        for key, value in (("url", url), ("db", db), ("token", token), ("json", as_json)):
            if value is not None:
                ctx.obj[key] = value
        _target(ctx.obj)
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
        fail(f"{what} is not valid JSON: {exc}", EXIT_INPUT)
    return None


class _Perdure(click.Group):
    """The ``perdure`` group: a feature whose optional extra is not installed ends any command
    with one line naming the extra (exit code 1), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..errors import MissingExtraError

        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            fail(str(exc), EXIT_FAILURE)


# -- commands -----------------------------------------------------------------------------------
@click.group(cls=_Perdure, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="PERDURE_URL",
    help=f"server URL, with the prefix an app mounts Perdure under, e.g. http://127.0.0.1:8787/perdure "
    f"(env PERDURE_URL; default {DEFAULT_URL}, what `perdure serve` binds)",
)
@click.option("--db", envvar="PERDURE_DB", help="use this database directly instead of a server (env PERDURE_DB)")
@click.option("--token", envvar="PERDURE_TOKEN", help="bearer token for the server (env PERDURE_TOKEN)")
@click.option("--json", "as_json", is_flag=True, help="print JSON (the REST API's documents) instead of tables")
@click.version_option(package_name="perdure")
@click.pass_context
def main(ctx: click.Context, url: str | None, db: str | None, token: str | None, as_json: bool) -> None:
    """Perdure: durable workflows. Inspect and control them, or serve them.

    Client commands reach a server at --url (else PERDURE_URL, else http://127.0.0.1:8080), or
    a database with --db (else PERDURE_DB); an option on the command line, before or after the
    command, wins over the environment. Tables keep every column and whole ids when the output
    is not a terminal (one row a line, for grep); --json is for scripts."""
    from click.core import ParameterSource

    ctx.ensure_object(dict)
    from_env = {name: ctx.get_parameter_source(name) == ParameterSource.ENVIRONMENT for name in ("url", "db")}
    ctx.obj.update(
        url=None if from_env["url"] else url,
        db=None if from_env["db"] else db,
        env_url=url if from_env["url"] else None,
        env_db=db if from_env["db"] else None,
        token=token,
        json=as_json,
    )


@main.group()
def workflows() -> None:
    """List, describe and trigger workflows."""


@workflows.command("list")
@client_options
@click.pass_context
def workflows_list(ctx: click.Context) -> None:
    """Workflows and their instance counts."""
    data = _run(ctx, lambda b: b.workflows(), read_only=True)
    _emit(ctx, {"workflows": data} if ctx.obj.get("json") else data, render_workflows)


@workflows.command("describe")
@click.argument("name")
@client_options
@click.pass_context
def workflows_describe(ctx: click.Context, name: str) -> None:
    """One workflow."""
    _emit(ctx, _run(ctx, lambda b: b.workflow(name), read_only=True), render_workflow)


@workflows.command("trigger")
@click.argument("name")
@click.argument("params", required=False)
@click.option("--id", "instance_id", help="instance id (default: a random UUID)")
@click.option("--priority", type=click.IntRange(0, 2**31 - 1), help="lower runs first among queued instances (0)")
@click.option("--concurrency-key", help="the key it counts under for the workflow's concurrency_per_key")
@client_options
@click.pass_context
def workflows_trigger(
    ctx: click.Context,
    name: str,
    params: str | None,
    instance_id: str | None,
    priority: int | None,
    concurrency_key: str | None,
) -> None:
    """Create an instance of NAME with PARAMS (a JSON document)."""
    body: dict[str, Any] = {}
    if params:
        body["params"] = _parse_json(params, "PARAMS")
    if instance_id is not None:
        body["id"] = instance_id
    if priority is not None:
        body["priority"] = priority
    if concurrency_key is not None:
        body["concurrency_key"] = concurrency_key
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
    page = _run(ctx, lambda b: b.instances(name, status, limit, cursor, id_prefix), read_only=True)
    _emit(ctx, page, render_instances)


@instances.command("describe")
@click.argument("name")
@click.argument("instance_id", default="latest", metavar="[ID|latest]")
@click.option(
    "--step-output/--no-step-output", default=True, show_default=True, help="show the outputs (steps and instance)"
)
@click.option(
    "--truncate-output-limit",
    type=click.IntRange(1),
    default=5000,
    show_default=True,
    help="cut each shortened output after this many characters (ignored with --full)",
)
@click.option("--full", is_flag=True, help="print every output whole: neither shortened nor cut")
@client_options
@click.pass_context
def instances_describe(
    ctx: click.Context, name: str, instance_id: str, step_output: bool, truncate_output_limit: int, full: bool
) -> None:
    """One instance's status and step timeline (ID defaults to the latest).

    Outputs are shortened the way the dashboard shows them: a list of more than 16 numbers
    reads [384 floats], a longer list keeps its first 50 items and a string its first 500
    characters, with a note of how much was left out; each output is then cut after
    --truncate-output-limit characters. --full prints them whole, --no-step-output hides them,
    and --json prints the whole document (never shortened)."""
    detail = _run(ctx, lambda b: b.describe(name, instance_id), read_only=True)
    _emit(
        ctx,
        detail,
        lambda c, d: render_instance(c, d, step_output=step_output, limit=truncate_output_limit, full=full),
    )


def _control_command(action: str, help_text: str) -> click.Command:
    @click.argument("name")
    @click.argument("instance_id", metavar="ID")
    @client_options
    @click.pass_context
    def command(ctx: click.Context, /, name: str, instance_id: str, **kw: Any) -> None:
        from_step = None
        if kw.get("from_step_name"):
            from_step = {"name": kw["from_step_name"], "count": kw["from_step_count"], "type": kw["from_step_type"]}
        rollback = bool(kw.get("rollback"))
        summary = _run(ctx, lambda b: b.control(name, instance_id, action, from_step, rollback))
        past = {"pause": "paused", "resume": "resumed", "terminate": "terminated", "restart": "restarted"}[action]
        _emit(ctx, summary, lambda c, d: c.print(f'Instance "{d["id"]}" {past}: now {d["status"]}'))

    command.__doc__ = help_text
    if action == "restart":
        command = click.option("--from-step-type", type=click.Choice(["do", "sleep", "waitForEvent"]), default="do")(
            command
        )
        command = click.option("--from-step-count", type=click.IntRange(1), default=1)(command)
        command = click.option("--from-step-name", help="keep the results of the steps before this one")(command)
    if action == "terminate":
        command = click.option(
            "--rollback", is_flag=True, help="run the rollback handlers of its finished steps first (newest first)"
        )(command)
    return instances.command(action)(command)


_control_command("pause", "Pause an instance (after its in-flight step).")
_control_command("resume", "Resume a paused instance.")
_control_command("terminate", "Terminate an instance for good.")
_control_command("restart", "Run an instance again from the start (or from a step).")


@instances.command("delete")
@click.argument("name")
@click.argument("instance_ids", metavar="ID...", nargs=-1, required=True)
@client_options
@click.pass_context
def instances_delete(ctx: click.Context, name: str, instance_ids: tuple[str, ...]) -> None:
    """Delete 1-100 instances with their steps, events and history; an unfinished one is
    terminated first. Exits 1 if any id could not be deleted (Cloudflare's deleteBatch)."""
    result = _run(ctx, lambda b: b.delete(name, list(instance_ids)))

    def show(c: Any, d: dict[str, Any]) -> None:
        for item in d["deleted"]:
            c.print(f'Instance "{escape(item["id"])}" deleted')
        for item in d["errors"]:
            c.print(f'[red]Instance "{escape(item["id"])}" not deleted: {item["message"]} ({item["code"]})[/red]')

    _emit(ctx, result, show)
    if result["errors"]:
        ctx.exit(EXIT_FAILURE)


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


@queues.command("list")
@client_options
@click.pass_context
def queues_list(ctx: click.Context) -> None:
    """Queues with their message counts by state.

    Ready, delayed, in flight (leased by a consumer), dead, and the age of the oldest message
    not yet acknowledged."""
    data = _run(ctx, lambda b: db_only(b).queues(), read_only=True)
    _emit(ctx, {"queues": data} if ctx.obj.get("json") else data, render_queues)


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
        fail(f"--delay must be a finite number of seconds, got {delay}", EXIT_INPUT)
    if not body.strip():
        fail("BODY_JSON is empty: pass a JSON value, e.g. '{\"n\": 1}' or 'null'", EXIT_INPUT)
    value = _parse_json(body, "BODY_JSON")
    sent = _run(ctx, lambda b: db_only(b).queue_send(name, value, delay))
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
    _emit(ctx, _run(ctx, lambda b: db_only(b).queue_dead(name, limit), read_only=True), render_dead)


@queues.command("redrive")
@click.argument("name")
@client_options
@click.pass_context
def queues_redrive(ctx: click.Context, name: str) -> None:
    """Move the dead letters of queue NAME back to ready.

    Their attempts start again from 0. Prints how many moved (0 for a queue never used)."""
    moved = _run(ctx, lambda b: db_only(b).queue_redrive(name))
    _emit(
        ctx, moved, lambda c, d: c.print(f'Moved {d["redriven"]} dead letter(s) back to queue "{escape(d["queue"])}"')
    )


# -- servers: in perdure.cli.serving --------------------------------------------------------------
main.add_command(serve)
main.add_command(dev)
main.add_command(worker)
main.add_command(replay)
