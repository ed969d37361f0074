"""``Session`` and ``AsyncSession``: a Playwright persistent context on a named profile.

::

    with Session(profile="production") as page:
        page.goto("https://example.com")        # state from last time, written back on exit

    async with AsyncSession(profile="production") as page:
        await page.goto("https://example.com")

Both share :class:`_SessionBase` (options, lifecycle, once-only use) and differ only in
the Playwright calls. Teardown runs on normal exit, on an exception, on Ctrl-C and on
SIGTERM (turned into ``SystemExit(143)`` while a sync session is open in the main thread).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from playwright.async_api import BrowserContext as AsyncBrowserContext
from playwright.async_api import Page as AsyncPage
from playwright.async_api import Playwright as AsyncPlaywright
from playwright.async_api import async_playwright
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from driver.lifecycle import SaveMode, SessionLifecycle, SessionOptions
from profiles.models import Profile
from profiles.store import ProfileStore

__all__ = ["AsyncSession", "Session"]

try:  # what Playwright raises once the browser is gone; not exported publicly
    from playwright._impl._errors import TargetClosedError
except ImportError:  # pragma: no cover - a Playwright that moved it
    TargetClosedError = PlaywrightError  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)


class _ThreadPlaywright(threading.local):
    """One sync Playwright per thread, shared by the sessions open in it.

    Playwright's sync API allows a single running instance per thread, so a second
    ``Session`` opened inside the first (two profiles side by side) borrows the first one's.
    It stops when the last session in the thread ends.
    """

    playwright: Playwright | None = None
    users: int = 0

    def acquire(self) -> Playwright:
        if self.playwright is None:
            self.playwright = sync_playwright().start()
        self.users += 1
        return self.playwright

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.playwright is not None:
            playwright, self.playwright = self.playwright, None
            playwright.stop()


_thread_playwright = _ThreadPlaywright()


def _loop_running() -> bool:
    """Whether an asyncio loop runs in this thread (the sync API cannot run inside one;
    a sync session already open here runs Playwright's own loop, which is fine)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _SessionBase:
    def __init__(
        self,
        profile: str,
        *,
        store: ProfileStore | None = None,
        headless: bool = True,
        readonly: bool = False,
        lock_timeout: float = 600.0,
        start_url: str | None = None,
        viewport: Mapping[str, int] | None = None,
        proxy: Mapping[str, str] | None = None,
        locale: str | None = None,
        timezone_id: str | None = None,
        user_agent: str | None = None,
        args: Sequence[str] = (),
        create: bool = True,
        archetype: str | None = None,
        save: SaveMode = "always",
        allow_downgrade: bool = False,
        keep_session_cookies: bool = True,
        commit_on_browser_close: bool = False,
        launch_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Open ``profile`` (an id or a name) when entered.

        ``readonly`` opens a private copy, takes no lock and writes nothing back.
        ``save`` decides what happens on exit: ``"always"`` commits the state even after an
        exception (a login that happened is real), ``"on_success"`` only after a clean exit,
        ``"never"`` discards it. Options given here override the archetype's device.
        ``commit_on_browser_close`` treats a browser that closes by itself (a person
        closing the window of a headed session) as the end of the session, and commits;
        otherwise that counts as a crash and the previous state is kept.
        ``launch_options`` go to ``launch_persistent_context`` as they are.
        """
        self.options = SessionOptions(
            headless=headless,
            readonly=readonly,
            lock_timeout=lock_timeout,
            start_url=start_url,
            viewport=dict(viewport) if viewport else None,
            proxy=dict(proxy) if proxy else None,
            locale=locale,
            timezone_id=timezone_id,
            user_agent=user_agent,
            args=tuple(args),
            create=create,
            archetype=archetype,
            save=save,
            allow_downgrade=allow_downgrade,
            keep_session_cookies=keep_session_cookies,
            commit_on_browser_close=commit_on_browser_close,
            launch_options=dict(launch_options or {}),
        )
        self._owns_store = store is None
        self.store = store if store is not None else ProfileStore()
        self._life = SessionLifecycle(profile, self.store, self.options)
        self._state = "new"  # new -> open -> closed
        self._closing = False
        self._crashed = False
        self._closed_by_itself = False

    @property
    def profile(self) -> Profile:
        """The profile record (as of the last commit once the session has ended)."""
        if self._life.profile is None:
            raise RuntimeError("The session has not started yet: enter it first.")
        return self._life.profile

    @property
    def user_data_dir(self) -> Path:
        """The directory the browser runs on (a private copy for a read-only session)."""
        if self._life.user_data_dir is None:
            raise RuntimeError("The session has not started yet: enter it first.")
        return self._life.user_data_dir

    def _claim(self) -> None:
        if self._state != "new":
            raise RuntimeError(
                f"This {type(self).__name__} has already been used; create a new one for "
                "another session on the profile."
            )
        self._state = "starting"

    def _browser_went_away(self) -> None:
        """The browser exited without being asked: a person closed its window, or it
        crashed. Only ``commit_on_browser_close`` makes that a clean end."""
        if self._closed_by_itself:
            return
        self._closed_by_itself = True
        if self.options.commit_on_browser_close:
            log.info("the browser of the session on %s was closed", self._life.ref)
        else:
            self._crashed = True
            log.warning("the browser of the session on %s went away", self._life.ref)

    def _on_close(self, *_: object) -> None:
        if not self._closing:
            self._browser_went_away()

    def _can_read_cookies(self) -> bool:
        return (
            self.options.keep_session_cookies and not self._crashed and not self._closed_by_itself
        )

    def _note_teardown_error(self, what: str, err: Exception) -> None:
        """A teardown call failed: because the browser was already gone, or because
        Playwright's driver died (a crash: the previous state is kept)."""
        if isinstance(err, TargetClosedError):
            self._browser_went_away()
            return
        log.warning("%s failed: %s", what, err)
        self._crashed = True

    def _finish(self, exc: BaseException | None) -> None:
        try:
            self._life.finish(
                failed=exc is not None,
                crashed=self._crashed,
                error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
            )
        finally:
            if self._owns_store:
                self.store.close()


class Session(_SessionBase):
    """A synchronous session: ``with Session(profile="name") as page: ...``."""

    _playwright: Playwright | None = None
    _context: BrowserContext | None = None
    _page: Page | None = None
    _previous_sigterm: Any = None

    @property
    def context(self) -> BrowserContext:
        if self._context is None:
            raise RuntimeError("The session is not open.")
        return self._context

    @property
    def page(self) -> Page:
        if self._page is None:
            raise RuntimeError("The session is not open.")
        return self._page

    def __enter__(self) -> Page:
        if _thread_playwright.playwright is None and _loop_running():
            raise RuntimeError(
                "Session cannot run inside a running asyncio event loop; use "
                "'async with AsyncSession(...) as page' there."
            )
        self._claim()
        plan = self._life.prepare()
        try:
            self._playwright = _thread_playwright.acquire()
            browser_type = getattr(self._playwright, plan.engine)
            self._context = browser_type.launch_persistent_context(
                str(plan.user_data_dir), **plan.options
            )
            self._context.on("close", self._on_close)
            if plan.session_cookies:
                self._context.add_cookies(plan.session_cookies)  # type: ignore[arg-type]
            browser = self._context.browser
            self._life.started(browser.version if browser else None)
            pages = self._context.pages
            self._page = pages[0] if pages else self._context.new_page()
            if self.options.start_url:
                self._page.goto(self.options.start_url)
        except BaseException:
            self._stop_browser()
            self._life.abort()
            self._state = "closed"
            if self._owns_store:
                self.store.close()
            raise
        self._install_sigterm()
        self._state = "open"
        return self._page

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        self._restore_sigterm()
        try:
            if self._context is not None and self._can_read_cookies():
                try:
                    self._life.save_session_cookies(list(self._context.cookies()))  # type: ignore[arg-type]
                except Exception as err:  # a dead driver raises plain Exception
                    self._note_teardown_error("reading the session cookies", err)
            self._stop_browser()
        finally:
            self._finish(exc)

    def close(self) -> None:
        """End the session as a clean exit would."""
        self.__exit__(None, None, None)

    def _stop_browser(self) -> None:
        self._closing = True
        try:
            if self._context is not None:
                try:
                    self._context.close()
                except Exception as err:
                    self._note_teardown_error("closing the browser", err)
        finally:
            self._context = None
            self._page = None
            if self._playwright is not None:
                self._playwright = None
                try:
                    _thread_playwright.release()
                except Exception as err:
                    log.warning("stopping Playwright failed: %s", err)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def terminate(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, terminate)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


class AsyncSession(_SessionBase):
    """An asynchronous session: ``async with AsyncSession(profile="name") as page: ...``.

    The blocking parts (locking, unpacking, packing, committing) run in a worker thread so
    the event loop keeps serving other tasks.
    """

    _playwright: AsyncPlaywright | None = None
    _context: AsyncBrowserContext | None = None
    _page: AsyncPage | None = None

    @property
    def context(self) -> AsyncBrowserContext:
        if self._context is None:
            raise RuntimeError("The session is not open.")
        return self._context

    @property
    def page(self) -> AsyncPage:
        if self._page is None:
            raise RuntimeError("The session is not open.")
        return self._page

    async def __aenter__(self) -> AsyncPage:
        self._claim()
        plan = await asyncio.to_thread(self._life.prepare)
        try:
            self._playwright = await async_playwright().start()
            browser_type = getattr(self._playwright, plan.engine)
            self._context = await browser_type.launch_persistent_context(
                str(plan.user_data_dir), **plan.options
            )
            self._context.on("close", self._on_close)
            if plan.session_cookies:
                await self._context.add_cookies(plan.session_cookies)  # type: ignore[arg-type]
            browser = self._context.browser
            await asyncio.to_thread(self._life.started, browser.version if browser else None)
            pages = self._context.pages
            self._page = pages[0] if pages else await self._context.new_page()
            if self.options.start_url:
                await self._page.goto(self.options.start_url)
        except BaseException:
            await self._stop_browser()
            self._life.abort()
            self._state = "closed"
            if self._owns_store:
                self.store.close()
            raise
        self._state = "open"
        return self._page

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        try:
            if self._context is not None and self._can_read_cookies():
                try:
                    cookies = await self._context.cookies()
                    self._life.save_session_cookies(list(cookies))  # type: ignore[arg-type]
                except Exception as err:  # a dead driver raises plain Exception
                    self._note_teardown_error("reading the session cookies", err)
            await self._stop_browser()
        finally:
            await asyncio.to_thread(self._finish, exc)

    async def close(self) -> None:
        """End the session as a clean exit would."""
        await self.__aexit__(None, None, None)

    async def _stop_browser(self) -> None:
        self._closing = True
        try:
            if self._context is not None:
                try:
                    await self._context.close()
                except Exception as err:
                    self._note_teardown_error("closing the browser", err)
        finally:
            self._context = None
            self._page = None
            if self._playwright is not None:
                playwright, self._playwright = self._playwright, None
                try:
                    await playwright.stop()
                except Exception as err:
                    log.warning("stopping Playwright failed: %s", err)
