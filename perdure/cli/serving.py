"""The ``perdure`` commands that run an application's engine: ``serve``, ``dev`` and ``worker``.

Each loads the engine an ``APP`` string names (``module:attribute``, see
:mod:`~perdure.cli.app_loader`), or runs a Cloudflare Python Worker project: ``APP`` is then a
directory holding ``wrangler.json``, ``wrangler.jsonc`` or ``wrangler.toml`` (or that file; see
:mod:`perdure.cloudflare`), whose ``fetch`` is served at the root with Perdure's API and
dashboard under ``/perdure``, on the database ``--db`` names. ``serve`` and ``dev`` need the
``server`` extra; without it they print one line naming it. At start they print the exact
``--url`` the client commands need to reach them (:func:`cli_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .backends import EXIT_FAILURE, EXIT_INPUT
from .render import fail

if TYPE_CHECKING:
    from ..cloudflare import Project
    from ..engine import Engine

DEFAULT_PORT = 8080
WRANGLER_PORT = 8787  # what `wrangler dev` binds
CONFIG_SUFFIXES = (".toml", ".json", ".jsonc")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cli_url(host: str, port: int, prefix: str = "") -> str:
    """The ``--url`` that reaches a server bound to ``host``:``port`` (a wildcard bind is
    reached on loopback), with the mount ``prefix`` an app put Perdure under::

        cli_url("0.0.0.0", 8080)             # 'http://127.0.0.1:8080'
        cli_url("::1", 8787, "/perdure")     # 'http://[::1]:8787/perdure'
    """
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{prefix.rstrip('/')}"


def cli_hint(url: str, engine: Engine, *, token: bool = False) -> str:
    """The line a server prints to say how the CLI reaches it, with one of its workflows."""
    names = sorted(engine.workflows)
    command = f"instances list {names[0]}" if names else "workflows list"
    with_token = " --token $PERDURE_TOKEN" if token else ""
    return f"CLI: perdure --url {url}{with_token} {command}   (or export PERDURE_URL={url})"


def _load(app_spec: str) -> Any:
    from .app_loader import AppLoadError, load_engine

    try:
        return load_engine(app_spec)
    except AppLoadError as exc:
        fail(str(exc), EXIT_INPUT)


def load_target(
    app_spec: str, dbs: tuple[str | None, str | None], *, dev: bool = False
) -> tuple[Engine, Project | None]:
    """The engine ``app_spec`` names, and the Cloudflare project when it names one (a
    directory with a wrangler file, or that file) loaded on ``--db``, else ``PERDURE_DB``
    (``dbs``), with its ``.dev.vars`` for ``dev``; bad input ends the command with one line."""
    from ..cloudflare import ProjectError, is_project, load_project

    db, env_db = dbs
    if is_project(app_spec):
        from ..cloudflare.console import route_prints

        try:
            project = load_project(app_spec, db or env_db, dev_vars=dev)
        except ProjectError as exc:
            fail(str(exc), EXIT_INPUT)
        route_prints()
        return project.engine, project
    if ":" not in app_spec and (Path(app_spec).exists() or "/" in app_spec or app_spec.endswith(CONFIG_SUFFIXES)):
        from ..cloudflare.wrangler import read_config

        try:  # says which: no such path, no wrangler file there, not a wrangler file
            read_config(app_spec)
        except ValueError as exc:
            fail(f"{exc} (APP is a Cloudflare project or module:attribute)", EXIT_INPUT)
    if db is not None:
        fail(
            f"--db is for a Cloudflare project (a directory with a wrangler file); {app_spec!r} names an "
            "engine, which names its own database",
            EXIT_INPUT,
        )
    return _load(app_spec), None


def _serve(
    app_spec: str,
    host: str,
    port: int | None,
    token: str | None,
    dbs: tuple[str | None, str | None],
    *,
    with_worker: bool,
    log_level: str,
) -> None:
    from .._optional import require_extra

    require_extra("server", f"perdure {'dev' if with_worker else 'serve'}")  # one line without it (see main)
    if not token and not is_loopback(host):
        fail(
            f"refusing to listen on {host} without a token: anyone who can reach it could control your workflows. "
            "Pass --token (or set PERDURE_TOKEN), or bind 127.0.0.1.",
            EXIT_INPUT,
        )
    if token is not None and len(token) < 8:
        fail("the token must be at least 8 characters long", EXIT_INPUT)
    import uvicorn

    from ..server.api import create_app
    from ..server.http_server import server_config

    engine, project = load_target(app_spec, dbs, dev=with_worker)
    if port is None:  # not given: a project's dev.port, else wrangler dev's 8787; Perdure's 8080
        port = (project.config.dev_port or WRANGLER_PORT) if project is not None else DEFAULT_PORT
    allowed = LOOPBACK_NAMES if not token and is_loopback(host) else None
    app: Any = create_app(engine, token=token, allowed_hosts=allowed)
    prefix = ""
    if project is not None:
        from ..cloudflare.runner import MOUNT

        app, prefix = project.asgi(app, expose_errors=with_worker), MOUNT

    async def main() -> None:
        await engine.ensure_store()
        if with_worker:
            await engine.start()
        try:
            server = uvicorn.Server(server_config(app, host, port, log_level=log_level))
            shown = f"[{host}]" if ":" in host else host
            if project is not None:
                click.echo(
                    f"Worker {project.title!r} ({project.config.path.name}) on http://{shown}:{port}  "
                    f"(its fetch; Perdure: dashboard {prefix}/dashboard/, API {prefix}/api, metrics {prefix}/metrics)"
                    + ("; workers running" if with_worker else ""),
                    err=True,
                )
            else:
                click.echo(
                    f"Perdure {'dev server' if with_worker else 'API'} on http://{shown}:{port}  "
                    f"(dashboard /dashboard/, API /api, OpenAPI /openapi.json, metrics /metrics)"
                    + ("; workers running" if with_worker else ""),
                    err=True,
                )
            click.echo(cli_hint(cli_url(host, port, prefix), engine, token=token is not None), err=True)
            await server.serve()
        finally:
            await engine.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"cannot serve on {host}:{port}: {exc}", EXIT_FAILURE)


_SERVER_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True, help="address to bind"),
    click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=None,
        help=f"port to bind [default: {DEFAULT_PORT}; a Cloudflare project's dev.port, else {WRANGLER_PORT}]",
    ),
    click.option("--token", "server_token", envvar="PERDURE_TOKEN", help="require this bearer token"),
    click.option(
        "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
    ),
]
_DB_OPTION = click.option(
    "--db",
    "project_db",
    help="database of a Cloudflare project (sqlite:///… or postgresql://…; else PERDURE_DB; default "
    "sqlite:///PATH/.perdure/perdure.db)",
)


def _project_db(project_db: str | None) -> tuple[str | None, str | None]:
    """``(--db, PERDURE_DB)``: ``--db`` given after the command or before it
    (``perdure --db URL dev PATH``), and the environment's."""
    options = click.get_current_context().find_root().obj
    options = options if isinstance(options, dict) else {}
    return project_db if project_db is not None else options.get("db"), options.get("env_db")


def _server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_SERVER_OPTIONS):
        fn = option(fn)
    return fn


@click.command()
@click.argument("app", metavar="APP")
@_server_options
@_DB_OPTION
def serve(
    app: str, host: str, port: int | None, server_token: str | None, log_level: str, project_db: str | None
) -> None:
    """Serve the REST API, dashboard and metrics for APP (module:attribute naming an Engine).

    APP may instead be a Cloudflare Python Worker project (a directory with wrangler.toml,
    wrangler.json or wrangler.jsonc, or that file): its fetch is served at the root, Perdure
    under /perdure, on --db. Binds 127.0.0.1 by default; any other address needs --token (or
    PERDURE_TOKEN). Prints the --url the client commands need to reach it. Needs the server
    extra (pip install 'perdure[server]')."""
    _serve(app, host, port, server_token, _project_db(project_db), with_worker=False, log_level=log_level)


@click.command()
@click.argument("app", metavar="APP")
@_server_options
@_DB_OPTION
def dev(
    app: str, host: str, port: int | None, server_token: str | None, log_level: str, project_db: str | None
) -> None:
    """API server, dashboard and a worker for APP in one process (local development).

    APP is module:attribute naming an Engine, or a Cloudflare Python Worker project (a
    directory with a wrangler file, or that file): perdure dev PATH serves its fetch at
    the printed URL (dev.port, else 8787), Perdure under /perdure, and adds .dev.vars to its
    vars. Prints the --url the client commands need to reach it. Needs the server extra
    (pip install 'perdure[server]')."""
    _serve(app, host, port, server_token, _project_db(project_db), with_worker=True, log_level=log_level)


@click.command()
@click.argument("app", metavar="APP")
@_DB_OPTION
def worker(app: str, project_db: str | None) -> None:
    """Run a worker process for APP (module:attribute naming an Engine, or a Cloudflare
    project's directory or wrangler file, on --db)."""
    from .worker import run_worker

    engine, _project = load_target(app, _project_db(project_db))
    run_worker(engine)
