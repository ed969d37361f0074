"""Sessions as a service (issue 21): a real ``profiles serve`` runs Chromium for its
clients, who drive it with ``connect_over_cdp`` through ``connect_url``; every end commits.

One server for the module (the tests work through accounts of their own); the shutdown test
runs a server of its own. The page the sessions log in to is conftest's ``http_server``
(one loopback port for the whole run, so the origin of localStorage stays the same).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from support.browser_lane import NO_BROWSER
from support.http_service import HttpServer, start_http_server
from support.waiting import wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from driver import Session
from driver.browsers import ENV_OVERRIDE
from profiles import ProfileStore

from conftest import require_engine

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    # The server finds browsers whichever lane the first test using it is in.
    hidden = {
        k: os.environ.pop(v) for k, v in ENV_OVERRIDE.items() if os.environ.get(v) == NO_BROWSER
    }
    try:
        with start_http_server(tmp_path_factory.mktemp("remote") / "home") as server:
            yield server
    finally:
        for engine, value in hidden.items():
            os.environ[ENV_OVERRIDE[engine]] = value


@pytest.fixture
def server(module_server: HttpServer) -> HttpServer:
    """The module's server through a new account of this test's own."""
    return module_server.with_new_account()


def _post(server: HttpServer, path: str, key: str | None = None, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1{path}", json=body, headers=server.headers(key), timeout=TIMEOUT
    )


def _start(server: HttpServer, **body: Any) -> dict[str, Any]:
    r = _post(server, "/sessions", **body)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    assert record["status"] == "running" and record["id"].startswith("sess_")
    return record


def _stop(server: HttpServer, session_id: str, key: str | None = None) -> httpx.Response:
    return httpx.patch(
        f"{server.url}/v1/sessions/{session_id}",
        json={"action": "stop"},
        headers=server.headers(key),
        timeout=TIMEOUT,
    )


def _get(server: HttpServer, session_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/sessions/{session_id}", headers=server.headers(), timeout=30)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def _connect(p: Any, server: HttpServer, record: dict[str, Any]) -> Browser:
    browser: Browser = p.chromium.connect_over_cdp(record["connect_url"], headers=server.headers())
    return browser


def _handshake_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The status a WebSocket handshake is answered with (101 when accepted)."""
    try:
        with ws_connect(url, additional_headers=headers or {}, open_timeout=30, proxy=None):
            return 101, b""
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""


def _log_in(browser: Browser, page_url: str) -> None:
    context = browser.contexts[0]  # the profile's persistent context
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(f"{page_url}/set-cookie")
    page.evaluate("""() => {
        document.cookie = "login=alice; Max-Age=86400; Path=/";
        localStorage.setItem("token", "secret-token");
    }""")


def test_a_remote_login_is_committed_and_read_back_locally(
    server: HttpServer, http_server: str, tmp_path: Path
) -> None:
    require_engine("chromium")
    assert _post(server, "/profiles", name="shop").status_code == 200
    record = _start(server, profileId="shop", startUrl=f"{http_server}/index.html")
    assert record["profile_name"] == "shop" and not record["readonly"]
    assert record["connect_url"].startswith(server.url.replace("http://", "ws://"))
    assert server.api_key not in record["connect_url"]
    assert record["live_url"] == f"{server.url}/#/sessions/{record['id']}"  # the web page's view
    with sync_playwright() as p:
        browser = _connect(p, server, record)
        assert [pg.url for pg in browser.contexts[0].pages] == [f"{http_server}/index.html"]
        _log_in(browser, http_server)
        assert _get(server, record["id"])["clients"] == 1
        browser.close()  # disconnects; the session goes on

    stopped = _stop(server, record["id"])
    assert stopped.status_code == 200, stopped.text
    final = stopped.json()
    assert final["status"] == "stopped" and final["finished_at"] and final["connect_url"] is None
    assert final["live_url"] is None
    assert final["outcome"]["committed"] is True and final["outcome"]["outcome"] == "ok"
    assert final["ended_because"] == "stopped by the client"
    # Stopping again (PATCH or DELETE) answers the stopped record.
    again = httpx.delete(
        f"{server.url}/v1/sessions/{record['id']}", headers=server.headers(), timeout=30
    )
    assert again.status_code == 200 and again.json() == final
    assert _stop(server, record["id"]).json() == final
    # A stopped session takes no connection.
    status, _ = _handshake_status(record["connect_url"], server.headers())
    assert status == 409

    store = ProfileStore(tmp_path / "local", service=f"{server.url}/v1", api_key=server.api_key)
    with store, Session(profile="shop", store=store, readonly=True) as page:
        page.goto(f"{http_server}/index.html")
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        assert cookies["login"] == "alice" and cookies["persistent"] == "kept"
        assert cookies["sessiononly"] == "kept"  # kept by the session's cookie file
        assert page.evaluate("localStorage.getItem('token')") == "secret-token"

    audit = httpx.get(
        f"{server.url}/v1/audit", params={"profile": "shop"}, headers=server.headers(), timeout=30
    ).json()["data"]
    remote = [e for e in audit if e["payload"].get("remote") is True]
    kinds = {e["type"] for e in remote}
    assert kinds == {"session.created", "session.ended"}, audit
    ended = next(e for e in remote if e["type"] == "session.ended")
    assert ended["payload"]["account"] == server.account_id
    assert ended["payload"]["outcome"] == "ok" and ended["payload"]["seconds"] > 0
    assert server.api_key not in server.log_text()


def test_another_account_sees_no_session_and_no_key_reaches_no_browser(
    server: HttpServer, module_server: HttpServer
) -> None:
    require_engine("chromium")
    record = _start(server)  # ephemeral: no profile
    assert record["ephemeral"] and record["profile_id"] is None
    other = module_server.with_new_account(name="other")
    sid, url = record["id"], record["connect_url"]
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{server.url}/v1/sessions/{sid}", headers=other.headers())
        assert r.status_code == 404, (method, r.text)
    r = _stop(other, sid)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NotFound"
    listed = httpx.get(f"{server.url}/v1/sessions", headers=other.headers()).json()
    assert listed["data"] == []

    assert _handshake_status(url, other.headers())[0] == 404
    status, body = _handshake_status(url)
    assert status == 401 and b"API key required" in body
    assert _handshake_status(url, {"Authorization": "Bearer pk_nope"})[0] == 401
    assert _handshake_status(url, other.headers(other.read_key))[0] == 404
    # Refused before the browser: no client ever connected, and the session still runs.
    mine = _get(server, sid)
    assert mine["clients"] == 0 and mine["status"] == "running"

    final = _stop(server, sid).json()
    assert final["status"] == "stopped" and final["outcome"]["committed"] is False


def test_idle_timeout_commits_after_the_client_leaves_and_reconnects_meanwhile(
    server: HttpServer, http_server: str
) -> None:
    require_engine("chromium")
    record = _start(server, profile_id=_profile(server, "idle"), idle_timeout=3)
    with sync_playwright() as p:
        browser = _connect(p, server, record)
        _log_in(browser, http_server)
        browser.close()  # gone without stopping
        browser = _connect(p, server, record)  # and back, within the idle timeout
        page = browser.contexts[0].pages[0]
        assert page.evaluate("localStorage.getItem('token')") == "secret-token"
        browser.close()
    final = wait_until(
        lambda: (r := _get(server, record["id"]))["status"] in ("stopped", "failed") and r,
        timeout=60,
        what="the idle timeout to stop the session",
    )
    assert final["status"] == "stopped", final
    assert final["ended_because"].startswith("idle_timeout")
    assert final["outcome"]["committed"] is True
    profile = httpx.get(f"{server.url}/v1/profiles/idle", headers=server.headers()).json()
    assert "127.0.0.1" in profile["cookie_domains"]


def test_keep_alive_false_stops_when_the_last_client_leaves(server: HttpServer) -> None:
    require_engine("chromium")
    record = _start(server, profile_id=_profile(server, "brief"), keepAlive=False)
    with sync_playwright() as p:
        _connect(p, server, record).close()
    final = wait_until(
        lambda: (r := _get(server, record["id"]))["status"] == "stopped" and r,
        timeout=60,
        what="the session to stop",
    )
    assert "last client disconnected" in final["ended_because"]
    assert final["outcome"]["committed"] is True


def _profile(server: HttpServer, name: str) -> str:
    r = _post(server, "/profiles", name=name)
    assert r.status_code == 200, r.text
    profile_id: str = r.json()["id"]
    return profile_id


def test_a_second_writer_is_busy_and_readers_run_beside_it(server: HttpServer) -> None:
    require_engine("chromium")
    profile_id = _profile(server, "busy")
    writer = _start(server, profile_id=profile_id)
    started = time.monotonic()
    r = _post(server, "/sessions", profile_id="busy", lock_timeout=1)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "ProfileBusy" and error["holder"]["kind"] == "remote-session"
    assert time.monotonic() - started >= 1
    reader = _start(server, profile_id=profile_id, readonly=True)
    assert reader["readonly"]
    listed = httpx.get(
        f"{server.url}/v1/sessions",
        params={"status": "running", "profile_id": "busy"},
        headers=server.headers(),
    ).json()
    assert {s["id"] for s in listed["data"]} == {writer["id"], reader["id"]}
    # The busy attempt left no session behind.
    everything = httpx.get(f"{server.url}/v1/sessions", headers=server.headers()).json()
    assert len(everything["data"]) == 2
    assert _stop(server, reader["id"]).json()["outcome"]["reason"] == "readonly"
    assert _stop(server, writer["id"]).json()["outcome"]["committed"] is True


def test_a_crashed_browser_fails_the_session_and_keeps_the_previous_state(
    server: HttpServer, http_server: str
) -> None:
    require_engine("chromium")
    record = _start(server, profile_id=_profile(server, "fragile"))
    with sync_playwright() as p:
        browser = _connect(p, server, record)
        _log_in(browser, http_server)
        browser.close()
    # A raw CDP client (Playwright's CDPSession.send would wait for ever for its answer).
    with ws_connect(record["connect_url"], additional_headers=server.headers(), proxy=None) as ws:
        ws.send(json.dumps({"id": 1, "method": "Browser.crash"}))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            ws.recv(timeout=30)
    final = wait_until(
        lambda: (r := _get(server, record["id"]))["status"] in ("stopped", "failed") and r,
        timeout=60,
        what="the crash to end the session",
    )
    assert final["status"] == "failed", final
    assert final["outcome"]["outcome"] == "crashed" and final["outcome"]["committed"] is False
    assert "previous committed state is kept" in final["outcome"]["reason"]
    assert final["ended_because"] == "the browser exited"
    profile = httpx.get(f"{server.url}/v1/profiles/fragile", headers=server.headers()).json()
    assert profile["status"] == "empty" and profile["cookie_domains"] == []


def test_sessions_past_the_tier_cap_are_429(module_server: HttpServer) -> None:
    require_engine("chromium")
    trial = module_server.with_new_account(tier="trial", name="trial")
    me = httpx.get(f"{trial.url}/v1/account/me", headers=trial.headers()).json()
    assert me["tier"] == "trial" and me["session_cap"] == 1 and me["profile_cap"] == 1
    first = _start(trial)
    r = _post(trial, "/sessions")
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "TierLimit"
    assert {k: error[k] for k in ("limit", "current", "resource", "tier")} == {
        "limit": 1,
        "current": 1,
        "resource": "session",
        "tier": "trial",
    }
    me = httpx.get(f"{trial.url}/v1/account/me", headers=trial.headers()).json()
    assert me["running_sessions"] == 1
    _stop(trial, first["id"])
    assert _post(trial, "/sessions", idle_timeout=1).status_code == 200  # room again


def test_the_service_stopping_commits_its_sessions(tmp_path: Path, http_server: str) -> None:
    require_engine("chromium")
    with start_http_server(tmp_path / "server-home") as server:
        _profile(server, "kept")
        record = _start(server, profile_id="kept")
        with sync_playwright() as p:
            browser = _connect(p, server, record)
            _log_in(browser, http_server)
            server.stop()  # SIGTERM, with a client still connected
        # uvicorn exits by the SIGTERM it caught, once the lifespan ended (not SIGKILLed)
        assert server.process is not None and server.process.returncode == -15, server.log_text()
        server.start()
        profile = httpx.get(f"{server.url}/v1/profiles/kept", headers=server.headers()).json()
        assert profile["status"] == "ready" and "127.0.0.1" in profile["cookie_domains"]
        assert "the service is shutting down" in server.log_text()


# ------------------------------------------------------------------ no browser needed


def test_firefox_profiles_are_refused_with_the_reason(server: HttpServer) -> None:
    r = _post(server, "/profiles", name="fox", archetype="desktop-firefox")
    assert r.status_code == 200, r.text
    r = _post(server, "/sessions", profile_id="fox")
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "Chromium" in message and "connect_over_cdp" in message and "local Session" in message


def test_hostile_inputs_on_the_session_routes(server: HttpServer) -> None:
    base, headers = f"{server.url}/v1/sessions", server.headers()
    for bad in ("nope", "sess_" + "0" * 36, "sess_../../x", "x" * 300, "%00"):
        for method in ("GET", "DELETE"):
            r = httpx.request(method, f"{base}/{bad}", headers=headers)
            assert r.status_code == 404, (method, bad, r.text)
        assert _stop(server, bad).status_code == 404
        status, _ = _handshake_status(f"{base.replace('http', 'ws')}/{bad}/cdp", headers)
        assert status == 404, bad
    sid = "sess_" + "0" * 8 + "-0000-0000-0000-" + "0" * 12
    for body in ({"action": "restart"}, {"action": None}, {}, {"action": "stop", "x": 1}):
        r = httpx.patch(f"{base}/{sid}", json=body, headers=headers)
        assert r.status_code == 400, (body, r.text)
    for body in (
        {"profile_id": 1},
        {"idle_timeout": 0},
        {"idle_timeout": -5},
        {"max_duration": 10**12},
        {"lock_timeout": 3600},
        {"screen": {"width": 0, "height": 10}},
        {"screen": {"width": 10, "height": 10}, "browserScreenWidth": 10, "browserScreenHeight": 5},
        {"browserScreenWidth": 10},
        {"startUrl": "javascript:alert(1)"},
        {"customProxy": "not a url"},
        {"proxy": {"server": "invalid"}},
        {"proxy": {"server": "ftp://proxy:21"}},
        {"startUrl": "http://"},
        {"startUrl": "http://host:99999/"},
        {"startUrl": "https://example.com/\x00"},
        {"unknown": True},
        {"profile_id": "x" * 201},
    ):
        r = _post(server, "/sessions", **body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == "ValidationFailed"
    assert httpx.post(base, content=b"{", headers=headers).status_code == 400
    assert _post(server, "/sessions", profile_id="missing").status_code == 404
    # A read key starts no writer or ephemeral session and stops none.
    r = _post(server, "/sessions", key=server.read_key, profile_id="missing")
    assert r.status_code == 403, r.text
    assert httpx.post(base, json={}).status_code == 401
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "nope"}, {"status": "gone"}):
        r = httpx.get(base, params=params, headers=headers)
        assert r.status_code == 400, (params, r.text)


def test_websocket_handshakes_count_against_the_rate_limit(tmp_path: Path) -> None:
    with start_http_server(tmp_path / "server-home", extra_args=["--rate-limit", "2/60"]) as server:
        url = server.url.replace("http://", "ws://") + "/v1/sessions/sess_x/cdp"
        assert [_handshake_status(url)[0] for _ in range(2)] == [401, 401]
        status, body = _handshake_status(url)
        assert status == 429 and b"RateLimited" in body


def test_cdp_reaches_nothing_past_the_profile(
    server: HttpServer, http_server: str, tmp_path: Path
) -> None:
    """The browser runs on the service's machine as the service's user: a client's CDP may
    not read its files (file: navigations, file inputs), write where it likes (download
    paths), open ports or hand CDP to the page's script. Refused commands get a CDP error
    and the connection goes on; a message that is not CDP closes it."""
    require_engine("chromium")
    assert _post(server, "/profiles", name="guarded").status_code == 200
    record = _start(server, profile_id="guarded", start_url=f"{http_server}/index.html")
    evil = tmp_path / "evil-downloads"
    try:
        with ws_connect(
            record["connect_url"], additional_headers=server.headers(), proxy=None
        ) as ws:
            ident = iter(range(1, 1000))

            def call(method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
                n = next(ident)
                message: dict[str, Any] = {"id": n, "method": method, "params": params}
                if session is not None:
                    message["sessionId"] = session
                ws.send(json.dumps(message))
                while True:  # events may come first
                    answer: dict[str, Any] = json.loads(ws.recv(timeout=30))
                    if answer.get("id") == n:
                        return answer

            def refused(answer: dict[str, Any]) -> bool:
                return "Refused by the profile service" in answer.get("error", {}).get(
                    "message", ""
                )

            targets = call("Target.getTargets")["result"]["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            for url in ("file:///etc/passwd", "FILE:///etc/", "chrome://version", " view-source:x"):
                assert refused(call("Target.createTarget", url=url)), url
            session = call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
            sid = session["result"]["sessionId"]
            answer = call("Page.navigate", sid, url="file:///etc/passwd")
            assert refused(answer) and answer["sessionId"] == sid
            assert refused(call("DOM.setFileInputFiles", sid, files=["/etc/passwd"], nodeId=1))
            assert refused(call("Target.exposeDevToolsProtocol", targetId=page["targetId"]))
            assert refused(call("Tethering.bind", port=9))
            assert refused(call("SystemInfo.getProcessInfo"))
            # Still connected, and what is allowed works.
            assert "result" in call("Page.navigate", sid, url=f"{http_server}/index.html")

            # Downloads go to the session's own directory on the service, whatever the
            # client names: the relay rewrites the path (and makes that directory) before
            # the command reaches the browser.
            allowed = call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(evil))
            assert "result" in allowed, allowed
            mine = server.home / "accounts" / server.account_id  # this account's store
            own = list(mine.rglob("http-downloads-*"))
            assert len(own) == 1 and oct(own[0].stat().st_mode & 0o777) == "0o700"
            assert not evil.exists()

            ws.send(b"\x00binary")  # not CDP: the connection is closed
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert _get(server, record["id"])["status"] == "running"
    finally:
        final = _stop(server, record["id"]).json()
    assert final["outcome"]["committed"] is True
    assert not list((server.home / "accounts" / server.account_id).rglob("http-downloads-*"))
