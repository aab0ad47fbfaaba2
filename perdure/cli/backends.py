"""Where the ``perdure`` client commands send their calls, and how failures become exit codes.

:class:`HttpBackend` calls the REST API of a running ``perdure serve``; :class:`DbBackend` opens
the database itself (``--db``) and goes through the same :class:`~perdure.server.operations.Operations`
the server uses, plus the durable queues, which only it can reach. Both return the JSON
documents of the REST API. A :class:`CliError` carries the message and the exit code a command
ends with; :func:`exit_code` picks the code for an engine error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..server.formatting import iso

if TYPE_CHECKING:
    from ..triggers.queues import Queue

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILURE, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_AUTH = 1, 2, 3, 4, 5
_CODE_EXITS = {
    "invalid_json": EXIT_INPUT,
    "validation_error": EXIT_INPUT,
    "payload_too_large": EXIT_INPUT,
    "not_found": EXIT_NOT_FOUND,
    "workflow_not_found": EXIT_NOT_FOUND,
    "instance_not_found": EXIT_NOT_FOUND,
    "step_not_found": EXIT_NOT_FOUND,
    "instance_exists": EXIT_CONFLICT,
    "invalid_state": EXIT_CONFLICT,
    "unauthorized": EXIT_AUTH,
    "forbidden_origin": EXIT_AUTH,
}


# 404s that are Perdure's own answers (the thing asked for does not exist), not a wrong URL.
_PERDURE_404 = {"workflow_not_found", "instance_not_found", "step_not_found"}
# Links on a host app's page, and the mount prefix in one that leads into Perdure's dashboard or
# API (href="/perdure/dashboard/" -> "/perdure").
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.I)
_MOUNTED = re.compile(r"^(.*?)/(?:dashboard|api)(?:/|$)")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class HttpBackend:
    """Calls the REST API of a running ``perdure serve``."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url must be an http:// or https:// URL, got {url!r}", EXIT_INPUT)
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)

    async def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        query = {k: v for k, v in (params or {}).items() if v is not None}
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            response = await self.client.request(method, path, content=content, params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the Perdure server at {self.url} ({type(exc).__name__}): is `perdure serve` running? "
                "Pass --url, or --db to use a database directly."
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        error = data.get("error", {}) if isinstance(data, dict) else {}
        code = str(error.get("code", "error")) if isinstance(error, dict) else "error"
        if response.status_code == 404 and code not in _PERDURE_404:
            raise CliError(await self._not_here(path), EXIT_NOT_FOUND)
        if data is None:
            raise CliError(f"unexpected answer from {self.url}{path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise CliError(str(error.get("message", f"HTTP {response.status_code}")), _CODE_EXITS.get(code, 1))
        return data

    async def _not_here(self, path: str) -> str:
        """The message for a server that does not know an API path. Perdure may be mounted under
        a prefix there: the documented ``/perdure``, or the one the host's page links to (its
        dashboard or API); or the URL has a prefix too many. Each guess is checked on
        ``/api/health`` before the message names it."""
        import httpx

        message = f"{self.url} answered 404 for {path}: Perdure's API is not at this URL"
        try:
            for candidate in await self._guesses():
                probe = await self.client.get(f"{candidate}/api/health")
                if probe.status_code == 200 and probe.headers.get("content-type", "").startswith("application/json"):
                    if probe.json() == {"ok": True}:
                        return f"{message}; try --url {candidate}"
        except (httpx.HTTPError, ValueError):
            pass
        return f"{message} (is it a Perdure server? `perdure serve` and `perdure dev` print the --url to use)"

    async def _guesses(self) -> list[str]:
        """Base URLs where Perdure may be, most likely first (at most six; never this one)."""
        from urllib.parse import urljoin, urlsplit

        here = urlsplit(self.url)
        origin = f"{here.scheme}://{here.netloc}"
        guesses = [f"{self.url}/perdure"]
        for page in dict.fromkeys([f"{self.url}/", f"{origin}/"]):
            answer = await self.client.get(page, follow_redirects=True)
            if "html" not in answer.headers.get("content-type", ""):
                continue
            for href in _HREF.findall(answer.text[:200_000]):
                target = urlsplit(urljoin(str(answer.url), href))
                mounted = _MOUNTED.match(target.path)
                if mounted and f"{target.scheme}://{target.netloc}" == origin:
                    guesses.append(origin + mounted.group(1).rstrip("/"))
        if here.path.strip("/"):
            guesses.append(origin)  # a prefix too many (or a wrong one)
        return [g for g in dict.fromkeys(guesses) if g != self.url][:6]

    async def close(self) -> None:
        await self.client.aclose()

    async def workflows(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/api/workflows")
        return list(data["workflows"])

    async def workflow(self, name: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}"))

    async def trigger(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.call("POST", f"/api/workflows/{_seg(name)}/instances", body=body))

    async def instances(
        self, name: str, status: str | None, limit: int, cursor: str | None, id_prefix: str | None = None
    ) -> dict[str, Any]:
        params = {"status": status, "limit": limit, "cursor": cursor, "id_prefix": id_prefix}
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}/instances", params=params))

    async def describe(self, name: str, instance_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}"))

    async def control(
        self, name: str, instance_id: str, action: str, from_step: dict[str, Any] | None, rollback: bool = False
    ) -> Any:
        body: dict[str, Any] = {"status": action}
        if from_step is not None:
            body["from_step"] = from_step
        if rollback:
            body["rollback"] = True
        path = f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}/status"
        return await self.call("PATCH", path, body=body)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> Any:
        path = f"/api/workflows/{_seg(name)}/instances/{_seg(instance_id)}/events/{_seg(event_type)}"
        return await self.call("POST", path, body=payload)

    async def delete(self, name: str, ids: list[str]) -> dict[str, Any]:
        return dict(await self.call("DELETE", f"/api/workflows/{_seg(name)}/instances", body={"ids": ids}))


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


class DbBackend:
    """Reads and writes the database directly (no server needed).

    ``read_only=True`` (the commands that only read) opens a SQLite file read-only: it then
    reads while another process holds the write lock, and reads a file it may not write."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        from ..engine import Engine
        from ..errors import ValidationError
        from ..server.operations import Operations

        options: dict[str, Any] = {}
        if url.startswith("sqlite://"):
            path = url[len("sqlite://") :]
            path = path[1:] if path.startswith("/") else path
            if path and not Path(path).exists():
                raise CliError(f"no database file at {path!r} (from --db {url})", EXIT_INPUT)
            options["read_only"] = read_only
        try:
            self.engine = Engine(url, **options)
        except ValidationError as exc:
            raise CliError(str(exc), EXIT_INPUT) from None
        self.ops = Operations(self.engine)

    async def close(self) -> None:
        await self.engine.stop()

    async def workflows(self) -> list[dict[str, Any]]:
        return await self.ops.list_workflows()

    async def workflow(self, name: str) -> dict[str, Any]:
        return await self.ops.describe_workflow(name)

    async def trigger(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await self.ops.create(name, body, trigger="api")
        assert isinstance(created, dict)
        return created

    async def instances(
        self, name: str, status: str | None, limit: int, cursor: str | None, id_prefix: str | None = None
    ) -> dict[str, Any]:
        return await self.ops.list_instances(name, status=status, limit=limit, cursor=cursor, id_prefix=id_prefix)

    async def describe(self, name: str, instance_id: str) -> dict[str, Any]:
        return await self.ops.describe(name, instance_id)

    async def control(
        self, name: str, instance_id: str, action: str, from_step: dict[str, Any] | None, rollback: bool = False
    ) -> Any:
        return await self.ops.control(name, instance_id, action, from_step=from_step, rollback=rollback)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> Any:
        return await self.ops.send_event(name, instance_id, event_type, payload)

    async def delete(self, name: str, ids: list[str]) -> dict[str, Any]:
        return await self.ops.delete(name, ids)

    async def _queue(self, name: str) -> Queue:
        from ..triggers.queues import Queue

        return Queue(self.engine, name)  # checks the name

    async def queues(self) -> list[dict[str, Any]]:
        from ..triggers.queues import queue_names

        return [{"name": name, **await (await self._queue(name)).stats()} for name in await queue_names(self.engine)]

    async def queue_send(self, name: str, body: Any, delay: float) -> dict[str, Any]:
        queue = await self._queue(name)
        return {"queue": name, "id": await queue.send(body, delay=delay), "delay": delay}

    async def queue_dead(self, name: str, limit: int) -> dict[str, Any]:

        letters = await (await self._queue(name)).dead_letters(limit)
        return {"queue": name, "dead_letters": [{**d, "failed_at": iso(d["failed_at"])} for d in letters]}

    async def queue_redrive(self, name: str) -> dict[str, Any]:
        return {"queue": name, "redriven": await (await self._queue(name)).redrive()}


Backend = HttpBackend | DbBackend


def db_only(backend: Backend) -> DbBackend:
    if not isinstance(backend, DbBackend):
        raise CliError(
            "`perdure queues` needs --db URL (or PERDURE_DB): the REST API has no queue endpoints", EXIT_INPUT
        )
    return backend


def exit_code(exc: Exception) -> int:
    from ..errors import (
        InstanceAlreadyExistsError,
        InstanceNotFoundError,
        InvalidStateError,
        WorkflowNotFoundError,
    )
    from ..server.operations import StepNotFoundError

    if isinstance(exc, (InstanceNotFoundError, WorkflowNotFoundError, StepNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InstanceAlreadyExistsError, InvalidStateError)):
        return EXIT_CONFLICT
    if isinstance(exc, ValueError):
        return EXIT_INPUT
    return EXIT_FAILURE
