"""A TCP proxy in front of PostgreSQL that a test can switch off, to play a server outage.

Restarting the shared PostgreSQL cluster would break every other user of it; what a client sees
of a restart is that every connection drops and new ones are refused until the server is back.
:meth:`Proxy.outage` does exactly that to the connections going through the proxy, and nothing
to anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlparse, urlunparse

from tests.pg import with_params


class Proxy:
    def __init__(self, target_url: str) -> None:
        parts = urlparse(target_url)
        self.target_url = target_url
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = 0
        self.dropped = 0  # connections cut by outages
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def url(self, **params: str) -> str:
        """The target URL, pointed at the proxy."""
        parts = urlparse(self.target_url)
        user = f"{parts.username}@" if parts.username else ""
        netloc = f"{user}127.0.0.1:{self.port}"
        return with_params(urlunparse(parts._replace(netloc=netloc)), **params)

    def outage(self, seconds: float) -> None:
        """Drop every proxied connection and refuse new ones for ``seconds``; returns when the
        proxy accepts connections again."""
        self.down()
        time.sleep(seconds)
        self.up()

    def down(self) -> None:
        """Drop every proxied connection and refuse new ones (the port stays reserved for us
        only in the sense that nobody else is expected to bind it)."""
        self._call(self._shutdown())

    def up(self) -> None:
        self._call(self._listen())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            self.dropped += 1
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        pair = {client_writer, server_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer))
        finally:
            self._writers -= pair
            for writer in pair:
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
