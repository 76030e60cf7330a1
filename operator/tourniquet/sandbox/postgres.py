"""A throwaway PostgreSQL server on loopback: what the tests, the ledger benchmark and the demo run against.

It uses the machine's PostgreSQL binaries (Debian's ``postgresql`` package: ``initdb`` and ``postgres``
on PATH or under ``/usr/lib/postgresql/<version>/bin``), ``initdb`` in a fresh temporary directory, and
serves ``127.0.0.1`` on a free port with trust authentication (loopback only, one user). PostgreSQL
refuses to run as root, so when started by root both ``initdb`` and the server run as the ``postgres``
user when it exists (Debian's package creates it), else as ``nobody``; the temporary directory is
handed to that user. Stopping it (a fast shutdown, then the directory is removed) is :meth:`stop`, or
leaving the ``with`` block.

``durable=False`` turns off ``fsync``, ``synchronous_commit`` and ``full_page_writes``: right for tests
(a crash of the machine loses the database, which is thrown away anyway), wrong for a benchmark that
means to say what a real server does.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SEARCH_DIRS = "/usr/lib/postgresql/*/bin"
USER = "tourniquet"
DATABASE = "tourniquet"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine, or the server would not start; the message says which."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in the newest ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    for directory in sorted(glob.glob(SEARCH_DIRS), key=version, reverse=True):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def available() -> str | None:
    """None when a server can be started here, else why not."""
    missing = [name for name in ("initdb", "postgres") if find_binary(name) is None]
    if missing:
        return (
            f"no PostgreSQL here ({', '.join(missing)} not on PATH nor in {SEARCH_DIRS}): "
            "install Debian's postgresql package (make postgresql does, as root)"
        )
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")


class PostgresServer:
    """One PostgreSQL server in a temporary directory; ``url`` is its libpq connection URL."""

    def __init__(self, *, durable: bool = True, settings: dict[str, str] | None = None) -> None:
        why = available()
        if why:
            raise PostgresUnavailable(why)
        self.durable = durable
        self.settings = dict(settings or {})
        self.port = 0
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _run_as()

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    def _popen_options(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.directory = Path(tempfile.mkdtemp(prefix="tourniquet-pg-"))
        data = self.directory / "data"
        if self._user is not None:
            os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        initdb, postgres = find_binary("initdb"), find_binary("postgres")
        assert initdb is not None and postgres is not None, "checked by available()"
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            capture_output=True,
            env=env,
            cwd=self.directory,
            **self._popen_options(),
        )
        if init.returncode != 0:
            error = bytes(init.stderr).decode(errors="replace")
            raise PostgresUnavailable(f"initdb failed ({init.returncode}): {error}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.directory),
            "max_connections": "200",
            "shared_buffers": "128MB",
            **({} if self.durable else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}),
            **self.settings,
        }
        for _attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            args = [postgres, "-D", str(data), "-p", str(self.port)]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory, **self._popen_options()
                )
            if self._wait_ready(timeout):
                self._create_database()
                return self
        tail = self.log_file.read_text(errors="replace")[-2000:]
        self.stop()
        raise PostgresUnavailable(f"PostgreSQL did not start; its log ends with:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open sessions are ended), then the directory is removed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
