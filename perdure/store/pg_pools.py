"""The PostgreSQL store's connection pools, tied to the event loop that opened them.

A store has two pools: one for control calls and reads (``pool_min``..``pool_max``
connections), and one with a single connection for the group-commit writer, which would
otherwise queue behind a hundred instances loading their steps. Both are opened together, once
(concurrent first calls wait for the same opening), after the schema was created or migrated.

Pools and the tasks around them belong to the event loop that opened them. A script may
``asyncio.run`` several times with one engine: :meth:`Pools.stale` tells the store that the
loop has changed, and the store then forgets these pools (they cannot be closed from another
loop and are left to the garbage collector) and opens new ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from .pg_commit import Conn, open_pool


@dataclass(frozen=True)
class PoolOptions:
    pool_min: int
    pool_max: int
    pool_timeout: float
    connect_timeout: int
    idle_in_transaction_timeout: float


class Pools:
    """The pools of one store in one event loop (see the module doc)."""

    def __init__(self, conninfo: str, schema: str, options: PoolOptions) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.options = options
        self.pool: AsyncConnectionPool[Conn] | None = None
        self.writer: AsyncConnectionPool[Conn] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def is_open(self) -> bool:
        return self.pool is not None

    def stale(self) -> bool:
        """Whether these pools were opened in an event loop other than the running one."""
        return self.pool is not None and self._loop is not asyncio.get_running_loop()

    async def open(self, prepare: Callable[[Conn], Awaitable[object]]) -> bool:
        """Run ``prepare`` (the migration) on a connection of its own, then open both pools.
        True when this call opened them, False when they were open already."""
        if self.pool is not None:
            return False
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # concurrent first calls open once
            if self.pool is not None:
                return False
            conn = await AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=self.options.connect_timeout
            )
            async with conn:
                await prepare(conn)
            self.writer = await self._new("writer", 0, 1)  # connects on the first write
            self.pool = await self._new("pool", self.options.pool_min, self.options.pool_max)
            self._loop = asyncio.get_running_loop()
            return True

    async def _new(self, role: str, min_size: int, max_size: int) -> AsyncConnectionPool[Conn]:
        return await open_pool(
            self.conninfo,
            f"perdure-{self.schema}-{role}",
            min_size,
            max_size,
            timeout=self.options.pool_timeout,
            connect_timeout=self.options.connect_timeout,
            idle_in_transaction_timeout=self.options.idle_in_transaction_timeout,
        )

    async def close(self) -> None:
        pools = [self.pool, self.writer]
        self.pool = self.writer = None
        for pool in pools:
            if pool is not None:
                await pool.close()
