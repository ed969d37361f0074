"""The Python and shell side of sessions as a service (issue 21): ``RemoteSession`` /
``AsyncRemoteSession`` and ``profiles sessions``, against a real ``profiles serve`` that runs
a real Chromium. What the block does is committed on every end: its end, an exception,
SIGTERM to the client, and the client's death (SIGKILL) without a stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from support.browser_lane import NO_BROWSER
from support.http_service import HttpServer, start_http_server
from support.waiting import wait_until

from driver import AsyncRemoteSession, RemoteSession, Session
from driver.browsers import ENV_OVERRIDE
from profiles import ProfileStore
from profiles.errors import ValidationFailed
from profiles.http.session_client import RemoteSessionsClient

from conftest import require_engine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    hidden = {
        k: os.environ.pop(v) for k, v in ENV_OVERRIDE.items() if os.environ.get(v) == NO_BROWSER
    }
    try:
        with start_http_server(tmp_path_factory.mktemp("remote-client") / "home") as server:
            yield server
    finally:
        for engine, value in hidden.items():
            os.environ[ENV_OVERRIDE[engine]] = value


@pytest.fixture
def server(module_server: HttpServer) -> HttpServer:
    return module_server.with_new_account()


@pytest.fixture
def store(server: HttpServer, tmp_path: Path) -> Iterator[ProfileStore]:
    with ProfileStore(tmp_path / "ws", service=f"{server.url}/v1", api_key=server.api_key) as s:
        yield s


def _read_back(store: ProfileStore, name: str, page_url: str) -> tuple[list[str], str | None]:
    """The cookies and the localStorage token a local read-only session finds."""
    with Session(profile=name, store=store, readonly=True) as page:
        page.goto(f"{page_url}/index.html")
        cookies = [f"{c['name']}={c['value']}" for c in page.context.cookies()]
        token = page.evaluate("() => localStorage.getItem('token')")
    return cookies, token


def _log_in(page: Any, page_url: str, who: str) -> None:
    page.goto(f"{page_url}/index.html")
    page.evaluate(
        """(who) => {
            document.cookie = `login=${who}; Max-Age=86400; Path=/`;
            localStorage.setItem("token", `token-${who}`);
        }""",
        who,
    )


def test_a_remote_session_commits_what_its_block_did(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    store.create("shop")
    with RemoteSession(profile="shop", store=store) as page:
        _log_in(page, http_server, "alice")
        running = RemoteSessionsClient.of(store).get(_session_id(store))
        assert running.status == "running" and running.clients == 1
        # profiles ps / store.activity() through the service show it as a remote session.
        held = [(a.profile_name, a.kind) for a in store.activity()]
        assert held == [("shop", "remote-session")], held
    cookies, token = _read_back(store, "shop", http_server)
    assert "login=alice" in cookies and token == "token-alice"


def _session_id(store: ProfileStore) -> str:
    running = RemoteSessionsClient.of(store).list(status="running").data
    assert len(running) == 1
    return running[0].id


def test_the_final_record_and_an_exception_in_the_block(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    store.create("shop")
    session = RemoteSession(profile="shop", store=store, start_url=f"{http_server}/index.html")
    with pytest.raises(RuntimeError, match="the script failed"), session as page:
        assert page.url == f"{http_server}/index.html"
        _log_in(page, http_server, "bob")
        raise RuntimeError("the script failed")
    record = session.record
    assert record is not None and record.status == "stopped"
    assert record.outcome is not None and record.outcome.committed
    assert record.connect_url is None and record.finished_at is not None
    assert "login=bob" in _read_back(store, "shop", http_server)[0]


def test_an_async_remote_session(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    store.create("async")

    async def run() -> None:
        async with AsyncRemoteSession(profile="async", store=store) as page:
            await page.goto(f"{http_server}/index.html")
            await page.evaluate("() => localStorage.setItem('token', 'from-asyncio')")

    asyncio.run(run())
    assert _read_back(store, "async", http_server)[1] == "from-asyncio"


def test_a_store_not_on_a_service_is_refused_with_what_to_do(tmp_path: Path) -> None:
    refused = pytest.raises(ValidationFailed, match="Remote sessions run on a profile service")
    with ProfileStore(tmp_path / "local") as local, refused:
        RemoteSession(profile="x", store=local)


CLIENT = """
import sys, time
from driver import RemoteSession
from profiles import ProfileStore
url, key, home, page_url = sys.argv[1:5]
store = ProfileStore(home, service=url, api_key=key)
with RemoteSession(profile="killed", store=store) as page:
    page.goto(page_url + "/index.html")
    page.evaluate("() => localStorage.setItem('token', 'before-the-signal')")
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_client_that_is_signalled_or_killed_still_commits(
    server: HttpServer, store: ProfileStore, http_server: str, tmp_path: Path, signum: int
) -> None:
    """SIGTERM ends the block (the client stops the session, exit 143); SIGKILL leaves the
    stop to the service, which sees the connection drop (keep_alive=False)."""
    require_engine("chromium")
    store.create("killed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [f"{server.url}/v1", server.api_key, str(tmp_path / "child"), http_server]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CLIENT), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.stderr else line
        session_id = _session_id(store)
        time.sleep(2.0)  # seconds into the work, as a person or a job runner would
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    expected = 128 + signal.SIGTERM if signum == signal.SIGTERM else -signal.SIGKILL
    assert child.returncode == expected, err
    client = RemoteSessionsClient.of(store)
    wait_until(lambda: client.get(session_id).status == "stopped", timeout=60)
    record = client.get(session_id)
    assert record.outcome is not None and record.outcome.committed, record
    assert _read_back(store, "killed", http_server)[1] == "before-the-signal"


def _cli(server: HttpServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PROFILES_URL": f"{server.url}/v1",
        "PROFILES_API_KEY": server.api_key,
        "PROFILES_HOME": str(tmp_path / "cli-home"),
    }
    return subprocess.run(
        [sys.executable, "-m", "profiles", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_profiles_sessions_start_list_show_stop(
    server: HttpServer, store: ProfileStore, tmp_path: Path
) -> None:
    require_engine("chromium")
    store.create("cli")
    started = _cli(server, tmp_path, "sessions", "start", "cli", "--json")
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert record["status"] == "running" and record["connect_url"].startswith("ws://")
    assert server.api_key not in started.stdout

    listed = _cli(server, tmp_path, "sessions", "list", "--status", "running")
    assert listed.returncode == 0, listed.stderr
    assert record["id"] in listed.stdout and "cli" in listed.stdout

    shown = _cli(server, tmp_path, "sessions", "show", record["id"])
    assert shown.returncode == 0 and "running" in shown.stdout

    stopped = _cli(server, tmp_path, "sessions", "stop", record["id"])
    assert stopped.returncode == 0, stopped.stderr
    assert "state committed" in stopped.stdout

    unknown = "sess_00000000-0000-0000-0000-000000000000"
    missing = _cli(server, tmp_path, "sessions", "show", unknown)
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()


def test_two_clients_on_one_profile_lose_no_update(
    store: ProfileStore, server: HttpServer, http_server: str, tmp_path: Path
) -> None:
    """Two clients, each in a process of its own, run N remote sessions on one profile,
    each adding one to a counter in localStorage: the service serialises their writer
    sessions (the second waits for the profile's lease), and the counter ends at 2N."""
    require_engine("chromium")
    store.create("counter")
    rounds = 4
    script = textwrap.dedent(
        """
        import sys
        from driver import RemoteSession
        from profiles import ProfileStore
        url, key, home, page_url, rounds = sys.argv[1:6]
        store = ProfileStore(home, service=url, api_key=key)
        for _ in range(int(rounds)):
            with RemoteSession(profile="counter", store=store, lock_timeout=60) as page:
                page.goto(page_url + "/index.html")
                page.evaluate("() => localStorage.setItem('n', +(localStorage.n || 0) + 1)")
        store.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                f"{server.url}/v1",
                server.api_key,
                str(tmp_path / f"client-{i}"),
                http_server,
                str(rounds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
    with Session(profile="counter", store=store, readonly=True) as page:
        page.goto(f"{http_server}/index.html")
        assert page.evaluate("() => localStorage.getItem('n')") == str(2 * rounds)


def test_max_duration_stops_and_commits(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    store.create("timed")
    client = RemoteSessionsClient.of(store)
    record = client.start("timed", max_duration=3, keep_alive=True)
    with sync_playwright() as p:
        browser = p.chromium.connect_over_cdp(
            record.connect_url or "", headers=client.connect_headers()
        )
        page = browser.contexts[0].pages[0]
        page.goto(f"{http_server}/index.html")
        page.evaluate("() => localStorage.setItem('token', 'within-the-limit')")
        final = wait_until(
            lambda: (r := client.get(record.id)).status == "stopped" and r,
            timeout=60,
            what="the session stopping at its max_duration",
        )
        with contextlib.suppress(Exception):
            browser.close()
    assert final.ended_because is not None and "max_duration" in final.ended_because
    assert final.outcome is not None and final.outcome.committed
    assert _read_back(store, "timed", http_server)[1] == "within-the-limit"
