"""``perdure replay APP``: check that the stored instances still replay against APP's code.

Loads APP's engine (``module:attribute``) for its registered workflows, opens the database
(``--db``, else the engine's own URL) read-only where the backend allows, and replays every
instance, or those of ``--workflow`` / ``--instance``, without running a step
(:mod:`perdure.replay`). Exit 0 when every instance replays, 1 when one diverges, 2 for bad
input. A CI job runs this against a copy of production before a deploy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.markup import escape

from .backends import EXIT_FAILURE, EXIT_INPUT
from .render import console_for_output, fail


@click.command()
@click.argument("app", metavar="APP")
@click.option("--db", "db_url", help="the database whose instances to replay (default: the engine's own URL)")
@click.option("--workflow", help="only this workflow")
@click.option("--instance", "instances", multiple=True, help="only this instance (repeatable; needs --workflow)")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON")
@click.pass_context
def replay(
    ctx: click.Context, app: str, db_url: str | None, workflow: str | None, instances: tuple[str, ...], as_json: bool
) -> None:
    """Replay stored instances against APP's current code; report the first divergence of each."""
    from ..errors import PerdureError
    from ..replay import check
    from ..store import open_store
    from .app_loader import AppLoadError, load_engine

    if instances and workflow is None:
        fail("--instance needs --workflow (instance ids are unique per workflow)", EXIT_INPUT)
    try:
        engine = load_engine(app)
    except AppLoadError as exc:
        fail(str(exc), EXIT_INPUT)
    url = db_url or (ctx.obj or {}).get("db") or engine.url
    if workflow is not None and workflow not in engine.workflows:
        fail(f"APP has no workflow named {workflow!r}; it has {', '.join(sorted(engine.workflows)) or 'none'}", 2)

    async def run() -> list[dict[str, Any]]:
        store = open_store(url, read_only=True) if url.startswith("sqlite") else open_store(url)
        try:
            await store.open()
            reports = await check(
                store, engine.workflows, workflow=workflow, instance_ids=list(instances) if instances else None
            )
        finally:
            await store.close()
        return [r.as_dict() for r in reports]

    try:
        reports = asyncio.run(run())
    except (PerdureError, ValueError) as exc:
        fail(str(exc), EXIT_INPUT if isinstance(exc, ValueError) else EXIT_FAILURE)
    diverged = [r for r in reports if not r["ok"]]
    if as_json or (ctx.obj or {}).get("json"):
        click.echo(json.dumps({"ok": not diverged, "instances": reports}, indent=2))
    else:
        console = console_for_output()
        for report in diverged:
            d = report["divergence"]
            console.print(
                f"[red]✘[/red] {escape(report['workflow'])}/{escape(report['id'])} ({report['status']}): "
                f"{d['kind']}: {escape(d['message'])}"
            )
        summary = f"{len(reports) - len(diverged)} of {len(reports)} instance(s) replay"
        console.print(("[green]✔[/green] " if not diverged else "[red]✘[/red] ") + summary)
    if diverged:
        ctx.exit(EXIT_FAILURE)
