"""The operations layer over HTTP: the REST API (:mod:`.api`, described by :mod:`.openapi`), the
dashboard (:mod:`.dashboard`), Prometheus metrics (:mod:`.metrics`), and the operations model
they and the CLI share (:mod:`.operations`: JSON views of workflows, instances, steps and the
Cloudflare event history) with its text formatting (:mod:`.formatting`).

HTTP enters Perdure here: :func:`perdure.server.api.create_app` is a Starlette app to serve or
mount. Its defences live in their own modules: :mod:`.guard` (hosts, origins, body size and
time, the token), :mod:`.headers` (the browser security headers and CSP), :mod:`.auth` (signed
dashboard sessions, the failed sign-in throttle) and :mod:`.http_server` (the uvicorn
configuration with its slow-client bounds, for ``perdure serve`` and applications alike).
Nothing in this package is imported by the engine; it drives the engine through its
bindings, like any application.
"""
