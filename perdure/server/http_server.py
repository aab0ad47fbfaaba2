"""How Perdure's web servers run uvicorn: :func:`server_config`, with bounds on slow clients.

uvicorn alone waits forever for a request's headers (its keep-alive timeout only runs between
requests), so a client that opens connections and sends a few bytes now and then holds them
open; a few hundred such clients exhaust the server. :func:`server_config` bounds them:

* ``header_timeout`` (10 s): a request's headers must be complete within this many seconds of
  the connection opening or of the previous response; else the connection is closed
  (:class:`BoundedH11Protocol`). The same bound closes a connection whose client still sends
  a request body nobody reads any more after its response went out;
* ``body_timeout`` (30 s): a request body must arrive within this many seconds of the first
  read, or the answer is 408 ``request_timeout`` (enforced by :class:`~.guard.Guard`, so
  ``create_app`` takes it: pass the same value to both);
* ``keep_alive`` (5 s): an idle connection between requests is closed after this;
* ``max_connections`` (200): one more connection is answered 503 (JSON) and closed at once,
  before anything is read from it;
* ``backlog`` (256): connections the kernel queues before they are accepted.

The same function serves ``perdure serve``, ``perdure dev`` and applications that run
Perdure's app (or their own, wrapped in ``Guard``) under uvicorn::

    config = server_config(app, "127.0.0.1", 8080, log_level="info")
    await uvicorn.Server(config).serve()
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

try:
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ModuleNotFoundError as exc:  # one line naming the extra, not a traceback
    from .._optional import missing_extra

    raise missing_extra("server", "the HTTP server (perdure.server.http_server)", exc.name) from None

HEADER_TIMEOUT = 10.0
KEEP_ALIVE = 5
MAX_CONNECTIONS = 200
BACKLOG = 256

_BUSY = json.dumps(
    {"error": {"code": "service_unavailable", "message": "the server has too many open connections; try again"}}
).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the client while the server waits for it,
    and a cap on open connections (see the module doc). Configured by the class attributes
    :func:`server_config` sets on a subclass."""

    header_timeout: float = HEADER_TIMEOUT
    max_connections: int | None = MAX_CONNECTIONS
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            # Refused before reading a byte: a flood of idle connections cannot queue up here.
            self.connections.discard(self)
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)

    def _waiting_for_client(self) -> bool:
        """Whether the server is waiting on the client, not on the app: no request yet (or only
        part of its headers), or the rest of a body after its response was sent."""
        their, ours = self.conn.their_state, self.conn.our_state
        if their is h11.IDLE:
            return True
        return their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def _watch(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._stop_watch()
        elif not self._waiting_for_client():
            self._stop_watch()
        elif self._deadline is None:  # armed once per wait: dripping bytes does not extend it
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _stop_watch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting_for_client() and not self.transport.is_closing():
            self.logger.debug("closing a connection whose request did not arrive in %g s", self.header_timeout)
            self.transport.close()


def server_config(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT,
    keep_alive: int = KEEP_ALIVE,
    max_connections: int | None = MAX_CONNECTIONS,
    backlog: int = BACKLOG,
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn configuration for ``app`` on ``host``:``port`` with the slow-client bounds
    of the module doc; ``options`` go to :class:`uvicorn.Config` as they are."""
    protocol = type(
        "PerdureH11Protocol",
        (BoundedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
    options.setdefault("lifespan", "off")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=keep_alive,
        # uvicorn answers 503 to a request once this many connections or tasks exist; the
        # protocol already refuses connections past max_connections, so this bounds the tasks.
        limit_concurrency=None if max_connections is None else max_connections + 1,
        backlog=backlog,
        **options,
    )
