"""Sessions as a service, end to end on this machine: a ``profiles serve`` on loopback runs
the browsers; this script only has its URL and an API key.

It makes a throwaway service home (an account and a key), starts ``profiles serve``, and
runs two ``RemoteSession`` blocks on one profile: the first logs in to a local page, the
second finds the login there. Then it starts a session with the plain HTTP API and drives it
with bare Playwright (``connect_over_cdp``), as a script in another language would, and
stops it. With ``--keep`` the service stays up, for the web page at its address.

Usage: python scripts/remote_quickstart.py [--port 8787] [--keep]
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from driver import RemoteSession
from profiles import ProfileStore

PAGE = b"""<!doctype html><title>remote quickstart</title><script>
const n = Number((document.cookie.match(/(?:^|; )visits=(\\d+)/) || [0, 0])[1]) + 1;
document.cookie = "visits=" + n + "; max-age=31536000; path=/";
document.title = "visit " + n;
</script>"""


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        if self.path == "/login":
            self.send_header("Set-Cookie", "session=signed-in; Max-Age=2592000; Path=/")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def profiles(home: Path, *args: str) -> dict[str, object]:
    """A ``profiles`` command on the service's home, its --json answer."""
    out = subprocess.run(
        [sys.executable, "-m", "profiles", "--home", str(home), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    answer: dict[str, object] = json.loads(out.stdout)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--keep", action="store_true", help="leave the service running")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    home = Path(tempfile.mkdtemp(prefix="profiles-service-"))
    account = profiles(home, "accounts", "create", "demo", "--tier", "team")
    key = str(profiles(home, "keys", "create", "--account", str(account["id"]))["key"])
    url = f"http://127.0.0.1:{options.port}"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "profiles",
            "--home",
            str(home),
            "serve",
            "--port",
            str(options.port),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        print(f"service: {url} (home {home})")

        site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=site.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{site.server_address[1]}"

        # A client machine: only the service's URL and a key.
        store = ProfileStore(home / "client", service=f"{url}/v1", api_key=key)
        store.create("production")
        with RemoteSession(profile="production", store=store) as page:
            page.goto(f"{base}/login")
            print(f"remote session 1: {page.title()}, logged in")
        with RemoteSession(profile="production", store=store) as page:
            page.goto(f"{base}/")
            cookies = {c["name"] for c in page.context.cookies()}
            print(f"remote session 2: {page.title()}, logged in: {'session' in cookies}")

        # The same with the plain HTTP API and bare Playwright.
        auth = {"Authorization": f"Bearer {key}"}
        record = httpx.post(
            f"{url}/v1/sessions", json={"profile_id": "production"}, headers=auth, timeout=120
        ).json()
        with sync_playwright() as p:
            browser = p.chromium.connect_over_cdp(record["connect_url"], headers=auth)
            page = browser.contexts[0].pages[0]
            page.goto(f"{base}/")
            print(f"HTTP API session {record['id']}: {page.title()}")
            browser.close()  # disconnects; the session runs until stopped
        stopped = httpx.patch(
            f"{url}/v1/sessions/{record['id']}", json={"action": "stop"}, headers=auth, timeout=120
        ).json()
        print(f"stopped: committed={stopped['outcome']['committed']}")
        store.close()
        if options.keep:
            print(f"the web page: {url}/ ; sign in with the API key {key} (Ctrl-C to end)")
            serve.wait()
    finally:
        serve.terminate()
        serve.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
