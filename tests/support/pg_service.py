"""A real PostgreSQL server for the tests, and a fresh database per module or per test.

``PROFILES_TEST_POSTGRES_URL`` names a server to use (CI starts Debian's cluster with
``pg_ctlcluster`` and sets it; the URL's user must be able to create databases and to
terminate other sessions). Without it, the session starts a private server: ``initdb`` into
a temporary directory (as the ``postgres`` user when run as root), listening on 127.0.0.1
on a free port with its unix socket in that directory, and stops it at the end
(``pg_ctl stop -m fast``, also at interpreter exit). When neither is possible, the tests
that need PostgreSQL fail in CI (``CI=true``) and skip elsewhere, saying why.

Fixtures (import them into ``conftest.py``): ``postgres_service`` (session: the URL and,
for a private server, the handle that can restart it), ``postgres_url`` (session: the URL),
``postgres_database`` (module: the URL of a fresh empty database, dropped afterwards).
:func:`fresh_database` makes one for any other scope.

The private server trusts the superuser ``postgres`` on loopback and asks every other role
for a password (scram-sha-256), so tests can try wrong passwords.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = [
    "PostgresService",
    "PrivateServer",
    "fresh_database",
    "postgres_database",
    "postgres_service",
    "postgres_url",
    "with_database",
]

log = logging.getLogger(__name__)

ENV_URL = "PROFILES_TEST_POSTGRES_URL"


def _bin_dir() -> Path | None:
    explicit = os.environ.get("PROFILES_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )  # fmt: skip
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at another database (a URL stays a URL)."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + dbname))
    return make_conninfo(url, dbname=dbname)


class PrivateServer:
    """A throwaway PostgreSQL cluster owned by this test session."""

    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None or not (bindir / "pg_ctl").exists():
            raise RuntimeError(
                "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or in "
                "/usr/lib/postgresql/*/bin; set PROFILES_TEST_PG_BIN or "
                f"{ENV_URL}"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="profiles-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._stopped = False
        self._lock = threading.Lock()
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        atexit.register(self.stop)

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\nserver log:\n" + text[-2000:]

    def initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "-o", options,
        )  # fmt: skip

    def restart(self) -> None:
        """Stop the server (fast: sessions are cut) and start it again."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        self.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (fast: sessions are cut, the port refuses connections) for the
        block, then started again and ready."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        try:
            yield
        finally:
            self.start()
            self._wait_ready()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log.warning("could not stop the private PostgreSQL server: %s", exc)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            atexit.unregister(self.stop)

    @classmethod
    def launch(cls) -> PrivateServer:
        server = cls()
        try:
            server.initdb()
            for attempt in range(3):
                try:
                    server.start()
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    server.port = _free_port()  # somebody took the port meanwhile
                    server.url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@dataclass(frozen=True)
class PostgresService:
    """The server the tests use: its URL (a superuser's, or one that may create
    databases) and, for a private server, the handle that can restart it."""

    url: str
    server: PrivateServer | None


_shared: list[PrivateServer] = []  # the session's private server, once started
_users = 0  # fixture definitions using it (conftest and test modules may both import it)
_failure: list[str] = []  # why it could not start (not retried for every module)
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[PostgresService]:
    global _users
    url = os.environ.get(ENV_URL)
    if url:
        yield PostgresService(url=url, server=None)
        return
    with _shared_lock:
        if not _shared:
            try:
                if _failure:
                    raise RuntimeError(_failure[0])
                _shared.append(PrivateServer.launch())
            except Exception as exc:
                _failure[:] = [str(exc)]
                reason = (
                    f"no PostgreSQL for the tests: {ENV_URL} is not set and a private "
                    f"server could not start: {exc}"
                )
                if os.environ.get("CI", "").lower() == "true":
                    pytest.fail(reason, pytrace=False)
                pytest.skip(reason)
        server = _shared[0]
        _users += 1
    try:
        yield PostgresService(url=server.url, server=server)
    finally:
        with _shared_lock:
            _users -= 1
            if _users == 0:
                _shared.clear()
                server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_service: PostgresService) -> str:
    """URL of a real PostgreSQL server (its default database)."""
    return postgres_service.url


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database (random name) on the server of ``admin_url``; dropped at the
    end, whoever is still connected to it."""
    name = f"profiles_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
        )
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of a fresh empty database for this test module."""
    with fresh_database(postgres_url) as url:
        yield url
