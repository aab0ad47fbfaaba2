"""The HTTP side shared by every OpenAI-compatible client here (embeddings, chat completions,
moderation): one way to build the client, one way to POST and turn a transport failure or a
non-200 answer into the caller's own error class, which the workflow step then retries."""

from __future__ import annotations

from typing import Any

import httpx


def openai_client(
    base_url: str, api_key: str | None, *, timeout: float, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """A client for ``base_url`` (with its version prefix, e.g. ``http://127.0.0.1:11434/v1``),
    sending ``api_key`` as a bearer token when there is one."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)


def post_json(client: httpx.Client, path: str, body: Any, *, what: str, error: type[Exception]) -> httpx.Response:
    """POST ``body``; a request that fails or an answer other than 200 raises ``error`` naming
    ``what`` was asked for."""
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise error(f"{what} request failed: {exc!r}") from exc
    if response.status_code != 200:
        raise error(f"{what} endpoint returned HTTP {response.status_code}: {response.text[:300]}")
    return response


def chat_content(client: httpx.Client, body: dict[str, Any], *, error: type[Exception]) -> str:
    """The first choice's message text from ``/chat/completions`` ("" when it is not text)."""
    response = post_json(client, "/chat/completions", body, what="chat completion", error=error)
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise error(f"malformed chat completion: {response.text[:300]}") from exc
    return content if isinstance(content, str) else ""
