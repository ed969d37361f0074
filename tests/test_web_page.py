"""The web page of ``profiles serve`` (issue 21), in a real Chromium driven by Playwright
against a real server: signing in (a wrong key, then the right one), profiles, a profile's
snapshots and audit events, a 404, sessions started and stopped from the page, the live
view (frames painted, a click and typed text reaching the remote page and committed), the
keyboard alone, and the key never in a URL or a cookie.

One server for the module (each test works through an account of its own) that finds
browsers whatever lane the first test using it runs in, as in test_remote_sessions.py; the
page under test runs in a Chromium of the module's own. The remote page typed into is
conftest's ``http_server`` (``tests/pages/typing.html``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from support.browser_lane import NO_BROWSER
from support.http_service import HttpServer, start_http_server
from support.waiting import wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from driver import Session
from driver.browsers import ENV_OVERRIDE, find_browser
from profiles import ProfileStore
from profiles.http.server.accounts import SQLiteAccountsDB

from conftest import require_engine

TIMEOUT = 120.0
UI_TIMEOUT = 60_000  # ms, for what waits on a browser starting on the service


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    # The server finds browsers whichever lane the first test using it is in.
    hidden = {
        k: os.environ.pop(v) for k, v in ENV_OVERRIDE.items() if os.environ.get(v) == NO_BROWSER
    }
    try:
        with start_http_server(tmp_path_factory.mktemp("web") / "home") as server:
            yield server
    finally:
        for engine, value in hidden.items():
            os.environ[ENV_OVERRIDE[engine]] = value


@pytest.fixture
def server(module_server: HttpServer) -> HttpServer:
    """The module's server through a new account of this test's own."""
    return module_server.with_new_account(name="web tests")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    """The browser that shows the page (the service runs its own for the sessions)."""
    require_engine("chromium")
    browser = playwright.chromium.launch(**find_browser("chromium").launch_options())
    try:
        yield browser
    finally:
        browser.close()


class Watched:
    """A tab on the page, and every URL it requested or opened a WebSocket to."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.sockets: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.set_default_timeout(30_000)

    def assert_key_kept_out(self, key: str) -> None:
        """The key is in no URL, no cookie; only in the tab's sessionStorage."""
        page = self.page
        assert key not in page.url
        for url in (*self.urls, *self.sockets):
            assert key not in url, url
        assert page.evaluate("document.cookie") == ""
        assert page.context.cookies() == []
        assert key not in page.evaluate("JSON.stringify(Object.values(localStorage))")


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Watched]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def _api(server: HttpServer, method: str, path: str, **body: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/v1{path}",
        json=body if method in ("POST", "PATCH") else None,
        headers=server.headers(),
        timeout=TIMEOUT,
    )


def _sign_in(tab: Watched, server: HttpServer) -> None:
    page = tab.page
    page.goto(f"{server.url}/")
    page.get_by_label("API key").fill(server.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Profiles")


def _focused(page: Page) -> dict[str, str]:
    found: dict[str, str] = page.evaluate(
        """() => {
            const el = document.activeElement;
            return {
                tag: el ? el.tagName : "",
                id: el ? el.id : "",
                text: el ? (el.textContent || "").trim() : "",
                label: el ? el.getAttribute("aria-label") || "" : "",
                outline: el ? getComputedStyle(el).outlineStyle : "",
            };
        }"""
    )
    return found


def _tab_to(page: Page, matches: Any, *, back: bool = False, limit: int = 40) -> dict[str, str]:
    """Press Tab (Shift+Tab with ``back``) until the focused element ``matches``."""
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        focused = _focused(page)
        if matches(focused):
            return focused
    raise AssertionError(f"no focusable element matched after {limit} presses: {focused}")


# ------------------------------------------------------------------ no browser


def test_the_page_is_served_with_strict_headers_and_no_key(tmp_path: Path) -> None:
    with start_http_server(tmp_path / "home", extra_args=["--rate-limit", "5/60"]) as server:
        for _ in range(3):  # the page's files are not counted by the address's budget
            for path in ("/", "/web/app.js", "/web/api.js", "/web/style.css", "/web/live.js"):
                r = httpx.get(f"{server.url}{path}", timeout=30)
                assert r.status_code == 200, (path, r.text)
                csp = r.headers["content-security-policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert "unsafe-inline" not in csp and "script-src 'self'" in csp
                assert r.headers["x-content-type-options"] == "nosniff"
                assert r.headers["referrer-policy"] == "no-referrer"
                assert "ratelimit-limit" not in r.headers
        index = httpx.get(f"{server.url}/", timeout=30)
        assert index.headers["content-type"].startswith("text/html")
        assert "<script" in index.text and "<script>" not in index.text  # no inline script
        assert " style=" not in index.text
        js = httpx.get(f"{server.url}/web/app.js", timeout=30)
        assert js.headers["content-type"].startswith("text/javascript")
        # Nothing else is served from there.
        for path in ("/web/../app.py", "/web/nope.js", "/web/", "/web/web.py"):
            r = httpx.get(f"{server.url}{path}", timeout=30)
            assert r.status_code == 404, path
        # The page is not an API route.
        paths = httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
        assert "/" not in paths and not [p for p in paths if p.startswith("/web")]
        assert "/v1/sessions/{session_id}/live-ticket" in paths
        # A ticket needs a key, and a session of the account.
        r = httpx.post(f"{server.url}/v1/sessions/sess_nope/live-ticket", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["message"] == "API key required"
        r = httpx.post(
            f"{server.url}/v1/sessions/sess_00000000-0000-0000-0000-000000000000/live-ticket",
            headers=server.headers(),
            timeout=30,
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "NotFound"


def test_every_file_of_the_page_is_listed_and_shipped() -> None:
    """What web.py serves is what the directory holds, and pyproject ships the directory."""
    from profiles.http.server.routes.web import WEB_FILES

    folder = Path(__file__).resolve().parent.parent / "profiles" / "http" / "server" / "web"
    assert sorted(WEB_FILES) == sorted(p.name for p in folder.iterdir())
    pyproject = (folder.parents[3] / "pyproject.toml").read_text()
    assert '"http/server/web/*"' in pyproject
    # Every module the page imports, and every file index.html names, is served.
    for path in folder.glob("*.js"):
        for name in re.findall(r'from "\./([a-z]+\.js)"', path.read_text()):
            assert name in WEB_FILES, (path.name, name)
    for name in re.findall(r'"/web/([a-z.]+)"', (folder / "index.html").read_text()):
        assert name in WEB_FILES, name


# ------------------------------------------------------------------ signing in


def test_sign_in_with_a_wrong_key_then_the_right_one_and_out(
    server: HttpServer, tab: Watched
) -> None:
    page = tab.page
    page.goto(f"{server.url}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    wrong = "pk_0123456789abcdef_" + "x" * 43
    page.get_by_label("API key").fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    # The API's own words for a wrong key.
    expect(alert).to_have_text("Invalid or revoked API key")
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("API key").fill(server.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Profiles")
    expect(alert).to_be_hidden()
    expect(page.locator("#who")).to_contain_text("web tests")
    assert page.evaluate("Object.values(sessionStorage)") == [server.api_key]
    expect(page.get_by_label("API key")).to_have_value("")
    tab.assert_key_kept_out(server.api_key)

    # The tab keeps it over a reload; another tab of the same browser does not have it.
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Profiles")
    other = page.context.new_page()
    other.goto(f"{server.url}/")
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    other.close()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    tab.assert_key_kept_out(server.api_key)
    assert tab.errors == []


# ------------------------------------------------------------------ profiles


def test_profiles_snapshots_events_and_a_404(server: HttpServer, tab: Watched) -> None:
    for name in ("alpha", "beta"):
        assert _api(server, "POST", "/profiles", name=name).status_code == 200
    page = tab.page
    _sign_in(tab, server)
    rows = page.locator("table.profiles tbody tr")
    expect(rows).to_have_count(2)
    alpha = page.locator("tr[data-profile=alpha]")
    expect(alpha).to_contain_text("empty")
    expect(alpha).to_contain_text("chromium")
    expect(alpha).to_contain_text("never")

    page.get_by_role("link", name="alpha").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("alpha")
    assert page.url.endswith("#/profiles/alpha")
    events = page.locator("table.events tbody")
    expect(events).to_contain_text("profile.created")

    # Take a snapshot.
    page.get_by_label("Label (optional)").fill("before-login")
    page.get_by_role("button", name="Take snapshot").click()
    snapshot_row = page.locator("table.snapshots tbody tr")
    expect(snapshot_row).to_have_count(1)
    expect(snapshot_row).to_contain_text("before-login")
    listed = _api(server, "GET", "/profiles/alpha/snapshots").json()["data"]
    assert [s["label"] for s in listed] == ["before-login"]
    snapshot_id = listed[0]["id"]
    expect(events).to_contain_text("snapshot.created")

    # Restore it: a new profile.
    page.get_by_role("button", name="Restore before-login as a new profile").click()
    expect(page.locator("#notice")).to_contain_text("restored as a new profile: alpha-restored")
    restored = _api(server, "GET", "/profiles/alpha-restored")
    assert restored.status_code == 200, restored.text

    # Delete it, after confirming.
    page.get_by_role("button", name="Delete before-login").click()
    page.get_by_role("button", name="Confirm delete").click()
    expect(snapshot_row).to_have_count(0)
    expect(page.get_by_text("No snapshots yet.")).to_be_visible()
    assert _api(server, "GET", "/profiles/alpha/snapshots").json()["data"] == []
    assert _api(server, "GET", f"/profile-snapshots/{snapshot_id}").status_code == 404
    expect(events).to_contain_text("snapshot.deleted")

    # An unknown profile: the API's 404, in its words.
    answer = _api(server, "GET", "/profiles/no-such-profile")
    assert answer.status_code == 404
    page.goto(f"{server.url}/#/profiles/no-such-profile")
    expect(page.get_by_role("heading", level=1)).to_have_text("Profile not found")
    expect(page.locator("#not-found")).to_have_text(answer.json()["error"]["message"])

    # An error of an action is shown as the API words it: a name already taken.
    page.goto(f"{server.url}/#/profiles")
    page.get_by_label("New profile name").fill("beta")
    page.get_by_role("button", name="Create profile").click()
    taken = _api(server, "POST", "/profiles", name="beta").json()["error"]["message"]
    expect(page.get_by_role("alert")).to_have_text(taken)
    tab.assert_key_kept_out(server.api_key)
    assert tab.errors == []


# ------------------------------------------------------------------ sessions


def _canvas_painted(page: Page) -> bool:
    painted: bool = page.evaluate(
        """() => {
            const canvas = document.getElementById("live-canvas");
            if (!canvas || Number(canvas.dataset.frames || 0) < 1) return false;
            const data = canvas.getContext("2d")
                .getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4 * 997) {
                colours.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
            }
            return colours.size > 1;
        }"""
    )
    return painted


def test_a_session_started_driven_in_the_live_view_and_stopped_from_the_page(
    server: HttpServer, tab: Watched, http_server: str, playwright: Playwright, tmp_path: Path
) -> None:
    assert _api(server, "POST", "/profiles", name="shop").status_code == 200
    page = tab.page
    _sign_in(tab, server)
    page.get_by_role("link", name="shop").click()
    page.get_by_label("Start URL (optional)").fill(f"{http_server}/typing.html")
    page.get_by_role("button", name="Start a session on this profile").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        re.compile(r"Session sess_"), timeout=UI_TIMEOUT
    )
    expect(page.locator("#session-status")).to_have_text("running")
    session_id = page.url.rsplit("/", 1)[1]
    assert _api(server, "GET", f"/sessions/{session_id}").json()["status"] == "running"

    # Frames arrive and are painted.
    wait_until(lambda: _canvas_painted(page), timeout=60, what="the live view to paint a frame")
    expect(page.locator("#live-status")).to_contain_text("Live")
    # The page counts as a client of the session.
    wait_until(
        lambda: _api(server, "GET", f"/sessions/{session_id}").json()["clients"] == 1,
        timeout=30,
        what="the live view to be a client",
    )

    # A click into the remote page's input, and typing.
    canvas = page.locator("#live-canvas")
    box = canvas.bounding_box()
    assert box is not None
    canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.1})
    expect(canvas).to_be_focused()
    page.keyboard.type("hello web")
    page.keyboard.press("Backspace")
    page.keyboard.type("b!")

    record = _api(server, "GET", f"/sessions/{session_id}").json()
    browser = playwright.chromium.connect_over_cdp(record["connect_url"], headers=server.headers())
    try:
        remote = next(p for p in browser.contexts[0].pages if p.url.endswith("/typing.html"))
        wait_until(
            lambda: remote.evaluate("localStorage.getItem('typed')") == "hello web!",
            timeout=30,
            what="the typed text to reach the remote page",
            detail=lambda: str(remote.evaluate("localStorage.getItem('typed')")),
        )
        assert int(remote.evaluate("localStorage.getItem('clicks')")) >= 1
    finally:
        browser.close()  # disconnects; the session goes on

    # Listed as running, then stopped from its page.
    page.get_by_role("link", name="← All sessions").click()
    row = page.locator(f"tr[data-session='{session_id}']")
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("shop")
    row.get_by_role("link", name="Live view").click()
    expect(page.locator("#session-status")).to_have_text("running")
    page.get_by_role("button", name=f"Stop session {session_id}").click()
    expect(page.locator("#session-status")).to_have_text("stopped", timeout=UI_TIMEOUT)
    final = _api(server, "GET", f"/sessions/{session_id}").json()
    assert final["status"] == "stopped" and final["outcome"]["committed"] is True
    expect(page.locator("#notice")).to_contain_text("committed")
    expect(page.get_by_role("button", name=f"Stop session {session_id}")).to_have_count(0)
    tab.assert_key_kept_out(server.api_key)
    assert tab.sockets and all("/live" in url for url in tab.sockets)
    assert tab.errors == []

    # What was typed in the live view was committed with the profile.
    store = ProfileStore(tmp_path / "local", service=f"{server.url}/v1", api_key=server.api_key)
    with store, Session(profile="shop", store=store, readonly=True, playwright=playwright) as local:
        local.goto(f"{http_server}/typing.html")
        assert local.evaluate("localStorage.getItem('typed')") == "hello web!"


def test_keyboard_alone_signs_in_and_stops_a_session(server: HttpServer, tab: Watched) -> None:
    started = _api(server, "POST", "/sessions")  # ephemeral: nothing to commit
    assert started.status_code == 200, started.text
    session_id = started.json()["id"]
    page = tab.page
    page.goto(f"{server.url}/")
    field = _tab_to(page, lambda f: f["id"] == "api-key")
    assert field["outline"] != "none"  # focus shows
    page.keyboard.type(server.api_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Profiles")
    expect(page.get_by_role("heading", level=1)).to_be_focused()

    link = _tab_to(page, lambda f: f["tag"] == "A" and f["text"] == "Sessions", back=True)
    assert link["outline"] != "none"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sessions")
    expect(page.locator(f"tr[data-session='{session_id}']")).to_contain_text("running")
    stop = _tab_to(page, lambda f: f["label"] == f"Stop session {session_id}")
    assert stop["tag"] == "BUTTON" and stop["outline"] != "none"
    page.keyboard.press("Enter")
    wait_until(
        lambda: _api(server, "GET", f"/sessions/{session_id}").json()["status"] == "stopped",
        timeout=60,
        what="the session to stop",
    )
    expect(page.locator(f"tr[data-session='{session_id}']")).to_contain_text("stopped")
    tab.assert_key_kept_out(server.api_key)
    assert tab.errors == []


# ------------------------------------------------------------------ the ticket


def _handshake(url: str, protocols: list[str]) -> tuple[int, str | None]:
    try:
        with ws_connect(
            url,
            subprotocols=[Subprotocol(p) for p in protocols],
            open_timeout=30,
            proxy=None,
        ) as ws:
            return 101, ws.subprotocol
    except InvalidStatus as exc:
        return exc.response.status_code, None


def test_a_live_ticket_serves_once_its_own_session_and_dies_with_its_key(
    server: HttpServer, chromium: Browser
) -> None:
    """(``chromium``: the module's browsers are there; the session's runs on the server.)"""
    first = _api(server, "POST", "/sessions").json()["id"]
    second = _api(server, "POST", "/sessions").json()["id"]
    base = server.url.replace("http://", "ws://")

    def ticket(session_id: str, key: str | None = None) -> str:
        r = httpx.post(
            f"{server.url}/v1/sessions/{session_id}/live-ticket",
            headers=server.headers(key),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        grant = r.json()
        assert grant["protocol"] == "profiles.live.v1" and grant["expires_in"] == 30
        assert grant["url"] == f"{base}/v1/sessions/{session_id}/live"
        assert server.api_key not in grant["url"] and grant["ticket"] not in grant["url"]
        return str(grant["ticket"])

    url = f"{base}/v1/sessions/{first}/live"
    t = ticket(first)
    assert _handshake(url, ["profiles.live.v1", f"ticket.{t}"]) == (101, "profiles.live.v1")
    assert _handshake(url, ["profiles.live.v1", f"ticket.{t}"])[0] == 401  # spent
    assert _handshake(url, ["profiles.live.v1"])[0] == 401
    assert _handshake(url, [f"ticket.{ticket(first)}"])[0] == 401  # without the protocol
    # A ticket is for its own session only (and spent by trying another).
    t = ticket(second)
    assert _handshake(url, ["profiles.live.v1", f"ticket.{t}"])[0] == 401
    assert (
        _handshake(f"{base}/v1/sessions/{second}/live", ["profiles.live.v1", f"ticket.{t}"])[0]
        == 401
    )
    # A read key may watch and drive an ephemeral session (a writer session needs admin).
    t = ticket(first, server.read_key)
    assert _handshake(url, ["profiles.live.v1", f"ticket.{t}"])[0] == 101
    # Another account: no such session.
    other = server.with_new_account(name="other")
    r = httpx.post(f"{server.url}/v1/sessions/{first}/live-ticket", headers=other.headers())
    assert r.status_code == 404
    # A key revoked after taking its ticket: the socket is refused.
    t = ticket(first, server.read_key)
    with SQLiteAccountsDB(server.home / "accounts.sqlite3") as db:
        db.revoke_key(server.read_key)
    assert _handshake(url, ["profiles.live.v1", f"ticket.{t}"])[0] == 401
    for session_id in (first, second):
        assert _api(server, "PATCH", f"/sessions/{session_id}", action="stop").status_code == 200
    # A stopped session has no live view.
    r = httpx.post(
        f"{server.url}/v1/sessions/{first}/live-ticket", headers=server.headers(), timeout=30
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "Conflict"
    assert server.api_key not in server.log_text()
