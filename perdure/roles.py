"""Background roles: work that one worker of a database does at a time (the retention sweep,
the delivery of each lifecycle subscription).

A role is a lease in the database (:meth:`perdure.store.base.Store.hold_role`): its holder
writes "mine until T"; another worker takes it once T has passed. :class:`Role` is one worker's
side of one role. Its holder calls :meth:`Role.hold` before every unit of work (a batch of
deletions, one delivery), not only when it starts a round, so that a long round keeps the role
instead of letting it lapse half-way and sharing the work with a second worker. ``hold`` writes
only once half of the lease is used up, so calling it often costs a clock read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


class Role:
    """One worker's hold on the role ``name`` (see the module doc): ``ttl`` seconds a lease."""

    def __init__(self, store: Store, name: str, owner: str, ttl: float, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self.name = name
        self._owner = owner
        self.ttl = ttl
        self._now = now
        self._until = 0.0  # the end of the lease this worker last wrote (0: it holds none)

    @property
    def held(self) -> bool:
        """Whether this worker's last lease on the role still runs."""
        return self._now() < self._until

    async def hold(self) -> bool:
        """Whether this worker holds the role now: it takes the role if it is free or lapsed,
        renews it once half of its lease is gone, and returns False while another holds it."""
        now = self._now()
        if self._until - now > self.ttl / 2:
            return True
        # the lease is counted from before the write: never later than the one stored
        if await self._store.hold_role(self.name, self._owner, now + self.ttl, now):
            self._until = now + self.ttl
            return True
        self._until = 0.0
        return False
