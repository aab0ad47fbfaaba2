"""Events read ahead by a take, so that a run consuming a backlog of events does not wait for one
commit per event (SQLite's fan-in: a parent taking 10,000 ``child-done`` events in a row).

A take that finds an event also reads the next unconsumed events of that type for the instance
(in the writer's transaction, so it sees every earlier consumption). The run's following takes
of that type pop them here and consume them with a write that nobody waits for: it joins the
next commit. That is safe because only the run holding the instance's epoch consumes its events,
in order (the oldest first): a crash before that commit leaves the events unconsumed, and the
replay takes the very same ones again; any later write of the run commits after it (the writer
commits in order), and a run that lost the instance is fenced in that write as in every other.
Entries are keyed by epoch, so a new run never sees an old run's read-ahead.
"""

from __future__ import annotations

from collections import deque
from typing import Any

AHEAD = 64  # events a take reads beyond the one it consumes
_MAX_KEYS = 1024  # read-aheads kept at once (a run that vanished leaves its entry behind)


class Prefetched:
    """The read-ahead events of running instances: ``(pk, epoch, type)`` to ``(event pk, event)``."""

    def __init__(self) -> None:
        self._ahead: dict[tuple[int, int, str], deque[tuple[int, dict[str, Any]]]] = {}

    def pop(self, pk: int, epoch: int, event_type: str) -> tuple[int, dict[str, Any]] | None:
        queue = self._ahead.get((pk, epoch, event_type))
        if not queue:
            return None
        item = queue.popleft()
        if not queue:
            del self._ahead[(pk, epoch, event_type)]
        return item

    def fill(self, pk: int, epoch: int, event_type: str, events: list[tuple[int, dict[str, Any]]]) -> None:
        if not events:
            return
        if len(self._ahead) >= _MAX_KEYS:
            self._ahead.clear()
        self._ahead[(pk, epoch, event_type)] = deque(events)

    def forget(self, pk: int) -> None:
        """The instance's run ended (suspended, finished, released): drop what it read ahead."""
        if self._ahead:
            for key in [k for k in self._ahead if k[0] == pk]:
                del self._ahead[key]
