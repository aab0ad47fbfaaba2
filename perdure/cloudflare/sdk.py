"""The ``workers`` module of Cloudflare's Python Workers SDK, for a project Perdure runs.

:func:`install` puts modules named ``workers``, ``workers.workflows``, ``js`` and
``pyodide.ffi`` into ``sys.modules`` of the process that runs a project (the loader calls it;
nothing is installed on import, so a normal install never shadows a real package). They hold:

* ``WorkflowEntrypoint`` (a :class:`perdure.WorkflowEntrypoint`; ``self.env``, ``self.ctx``;
  ``run(event, step)`` gets Perdure's event, which is also the dict Cloudflare gives) and
  ``WorkerEntrypoint`` (``Default(WorkerEntrypoint)`` with ``fetch(self, request)``);
* :class:`Request` (``url``, ``method``, ``headers``, ``await text()``, ``json()``, ``bytes()``)
  and :class:`Response` (``Response(body, status=, headers=)``, ``Response.json(data)``,
  ``Response.redirect(url)``);
* ``fetch(url, method=, headers=, body=)`` over httpx; ``python_from_rpc`` / ``python_to_rpc``
  / ``to_js`` / ``Object.fromEntries``, which have nothing to convert here;
* ``NonRetryableError`` in ``workers.workflows``: Perdure's own.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import inspect
import json
import sys
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPMethod, HTTPStatus
from typing import Any

from ..entrypoint import WorkflowEntrypoint as PerdureWorkflowEntrypoint
from ..errors import NonRetryableError
from .console import current

HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | http.client.HTTPMessage | None


def _headers(init: HeadersInit) -> http.client.HTTPMessage:
    message = http.client.HTTPMessage()
    if init is None:
        return message
    items = init.items() if isinstance(init, (Mapping, http.client.HTTPMessage)) else init
    for key, value in items:
        message.add_header(str(key), str(value))
    return message


class _Body:
    _body: bytes
    headers: http.client.HTTPMessage
    body_used: bool = False

    async def bytes(self) -> bytes:
        self.body_used = True
        return self._body

    async def text(self) -> str:
        return (await self.bytes()).decode("utf-8", errors="replace")

    async def _json(self, **kwargs: Any) -> Any:
        return json.loads(await self.text(), **kwargs)


class Request(_Body):
    """The request a Worker's ``fetch`` receives (``url``, ``method``, ``headers``, body methods)."""

    def __init__(
        self, url: str, *, method: str | HTTPMethod = "GET", headers: HeadersInit = None, body: bytes | str = b""
    ) -> None:
        self.url = url
        self.method = HTTPMethod(str(method).upper())
        self.headers = _headers(headers)
        self._body = body.encode() if isinstance(body, str) else bytes(body)

    async def json(self, **kwargs: Any) -> Any:
        return await self._json(**kwargs)

    def clone(self) -> Request:
        return Request(self.url, method=self.method, headers=self.headers, body=self._body)

    def __repr__(self) -> str:
        return f"Request(method={self.method.value!r}, url={self.url!r})"


class Response(_Body):
    """A Worker's answer: ``Response("text")``, ``Response(body, status=201, headers={...})``,
    ``Response.json({"ok": True})`` (also ``Response.from_json``), ``Response.redirect(url)``."""

    def __init__(
        self,
        body: str | bytes | None = None,
        status: HTTPStatus | int | None = None,
        status_text: str = "",
        headers: HeadersInit = None,
    ) -> None:
        if body is not None and not isinstance(body, (str, bytes)):
            raise TypeError(f"Unsupported type in Response: {type(body).__name__}")
        self.status = int(status) if status else 200
        self.status_text = status_text
        self.headers = _headers(headers)
        if isinstance(body, str):
            self._body = body.encode()
            if "content-type" not in self.headers:
                self.headers["content-type"] = "text/plain;charset=UTF-8"
        else:
            self._body = body or b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @staticmethod
    def from_json(
        data: Any, status: HTTPStatus | int = HTTPStatus.OK, status_text: str = "", headers: HeadersInit = None
    ) -> Response:
        response = Response(json.dumps(data), status, status_text, headers)
        if response.headers.get("content-type", "").startswith("text/plain") or "content-type" not in response.headers:
            del response.headers["content-type"]
            response.headers["content-type"] = "application/json"
        return response

    def json(self: Any, *args: Any, **kwargs: Any) -> Any:
        """``Response.json(data, status=...)`` builds a JSON response; ``await response.json()``
        reads one (as in Cloudflare's SDK, one name for both)."""
        if isinstance(self, Response):
            return self._json(**kwargs)
        return Response.from_json(self, *args, **kwargs)

    @staticmethod
    def redirect(url: str, status: HTTPStatus | int = HTTPStatus.FOUND) -> Response:
        return Response(None, status, headers={"location": url})

    def __repr__(self) -> str:
        return f"Response(status={self.status})"


class Context:
    """The ``ctx`` of an entrypoint: ``wait_until(awaitable)`` keeps work running after the response."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    waitUntil = wait_until

    def pass_through_on_exception(self) -> None:
        """No origin to pass through to here: a no-op."""

    passThroughOnException = pass_through_on_exception


class WorkerEntrypoint:
    """The base of a Worker's entrypoint: ``class Default(WorkerEntrypoint): async def fetch(self, request)``."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class DurableObject:
    """Defined so that a module declaring one imports; Perdure runs no Durable Objects."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


def _label(event: Any) -> str | None:
    try:
        return f"{event['workflowName']}/{event['instanceId']}"
    except (KeyError, TypeError):
        return None


class WorkflowEntrypoint(PerdureWorkflowEntrypoint):
    """Cloudflare's ``WorkflowEntrypoint``: ``__init__(ctx, env)`` as on Cloudflare (Perdure's
    engine builds it with the env alone), and ``run`` marks its prints with the instance."""

    ctx: Any

    def __init__(self, *args: Any) -> None:
        ctx, env = (Context(), args[0] if args else None) if len(args) < 2 else (args[0], args[1])
        super().__init__(env)
        self.ctx = ctx

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_init = cls.__dict__.get("__init__")
        if own_init is not None and not getattr(own_init, "_perdure_wrapped", False):

            @functools.wraps(own_init)
            def init(self: Any, *args: Any, **kw: Any) -> None:
                if len(args) == 1 and not kw:  # the engine: cls(env); Cloudflare code: (ctx, env)
                    args = (Context(), args[0])
                own_init(self, *args, **kw)

            init._perdure_wrapped = True  # type: ignore[attr-defined]
            cls.__init__ = init  # type: ignore[method-assign]
        own_run = cls.__dict__.get("run")
        if own_run is not None and not getattr(own_run, "_perdure_wrapped", False):

            @functools.wraps(own_run)
            async def run(self: Any, event: Any, step: Any) -> Any:
                token = current.set(_label(event))
                try:
                    result = own_run(self, event, step)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    current.reset(token)

            run._perdure_wrapped = True  # type: ignore[attr-defined]
            cls.run = run  # type: ignore[method-assign]


async def fetch(
    resource: str | Request,
    *,
    method: str | HTTPMethod = "GET",
    headers: HeadersInit = None,
    body: bytes | str | None = None,
    **_options: Any,
) -> Response:
    """An outgoing HTTP request (Cloudflare's global ``fetch``), made with httpx."""
    import httpx

    url = resource.url if isinstance(resource, Request) else str(resource)
    if isinstance(resource, Request):
        method, headers, body = resource.method, resource.headers, await resource.bytes()
    async with httpx.AsyncClient(follow_redirects=True) as client:
        answer = await client.request(str(method), url, headers=list(_headers(headers).items()), content=body)
    return Response(answer.content, answer.status_code, answer.reason_phrase, list(answer.headers.multi_items()))


def _same(value: Any, *_args: Any, **_kwargs: Any) -> Any:
    return value


def handler(func: Callable[..., Any]) -> Callable[..., Any]:
    return func


def import_from_javascript(module_name: str) -> Any:
    raise ImportError(f"import_from_javascript({module_name!r}): perdure runs Python only, there is no JavaScript")


def _module(name: str, doc: str, values: dict[str, Any], missing: str) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__file__ = __file__  # where an ImportError says the module is
    module.__dict__.update(values)
    module.__all__ = sorted(k for k in values if not k.startswith("_"))  # type: ignore[attr-defined]

    def __getattr__(key: str) -> Any:
        raise AttributeError(f"perdure's {name} module has no {key!r}: {missing} ({', '.join(module.__all__)})")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def modules() -> dict[str, types.ModuleType]:
    """The shim modules by import name (see the module doc)."""
    workflows = _module(
        "workers.workflows", "Workflow errors.", {"NonRetryableError": NonRetryableError}, "it provides"
    )
    workers = _module(
        "workers",
        "Cloudflare's Python Workers API, as Perdure provides it.",
        {
            "WorkflowEntrypoint": WorkflowEntrypoint,
            "WorkerEntrypoint": WorkerEntrypoint,
            "DurableObject": DurableObject,
            "Request": Request,
            "Response": Response,
            "Context": Context,
            "fetch": fetch,
            "handler": handler,
            "import_from_javascript": import_from_javascript,
            "python_from_rpc": _same,
            "python_to_rpc": _same,
            "workflows": workflows,
        },
        "it provides",
    )
    workers.__path__ = []  # a package, so that `import workers.workflows` works
    js = _module(
        "js",
        "The JavaScript globals Python Workers code uses to convert values; nothing to convert here.",
        {"Object": types.SimpleNamespace(fromEntries=dict), "JSON": types.SimpleNamespace(parse=json.loads)},
        "there is no JavaScript here; it has",
    )
    ffi = _module("pyodide.ffi", "Pyodide's conversions: identities here.", {"to_js": _same}, "it provides")
    pyodide = _module("pyodide", "Pyodide, as far as Workers code uses it.", {"ffi": ffi}, "it provides")
    pyodide.__path__ = []
    return {"workers": workers, "workers.workflows": workflows, "js": js, "pyodide": pyodide, "pyodide.ffi": ffi}


def install() -> None:
    """Make the shim modules importable in this process (the project's process only)."""
    if getattr(sys.modules.get("workers"), "Response", None) is Response:
        return
    sys.modules.update(modules())
