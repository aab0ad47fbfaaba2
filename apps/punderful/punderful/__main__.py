"""Command line: ``python -m punderful`` serves the app; ``python -m punderful import`` imports puns.

    python -m punderful [--host 127.0.0.1] [--port 8787] [--db URL] [--data-dir DIR]
                        [--moderation auto|local|openai|off] [--no-workers]
                        [--perdure-token TOKEN | --no-perdure] [--allowed-host NAME ...]
                        [--no-seed]
    python -m punderful import [--limit N] [--wait] [--db URL] [--data-dir DIR]

``serve`` runs the web app, the engine's workers and Perdure's REST API and dashboard (at
``/perdure``) in one process, and prints the URL. ``--port 0`` picks a free port. As with
``perdure serve``, any ``--host`` but a loopback address needs ``--perdure-token`` (or
``PERDURE_TOKEN``) for that mount, or ``--no-perdure``; only the bound address, the loopback
names and ``--allowed-host`` names are answered. On a fresh database (no puns, never seeded)
the server first imports the bundled puns through the publish workflow, with a progress bar in
the log, so the site has content from the first minute; ``--no-seed`` starts it empty.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from punderful.config import MODERATION_MODES, Config, ConfigError

if TYPE_CHECKING:
    from punderful.app import Punderful

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The same options on the main parser and on each sub-command; the sub-commands' copies
    # default to SUPPRESS so they do not overwrite a value given before the sub-command.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--db", default=default, help="engine database URL (sqlite:///file.db or postgresql://...)")
    parser.add_argument("--data-dir", default=default, type=Path, help="directory for the SQLite files")
    parser.add_argument("--moderation", default=default, choices=MODERATION_MODES, help="content moderation mode")
    parser.add_argument("-v", "--verbose", default=argparse.SUPPRESS if suppress else False, action="store_true")


def _serve_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--host", default=default("127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", default=default(8787), type=int, help="port (default 8787, wrangler dev's; 0 = any free port)"
    )
    parser.add_argument(
        "--no-workers",
        default=default(False),
        action="store_true",
        help="serve only; let other processes run the workflows",
    )
    parser.add_argument(
        "--perdure-token",
        default=default(None),
        metavar="TOKEN",
        help="bearer token Perdure's API and dashboard at /perdure require (env PERDURE_TOKEN); "
        "needed when --host is not a loopback address",
    )
    parser.add_argument(
        "--no-perdure",
        default=default(False),
        action="store_true",
        help="do not mount Perdure's API and dashboard at /perdure",
    )
    parser.add_argument(
        "--allowed-host",
        default=default(None),
        action="append",
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; env PUNDERFUL_ALLOWED_HOSTS, comma-separated); "
        "the bound address and 127.0.0.1, localhost, ::1 always are",
    )
    parser.add_argument(
        "--no-seed",
        default=default(False),
        action="store_true",
        help="do not import the bundled puns on a fresh database (by default the first start of a database "
        "with no puns, never seeded, imports them through the publish workflow)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m punderful", description="Punderful: puns, durably published.")
    _common(parser, suppress=False)
    _serve_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the web app and the workers (the default)")
    _common(serve, suppress=True)
    _serve_options(serve, suppress=True)
    importer = commands.add_parser("import", help="import the bundled pun data set through create_batch")
    _common(importer, suppress=True)
    importer.add_argument("--limit", type=int, default=None, help="import only the first N puns")
    importer.add_argument("--wait", action="store_true", help="run the workers here and wait until all are published")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return Config.from_env(
        data_dir=args.data_dir,
        db_url=args.db,
        moderation=args.moderation,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=False if getattr(args, "no_workers", False) else None,
        perdure_token=getattr(args, "perdure_token", None),
        mount_perdure=False if getattr(args, "no_perdure", False) else None,
        allowed_hosts=getattr(args, "allowed_host", None),
    )


class ListenError(Exception):
    """The address to serve on cannot be bound: one line for the user, not a traceback."""


async def serve(config: Config, *, seed: bool = True) -> None:
    """Run until SIGINT/SIGTERM: the workers stop after the web server, and running instances
    resume from their last finished step on the next start. With ``seed``, a fresh database is
    seeded with the bundled puns in the background once the server answers
    (:func:`punderful.importer.seed_if_fresh`)."""
    import uvicorn
    from perdure.cli.serving import cli_url, is_loopback
    from perdure.server.http_server import server_config

    from punderful.app import Punderful

    # Bound here rather than by uvicorn so that the printed URL has the real port (--port 0).
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host.strip("[]"), config.port))
        sock.listen(128)  # the backlog server_config is given below
    except OSError as exc:  # in use, not an address of this machine, a name that does not resolve...
        sock.close()
        raise ListenError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    app = Punderful(config)
    # Perdure's server settings: slow clients (unfinished headers, idle keep-alives) are closed
    # and connections are bounded, as for `perdure serve`.
    server = uvicorn.Server(
        server_config(app.asgi, config.host, config.port, log_level="warning", access_log=False, backlog=128)
    )
    async with app:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        # uvicorn exposes start-up only as a flag, so it is polled (briefly, once).
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if family == socket.AF_INET6 else host
            print(f"Punderful is running at http://{shown}:{port}/", flush=True)
            if app.perdure_mount:
                login = " (asks for the token)" if config.perdure_token else ""
                print(f"Workflows dashboard: http://{shown}:{port}{app.perdure_mount}/dashboard/{login}", flush=True)
                token = " --token $PERDURE_TOKEN" if config.perdure_token else ""
                url = cli_url(config.host, port, app.perdure_mount)
                print(f"Workflows CLI: perdure --url {url}{token} instances list publish", flush=True)
            if not is_loopback(config.host):
                print(
                    f"Answers requests for Host {', '.join(config.served_hosts)} "
                    "(add names with --allowed-host or PUNDERFUL_ALLOWED_HOSTS)",
                    flush=True,
                )
            print(f"Data: {config.engine_url}", flush=True)
        seeding = asyncio.create_task(_seed(app)) if seed and server.started else None
        try:
            await task
        finally:
            if seeding is not None:
                # Stopping mid-seed is safe: the drafts' instances are created on the next
                # start, and the seed (marked started, not done) is finished then.
                seeding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await seeding


async def _seed(app: Punderful) -> None:
    """Seed a fresh database; a failure is reported in the log and the site keeps serving."""
    from punderful.importer import seed_if_fresh

    try:
        await seed_if_fresh(app)
    except Exception as exc:  # the site works without the seed; say how to import by hand
        print(
            f"punderful: seeding the bundled puns failed ({exc!r}); run `python -m punderful import` to retry",
            file=sys.stderr,
            flush=True,
        )


def run_import(config: Config, limit: int | None, wait: bool) -> int:
    """The ``import`` sub-command; prints a summary line."""
    from punderful.importer import import_puns

    if limit is not None and limit < 1:
        print("--limit must be at least 1", file=sys.stderr)
        return 2
    result = asyncio.run(import_puns(config, limit=limit, wait=wait))
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(result.statuses.items()))
    print(
        f"{result.total} puns in the data set: {result.new_instances} new publish instances, "
        f"{result.total - result.new_instances} already imported; now {statuses or 'nothing stored'}.",
        flush=True,
    )
    if not wait and result.statuses.get("draft"):
        print("Drafts publish in the background while `python -m punderful` runs on this database.", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"punderful: {exc}", file=sys.stderr)
        return 2
    if args.command == "import":
        if getattr(args, "no_seed", False):
            print("punderful: --no-seed is an option of serving, not of import", file=sys.stderr)
            return 2
        return run_import(config, args.limit, args.wait)
    try:
        asyncio.run(serve(config, seed=not args.no_seed))
    except KeyboardInterrupt:
        pass
    except ListenError as exc:
        print(f"punderful: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
