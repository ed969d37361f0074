"""A real profile server (``profiles serve``) on loopback for the tests, and its keys.

:func:`start_http_server` runs the server in a subprocess (``python -m
profiles.http.server.cli serve``) on 127.0.0.1 with a free port, its own home, an account
(tier ``enterprise``: no profile cap unless ``profile_cap`` is given) with an admin key
(scopes read + admin) and a read-only key, and waits until ``GET /v1/health`` answers.
conftest.py's fixtures give one to a test as an :class:`HttpServer`: ``profile_server``, the
session's shared server through an account of the test's own
(:meth:`HttpServer.with_new_account`), and ``own_profile_server``, a server for the test
alone, which it may stop and start again::

    def test_something(profile_server: HttpServer) -> None:
        r = httpx.get(f"{profile_server.url}/v1/profiles", headers=profile_server.headers())

The rate limits are raised (100000 requests per minute per address, and for the account's
tier) so tests are not throttled unless they ask for it with ``extra_args=["--rate-limit",
"5/60"]`` (per address) or ``["--tier-rate-limit", "enterprise=5/60"]`` (per account), or
run with the server's defaults (``default_limits=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support.waiting import wait_until

__all__ = ["HttpServer", "free_port", "start_http_server"]

STARTUP_TIMEOUT = 30.0


@dataclass
class HttpServer:
    """A running server: its base URL (no trailing slash), keys of its first account, and
    its home directory."""

    url: str
    api_key: str
    read_key: str
    home: Path
    account_id: str = ""
    pid: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    command: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)
    accounts: str | None = None  # the accounts database's URL (None: the home's SQLite)

    def with_new_account(
        self, *, tier: str = "enterprise", profile_cap: int | None = None, name: str = "tests"
    ) -> HttpServer:
        """The same server seen through a new account (its own profiles, an admin key and a
        read key): a test of its own on a server that other tests share. It cannot stop or
        restart the server."""
        account_id, api_key, read_key = _create_account(
            self.home, tier, profile_cap, name, self.accounts
        )
        return dataclasses.replace(
            self,
            api_key=api_key,
            read_key=read_key,
            account_id=account_id,
            process=None,
            command=[],
            env=None,
        )

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        """``Authorization: Bearer <key>`` (the admin key by default) plus ``extra``."""
        return {"Authorization": f"Bearer {key or self.api_key}", **extra}

    def log_text(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL): its port stops answering."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def start(self) -> None:
        """Start the server again on the same port and home, with the same keys."""
        assert self.command, "only the handle start_http_server gave can restart the server"
        self.stop()
        assert self.log_path is not None
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command, stdout=log_file, stderr=subprocess.STDOUT, env=self.env
            )
        self.pid = self.process.pid
        _wait_healthy(self)


def _create_account(
    home: Path, tier: str, profile_cap: int | None, name: str, accounts: str | None = None
) -> tuple[str, str, str]:
    """A new account in the server's accounts database (``accounts``, else the home's): its
    id, an admin key (scopes read + admin) and a read key. A running server sees it at its
    next request."""
    from profiles.http.server.accounts import open_accounts

    with open_accounts(accounts or home / "accounts.sqlite3") as db:
        account = db.create_account(name, tier=tier, profile_cap=profile_cap)
        _, admin_key = db.create_key(account.id, scopes=("read", "admin"), name="admin")
        _, read_key = db.create_key(account.id, scopes=("read",), name="read")
    return account.id, admin_key, read_key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_http_server(
    home: Path,
    *,
    extra_args: Sequence[str] = (),
    tier: str = "enterprise",
    profile_cap: int | None = None,
    env: dict[str, str] | None = None,
    default_limits: bool = False,
    accounts: str | None = None,
) -> Iterator[HttpServer]:
    """Run ``profiles serve`` on loopback with ``home`` (and ``--accounts accounts`` when
    given); stop it (SIGTERM, then SIGKILL) at the end of the block."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    account_id, admin_key, read_key = _create_account(home, tier, profile_cap, "tests", accounts)
    port = free_port()
    log_path = home / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "profiles.http.server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--home",
        str(home),
        *(() if default_limits else ("--rate-limit", "100000/60")),
        *(() if default_limits else ("--tier-rate-limit", f"{tier}=100000/60")),
        *(("--accounts", accounts) if accounts else ()),
        *extra_args,
    ]
    child_env = {**os.environ, **(env or {})}
    child_env.pop("PROFILES_CATALOG_URL", None)
    child_env.pop("PROFILES_BLOBS_URL", None)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
    url = f"http://127.0.0.1:{port}"
    server = HttpServer(
        url=url,
        api_key=admin_key,
        read_key=read_key,
        home=home,
        account_id=account_id,
        pid=proc.pid,
        process=proc,
        log_path=log_path,
        command=cmd,
        env=child_env,
        accounts=accounts,
    )
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.stop()


def _wait_healthy(server: HttpServer) -> None:
    proc = server.process
    assert proc is not None

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"profiles serve exited with {proc.returncode}:\n{server.log_text()}"
            )
        try:
            return httpx.get(f"{server.url}/v1/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(
        healthy,
        timeout=STARTUP_TIMEOUT,
        what=f"profiles serve to answer on {server.url}",
        detail=server.log_text,
    )
