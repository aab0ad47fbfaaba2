"""Signed dashboard sessions and the failed-login throttle.

**Sessions.** Signing in on ``/dashboard/login`` with the server's token sets a cookie that
holds a *session*, never the token: ``v1.<expires>.<signature>``, where the signature is an
HMAC-SHA256 of ``v1.<expires>`` under a key derived from two things, the database's secret
(:meth:`perdure.store.base.Store.secret`, so every server process on one database accepts the
sessions of the others and a restart signs nobody out) and the token itself (so changing the
token signs everybody out). A session is good until ``expires`` (12 hours after sign-in by
default); a stolen cookie does not reveal the token, and a forged or edited one fails the
signature::

    sessions = Sessions("s3cret-token", secret=lambda: store.secret("sessions"))
    cookie = await sessions.issue()
    assert await sessions.valid(cookie)

**Throttle.** :class:`LoginThrottle` counts failed sign-ins (a wrong token in the login form,
or a wrong ``Authorization: Bearer`` token) per client address, in memory: after ``limit``
failures (5) within ``window`` seconds (60), that address is refused with 429 and a
``Retry-After`` until the oldest of those failures is a window old. A success clears the
address's count. Behind a reverse proxy every client shares the proxy's address unless the
server trusts its ``X-Forwarded-For`` (uvicorn's ``forwarded_allow_ips``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

SESSION_COOKIE = "perdure_session"
SESSION_MAX_AGE = 12 * 3600.0
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Sessions:
    """Issue and check signed session cookies for one ``token`` (see the module doc).

    ``secret`` returns the base key (the database's); without it a random key of this process
    is used, and sessions last until the process exits."""

    def __init__(
        self,
        token: str,
        secret: Callable[[], Awaitable[bytes]] | None = None,
        *,
        max_age: float = SESSION_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_age = max_age
        self._token = token.encode()
        self._secret = secret
        self.clock = clock
        self._key: bytes | None = None

    async def _signing_key(self) -> bytes:
        if self._key is None:
            base = await self._secret() if self._secret is not None else secrets.token_bytes(32)
            # Token in the derivation: a new token makes every older session's signature wrong.
            self._key = hmac.new(base, b"perdure-session\x00" + self._token, hashlib.sha256).digest()
        return self._key

    async def issue(self) -> str:
        """A new session value, good for ``max_age`` seconds."""
        body = f"v1.{int(self.clock() + self.max_age)}"
        mac = hmac.new(await self._signing_key(), body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    async def valid(self, value: str) -> bool:
        """Whether ``value`` is a session this server signed and it has not expired."""
        version, _, rest = value.partition(".")
        expires, _, signature = rest.partition(".")
        if version != "v1" or not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        mac = hmac.new(await self._signing_key(), f"v1.{expires}".encode(), hashlib.sha256).digest()
        return hmac.compare_digest(signature.encode(), _b64(mac).encode()) and int(expires) > self.clock()


class LoginThrottle:
    """Failed sign-ins per client address, in memory (see the module doc)."""

    def __init__(
        self,
        limit: int = LOGIN_FAILURES,
        window: float = LOGIN_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._max_clients = max_clients  # addresses tracked at once: memory stays bounded
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if failures is not None and not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again; None when it may try now."""
        now = self.clock()
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, client: str) -> None:
        now = self.clock()
        if client not in self._failures and len(self._failures) >= self._max_clients:
            for other in list(self._failures):  # forget addresses whose failures are old
                self._recent(other, now)
            if len(self._failures) >= self._max_clients:
                self._failures.pop(next(iter(self._failures)))  # the longest-tracked one
        self._failures.setdefault(client, deque()).append(now)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def client_address(scope: Mapping[str, Any]) -> str:
    """The client's address from an ASGI scope (``"unknown"`` when the server gives none)."""
    client = scope.get("client")
    if client:
        return str(client[0])
    return "unknown"
