"""How times, durations, statuses and JSON look to people: one module for the dashboard and the
CLI, so that both show an instance the same way (and the REST API's JSON uses :func:`iso`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# Labels as Cloudflare's dashboard and ``wrangler workflows`` show them.
STATUS_LABELS = {
    "complete": "✅ Completed",
    "errored": "❌ Errored",
    "paused": "⏸️ Paused",
    "queued": "⌛ Queued",
    "running": "▶ Running",
    "terminated": "🚫 Terminated",
    "waiting": "⏰ Waiting",
    "waitingForPause": "⏱️ Waiting for Pause",
    "unknown": "❓ Unknown",
}
TRIGGER_LABELS = {"api": "🌎 API", "binding": "🔗 Binding", "cron": "⌛ Cron", "event": "📩 Event", "queue": "📬 Queue"}
STEP_TYPE_LABELS = {"step": "🎯 Step", "sleep": "💤 Sleeping", "waitForEvent": "👀 Waiting for event"}


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration_ms(start: float | None, end: float | None) -> int | None:
    """Whole milliseconds from ``start`` to ``end`` (None unless both are known)."""
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1000))


def human_ms(value: Any) -> str:
    """Milliseconds as a short human duration: ``850 ms``, ``2.4 s``, ``3 min 5 s``, ``2 h 1 min``."""
    if value is None:
        return "-"
    ms = int(value)
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def human_time(value: str | None) -> str:
    """An :func:`iso` time shown as ``2024-10-22 12:00:01.123`` (UTC); ``-`` for none."""
    return value.replace("T", " ").rstrip("Z") if value else "-"


def shorten(value: Any, *, numbers: int = 16, items: int = 50, chars: int = 500) -> Any:
    """``value`` made readable: a list of more than ``numbers`` numbers (an embedding) becomes
    ``"[384 floats]"``; longer lists keep ``items`` items and say how many were left out; strings
    longer than ``chars`` are cut with a note. Dicts keep every key. The CLI's ``instances
    describe`` and the dashboard show step outputs this way (``--full``: the whole value)."""
    if isinstance(value, list):
        if len(value) > numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            kind = "floats" if any(isinstance(v, float) for v in value) else "numbers"
            return f"[{len(value)} {kind}]"
        kept = [shorten(v, numbers=numbers, items=items, chars=chars) for v in value[:items]]
        return kept + ([f"... {len(value) - items} more items"] if len(value) > items else [])
    if isinstance(value, dict):
        return {k: shorten(v, numbers=numbers, items=items, chars=chars) for k, v in value.items()}
    if isinstance(value, str) and len(value) > chars:
        return value[:chars] + f"... ({len(value) - chars} more characters)"
    return value


def pretty_json(value: Any, limit: int = 20_000, *, short: bool = False) -> str:
    """Indented JSON, cut after ``limit`` characters with a note of how much was left out
    (``short``: :func:`shorten` first)."""
    text = json.dumps(shorten(value) if short else value, indent=2, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


#: How ``queued_by_reason`` reads (perdure.flow).
_REASONS = {
    "concurrency": "concurrency limit",
    "concurrency_key": "key's limit",
    "rate_limit": "start rate limit",
    "ready": "ready to run",
}


def describe_reasons(reasons: dict[str, int]) -> str:
    """A workflow's ``queued_by_reason`` in words: ``2 concurrency limit, 1 key's limit``."""
    return ", ".join(f"{n} {_REASONS.get(reason, reason)}" for reason, n in reasons.items())


def describe_flow(flow: dict[str, Any]) -> str:
    """A workflow's ``flow`` in words: ``at most 20 running, 1 per key``."""
    parts = []
    if "concurrency" in flow:
        parts.append(f"at most {flow['concurrency']} running")
    if "concurrency_per_key" in flow:
        parts.append(f"{flow['concurrency_per_key']} per key")
    if "rate_limit" in flow:
        rate = flow["rate_limit"]
        parts.append(f"{rate['limit']} starts per {rate['period']:g} s")
    return ", ".join(parts)
