"""The PostgreSQL store's LISTEN connection.

Other processes ``NOTIFY`` the schema's channel when they make something runnable or change an
instance a worker may be running (see :mod:`perdure.store.postgres`). A :class:`Listener` keeps
one dedicated connection listening on that channel, forever: when the connection fails it
reconnects with exponential backoff, and after every (re)connection it reports a change, since
notifications sent while it was away are lost. While the channel is quiet it pings the server
now and then, so a connection that died silently (a network partition) is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from psycopg import AsyncConnection, sql

from .._cancel import reraise_if_cancelling

log = logging.getLogger("perdure.postgres")


class Listener:
    """Calls ``on_notify`` for every notification on ``channel`` whose payload is not ``ignore``
    (the listening store's own token: the process that wrote already knows), and once after
    every (re)connection."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        *,
        ignore: str,
        on_notify: Callable[[], None],
        connect_timeout: int = 10,
        ping_every: float = 5.0,
        backoff_max: float = 2.0,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.ignore = ignore
        self.on_notify = on_notify
        self.connect_timeout = connect_timeout
        self.ping_every = ping_every
        self.backoff_max = backoff_max
        self.connected = False
        self.connections = 0  # how many times it (re)connected
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="perdure-pg-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reraise_if_cancelling()
                if self.connected:  # it was working: say so once, then retry quietly
                    log.warning("perdure: LISTEN connection lost (%s); reconnecting", exc)
                    backoff = 0.1
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _listen(self) -> None:
        conn = await AsyncConnection.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout)
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.connected = True
            self.connections += 1
            self.on_notify()  # anything sent while we were not listening is lost: look again
            while True:
                async for note in conn.notifies(timeout=self.ping_every):
                    if note.payload != self.ignore:
                        self.on_notify()
                await conn.execute("SELECT 1")  # a quiet channel: make sure the connection lives


class Changes:
    """What a worker's store knows of other stores' changes, for ``changed()`` and ``on_change``.

    :meth:`signal` (the listener's ``on_notify``) sets a flag and calls the callback;
    :meth:`take` says True once after a signal, and at least every ``safety_poll`` seconds:
    expired leases are announced by nobody (a dead worker cannot ``NOTIFY``), and a notification
    sent while the listener reconnected is lost, so a worker must also look now and then."""

    def __init__(self, safety_poll: float) -> None:
        self.safety_poll = safety_poll
        self.callback: Callable[[], None] | None = None
        self.reset()

    def reset(self) -> None:
        self._flag = False
        self._last_poll = time.monotonic()

    def signal(self) -> None:
        self._flag = True
        if self.callback is not None:
            try:
                self.callback()
            except Exception:  # a broken callback must not stop the listener
                log.exception("perdure: on_change callback failed")

    def take(self) -> bool:
        now = time.monotonic()
        if self._flag or now - self._last_poll >= self.safety_poll:
            self._flag = False
            self._last_poll = now
            return True
        return False
