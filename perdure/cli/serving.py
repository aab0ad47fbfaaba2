"""The ``perdure`` commands that run an application's engine: ``serve``, ``dev`` and ``worker``.

Each loads the engine an ``APP`` string names (``module:attribute``, see
:mod:`~perdure.cli.app_loader`). ``serve`` and ``dev`` need the ``server`` extra; without it they
print one line naming it. At start they print the exact ``--url`` the client commands need to
reach them (:func:`cli_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .backends import EXIT_FAILURE, EXIT_INPUT
from .render import fail

if TYPE_CHECKING:
    from ..engine import Engine

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


def _serve(app_spec: str, host: str, port: int, token: str | None, *, with_worker: bool, log_level: str) -> None:
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

    engine = _load(app_spec)
    allowed = LOOPBACK_NAMES if not token and is_loopback(host) else None
    app = create_app(engine, token=token, allowed_hosts=allowed)

    async def main() -> None:
        await engine.ensure_store()
        if with_worker:
            await engine.start()
        try:
            server = uvicorn.Server(server_config(app, host, port, log_level=log_level))
            shown = f"[{host}]" if ":" in host else host
            click.echo(
                f"Perdure {'dev server' if with_worker else 'API'} on http://{shown}:{port}  "
                f"(dashboard /dashboard/, API /api, OpenAPI /openapi.json, metrics /metrics)"
                + ("; workers running" if with_worker else ""),
                err=True,
            )
            click.echo(cli_hint(cli_url(host, port), engine, token=token is not None), err=True)
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
    click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="port to bind"),
    click.option("--token", "server_token", envvar="PERDURE_TOKEN", help="require this bearer token"),
    click.option(
        "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
    ),
]


def _server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_SERVER_OPTIONS):
        fn = option(fn)
    return fn


@click.command()
@click.argument("app", metavar="APP")
@_server_options
def serve(app: str, host: str, port: int, server_token: str | None, log_level: str) -> None:
    """Serve the REST API, dashboard and metrics for APP (module:attribute naming an Engine).

    Binds 127.0.0.1 by default; any other address needs --token (or PERDURE_TOKEN). Prints the
    --url the client commands need to reach it. Needs the server extra
    (pip install 'perdure[server]')."""
    _serve(app, host, port, server_token, with_worker=False, log_level=log_level)


@click.command()
@click.argument("app", metavar="APP")
@_server_options
def dev(app: str, host: str, port: int, server_token: str | None, log_level: str) -> None:
    """API server, dashboard and a worker for APP in one process (local development).

    Prints the --url the client commands need to reach it. Needs the server extra
    (pip install 'perdure[server]')."""
    _serve(app, host, port, server_token, with_worker=True, log_level=log_level)


@click.command()
@click.argument("app", metavar="APP")
def worker(app: str) -> None:
    """Run a worker process for APP (module:attribute naming an Engine)."""
    from .app_loader import AppLoadError
    from .worker import run_worker

    try:
        run_worker(app)
    except AppLoadError as exc:
        fail(str(exc), EXIT_INPUT)
