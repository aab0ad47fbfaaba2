"""The lease gate: a step attempt starts only while its worker's lease is fresh.

A worker holds an instance by a lease in the database (``lease_until``, renewed every third
of ``lease_ttl``); when the lease runs out, another worker may take the instance over. The
store fences every write of the old holder, so outputs stay right, but fencing comes too late
for side effects: a worker that was stopped (SIGSTOP, a long GC pause, a frozen VM) wakes up
with attempts already queued for the thread pool, and they would run at once, after another
worker ran later steps of the same instance.

So no attempt starts unless the lease on its instance was renewed less than ``lease_ttl / 2``
ago (by the clock that keeps counting while a process is stopped). When it was not, the
attempt first asks the engine to renew now; if the instance is still ours it goes ahead, and
if it moved on the run stops without starting anything. A plain function's attempt checks
again in its pool thread, right before the call, because it may wait there behind others.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any


class LeaseLost(Exception):
    """The instance's lease was not renewed in time and another worker may hold it now.

    ``store_failed``: the renewal itself failed (the database is unreachable), rather than
    finding the instance in other hands."""

    def __init__(self, message: str, *, store_failed: bool = False) -> None:
        super().__init__(message)
        self.store_failed = store_failed


class LeaseGate:
    """The freshness of one instance's lease, as the running worker last renewed it.

    ``renewed_at`` is a ``time.monotonic()`` reading taken *before* the write that set the
    lease (so the lease surely lasts ``lease_ttl`` from then). ``refresh`` renews the leases of
    every run of the worker now and returns the instances whose renewal was accepted.
    """

    def __init__(self, pk: int, lease_ttl: float, refresh: Callable[[], Awaitable[set[int]]]) -> None:
        self.pk = pk
        self.max_age = lease_ttl / 2
        self.renewed_at = time.monotonic()
        self._refresh = refresh

    def fresh(self) -> bool:
        return time.monotonic() - self.renewed_at < self.max_age

    async def ensure(self) -> None:
        """Return once the lease is fresh; raise :class:`LeaseLost` if it is no longer ours."""
        for _ in range(3):  # a slow renewal (a loaded database) may come back already stale
            if self.fresh():
                return
            try:
                renewed = await self._refresh()
            except Exception as exc:
                raise LeaseLost(f"could not renew the lease on instance {self.pk}: {exc}", store_failed=True) from exc
            if self.pk not in renewed:
                raise LeaseLost(f"instance {self.pk} is no longer this worker's")
        if not self.fresh():
            raise LeaseLost(
                f"the lease on instance {self.pk} could not be renewed within {self.max_age:.1f}s", store_failed=True
            )

    def call_if_fresh(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """Run in a pool thread: call ``fn`` only if the lease is fresh now.

        Returns ``(True, result)``, or ``(False, None)`` when the call did not start."""
        if not self.fresh():
            return False, None
        return True, fn(**kwargs)


class AlwaysFresh(LeaseGate):
    """A gate that never holds anything back (a run outside a leasing engine)."""

    def __init__(self) -> None:
        async def nothing() -> set[int]:
            return set()

        super().__init__(0, float("inf"), nothing)

    def fresh(self) -> bool:
        return True
