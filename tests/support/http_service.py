"""A real profile server (``profiles serve``) on loopback for the tests, and its keys.

:func:`start_http_server` runs the server in a subprocess (``python -m
profiles.http.server.cli serve``) on 127.0.0.1 with a free port, its own home, an account
(tier ``enterprise``: no profile cap unless ``profile_cap`` is given) with an admin key
(scopes read + admin) and a read-only key, and waits until ``GET /v1/health`` answers. The
fixture :func:`http_server_url` gives one such server per test as an :class:`HttpServer`::

    def test_something(http_server_url: HttpServer) -> None:
        r = httpx.get(f"{http_server_url.url}/v1/profiles",
                      headers={"Authorization": f"Bearer {http_server_url.api_key}"})

Import it into a test module (or conftest.py):
``from support.http_service import http_server_url``.
The rate limits are raised (100000 requests per minute per address, and for the account's
tier) so tests are not throttled unless they ask for it with ``extra_args=["--rate-limit",
"5/60"]`` (per address) or ``["--tier-rate-limit", "enterprise=5/60"]`` (per account), or
run with the server's defaults (``default_limits=True``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

__all__ = ["HttpServer", "free_port", "http_server_url", "start_http_server"]

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
        assert self.command, "only a server started by start_http_server can be restarted"
        self.stop()
        assert self.log_path is not None
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command, stdout=log_file, stderr=subprocess.STDOUT, env=self.env
            )
        self.pid = self.process.pid
        _wait_healthy(self)


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
) -> Iterator[HttpServer]:
    """Run ``profiles serve`` on loopback with ``home``; stop it (SIGTERM, then SIGKILL)
    at the end of the block."""
    from profiles.http.server.accounts import AccountsDB

    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with AccountsDB(home / "accounts.sqlite3") as db:
        account = db.create_account("tests", tier=tier, profile_cap=profile_cap)
        _, admin_key = db.create_key(account.id, scopes=("read", "admin"), name="admin")
        _, read_key = db.create_key(account.id, scopes=("read",), name="read")
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
        account_id=account.id,
        pid=proc.pid,
        process=proc,
        log_path=log_path,
        command=cmd,
        env=child_env,
    )
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.stop()


def _wait_healthy(server: HttpServer) -> None:
    proc = server.process
    assert proc is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"profiles serve exited with {proc.returncode}:\n{server.log_text()}"
            )
        try:
            if httpx.get(f"{server.url}/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"profiles serve did not start:\n{server.log_text()}")
        time.sleep(0.05)


@pytest.fixture
def http_server_url(tmp_path: Path) -> Iterator[HttpServer]:
    """A fresh server per test (its own home under ``tmp_path``)."""
    with start_http_server(tmp_path / "server-home") as server:
        yield server
