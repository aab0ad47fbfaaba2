"""Run a Cloudflare Python Worker project: its workflows on an :class:`~perdure.Engine`, its
``fetch`` as an ASGI app.

:func:`load_project` reads the wrangler file (:mod:`.wrangler`), installs the ``workers`` shim
(:mod:`.sdk`) in this process, imports ``main`` (its directory first on the import path, as on
Cloudflare, and ``python_modules/`` beside the wrangler file when there is one), registers every
``[[workflows]]`` class on an engine (``name``, ``limits``, ``schedules``; a ``script_name``
entry gets a binding only: another process registers its class) and builds ``env``
(:mod:`.bindings`). The caller routes ``print()`` to the log (:func:`.console.route_prints`)
if it wants to. :meth:`Project.asgi` serves the Worker's default entrypoint
(``class Default(WorkerEntrypoint)`` with ``fetch(self, request)``, or a module-level
``on_fetch(request, env)``) and mounts Perdure's API and dashboard, given by the caller, under
``/perdure``. Every problem is a :class:`ProjectError` of one line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..binding import WorkflowBinding
from ..engine import Engine
from ..entrypoint import WorkflowEntrypoint
from ..errors import MissingExtraError, ValidationError
from . import sdk
from .bindings import Env, UnsupportedBinding, UnsupportedBindingError, Workflow
from .wrangler import WranglerConfig, WranglerError, find_config, read_config, read_dev_vars

log = logging.getLogger("perdure.cloudflare")
MOUNT = "/perdure"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ProjectError(ValueError):
    """The project cannot run; the message is one line saying why."""


def is_project(spec: str) -> bool:
    """Whether ``spec`` names a Cloudflare project: a directory holding a wrangler file, or one."""
    return find_config(spec) is not None


def default_db(config: WranglerConfig) -> str:
    """``sqlite:///<project>/.perdure/perdure.db`` (``wrangler dev`` keeps its state beside the project too)."""
    return f"sqlite:///{config.root / '.perdure' / 'perdure.db'}"


def _where(exc: BaseException, root: Path) -> str:
    """``path:line`` of the innermost frame inside the project, for an error while importing."""
    if isinstance(exc, SyntaxError) and exc.filename:
        place = Path(exc.filename)
        shown = place.relative_to(root) if place.is_relative_to(root) else place
        return f"{shown}:{exc.lineno}:{exc.offset or 1}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).is_relative_to(root)]
    if not frames:
        return ""
    frame = frames[-1]
    return f"{Path(frame.filename).relative_to(root)}:{frame.lineno}"


def _import_main(config: WranglerConfig) -> ModuleType:
    main = config.main
    if main is None:
        raise ProjectError(f'{config.path.name} has no main: name the Worker\'s module, e.g. main = "src/entry.py"')
    if not main.is_file():
        raise ProjectError(f"{config.path.name}: main {config.shown(main)!r} does not exist")
    for folder in (config.root / "python_modules", main.parent):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    name = main.stem
    spec = importlib.util.spec_from_file_location(name, main)
    if spec is None or spec.loader is None:
        raise ProjectError(f"cannot load {config.shown(main)}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except MissingExtraError:
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        where = _where(exc, config.root) or config.shown(main)
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        if isinstance(exc, ImportError) and exc.name in ("workers", "workers.workflows", "js", "pyodide.ffi"):
            detail += f" (perdure's {exc.name} provides {', '.join(getattr(sys.modules[exc.name], '__all__', []))})"
        raise ProjectError(f"{where}: {type(exc).__name__} while importing {config.shown(main)}: {detail}") from None
    return module


def _workflow_class(config: WranglerConfig, module: ModuleType, index: int, class_name: str) -> type[Any]:
    where = f"{config.path.name}: workflows[{index}].class_name"
    cls = getattr(module, class_name, None)
    if cls is None:
        defined = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, WorkflowEntrypoint)
            and v.__module__ == module.__name__
        )  # fmt: skip
        raise ProjectError(
            f"{where} {class_name!r} is not defined in {config.shown(config.main or config.path)}"
            f" (its workflow classes: {', '.join(defined) or 'none'})"
        )
    if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
        raise ProjectError(f"{where} {class_name!r} is not a WorkflowEntrypoint subclass (from workers import ...)")
    return cls


@dataclass
class Project:
    """A loaded project: its configuration, engine, env and main module."""

    config: WranglerConfig
    engine: Engine
    env: Env
    module: ModuleType

    @property
    def title(self) -> str:
        return self.config.name or self.config.root.name

    def entrypoint(self) -> Any:
        """The default entrypoint's fetch callable for one request, or ``None``."""
        default = getattr(self.module, "Default", None)
        if isinstance(default, type) and callable(getattr(default, "fetch", None)):
            return default(sdk.Context(), self.env).fetch
        on_fetch = getattr(self.module, "on_fetch", None)
        if callable(on_fetch):
            count = len(inspect.signature(on_fetch).parameters)
            args = (self.env, sdk.Context())[: max(0, count - 1)]
            return lambda request: on_fetch(request, *args)
        return None

    def asgi(self, perdure_app: Any = None, *, expose_errors: bool = False) -> Any:
        """The Worker's ``fetch`` at every path, with ``perdure_app`` (Perdure's
        ``create_app(engine)``) mounted at ``/perdure``."""
        from .._optional import require_extra

        require_extra("server", "serving a Cloudflare project's fetch")
        from starlette.applications import Starlette
        from starlette.requests import Request as StarletteRequest
        from starlette.responses import PlainTextResponse, RedirectResponse
        from starlette.responses import Response as StarletteResponse
        from starlette.routing import BaseRoute, Mount, Route

        async def endpoint(request: StarletteRequest) -> StarletteResponse:
            shim = sdk.Request(
                str(request.url), method=request.method, headers=request.headers.items(), body=await request.body()
            )
            try:
                fetch = self.entrypoint()
                if fetch is None:
                    return PlainTextResponse(
                        f"{self.config.shown(self.config.main or self.config.path)} has no default entrypoint: "
                        "define class Default(WorkerEntrypoint) with async def fetch(self, request)",
                        status_code=501,
                    )
                result = fetch(shim) if inspect.iscoroutinefunction(fetch) else await asyncio.to_thread(fetch, shim)
                if inspect.isawaitable(result):
                    result = await result
            except (UnsupportedBindingError, ValidationError) as exc:
                log.error("✘ %s %s: %s", request.method, request.url.path, exc)
                return PlainTextResponse(f"{type(exc).__name__}: {exc}" if expose_errors else "error", 500)
            except Exception as exc:
                log.exception("✘ %s %s: the Worker's fetch raised %s", request.method, request.url.path, exc)
                return PlainTextResponse(f"{type(exc).__name__}: {exc}" if expose_errors else "error", 500)
            if not isinstance(result, sdk.Response):
                log.error("✘ %s %s: fetch returned %s, not a Response", request.method, request.url.path, result)
                return PlainTextResponse(f"fetch returned {type(result).__name__}, not a workers.Response", 500)
            answer: StarletteResponse = _as_starlette(result)
            return answer

        routes: list[BaseRoute] = []
        if perdure_app is not None:
            routes.append(Route(MOUNT, lambda _r: RedirectResponse(f"{MOUNT}/dashboard/", 307)))
            routes.append(Mount(MOUNT, app=perdure_app))
        routes.append(Route("/{path:path}", endpoint, methods=_METHODS))
        return Starlette(routes=routes)


def _as_starlette(result: sdk.Response) -> Any:  # a starlette Response
    from starlette.responses import Response as StarletteResponse

    response = StarletteResponse(result._body, result.status)
    response.raw_headers = [(b"content-length", str(len(result._body)).encode())] + [
        (k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in result.headers.items()
        if k.lower() != "content-length"
    ]  # fmt: skip
    return response


def load_project(
    location: str | Path,
    db: str | None = None,
    *,
    dev_vars: bool = False,
    engine_options: dict[str, Any] | None = None,
) -> Project:
    """Load the project at ``location`` (a directory or its wrangler file) on database ``db``
    (default :func:`default_db`), with ``.dev.vars`` added to ``vars`` when ``dev_vars`` (as
    ``wrangler dev`` does); see the module doc."""
    try:
        config = read_config(location)
        local = read_dev_vars(config) if dev_vars else {}
    except WranglerError as exc:
        raise ProjectError(str(exc)) from None
    sdk.install()
    module = _import_main(config)
    url = db or default_db(config)
    if url.startswith("sqlite:///") and db is None:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = Engine(url, **(engine_options or {}))
    except (ValidationError, ValueError) as exc:
        raise ProjectError(f"--db {url!r}: {exc}") from None
    values: dict[str, Any] = {**config.vars, **local}
    for other in config.others:
        values[other.name] = UnsupportedBinding(other, config.path.name)
    env = Env(values, config.path.name)
    for index, spec in enumerate(config.workflows):
        if spec.script_name is not None:  # the class lives in another Worker: create and control only
            binding = WorkflowBinding(engine, spec.name)
        else:
            cls = _workflow_class(config, module, index, spec.class_name)
            try:
                binding = engine.register(cls, name=spec.name, env=env, schedules=spec.schedules, limits=spec.limits)
            except ValidationError as exc:
                raise ProjectError(f"{config.path.name}: workflows[{index}]: {exc}") from None
        env.__dict__[spec.binding] = Workflow(binding)
    return Project(config, engine, env, module)
