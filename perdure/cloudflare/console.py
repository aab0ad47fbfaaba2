"""``print()`` inside a workflow goes to the log with the instance it came from.

A Cloudflare Worker's ``print()`` (``console.log``) lands in Workers Logs next to the invocation.
Here :func:`route_prints` wraps ``sys.stdout``: a line written while a workflow's ``run()`` is on
the stack (:data:`current`, set by the ``workers`` shim's ``WorkflowEntrypoint``; asyncio tasks
and ``asyncio.to_thread`` carry it into steps) becomes one record of the ``perdure.workers``
logger, ``[<workflow>/<instance id>] <line>``, on stderr. Anything else is printed as it was.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextvars import ContextVar
from typing import IO, Any

current: ContextVar[str | None] = ContextVar("perdure_cloudflare_instance", default=None)
log = logging.getLogger("perdure.workers")


class InstanceStdout:
    """A text stream that sends whole lines written inside a workflow to :data:`log`."""

    def __init__(self, target: IO[str]) -> None:
        self.target = target
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        label = current.get()
        if label is None:
            return self.target.write(text)
        with self._lock:
            pending = self._partial.pop(label, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[label] = rest
        for line in lines:
            log.info("[%s] %s", label, line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._partial = self._partial, {}
        for label, line in pending.items():
            log.info("[%s] %s", label, line)
        self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def route_prints() -> None:
    """Install :class:`InstanceStdout` on ``sys.stdout`` and a stderr handler on :data:`log`
    (once per process)."""
    if not isinstance(sys.stdout, InstanceStdout):
        sys.stdout = InstanceStdout(sys.stdout)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
