"""How the ``perdure`` commands draw their answers with rich: tables, grids and step timelines.

Each ``render_*`` function takes a console and the JSON document a command got (from the REST
API or the database, the same either way) and prints it for a person; ``--json`` skips them.
Labels and the formatting of times and durations come from :mod:`perdure.server.formatting`,
shared with the dashboard.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..server.formatting import (
    STATUS_LABELS,
    STEP_TYPE_LABELS,
    TRIGGER_LABELS,
    describe_flow,
    describe_reasons,
    human_ms,
    human_time,
    shorten,
)

# Columns whose values are never cut or wrapped, whatever the width: what scripts and grep need.
WHOLE = ("Id", "Step", "Name", "Queue", "Message")


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on stderr (``✘ message``) and exit with ``code``."""
    import sys

    Console(stderr=True).print(f"[bold red]✘[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _short(value: Any, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


# The width of a console that is not a terminal: every table row fits on one line.
PIPE_WIDTH = 4096


def console_for_output() -> Console:
    """The console for answers: on a terminal, its width; otherwise (a pipe, a file) wide enough
    that every table row stays on one line, so no column is dropped or cut for ``grep``.

    Rich decides what is a terminal: ``TTY_COMPATIBLE=1`` or ``FORCE_COLOR`` make a pipe one."""
    console = Console(highlight=False, soft_wrap=True)
    if console.is_terminal:
        return console
    return Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)


def _table(*headers: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)  # a line starts with its first value
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _print(console: Console, table: Table) -> None:
    """Print ``table`` so that no column is dropped and no :data:`WHOLE` value cut.

    The :data:`WHOLE` columns are as wide as their widest value; the others may wrap, but not
    within a word. A table that does not fit even so (a narrow terminal) is printed as one
    block of ``Header: value`` lines per row instead. Off a terminal, lines carry no trailing
    blanks."""
    for column in table.columns:
        cells = [str(column.header), *(str(cell) for cell in column.cells)]
        if column.header in WHOLE:
            column.no_wrap = True
            column.min_width = max(cell_len(cell) for cell in cells)
        else:
            column.min_width = max(cell_len(word) for cell in cells for word in cell.split() or [""])
    _, right, _, left = Padding.unpack(table.padding)
    needed = sum((column.min_width or 0) + left + right for column in table.columns) - (left + right)
    if needed > console.width:
        _print_records(console, table)
    else:
        _out(console, table)


def _out(console: Console, renderable: Table) -> None:
    """Print ``renderable``; off a terminal without the blanks that pad its lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    console.out("\n".join(line.rstrip() for line in captured.get().splitlines()), highlight=False)


def _print_records(console: Console, table: Table) -> None:
    headers = [str(column.header) for column in table.columns]
    width = max(cell_len(h) for h in headers) + 2
    for number, row in enumerate(zip(*(column.cells for column in table.columns), strict=True)):
        if number:
            console.print()
        for header, cell in zip(headers, row, strict=True):
            line = Text(f"{header}:".ljust(width), style="bold")
            line.append(cell if isinstance(cell, Text) else Text(str(cell)))
            console.print(line, soft_wrap=True)


def render_workflows(console: Console, workflows: list[dict[str, Any]]) -> None:
    if not workflows:
        console.print("No workflows: no engine registered one on this database, and it has no instances.")
        return
    table = _table("Name", "Class", "Instances", "Total", "Last registered")
    for wf in workflows:
        counts = ", ".join(f"{status} {n}" for status, n in wf["instances"].items()) or "-"
        if wf.get("queued_by_reason"):
            counts += f" (queued: {describe_reasons(wf['queued_by_reason'])})"
        table.add_row(
            wf["name"],
            wf["class_name"] or "(not registered)",
            counts,
            str(wf["total"]),
            human_time(wf.get("last_registered_at")),
        )
    _print(console, table)


def render_workflow(console: Console, wf: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("Name:", wf["name"])
    grid.add_row("Class:", wf["class_name"] or "(not registered)")
    grid.add_row("Schedules:", ", ".join(wf["schedules"]) or "-")
    grid.add_row("Step limit:", str(wf["step_limit"] or "-"))
    grid.add_row("Last registered:", human_time(wf.get("last_registered_at")))
    grid.add_row("Instances:", f"{wf['total']} ({', '.join(f'{s} {n}' for s, n in wf['instances'].items()) or 'none'})")
    if wf.get("flow"):
        grid.add_row("Flow control:", describe_flow(wf["flow"]))
    if wf.get("queued_by_reason"):
        grid.add_row("Queued because:", describe_reasons(wf["queued_by_reason"]))
    _out(console, grid)


def render_instances(console: Console, page: dict[str, Any]) -> None:
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
    _print(console, table)
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


def render_instance(
    console: Console, d: dict[str, Any], *, step_output: bool = True, limit: int = 5000, full: bool = False
) -> None:
    """A readable timeline like ``wrangler workflows instances describe``. Outputs are shown
    :func:`~perdure.server.formatting.shorten`-ed (``[384 floats]``) and cut after ``limit``
    characters, unless ``full``."""

    cut = False

    def shown(value: Any) -> str:
        nonlocal cut
        if full:
            return json.dumps(value, ensure_ascii=False)
        text = _short(shorten(value), limit)
        cut = cut or text != json.dumps(value, ensure_ascii=False)
        return text

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
        grid.add_row("Output:", shown(d["output"]))
    _out(console, grid)
    steps = d["steps"]
    if not steps:
        console.print("\nNo steps yet.")
        _note_cut(console, cut)
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
    _print(console, table)
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
            details.append(Text(f"  output: {shown(s['output'])}"))
        if details:
            console.print(Text(s["label"], style="bold"))
            for line in details:
                console.print(line)
    _note_cut(console, cut)


def _note_cut(console: Console, cut: bool) -> None:
    if cut:
        console.print("\n[dim]Outputs are shortened: --full shows them whole, --json prints the whole document.[/]")


def render_queues(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("No queues: this database holds no queue messages or dead letters.")
        return
    table = _table("Queue", "Ready", "Delayed", "In flight", "Dead", "Oldest message")
    for q in rows:
        age = None if q["oldest_age"] is None else int(q["oldest_age"] * 1000)
        table.add_row(q["name"], str(q["ready"]), str(q["delayed"]), str(q["in_flight"]), str(q["dead"]), human_ms(age))
    _print(console, table)


def render_dead(console: Console, data: dict[str, Any]) -> None:
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
    _print(console, table)
