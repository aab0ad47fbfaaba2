"""Slow clients against a real uvicorn server (``server_config``, on a real port) with short
bounds: unfinished headers, a trickle of header bytes, a body that never completes, and a
flood of connections are all closed or refused within their bound, while normal requests on
the same server still work.

Bounds here: headers 0.6 s, body 0.6 s, at most 8 connections.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from perdure import Engine
from perdure.server.api import create_app
from perdure.server.http_server import server_config

HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.6
MAX_CONNECTIONS = 8
SLACK = 2.0  # generous: a loaded CI machine may be slow to run the timer


@pytest.fixture
async def address(engine: Engine) -> AsyncIterator[tuple[str, int]]:
    app = create_app(engine, body_timeout=BODY_TIMEOUT)
    config = server_config(
        app,
        "127.0.0.1",
        0,
        log_level="warning",
        header_timeout=HEADER_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield "127.0.0.1", port
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; (seconds it took, what it sent)."""
    start = time.monotonic()
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), limit)
        if not chunk:
            return time.monotonic() - start, data
        data += chunk


async def request(host: str, port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines if line)
        headers = {k.lower(): v for k, v in headers.items()}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


async def test_unfinished_headers_are_closed(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
    took, data = await closed_after(reader, HEADER_TIMEOUT + SLACK)
    writer.close()
    assert data == b"" and HEADER_TIMEOUT * 0.8 <= took <= HEADER_TIMEOUT + SLACK


async def test_a_silent_connection_is_closed(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    took, data = await closed_after(reader, HEADER_TIMEOUT + SLACK)
    writer.close()
    assert data == b"" and took <= HEADER_TIMEOUT + SLACK


async def test_a_trickle_of_header_bytes_does_not_extend_the_bound(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /api/health HTTP/1.1\r\n")
    start = time.monotonic()

    async def trickle() -> None:
        for _ in range(40):  # a header byte every 0.1 s: 4 s in all if nobody stopped it
            await asyncio.sleep(0.1)
            writer.write(b"X")
            await writer.drain()

    dripping = asyncio.create_task(trickle())
    try:
        await closed_after(reader, HEADER_TIMEOUT + SLACK)
    finally:
        dripping.cancel()
        writer.close()
    assert time.monotonic() - start <= HEADER_TIMEOUT + SLACK < 4


async def test_an_unfinished_body_is_answered_408_and_closed(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST /api/workflows/hello/instances HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id":'  # 7 of 100 bytes
    )
    took, data = await closed_after(reader, BODY_TIMEOUT + SLACK)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT * 0.8 <= took <= BODY_TIMEOUT + SLACK


async def test_an_unread_body_does_not_hold_the_connection_after_the_answer(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabcdefg")
    took, data = await closed_after(reader, HEADER_TIMEOUT + SLACK)  # answered, then closed
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ") and took <= HEADER_TIMEOUT + SLACK


async def test_connections_past_the_limit_are_refused_and_normal_requests_still_work(
    address: tuple[str, int],
) -> None:
    host, port = address
    held: list[Any] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(await asyncio.open_connection(host, port))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection(host, port)  # one too many
        took, data = await closed_after(reader, 2)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and json.loads(body)["error"]["code"] == "service_unavailable"
        assert took < HEADER_TIMEOUT  # at once, not when the header bound runs out
    finally:
        for _, held_writer in held:
            held_writer.close()
    await asyncio.sleep(0.2)
    # a whole request on a fresh connection, and two on one kept-alive connection
    status, headers, body = await request(host, port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200 and json.loads(body) == {"ok": True} and headers["x-frame-options"] == "DENY"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(2):
            writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(reader.readexactly(11), 5)  # {"ok":true}
            await asyncio.sleep(HEADER_TIMEOUT / 2)  # well inside the bound: kept open
    finally:
        writer.close()
    created = json.dumps({"id": "slow-ok"}).encode()
    status, _, body = await request(
        host,
        port,
        b"POST /api/workflows/hello/instances HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(created)).encode() + b"\r\n\r\n" + created,
    )
    assert status == 201 and json.loads(body)["id"] == "slow-ok"
