"""One remote session's browser: a thread of its own running an event loop and an
:class:`~driver.session.AsyncSession` on the profile (the lifecycle a local session runs:
writer lease, working copy, engine cache, commit at the end), or, for an ephemeral session,
a bare persistent context on a scratch directory that is deleted at the end.

Why a thread with its own loop, not the server's loop: the session's Playwright (its
driver, the messages of the browser) and its blocking steps (unpacking, committing) stay off
the loop that answers HTTP; and a session outside the main thread installs no signal
handler (:mod:`driver._signals`), so ``profiles serve`` keeps SIGINT and SIGTERM for itself
and stops its sessions from its lifespan. The Playwright driver runs in a process group of
its own (as a local session's does), so Ctrl-C on the server's terminal reaches the server
alone, which then stops and commits every session.

The browser listens for DevTools on loopback only (``--remote-debugging-port=0`` with
``--remote-debugging-address=127.0.0.1``); the port and the browser's WebSocket path are read
from ``DevToolsActivePort``, which Chromium writes into the user data dir once it listens
(a stale one is removed before launch with the engine locks). The service's CDP proxy
(:mod:`.cdp_proxy`) is the only way in that a client is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.session import AsyncSession
from profiles.errors import NavigationFailed, ProfileError
from profiles.redact import describe_error
from profiles.store import ProfileStore

__all__ = ["DEVTOOLS_ARGS", "Devtools", "RunSpec", "SessionRun"]

log = logging.getLogger(__name__)

#: DevTools on loopback only, on a port the system picks.
DEVTOOLS_ARGS: tuple[str, ...] = (
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)
DEVTOOLS_FILE = "DevToolsActivePort"
DEVTOOLS_WAIT = 15.0  # seconds for the browser to write DEVTOOLS_FILE
TICK = 0.25  # how often the session's loop looks at its timers


@dataclass(frozen=True)
class Devtools:
    """Where the browser's DevTools listen: ``ws://127.0.0.1:{port}{path}``."""

    port: int
    path: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"


@dataclass
class RunSpec:
    """What to run: ``profile`` (an id) or None for an ephemeral session."""

    session_id: str
    store: ProfileStore
    profile: str | None
    readonly: bool
    lock_timeout: float
    start_url: str | None
    viewport: dict[str, int] | None
    proxy: dict[str, str] | None
    idle_timeout: float
    max_duration: float | None
    keep_alive: bool
    audit: dict[str, Any] = field(default_factory=dict)


def read_devtools(user_data_dir: Path) -> Devtools | None:
    """The port and path in ``DevToolsActivePort``, once it holds both."""
    try:
        lines = (user_data_dir / DEVTOOLS_FILE).read_text("ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 2 or not lines[0].isdigit() or not lines[1].startswith("/devtools/browser/"):
        return None
    port = int(lines[0])
    return Devtools(port, lines[1]) if 0 < port < 65536 else None


async def wait_devtools(user_data_dir: Path, timeout: float = DEVTOOLS_WAIT) -> Devtools:
    deadline = time.monotonic() + timeout
    while True:
        found = read_devtools(user_data_dir)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise ProfileError(
                f"The browser did not open its DevTools endpoint within {timeout:g} s "
                f"({DEVTOOLS_FILE} was not written)."
            )
        await asyncio.sleep(0.05)


class SessionRun:
    """The browser of one remote session, in a thread of its own.

    ``ready`` resolves once a client can connect (or with the error that ended the start);
    ``done`` once the session has ended (the browser closed, the state committed or not).
    :meth:`request_stop` may be called from any thread. ``clients`` is kept by the CDP
    proxy (the server's loop); the session's own loop reads it to apply ``idle_timeout``,
    ``keep_alive`` and ``max_duration``.
    """

    def __init__(self, spec: RunSpec, on_event: Callable[[str, SessionRun], None]) -> None:
        self.spec = spec
        self.on_event = on_event  # "running", "stopping", "ended": from the session's thread
        self.ready: Future[None] = Future()
        self.done: Future[None] = Future()
        self.devtools: Devtools | None = None
        self.browser_version: str | None = None
        self.profile_id: str | None = None
        self.profile_name: str | None = None
        self.started_mono: float | None = None
        self.clients = 0
        self.had_client = False
        self.idle_since = time.monotonic()
        self.stop_reason: str | None = None
        self.ended: dict[str, Any] | None = None  # session.ended's payload
        self.error: ProfileError | None = None  # the start's or the end's failure
        self._downloads: Path | None = None  # where the browser's downloads go (cdp_guard)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._main, name=f"remote-{spec.session_id[:13]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str) -> None:
        """Ask the session to end (close the browser, commit); the first reason stands."""
        with self._stop_lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended meanwhile
                loop.call_soon_threadsafe(stop.set)

    def downloads_dir(self) -> Path:
        """The session's own private directory for the browser's downloads (made on first
        use, removed when the session ends): the only place a client may have the browser
        write (:mod:`.cdp_guard`)."""
        with self._stop_lock:
            if self._downloads is None:
                self._downloads = Path(
                    tempfile.mkdtemp(prefix="http-downloads-", dir=self.spec.store.tmp_dir)
                )
            return self._downloads

    def client_joined(self) -> None:
        self.clients += 1
        self.had_client = True

    def client_left(self) -> None:
        self.clients = max(0, self.clients - 1)
        if self.clients == 0:
            self.idle_since = time.monotonic()
            if not self.spec.keep_alive:
                self.request_stop("the last client disconnected (keep_alive is false)")

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # never leave the futures unresolved
            log.error("remote session %s: %s", self.spec.session_id, describe_error(exc))
            self._fail(exc)
        finally:
            if self._downloads is not None:
                shutil.rmtree(self._downloads, ignore_errors=True)
            try:
                self.on_event("ended", self)  # the record first: done's waiters read it
            finally:
                if not self.ready.done():
                    self.ready.set_exception(ProfileError("The session ended before it started."))
                if not self.done.done():
                    self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = _as_profile_error(exc)
        if not self.ready.done():
            self.ready.set_exception(self.error)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with self._stop_lock:
            if self.stop_reason is not None:
                self._stop.set()
        if self.spec.profile is None:
            await self._run_ephemeral()
        else:
            await self._run_profile(self.spec.profile)

    async def _run_profile(self, ref: str) -> None:
        spec = self.spec
        session = AsyncSession(
            ref,
            store=spec.store,
            headless=True,
            readonly=spec.readonly,
            lock_timeout=spec.lock_timeout,
            start_url=spec.start_url,
            viewport=spec.viewport,
            proxy=spec.proxy,
            args=DEVTOOLS_ARGS,
            create=False,
            audit=spec.audit,
            holder="remote-session",
        )
        try:
            async with session:
                self.profile_id = session.profile.id
                self.profile_name = session.profile.name
                browser = session.context.browser
                self.browser_version = browser.version if browser is not None else None
                session.context.on("close", lambda *_: self.request_stop("the browser exited"))
                self.devtools = await wait_devtools(session.user_data_dir)
                await self._serve()
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.ended = session.ended

    async def _run_ephemeral(self) -> None:
        from playwright.async_api import async_playwright

        from driver._signals import _own_process_group
        from driver.browsers import find_browser

        spec = self.spec
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="http-ephemeral-", dir=spec.store.tmp_dir))
        outcome = "ok"
        try:
            install = find_browser("chromium")
            with _own_process_group():
                playwright = await async_playwright().start()
            try:
                options: dict[str, Any] = {
                    **install.launch_options(),
                    "headless": True,
                    "args": list(DEVTOOLS_ARGS),
                    "handle_sigint": False,
                    "handle_sigterm": False,
                    "handle_sighup": False,
                }
                if spec.viewport:
                    options["viewport"] = spec.viewport
                if spec.proxy:
                    options["proxy"] = spec.proxy
                context = await playwright.chromium.launch_persistent_context(
                    str(scratch / "state"), **options
                )
                try:
                    self.browser_version = context.browser.version if context.browser else None
                    context.on("close", lambda *_: self.request_stop("the browser exited"))
                    page = context.pages[0] if context.pages else await context.new_page()
                    if spec.start_url:
                        await page.goto(spec.start_url)
                    self.devtools = await wait_devtools(scratch / "state")
                    await self._serve()
                finally:
                    with contextlib.suppress(Exception):
                        await context.close()
            finally:
                with contextlib.suppress(Exception):
                    await playwright.stop()
        except Exception as exc:
            outcome = "error"
            self._fail(exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.ended = {
                "outcome": outcome,
                "committed": False,
                "reason": "ephemeral: the state is discarded",
                "error": self.error.message if self.error is not None else None,
                "seconds": round(time.monotonic() - started, 3),
            }

    async def _serve(self) -> None:
        """Running: tell the registry, then wait for a stop (asked, or by a timer)."""
        assert self._stop is not None
        self.started_mono = time.monotonic()
        self.idle_since = self.started_mono
        self.on_event("running", self)
        self.ready.set_result(None)
        spec = self.spec
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK)
            now = time.monotonic()
            if spec.max_duration is not None and now - self.started_mono >= spec.max_duration:
                self.request_stop(f"max_duration ({spec.max_duration:g} s) reached")
            elif self.clients == 0 and now - self.idle_since >= spec.idle_timeout:
                self.request_stop(f"idle_timeout ({spec.idle_timeout:g} s without a client)")
        self.on_event("stopping", self)


def _as_profile_error(exc: BaseException) -> ProfileError:
    if isinstance(exc, ProfileError):
        return exc
    notes = " ".join(getattr(exc, "__notes__", ()) or ())
    if "start_url" in notes:
        return NavigationFailed(f"Opening the session's start_url failed: {describe_error(exc)}")
    return ProfileError(f"The session's browser failed: {describe_error(exc)}")
