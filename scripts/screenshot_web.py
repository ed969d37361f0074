"""The screenshot of the web page for the README: ``docs/images/web.png``.

Runs a real ``profiles serve`` on loopback (a temporary home), fills an account with a few
profiles (one logged in to a local shop page by a remote session, with a snapshot), starts a
session on it, signs in to the web page in Chromium, types into the session's live view
and takes the screenshot of the session's page with its live view.

Usage: python scripts/screenshot_web.py [--out docs/images/web.png] [--view session|profiles]
"""

from __future__ import annotations

import argparse
import http.server
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code
sys.path.insert(0, str(ROOT / "tests"))  # for support/ (the test server's launcher)

import httpx  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402
from support.http_service import HttpServer, start_http_server  # noqa: E402

from driver.browsers import find_browser  # noqa: E402

SHOP = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Example Shop: sign in</title>
<style>
body { margin: 0; font: 18px system-ui, sans-serif; background: #f3f4f6; color: #111827; }
header { background: #0f766e; color: #fff; padding: 18px 32px; font-size: 24px; }
main { max-width: 420px; margin: 48px auto; background: #fff; padding: 28px 32px;
       border-radius: 10px; box-shadow: 0 2px 12px rgba(0,0,0,.08); }
label { display: block; margin: 14px 0 6px; font-weight: 600; }
input { width: 100%; box-sizing: border-box; font: inherit; padding: 8px 10px;
        border: 1px solid #9ca3af; border-radius: 6px; }
button { margin-top: 20px; font: inherit; padding: 8px 18px; background: #0f766e;
         color: #fff; border: 0; border-radius: 6px; }
</style></head>
<body><header>Example Shop</header>
<main><h1>Sign in</h1>
<label for="email">Email</label><input id="email" type="email" autocomplete="off">
<label for="password">Password</label><input id="password" type="password">
<button>Sign in</button></main>
<script>
document.cookie = "shop_session=demo; max-age=2592000; path=/";
localStorage.setItem("visited", String(Date.now()));
</script></body></html>"""


class Shop(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(SHOP)

    def log_message(self, format: str, *args: object) -> None:
        pass


def api(server: HttpServer, method: str, path: str, **body: object) -> dict[str, object]:
    r = httpx.request(
        method,
        f"{server.url}/v1{path}",
        json=body or None,
        headers=server.headers(),
        timeout=120,
    )
    r.raise_for_status()
    return r.json() if r.content else {}


def wait_painted(page: Page, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate("Number(document.getElementById('live-canvas')?.dataset.frames || 0) > 0"):
            return
        time.sleep(0.2)
    raise RuntimeError("the live view painted no frame")


def fill(server: HttpServer, shop_url: str) -> str:
    """A few profiles, one logged in to the shop by a remote session (so it has a size,
    cookie domains and a use) with a snapshot; a running session on it: its id."""
    for name in ("production", "staging", "research"):
        api(server, "POST", "/profiles", name=name)
    record = api(server, "POST", "/sessions", profile_id="production", start_url=shop_url)
    time.sleep(2)
    api(server, "PATCH", f"/sessions/{record['id']}", action="stop")
    api(server, "POST", "/profiles/production/snapshots", label="after-login")
    screen = {"width": 1100, "height": 560}
    live = api(
        server, "POST", "/sessions", profile_id="production", start_url=shop_url, screen=screen
    )
    return str(live["id"])


def shoot(server: HttpServer, session_id: str, view: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(**find_browser("chromium").launch_options())
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/")
        page.get_by_label("API key").fill(server.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Profiles").wait_for()
        if view == "profiles":
            page.locator("table.profiles tbody tr").first.wait_for()
        else:
            page.goto(f"{server.url}/#/sessions/{session_id}")
            wait_painted(page)
            canvas = page.locator("#live-canvas")
            box = canvas.bounding_box()
            assert box is not None
            # The email field of the shop's form, as the live view shows it.
            canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.49})
            page.keyboard.type("alice@example.com")
            time.sleep(2.5)  # new frames, and the record polled with its client
            page.evaluate("document.activeElement.blur()")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "web.png")
    parser.add_argument("--view", choices=["session", "profiles"], default="session")
    options = parser.parse_args()

    shop = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Shop)
    threading.Thread(target=shop.serve_forever, daemon=True).start()
    shop_url = f"http://localhost:{shop.server_address[1]}/"
    with (
        tempfile.TemporaryDirectory(prefix="profiles-web-") as tmp,
        start_http_server(Path(tmp) / "home") as first,
    ):
        server = first.with_new_account(name="acme", tier="team")
        session_id = fill(server, shop_url)
        shoot(server, session_id, options.view, options.out)
        api(server, "PATCH", f"/sessions/{session_id}", action="stop")
    shop.shutdown()
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
