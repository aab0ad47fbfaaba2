"""A throwaway PostgreSQL cluster owned by one test, which it may stop, crash and restart.

The shared test server (``PERDURE_TEST_PG_URL``, 127.0.0.1:5432) must never be restarted:
other tests and programs use it at the same time. A test that needs a real server restart
(issue 3: "a PostgreSQL restart during a run") therefore creates a cluster of its own with
``initdb`` in a temporary directory, on a free port of 127.0.0.1, and owns it from start to
finish: :meth:`OwnedCluster.destroy` stops it (``immediate``) and removes its directory.

``initdb`` and ``postgres`` refuse to run as root; when the tests run as root the server runs
as the ``postgres`` system user (through ``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

import psycopg

ShutdownMode = Literal["smart", "fast", "immediate"]


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    ``PERDURE_TEST_PG_BINDIR`` wins; then ``pg_config --bindir`` (on Debian that is the
    newest installed version's directory); then the newest ``/usr/lib/postgresql/*/bin``;
    then the ``PATH``."""
    candidates: list[Path] = []
    if os.environ.get("PERDURE_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["PERDURE_TEST_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (subprocess.SubprocessError, OSError):
            pass
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(path) for path in versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnedCluster:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:``port``, with
    trust authentication for the ``postgres`` superuser.

    Usage: ``cluster = OwnedCluster(bindir); cluster.create(); cluster.start()``, and always
    ``cluster.destroy()`` at the end."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="perdure-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        # initdb/postgres will not run as root: run them as the postgres system user.
        self.run_as: str | None = "postgres" if os.geteuid() == 0 else None
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self.restarts = 0

    # -- commands ------------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> str:
        command = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"server log:\n{self.server_log()}"
            )
        return result.stdout

    def create(self) -> None:
        """``initdb``, and a configuration for a private, fast, disposable server."""
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        # Appended as the postgres user (the file is theirs); later lines win in postgresql.conf.
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# perdure test cluster\n" + lines)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery, if
        it was stopped with ``immediate``)."""
        self._run("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60")
        self._wait_ready()

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly; ``immediate`` kills the
        server without a shutdown checkpoint, as a crash would (the next start recovers)."""
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60")

    def restart(self, mode: ShutdownMode = "fast", pause: float = 0.0) -> None:
        """Stop the server (``mode``), stay down for ``pause`` seconds (so clients' attempts to
        reconnect really fail), start it again. Without a pause: ``pg_ctl restart``."""
        if pause <= 0:
            self._run("pg_ctl", "restart", "-D", str(self.datadir), "-m", mode, "-l", str(self.logfile), "-w")
            self._wait_ready()
        else:
            self.stop(mode)
            time.sleep(pause)
            self.start()
        self.restarts += 1

    def postmaster_pid(self) -> int | None:
        """The running server's pid, or None when it is down."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def destroy(self) -> None:
        """Stop the server at once if it runs, and remove its directory."""
        try:
            if self.postmaster_pid() is not None:
                self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "30")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- access --------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def server_log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
