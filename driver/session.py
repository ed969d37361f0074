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

Signals to the whole process group (``timeout``, ``kill -- -PGID``, systemd, job runners,
Ctrl-C) reach only this process: the Playwright driver a session starts runs in a session
and process group of its own (the browser it launches already does), so the session can
close the browser and commit. The driver still ends with this process, even on SIGKILL: it
exits when its stdin pipe closes, after closing its browsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import types
import weakref
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import greenlet
from playwright.async_api import BrowserContext as AsyncBrowserContext
from playwright.async_api import Page as AsyncPage
from playwright.async_api import Playwright as AsyncPlaywright
from playwright.async_api import async_playwright
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from driver.interrupts import current_greenlet, raise_in_caller
from driver.lifecycle import LaunchPlan, SaveMode, SessionLifecycle, SessionOptions
from profiles.errors import ValidationFailed
from profiles.models import Profile
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

#: The signals a session turns into a clean end (when their handler is the default one).
EXIT_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


# ----------------------------------------------------- Playwright's driver, in its own group


class _DriverSpawn(threading.local):
    depth: int = 0  # > 0 while a session starts Playwright in this thread
    spawned: int = 0  # drivers started in their own session so far


_driver_spawn = _DriverSpawn()
_hook_lock = threading.Lock()
_hook: list[bool] = []  # [installed?] once tried
_warned_shared_group: list[bool] = []


class _TransportAsyncio(types.ModuleType):
    """Stands in for ``asyncio`` in Playwright's ``_transport`` module, whose
    ``PipeTransport.connect`` starts the driver with ``asyncio.create_subprocess_exec``.

    Everything is asyncio's own, except that a driver started for a session (inside
    :func:`_own_process_group`, in this thread) gets a session and process group of its own.
    A signal to our process group then reaches only this process, which closes the browser
    and commits, instead of killing the driver (and with it the browser) under the session.
    Drivers started by anyone else are left as they are.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def create_subprocess_exec(self, *args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        if _driver_spawn.depth and os.name == "posix":
            kwargs.setdefault("start_new_session", True)
            _driver_spawn.spawned += 1
        return await asyncio.create_subprocess_exec(*args, **kwargs)


def _install_driver_hook() -> bool:
    with _hook_lock:
        if not _hook:
            try:
                from playwright._impl import _transport
            except ImportError:  # pragma: no cover - a Playwright that moved it
                _hook.append(False)
                return False
            current = getattr(_transport, "asyncio", None)
            if current is asyncio:
                vars(_transport)["asyncio"] = _TransportAsyncio("asyncio")
            _hook.append(isinstance(getattr(_transport, "asyncio", None), _TransportAsyncio))
        return _hook[0]


@contextlib.contextmanager
def _own_process_group() -> Iterator[None]:
    """Playwright started in here runs its driver in a process group of its own."""
    hooked = _install_driver_hook()
    before = _driver_spawn.spawned
    _driver_spawn.depth += 1
    try:
        yield
    finally:
        _driver_spawn.depth -= 1
    if os.name == "posix" and _driver_spawn.spawned == before and not _warned_shared_group:
        _warned_shared_group.append(True)
        log.warning(
            "could not start Playwright's driver in a process group of its own (%s): a "
            "signal to the whole process group (timeout, kill -- -PGID) ends the browser "
            "before the session can commit",
            "this Playwright starts it differently" if hooked else "no hook",
        )


# ------------------------------------------------------------------- sync: Playwright, signals


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


def _sync_blocker() -> str | None:
    """Why the sync API cannot start here, or None. An asyncio loop "runs" in this thread
    either for real (a coroutine called us) or because the caller's own sync Playwright is
    started here: Playwright's sync API keeps its loop marked as running between calls."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if asyncio.current_task(loop) is None:
        return (
            "Session cannot start a Playwright: this thread already runs a sync Playwright "
            "(sync_playwright() started elsewhere, e.g. pytest-playwright's 'playwright' "
            "fixture), and Playwright allows one per thread. Pass it as "
            "Session(..., playwright=p)."
        )
    return (
        "Session cannot run inside a running asyncio event loop; use "
        "'async with AsyncSession(...) as page' there."
    )


class _Deferred:
    signum: int | None = None


class _SyncSignals:
    """SIGTERM, SIGHUP and Ctrl-C while sync sessions are open in the main thread.

    When their handler is the default one, SIGTERM and SIGHUP raise ``SystemExit(128 +
    signal)`` once, so the ``with`` block ends and the session commits. Repeats are ignored:
    GNU ``timeout`` signals its child and then the whole group, so the child gets two in a
    row. Ctrl-C raises KeyboardInterrupt as Python's default handler does. Each is raised in
    the greenlet that opened the session, never inside Playwright's event loop (see
    :mod:`driver.interrupts`). While a session is being torn down (closing the browser,
    committing) these signals wait until the teardown is over.
    """

    def __init__(self) -> None:
        self.users = 0
        self.previous: dict[int, Any] = {}
        self.fired: int | None = None
        self.deferred: list[_Deferred] = []
        self.caller: greenlet.greenlet | None = None

    def acquire(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if self.users == 0:
            self.previous = {}
            self.fired = None
            self.caller = current_greenlet()
            for sig in EXIT_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self.previous[sig] = signal.signal(sig, self._handle)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        self.users += 1
        return True

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for sig, previous in self.previous.items():
                if signal.getsignal(sig) == self._handle:
                    signal.signal(sig, previous)
            self.previous = {}
            self.caller = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferred:
            if self.deferred[-1].signum is None:
                self.deferred[-1].signum = signum
            return
        if signum == signal.SIGINT:
            raise_in_caller(self.caller, KeyboardInterrupt())
            return
        if self.fired is not None:
            log.info("signal %d: the session is already ending", signum)
            return
        self.fired = signum
        raise_in_caller(self.caller, SystemExit(128 + signum))

    @contextlib.contextmanager
    def deferring(self) -> Iterator[_Deferred]:
        """Hold the session's signals (a default Ctrl-C among them, taken over by
        :meth:`acquire`) back for a teardown."""
        deferred = _Deferred()
        if threading.current_thread() is not threading.main_thread():
            yield deferred
            return
        self.deferred.append(deferred)
        try:
            yield deferred
        finally:
            self.deferred.remove(deferred)


_sync_signals = _SyncSignals()


def _settled(future: Future[Any]) -> tuple[BaseException | None, BaseException | None]:
    """Wait for ``future`` to finish even if a signal handler raises in this thread
    meanwhile: ``(its exception or None, the first exception raised while waiting)``."""
    interrupted: BaseException | None = None
    while True:
        try:
            return future.exception(), interrupted
        except CancelledError as exc:  # never here (nothing cancels it), but never a loop
            return exc, interrupted
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a signal
            interrupted = interrupted or exc


def _raise_deferred(signum: int | None) -> None:
    if signum is None:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if _sync_signals.fired is None:
        _sync_signals.fired = signum
        raise SystemExit(128 + signum)


# ------------------------------------------------------------------------- async: signals


class _LoopSignals:
    """SIGTERM and SIGHUP on one event loop while AsyncSessions are open on it: cancel the
    task running each session's block, which then ends it (and commits) and exits with
    ``SystemExit(128 + signal)``. Installed with ``loop.add_signal_handler`` only for a
    signal whose handler is the default one (an application's own handler, set with
    ``signal.signal`` or ``loop.add_signal_handler``, is left alone), removed again when the
    last session on the loop ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sessions: dict[AsyncSession, None] = {}
        self.installed: list[int] = []

    def handle(self, signum: int) -> None:
        for session in list(self.sessions):
            session._signalled(signum)

    def install(self) -> None:
        for sig in EXIT_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                continue
            try:
                self.loop.add_signal_handler(sig, self.handle, int(sig))
            except (NotImplementedError, RuntimeError, ValueError) as exc:
                log.debug("cannot handle signal %s on this loop: %s", sig, exc)
            else:
                self.installed.append(sig)

    def uninstall(self) -> None:
        handlers = getattr(self.loop, "_signal_handlers", None)
        for sig in self.installed:
            handle = handlers.get(sig) if isinstance(handlers, dict) else None
            callback = getattr(handle, "_callback", None)
            if handle is not None and callback != self.handle:
                continue  # replaced by the application meanwhile: theirs now
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)
        self.installed = []


def _runner_saw_ctrl_c() -> bool:
    """Whether ``asyncio.run``'s runner has received Ctrl-C (it then cancels its main task:
    the cancellation an async session sees is that Ctrl-C). Reads the runner's own SIGINT
    handler; any other handler, or another Python's runner, says no."""
    handler = signal.getsignal(signal.SIGINT)
    runner = getattr(getattr(handler, "func", None), "__self__", None)
    if not isinstance(runner, asyncio.Runner):
        return False
    count = getattr(runner, "_interrupt_count", 0)
    return isinstance(count, int) and count > 0


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSignals] = (
    weakref.WeakKeyDictionary()
)


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
        self._life = SessionLifecycle(profile, self.store, self.options)
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
        async session's task cancelled by one): the README calls these clean ends."""
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
