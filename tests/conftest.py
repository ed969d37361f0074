"""Shared fixtures (an isolated store home per test, stores on every backend, profile
servers, a local page server) and the browser lane.

The fast lane, every test that needs no browser (no browser starts in it):

    .venv/bin/python -m pytest -m "not browser"

and ``-m browser`` the rest. Tests that use a browser get the ``browser`` marker by
themselves (the rule is in support/browser_lane.py: they go through :func:`require_engine`,
directly or through a fixture or helper); the others run as if no browser were installed,
so one that launches a browser anyway fails instead of slowing the fast lane.

Browser tests never skip for Chromium or Firefox: a missing browser is a failure (CI must
have them). WebKit tests skip with the reason when Playwright's WebKit is not installed.
"""

from __future__ import annotations

import http.server
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support.archives import make_target_area
from support.backends import BACKENDS, LOCAL_BACKENDS, fresh_shared_urls, store_on
from support.browser_lane import NO_BROWSER, uses_a_browser
from support.http_service import HttpServer, start_http_server

# The shared backend's servers (real PostgreSQL, moto's S3 server), for every test module.
from support.pg_service import (  # noqa: F401
    PostgresService,
    PrivateServer,
    postgres_database,
    postgres_service,
    postgres_url,
)
from support.s3_service import s3_bucket, s3_endpoint, s3_env  # noqa: F401

from driver.browsers import ENV_OVERRIDE
from profiles import BrowserNotFound, ProfileStore
from profiles.state.rules import Engine

PAGES = Path(__file__).parent / "pages"

# No timing in tests: a loaded CI machine must not fail a property for being slow.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``browser`` marker on every test that uses a browser (support/browser_lane.py)."""
    for item in items:
        if item.get_closest_marker("browser") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        fixtures = [
            fixturedef.func
            for name in item.fixturenames
            for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ())
        ]
        if uses_a_browser(getattr(item, "function", None), fixtures):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(autouse=True)
def _no_browser_outside_the_browser_lane(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test without the ``browser`` marker finds no browser (here or in its children)."""
    if request.node.get_closest_marker("browser") is None:
        for variable in ENV_OVERRIDE.values():
            monkeypatch.setenv(variable, NO_BROWSER)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store home; nothing touches the user's real one."""
    home = tmp_path / "home"
    monkeypatch.setenv("PROFILES_HOME", str(home))
    return home


@pytest.fixture
def home(_isolated_home: Path) -> Path:
    return _isolated_home


@pytest.fixture
def store(request: pytest.FixtureRequest, home: Path) -> Iterator[ProfileStore]:
    """A store in the test's home: embedded, or in a module (or test) marked
    ``@pytest.mark.backends``, on each backend in turn (see :func:`pytest_generate_tests`)."""
    yield from store_on(request, home, getattr(request, "param", "embedded"))


@pytest.fixture(params=LOCAL_BACKENDS)
def local_store(request: pytest.FixtureRequest, home: Path) -> Iterator[ProfileStore]:
    """For what only a store holding its own catalog and blobs can show (reaching into
    them, or watching an import from the same process): embedded and PostgreSQL + S3."""
    yield from store_on(request, home)


@pytest.fixture
def shared_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A fresh shared backend for the test: ``(catalog_url, blobs_url)``, a new PostgreSQL
    database and a new S3 prefix (the test's machines make their stores on it)."""
    yield from fresh_shared_urls(request)


@pytest.fixture
def shared_store(shared_urls: tuple[str, str], home: Path) -> Iterator[ProfileStore]:
    """A store in the test's home on :func:`shared_urls`."""
    with ProfileStore(home, catalog=shared_urls[0], blobs=shared_urls[1]) as store:
        yield store


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.backends(*kinds)`` runs the ``store`` fixture on those backends (all
    of :data:`support.backends.BACKENDS` without arguments): the behaviour suites."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", marker.args or BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def session_profile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """One ``profiles serve`` for the whole run, which no test may stop. Each test works on it
    through an account of its own (:meth:`HttpServer.with_new_account`, or
    ``profile_server``), so it sees only its own profiles."""
    with start_http_server(tmp_path_factory.mktemp("shared-server") / "home") as server:
        yield server


@pytest.fixture
def profile_server(session_profile_server: HttpServer) -> HttpServer:
    """The session's ``profiles serve`` through a new account of this test's own."""
    return session_profile_server.with_new_account()


@pytest.fixture
def own_profile_server(tmp_path: Path) -> Iterator[HttpServer]:
    """A ``profiles serve`` for this test alone (its home under ``tmp_path``): one the test
    may stop and start again, or whose whole log is the test's."""
    with start_http_server(tmp_path / "server-home") as server:
        yield server


@pytest.fixture
def target_area(tmp_path: Path) -> tuple[Path, Path]:
    """``(area, target)``: a profile directory an unpack replaces, next to a sentinel
    (support/archives.py; ``assert_untouched`` checks both are as they were)."""
    return make_target_area(tmp_path)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, directory=str(PAGES), **kwargs)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: object) -> None:
        pass

    set_cookies = False

    def end_headers(self) -> None:
        if self.set_cookies:
            self.send_header("Set-Cookie", "persistent=kept; Max-Age=86400; Path=/")
            self.send_header("Set-Cookie", "sessiononly=kept; Path=/")
        if self.path.endswith("sw.js"):
            self.send_header("Content-Type", "application/javascript")
        self.send_header("Cache-Control", "max-age=3600")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/set-cookie"):
            self.set_cookies = True
            self.path = "/index.html"
        super().do_GET()


@pytest.fixture(scope="session")
def http_server() -> Iterator[str]:
    """Base URL of a local server for tests/pages (``/set-cookie`` also sets two cookies)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def require_engine(engine: Engine) -> None:
    """Fail (Chromium, Firefox) or skip (WebKit) when the engine has no browser here."""
    from driver.browsers import find_browser

    if os.environ.get(ENV_OVERRIDE[engine]) == NO_BROWSER:
        pytest.fail(
            "this test uses a browser and has no 'browser' marker: the rule of "
            "support/browser_lane.py does not see it; mark it @pytest.mark.browser"
        )
    try:
        find_browser(engine)
    except BrowserNotFound as exc:
        if engine == "webkit" or os.environ.get("PROFILES_ALLOW_MISSING_BROWSERS") == "1":
            pytest.skip(f"{engine} is not installed here: {exc.message}")
        pytest.fail(f"{engine} is required for this test and missing: {exc.message}")


@pytest.fixture(params=["chromium", "firefox"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Chromium and Firefox; both must be installed."""
    value: Engine = request.param
    require_engine(value)
    return value


ARCHETYPE_OF: dict[Engine, str] = {
    "chromium": "desktop-chromium",
    "firefox": "desktop-firefox",
    "webkit": "desktop-webkit",
}


def open_command(home: Path, profile: str, engine: Engine, url: str, *extra: str) -> list[str]:
    """``python -m profiles --home HOME open PROFILE --archetype ... --url URL [extra]``:
    the command line a person types to fill a profile by hand."""
    return [
        sys.executable,
        *("-m", "profiles", "--home", str(home), "open", profile),
        *("--archetype", ARCHETYPE_OF[engine], "--url", url, *extra),
    ]


@pytest.fixture
def stoppable_postgres(postgres_service: PostgresService) -> Iterator[PrivateServer]:  # noqa: F811
    """A PostgreSQL server this test may stop: the session's private one, or, when the
    tests run against an external server (CI's, which no test may stop), one of its own."""
    if postgres_service.server is not None:
        yield postgres_service.server
        return
    own = PrivateServer.launch()
    try:
        yield own
    finally:
        own.stop()
