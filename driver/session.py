"""``Session`` and ``AsyncSession``: a Playwright persistent context on a named profile.

::

    with Session(profile="production") as page:
        page.goto("https://example.com")        # state from last time, written back on exit

    async with AsyncSession(profile="production") as page:
        await page.goto("https://example.com")

Both share :class:`_SessionBase` (options, lifecycle, once-only use) and differ only in
the Playwright calls. Teardown runs on normal exit, on an exception, on Ctrl-C and on
SIGTERM or SIGHUP (turned into ``SystemExit(128 + signal)`` while a session is open in the
main thread and the signal's handler is the default one).

How signals reach a session, and why the Playwright driver runs in a process group of its
own: :mod:`driver._signals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from playwright.async_api import BrowserContext as AsyncBrowserContext
from playwright.async_api import Page as AsyncPage
from playwright.async_api import Playwright as AsyncPlaywright
from playwright.async_api import async_playwright
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from driver._signals import (
    _loops,
    _LoopSignals,
    _own_process_group,
    _raise_deferred,
    _runner_saw_ctrl_c,
    _settled,
    _sync_blocker,
    _sync_signals,
)
from driver.lifecycle import LaunchPlan, SaveMode, SessionLifecycle, SessionOptions
from profiles.errors import ValidationFailed
from profiles.models import HolderKind, Profile
from profiles.redact import describe_error, redact_url
from profiles.store import ProfileStore

__all__ = ["START_URL_NOTE", "AsyncSession", "Session"]

try:  # what Playwright raises once the browser is gone; not exported publicly
    from playwright._impl._errors import TargetClosedError
except ImportError:  # pragma: no cover - a Playwright that moved it
    TargetClosedError = PlaywrightError  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

#: Starts the note added to an error raised by opening the session's ``start_url``.
START_URL_NOTE = "while opening the session's start_url"


# ------------------------------------------------------------------ sync: one Playwright a thread


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
            with _own_process_group():
                self.playwright = sync_playwright().start()
        self.users += 1
        return self.playwright

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.playwright is not None:
            playwright, self.playwright = self.playwright, None
            playwright.stop()


_thread_playwright = _ThreadPlaywright()


# ---------------------------------------------------------------------------- the sessions


class _SessionBase:
    _signal: int | None = None  # the signal ending an async session's task

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
        playwright: Playwright | AsyncPlaywright | None = None,
        audit: Mapping[str, Any] | None = None,
        holder: HolderKind = "session",
    ) -> None:
        """Open ``profile`` (an id or a name) when entered.

        ``readonly`` opens a private copy, takes no lock, writes nothing back and never
        creates the profile. ``save`` decides what happens on exit: ``"always"`` commits the
        state even after an exception (a login that happened is real), ``"on_success"`` only
        after a clean exit, ``"never"`` discards it. Options given here override the
        archetype's device. ``commit_on_browser_close`` treats a browser that closes by
        itself (a person closing the window of a headed session) as the end of the session,
        and commits; otherwise that counts as a crash and the previous state is kept (closing
        it yourself with ``context.close()`` is a normal end and commits).
        ``launch_options`` go to ``launch_persistent_context`` on top of the session's own:
        lists (``args``) are added to, mappings merged key by key, the rest replaced.
        ``playwright``: a Playwright instance you already run (sync for ``Session``, async
        for ``AsyncSession``); the session uses it and neither starts nor stops it.
        ``audit``: details added to the session's ``session.created`` and ``session.ended``
        events (``profiles serve`` marks its remote sessions ``remote: True``); ``holder``:
        what its writer lease says holds the profile (``"remote-session"`` for those).
        Bad values raise :class:`~profiles.errors.ValidationFailed` naming the option.
        """
        self.options = SessionOptions.build(
            headless=headless,
            readonly=readonly,
            lock_timeout=lock_timeout,
            start_url=start_url,
            viewport=viewport,
            proxy=proxy,
            locale=locale,
            timezone_id=timezone_id,
            user_agent=user_agent,
            args=args,
            create=create,
            archetype=archetype,
            save=save,
            allow_downgrade=allow_downgrade,
            keep_session_cookies=keep_session_cookies,
            commit_on_browser_close=commit_on_browser_close,
            launch_options={} if launch_options is None else launch_options,
        )
        self._check_playwright(playwright)
        self._given = playwright
        self._owns_store = store is None
        self.store = store if store is not None else ProfileStore()
        self._life = SessionLifecycle(profile, self.store, self.options, audit=audit, holder=holder)
        self._state = "new"  # new -> starting -> open -> closed
        self._closing = False
        self._crashed = False
        self._closed_by_itself = False
        self._closed_by_caller = False
        self._started = False
        # Cookies read just before the caller closed the last page: Chromium ends its
        # session (and drops the session cookies) with its last window.
        self._cookies_before_close: list[dict[str, Any]] | None = None

    _playwright_type: type = object

    def _check_playwright(self, playwright: object) -> None:
        if playwright is not None and not isinstance(playwright, self._playwright_type):
            sync = self._playwright_type is Playwright
            kind = "sync_playwright()" if sync else "async_playwright()"
            raise ValidationFailed(
                f"Invalid session option playwright: {type(self).__name__} needs the "
                f"Playwright object of a started {kind}, got {type(playwright).__name__}.",
                field="playwright",
            )

    @property
    def profile(self) -> Profile:
        """The profile record (as of the last commit once the session has ended)."""
        if self._life.profile is None:
            raise RuntimeError("The session has not started yet: enter it first.")
        return self._life.profile

    @property
    def ended(self) -> dict[str, Any] | None:
        """How the session ended once it has (``session.ended``'s payload: ``outcome``
        ``"ok"``, ``"error"`` or ``"crashed"``, ``committed``, ``reason``, ``error``,
        ``seconds``); None before."""
        return self._life.ended

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
        """The browser exited without the session asking: the caller closed it
        (``context.close()``, ``browser.close()``, the last page), a person closed its
        window, or it crashed. The first is a normal end; the second only with
        ``commit_on_browser_close``."""
        if self._closed_by_itself:
            return
        self._closed_by_itself = True
        if self._closed_by_caller:
            log.info("the browser of the session on %s was closed by the caller", self._life.ref)
        elif self.options.commit_on_browser_close:
            log.info("the browser of the session on %s was closed", self._life.ref)
        else:
            self._crashed = True
            log.warning("the browser of the session on %s went away", self._life.ref)

    def _on_close(self, *_: object) -> None:
        if not self._closing:
            self._browser_went_away()

    # The caller closing the browser inside the block (context.close(), browser.close(), the
    # last page's close()) is a normal end. Playwright does not say who closed a context, so
    # the session wraps those close() methods of the objects behind the public API (one
    # object each, shared by the sync and async front ends). The wrapper also keeps the
    # session cookies, which cannot be read once the browser is gone.

    def _watch_closes(self, context: BrowserContext | AsyncBrowserContext) -> None:
        impl = getattr(context, "_impl_obj", None)
        if impl is None or not callable(getattr(impl, "close", None)):
            log.debug("cannot watch close() calls on %r", context)
            return
        self._wrap_close(impl, impl, last_page=False)
        browser = getattr(impl, "_browser", None)
        if browser is not None and callable(getattr(browser, "close", None)):
            self._wrap_close(browser, impl, last_page=False)
        for page in list(getattr(impl, "pages", [])):
            self._wrap_close(page, impl, last_page=True)

        def on_page(page: Any) -> None:
            self._wrap_close(page, impl, last_page=True)
            self._closed_by_caller = False  # the last page was not the end after all
            self._cookies_before_close = None

        with contextlib.suppress(Exception):
            impl.on("page", on_page)

    def _wrap_close(self, target: Any, context_impl: Any, *, last_page: bool) -> None:
        original = target.close

        async def close(*args: Any, **kwargs: Any) -> Any:
            if self._state == "open" and not self._closing and not self._closed_by_itself:
                ending = True
                if last_page:
                    before_unload = kwargs.get("runBeforeUnload") or (args and args[0])
                    others = [
                        p
                        for p in getattr(context_impl, "pages", [])
                        if p is not target and not p.is_closed()
                    ]
                    ending = not before_unload and not others
                if ending:
                    self._closed_by_caller = True
                    await self._keep_cookies_before_close(context_impl)
            return await original(*args, **kwargs)

        target.close = close

    async def _keep_cookies_before_close(self, context_impl: Any) -> None:
        if not self.options.keep_session_cookies:
            return
        try:
            cookies = [dict(c) for c in await context_impl.cookies()]
        except Exception as err:
            log.debug("could not read the cookies before the close: %s", describe_error(err))
            return
        self._cookies_before_close = cookies
        self._life.save_session_cookies(cookies)

    def _save_cookies(self, cookies: Sequence[Mapping[str, Any]]) -> None:
        """Keep the session cookies at the end (with those read before the last page was
        closed, which the browser may have dropped since)."""
        now = [dict(c) for c in cookies]
        if self._cookies_before_close is not None:
            seen = {(c.get("name"), c.get("domain"), c.get("path")) for c in now}
            now += [
                c
                for c in self._cookies_before_close
                if (c.get("name"), c.get("domain"), c.get("path")) not in seen
            ]
        self._life.save_session_cookies(now)

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
        log.warning("%s failed: %s", what, describe_error(err))
        self._crashed = True

    def _interruption(self, exc: BaseException | None) -> str | None:
        """The signal that ended the block, when ``exc`` is how a signal ends one (Ctrl-C's
        ``KeyboardInterrupt``, the ``SystemExit(128 + signal)`` of SIGTERM and SIGHUP, an
        async session's task cancelled by one): docs/sessions.md calls these clean ends."""
        if isinstance(exc, KeyboardInterrupt):
            return "SIGINT"
        if self._signal is not None:
            return signal.Signals(self._signal).name
        if isinstance(exc, SystemExit) and isinstance(exc.code, int):
            for signum in (signal.SIGTERM, signal.SIGHUP):
                if exc.code == 128 + signum:
                    return signum.name
        return None

    def _finish(self, exc: BaseException | None) -> None:
        interrupted = self._interruption(exc)
        try:
            self._life.finish(
                failed=exc is not None,
                crashed=self._crashed,
                error=describe_error(exc) if exc is not None and interrupted is None else None,
                interrupted=interrupted,
            )
        finally:
            if self._owns_store:
                self.store.close()

    def _start_failed(self, exc: BaseException) -> None:
        """Start-up failed after the browser was stopped: record the end when the use was
        already recorded (``session.created``), else just release. Nothing is committed."""
        try:
            if self._started:
                self._life.finish(
                    failed=True, crashed=False, error=describe_error(exc), start_failed=True
                )
            else:
                self._life.abort()
        finally:
            self._state = "closed"
            if self._owns_store:
                self.store.close()

    def _note_start_url(self, exc: BaseException) -> None:
        if self.options.start_url:
            exc.add_note(f"{START_URL_NOTE} {redact_url(self.options.start_url)}")


class Session(_SessionBase):
    """A synchronous session: ``with Session(profile="name") as page: ...``."""

    _playwright_type = Playwright
    _playwright: Playwright | None = None
    _context: BrowserContext | None = None
    _page: Page | None = None
    _signals_held = False

    @property
    def _given_playwright(self) -> Playwright | None:
        return self._given if isinstance(self._given, Playwright) else None

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
        if self._given_playwright is None and _thread_playwright.playwright is None:
            blocker = _sync_blocker()
            if blocker is not None:
                raise RuntimeError(blocker)
        self._claim()
        self._signals_held = _sync_signals.acquire()
        try:
            self._start()
        except BaseException:
            self._release_signals()
            raise
        self._state = "open"
        assert self._page is not None
        return self._page

    def _start(self) -> None:
        try:
            plan = self._prepare_and_start_playwright()
        except BaseException:
            self._state = "closed"
            if self._owns_store:
                self.store.close()
            raise
        try:
            browser_type = getattr(self._playwright, plan.engine)
            self._context = browser_type.launch_persistent_context(
                str(plan.user_data_dir), **plan.options
            )
            self._context.on("close", self._on_close)
            if plan.session_cookies:
                self._context.add_cookies(plan.session_cookies)  # type: ignore[arg-type]
            browser = self._context.browser
            self._life.started(browser.version if browser else None)
            self._started = True
            pages = self._context.pages
            self._page = pages[0] if pages else self._context.new_page()
            self._watch_closes(self._context)
            if self.options.start_url:
                try:
                    self._page.goto(self.options.start_url)
                except BaseException as exc:
                    self._note_start_url(exc)
                    raise
        except BaseException as exc:
            self._closing = True
            with _sync_signals.deferring():
                self._stop_browser()
                self._start_failed(exc)
            raise

    def _prepare_and_start_playwright(self) -> LaunchPlan:
        """Prepare the profile (lock, unpack) and have a Playwright. When this session
        starts Playwright's driver (~0.2 s), the preparing runs in a worker thread meanwhile,
        so a cold start's unpacking costs no wall time. Either failing undoes the other."""
        if self._given_playwright is not None or _thread_playwright.playwright is not None:
            plan = self._life.prepare()
            try:
                self._playwright = self._given_playwright or _thread_playwright.acquire()
            except BaseException:
                self._life.abort()
                raise
            return plan
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-prepare") as pool:
            preparing = pool.submit(self._life.prepare)  # undoes itself if it fails
            try:
                playwright = _thread_playwright.acquire()
            except BaseException:
                if _settled(preparing) == (None, None):
                    self._life.abort()
                raise
            failed, interrupted = _settled(preparing)
            if failed is not None or interrupted is not None:
                if failed is None:
                    self._life.abort()
                _thread_playwright.release()
                raise interrupted or failed  # type: ignore[misc]
            plan = preparing.result()
        self._playwright = playwright
        return plan

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        try:
            with _sync_signals.deferring() as deferred:
                try:
                    if self._context is not None and self._can_read_cookies():
                        try:
                            self._save_cookies(self._context.cookies())
                        except Exception as err:  # a dead driver raises plain Exception
                            self._note_teardown_error("reading the session cookies", err)
                    self._close_context()
                finally:
                    self._finish_and_release_playwright(exc)
        finally:
            self._release_signals()
        if exc is None:
            _raise_deferred(deferred.signum)

    def close(self) -> None:
        """End the session as a clean exit would."""
        self.__exit__(None, None, None)

    def _release_signals(self) -> None:
        if self._signals_held:
            self._signals_held = False
            _sync_signals.release()

    def _stop_browser(self) -> None:
        try:
            self._close_context()
        finally:
            self._release_playwright()

    def _close_context(self) -> None:
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

    def _release_playwright(self) -> None:
        if self._playwright is not None:
            self._playwright = None
            if self._given_playwright is None:
                try:
                    _thread_playwright.release()
                except Exception as err:
                    log.warning("stopping Playwright failed: %s", describe_error(err))

    def _finish_and_release_playwright(self, exc: BaseException | None) -> None:
        """Commit (the browser is closed) while Playwright's driver stops, when this
        session stops it: the two overlap. The commit's error, if any, is raised."""
        if self._playwright is None or self._given_playwright is not None:
            try:
                self._release_playwright()
            finally:
                self._finish(exc)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-commit") as pool:
            finishing = pool.submit(self._finish, exc)
            try:
                self._release_playwright()
            finally:
                failed, interrupted = _settled(finishing)
            if failed is not None:
                raise failed
            if interrupted is not None:
                raise interrupted


class AsyncSession(_SessionBase):
    """An asynchronous session: ``async with AsyncSession(profile="name") as page: ...``.

    The blocking parts (locking, unpacking, packing, committing) run in a worker thread so
    the event loop keeps serving other tasks. SIGTERM and SIGHUP (when their handlers are the
    default ones) cancel the task running the block; the session ends and commits, then
    raises ``SystemExit(128 + signal)``. The teardown finishes even if the task is
    cancelled again meanwhile.
    """

    _playwright_type = AsyncPlaywright
    _playwright: AsyncPlaywright | None = None
    _context: AsyncBrowserContext | None = None
    _page: AsyncPage | None = None
    _task: asyncio.Task[Any] | None = None
    _signal: int | None = None
    _loop_signals: _LoopSignals | None = None
    _runner_ctrl_c = False

    @property
    def _given_playwright(self) -> AsyncPlaywright | None:
        return self._given if isinstance(self._given, AsyncPlaywright) else None

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
        self._hold_signals()
        try:
            await self._start()
        except BaseException:
            self._release_signals()
            if self._signal is not None:
                self._raise_signal_exit()
            raise
        self._state = "open"
        assert self._page is not None
        return self._page

    async def _start(self) -> None:
        try:
            plan = await self._prepare_and_start_playwright()
        except BaseException:
            self._state = "closed"
            if self._owns_store:
                self.store.close()
            raise
        try:
            browser_type = getattr(self._playwright, plan.engine)
            self._context = await browser_type.launch_persistent_context(
                str(plan.user_data_dir), **plan.options
            )
            self._context.on("close", self._on_close)
            if plan.session_cookies:
                await self._context.add_cookies(plan.session_cookies)  # type: ignore[arg-type]
            browser = self._context.browser
            await asyncio.to_thread(self._life.started, browser.version if browser else None)
            self._started = True
            pages = self._context.pages
            self._page = pages[0] if pages else await self._context.new_page()
            self._watch_closes(self._context)
            if self.options.start_url:
                try:
                    await self._page.goto(self.options.start_url)
                except BaseException as exc:
                    self._note_start_url(exc)
                    raise
        except BaseException as exc:
            self._closing = True
            failure = exc

            async def undo() -> None:
                await self._stop_browser()
                await asyncio.to_thread(self._start_failed, failure)

            await _shielded(undo())
            raise

    async def _prepare_and_start_playwright(self) -> LaunchPlan:
        """Prepare the profile in a worker thread while Playwright's driver starts (when
        this session starts it); either failing undoes the other."""
        preparing = asyncio.ensure_future(asyncio.to_thread(self._life.prepare))
        try:
            if self._given_playwright is not None:
                playwright: AsyncPlaywright = self._given_playwright
            else:
                with _own_process_group():
                    playwright = await async_playwright().start()
        except BaseException:
            await _shielded(_abort_when_prepared(preparing, self._life))
            raise
        try:
            plan = await asyncio.shield(preparing)
        except BaseException:
            # prepare failed (and undid itself), or this task was cancelled meanwhile
            await _shielded(_abort_when_prepared(preparing, self._life))
            if self._given_playwright is None:
                await _shielded(playwright.stop())
            raise
        self._playwright = playwright
        return plan

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        if isinstance(exc, asyncio.CancelledError) and _runner_saw_ctrl_c():
            self._runner_ctrl_c = True
        try:
            await _shielded(self._teardown(exc))
        finally:
            self._release_signals()
        if self._signal is not None:
            self._raise_signal_exit()

    async def _teardown(self, exc: BaseException | None) -> None:
        try:
            if self._context is not None and self._can_read_cookies():
                try:
                    self._save_cookies(await self._context.cookies())
                except Exception as err:  # a dead driver raises plain Exception
                    self._note_teardown_error("reading the session cookies", err)
            await self._close_context()
        finally:
            # Commit (the browser is closed) while Playwright's driver stops.
            finishing = asyncio.ensure_future(asyncio.to_thread(self._finish, exc))
            try:
                await self._release_playwright()
            finally:
                await finishing

    async def close(self) -> None:
        """End the session as a clean exit would."""
        await self.__aexit__(None, None, None)

    def _hold_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._task = asyncio.current_task()
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        entry = _loops.get(loop)
        if entry is None:
            entry = _loops[loop] = _LoopSignals(loop)
            entry.install()
        entry.sessions[self] = None
        self._loop_signals = entry

    def _release_signals(self) -> None:
        entry, self._loop_signals = self._loop_signals, None
        if entry is None:
            return
        entry.sessions.pop(self, None)
        if not entry.sessions:
            entry.uninstall()
            if _loops.get(entry.loop) is entry:
                del _loops[entry.loop]

    def _signalled(self, signum: int) -> None:
        if self._signal is not None or self._state not in ("starting", "open"):
            return
        task = self._task
        if task is None or task.done():
            return
        self._signal = signum
        log.info("signal %d: ending the session on %s", signum, self._life.ref)
        task.cancel(f"signal {signum}: ending the session")

    def _interruption(self, exc: BaseException | None) -> str | None:
        if self._runner_ctrl_c:  # asyncio.run cancels its main task on Ctrl-C
            return "SIGINT"
        return super()._interruption(exc)

    def _raise_signal_exit(self) -> None:
        assert self._signal is not None
        if self._task is not None and self._task.cancelling():
            self._task.uncancel()
        raise SystemExit(128 + self._signal) from None

    async def _stop_browser(self) -> None:
        try:
            await self._close_context()
        finally:
            await self._release_playwright()

    async def _close_context(self) -> None:
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

    async def _release_playwright(self) -> None:
        if self._playwright is not None:
            playwright, self._playwright = self._playwright, None
            if self._given_playwright is None:
                try:
                    await playwright.stop()
                except Exception as err:
                    log.warning("stopping Playwright failed: %s", describe_error(err))


async def _abort_when_prepared(
    preparing: asyncio.Future[LaunchPlan], life: SessionLifecycle
) -> None:
    """Wait for a prepare to end; undo it if it succeeded (one that failed undid itself)."""
    with contextlib.suppress(BaseException):
        await preparing
        await asyncio.to_thread(life.abort)


async def _shielded(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the awaiting task is cancelled meanwhile (Ctrl-C
    under ``asyncio.run``, a signal); re-raise the cancellation afterwards."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
