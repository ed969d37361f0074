"""The main job, end to end: two sessions on one profile.

The first session logs in to a local page (a login cookie and a visit counter); the second
opens the same profile and finds both there. Run it again and the counter keeps growing:
the profile lives in ``$PROFILES_HOME`` (or your user data dir) between runs, or, with
``$PROFILES_CATALOG_URL`` and ``$PROFILES_BLOBS_URL`` set, on the shared backend.

Usage: python scripts/quickstart.py [--profile NAME] [--engine chromium|firefox]
"""

from __future__ import annotations

import argparse
import http.server
import logging
import threading

from driver import Session
from profiles import ProfileStore

# The visit counter lives in a cookie: the server's port changes from run to run, and
# localStorage belongs to an origin (port included) while cookies do not.
PAGE = b"""<!doctype html><title>quickstart</title><script>
const n = Number((document.cookie.match(/(?:^|; )visits=(\d+)/) || [0, 0])[1]) + 1;
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quickstart")
    parser.add_argument("--engine", choices=["chromium", "firefox"], default="chromium")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    archetype = f"desktop-{options.engine}"

    with Session(profile=options.profile, archetype=archetype) as page:
        page.goto(f"{base}/login")
        print(f"session 1: {page.title()}, logged in")

    with Session(profile=options.profile) as page:
        page.goto(f"{base}/")
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        print(f"session 2: {page.title()}, cookie session={cookies.get('session')!r}")

    with ProfileStore() as store:
        profile = store.get(options.profile)
        print(
            f"profile {profile.name!r} ({profile.id}): {profile.status}, "
            f"{profile.blob_size} bytes, {profile.browser_name} {profile.browser_version}, "
            f"used {profile.usage_count} times, cookie domains {profile.cookie_domains}\n"
            f"store: {store.location}"
        )
    server.shutdown()


if __name__ == "__main__":
    main()
