"""Run a worker process: ``python -m perdure.cli.worker myapp.workflows:engine`` (``perdure worker``).

A worker imports the application (the ``module:attribute`` that holds its :class:`~perdure.Engine`
with the workflows registered, or a Cloudflare Python Worker project: a directory with a wrangler
file, or that file, on ``--db``; see :mod:`perdure.cloudflare`), starts the engine, and runs
instances until it receives SIGTERM or SIGINT. Then it stops gracefully: in-flight runs are
cancelled and their instances handed back, so another worker (or this one, restarted) resumes
them from their last recorded step. A second signal while stopping exits at once; nothing is
lost either way, since a worker that dies without handing back is taken over when its leases
expire.

Any number of workers may share one PostgreSQL database. If the database cannot be reached at
start, the worker keeps trying with backoff instead of exiting, so workers and database may be
started in any order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from ..engine import Engine
from ..errors import MissingExtraError

log = logging.getLogger("perdure.worker")

_START_BACKOFF_MAX = 10.0


def load_app(app_spec: str, db: str | None = None) -> Engine:
    """The engine that ``app_spec`` (``"module:attribute"``, or a Cloudflare project's
    directory or wrangler file, loaded on ``db``) names."""
    from ..cloudflare import ProjectError, is_project, load_project
    from .app_loader import AppLoadError, load_engine

    if is_project(app_spec):
        from ..cloudflare.console import route_prints

        try:
            engine = load_project(app_spec, db).engine
        except ProjectError as exc:
            raise AppLoadError(str(exc)) from None
        route_prints()
        return engine
    if db is not None:
        raise AppLoadError(f"--db is for a Cloudflare project (a directory with a wrangler file), not {app_spec!r}")
    return load_engine(app_spec)


async def serve(engine: Engine, stop: asyncio.Event | None = None) -> None:
    """Run ``engine`` until ``stop`` is set (or SIGTERM/SIGINT arrives), then stop it."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # a second signal: do not wait for a graceful stop
            log.warning("perdure worker: second %s, exiting now", signal.Signals(signum).name)
            if main is not None:
                main.cancel()
            return
        log.info("perdure worker: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        if await _start(engine, stop):
            log.info(
                "perdure worker %s running %s on %s", engine.owner, sorted(engine.workflows), _safe_url(engine.url)
            )
            await stop.wait()
    finally:
        try:
            await engine.stop()
        finally:
            for signum in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)
    log.info("perdure worker %s stopped", engine.owner)


async def _start(engine: Engine, stop: asyncio.Event) -> bool:
    """Start the engine, retrying while the database is unreachable; False if told to stop first."""
    delay = 0.5
    while not stop.is_set():
        try:
            await engine.start()
            return True
        except MissingExtraError:
            raise  # waiting does not install it
        except Exception as exc:  # the database is down or not there yet: keep trying
            log.warning("perdure worker: cannot start (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            with contextlib.suppress(Exception):
                await engine.stop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, _START_BACKOFF_MAX)
    return False


def _safe_url(url: str) -> str:
    """``url`` without its password, for logs."""
    from urllib.parse import urlparse

    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def run_worker(app: str | Engine, db: str | None = None) -> None:
    """Import ``app`` (``"module:attribute"`` or a Cloudflare project, see :func:`load_app`;
    or take the engine itself), start its engine, and run until SIGTERM or SIGINT; then stop
    gracefully. Blocks; meant to be a process's main function."""
    engine = app if isinstance(app, Engine) else load_app(app, db)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(serve(engine))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perdure.cli.worker", description="Run a Perdure worker process.")
    parser.add_argument(
        "app", help="module:attribute of the application's Engine (myapp.workflows:engine), or a Cloudflare project"
    )
    parser.add_argument(
        "--db", default=None, help="a Cloudflare project's database (default: beside its wrangler file)"
    )
    parser.add_argument("--log-level", default=os.environ.get("PERDURE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app_loader import AppLoadError

    try:
        run_worker(args.app, args.db)
    except AppLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
