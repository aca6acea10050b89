"""A private PostgreSQL server for the backend tests: own data folder, own free port.

Never the machine's shared server (port 5432): ``initdb`` creates a throw-away cluster in a
temporary folder and ``pg_ctl`` runs it on a free port of 127.0.0.1, with trust
authentication and the Unix socket inside the folder. PostgreSQL refuses to run as root,
so when the tests run as root the server runs as the ``postgres`` system user (which then
owns the folder). ``stop``/``start`` simulate a server restart; ``kill`` a crash (SIGKILL of
the postmaster; PostgreSQL recovers from its WAL on the next start).

:func:`shared_server` starts one server for the whole test session (the test modules'
fixtures call it) and stops it when the session ends; each test then creates a fresh
database of its own with :meth:`PostgresServer.create_database`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _find_bindir() -> Path | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(pg_ctl).parent
    # Debian keeps the server binaries out of PATH, one folder per major version.
    def major(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


BINDIR = _find_bindir()


def postgres_available() -> bool:
    if BINDIR is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One private cluster. ``url(db)`` is a SQLAlchemy URL for the psycopg driver."""

    USER = "hddt"

    def __init__(self) -> None:
        if BINDIR is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = BINDIR
        self.root = Path(tempfile.mkdtemp(prefix="hddt-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._run_as: str | None = None
        if os.geteuid() == 0:
            self._run_as = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self._initialised = False

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as is None:
            return list(args)
        return ["runuser", "-u", self._run_as, "--", *args]

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, timeout=timeout,
                              cwd=self.root, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): "
                               f"{proc.stdout.decode(errors='replace')}"
                               f"{proc.stderr.decode(errors='replace')}\n{self.log_text()}")

    def initdb(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.USER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        self._initialised = True

    def start(self, timeout_s: float = 30.0) -> None:
        if not self._initialised:
            self.initdb()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.root} "
                   # Test data needs no crash-proof fsync; the WAL still makes a SIGKILL
                   # recoverable, which is what the restart tests exercise.
                   "-c fsync=off -c synchronous_commit=on -c full_page_writes=off "
                   "-c max_connections=100")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", options, "-w", "-t", str(int(timeout_s)), "start",
                  timeout=timeout_s + 10)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log_text()}") from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Clean shutdown (``fast``: open connections are ended, as on a server restart)."""
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                      "stop")

    def kill(self) -> None:
        """Crash: SIGKILL to the postmaster; the next :meth:`start` recovers from the WAL."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # Orphaned backends end themselves once the postmaster is gone; the stale pid file
        # is handled by the next start.
        time.sleep(0.3)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.USER} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")
        return ""

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        if self.running:
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: PostgresServer | None = None


def shared_server(config: Any) -> PostgresServer:
    """The session's one server (``config`` is pytest's config, for the cleanup)."""
    global _SHARED  # noqa: PLW0603
    if _SHARED is None or not _SHARED.running:
        server = PostgresServer()
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        _SHARED = server
        config.add_cleanup(server.close)
    return _SHARED
