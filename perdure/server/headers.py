"""``SecurityHeaders``: the response headers that keep browsers from misusing Perdure's pages,
on every response of the app it wraps (pages, API, static files, errors and refusals alike).

* ``Content-Security-Policy``: :data:`CONTENT_SECURITY_POLICY`. Scripts, styles, images and
  connections come from this server only, and no inline script, inline style or ``style``
  attribute runs (the dashboard keeps its CSS and htmx under ``/dashboard/static``, and draws
  its bars as SVG shapes sized by attributes); ``frame-ancestors 'none'`` forbids framing, so
  no other site can lay the dashboard under a decoy and have an operator click Terminate;
  forms post to this server only; no ``<base>`` may move relative links elsewhere;
* ``X-Frame-Options: DENY``: the same refusal to be framed, for browsers without CSP 2;
* ``X-Content-Type-Options: nosniff``: a JSON answer is never run as a script or shown as HTML;
* ``Referrer-Policy: same-origin``: instance URLs are not sent to other sites.

A header the app already set is left as it is. Wrap an application's own app with it only
when its pages follow the same rules (no inline scripts).
"""

from __future__ import annotations

from .guard import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every HTTP response (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
