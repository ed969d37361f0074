"""Sessions whose browser runs on a profile service's machine (``profiles serve``).

    from driver import RemoteSession
    from profiles import ProfileStore

    store = ProfileStore("http://host:8787/v1", api_key="pk_...")
    with RemoteSession(profile="production", store=store) as page:
        page.goto("https://example.com")   # the service's browser, on the profile

The shape of :class:`~driver.Session`, with the browser elsewhere: entering starts a
session on the service (``POST /v1/sessions``: the service takes the profile's writer
lease, checks out its state and starts Chromium) and connects to it with Playwright's
``connect_over_cdp``; the page is the profile's own persistent context
(``browser.contexts[0]``), so what the block does is what the service commits. Leaving the
block, whatever ends it (its end, an exception, Ctrl-C, SIGTERM or SIGHUP), disconnects and
stops the session (``PATCH /v1/sessions/{id} {"action": "stop"}``): the service closes the
browser and commits, and :attr:`RemoteSession.record` is the final record with its
``outcome``.

These sessions are started with ``keep_alive=False`` unless asked otherwise: should this
process die before it could stop the session (SIGKILL, a power cut), the service stops and
commits it as soon as the connection drops, instead of after its idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from playwright.async_api import Browser as AsyncBrowser
from playwright.async_api import Page as AsyncPage
from playwright.async_api import Playwright as AsyncPlaywright
from playwright.async_api import async_playwright
from playwright.sync_api import Browser, Page, Playwright

from driver._signals import EXIT_SIGNALS, _own_process_group, _settled, _sync_signals
from driver.session import _thread_playwright
from profiles.errors import ProfileError, StateCommitFailed
from profiles.http.session_client import RemoteSessionsClient
from profiles.http.session_schemas import SessionRecord
from profiles.store import ProfileStore

__all__ = ["AsyncRemoteSession", "RemoteSession"]

log = logging.getLogger(__name__)

#: Where a sync remote session asks the service for its browser while the caller's thread
#: starts Playwright (which must start in the caller's thread).
_STARTER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="remote-session-start")


class _RemoteBase:
    def __init__(
        self,
        profile: str | None = None,
        *,
        store: ProfileStore,
        start_url: str | None = None,
        screen: tuple[int, int] | None = None,
        proxy: str | dict[str, Any] | None = None,
        readonly: bool = False,
        idle_timeout: float | None = None,
        max_duration: float | None = None,
        keep_alive: bool = False,
        lock_timeout: float | None = None,
    ) -> None:
        """A session on ``profile`` (an id or a name; None: an ephemeral browser whose state
        is discarded) run by the profile service ``store`` is open on.

        ``start_url``, ``screen`` (width, height), ``proxy`` (a URL or Playwright's proxy
        mapping), ``readonly``, ``idle_timeout``, ``max_duration`` and ``lock_timeout`` are
        the session's options on the service (``POST /v1/sessions``); ``keep_alive``:
        whether the service keeps the session running when this connection drops without
        a stop (default False: it stops and commits). A store that is not on a profile
        service raises ``ValidationFailed`` here."""
        self.client = RemoteSessionsClient.of(store)
        self.store = store
        self._options: dict[str, Any] = {
            "start_url": start_url,
            "screen": screen,
            "proxy": proxy,
            "readonly": readonly,
            "idle_timeout": idle_timeout,
            "max_duration": max_duration,
            "keep_alive": keep_alive,
            "lock_timeout": lock_timeout,
        }
        self.profile = profile
        #: The session's record on the service: as started, then (after the block) as it
        #: ended, with its ``outcome``.
        self.record: SessionRecord | None = None

    @property
    def id(self) -> str | None:
        return None if self.record is None else self.record.id

    def _start(self) -> SessionRecord:
        self.record = self.client.start(self.profile, **self._options)
        if self.record.connect_url is None:  # pragma: no cover - a service that answers so
            raise ProfileError(
                f"The service started session {self.record.id} without a connect_url.",
                cause="no connect_url",
            )
        return self.record

    def _stop(self, exc: BaseException | None) -> None:
        """Stop the session on the service; raise what a local session would."""
        if self.record is None:
            return
        try:
            self.record = self.client.stop(self.record.id)
        except ProfileError as err:
            if exc is not None:  # the block's own exception goes first
                log.warning("could not stop remote session %s: %s", self.record.id, err)
                return
            raise
        if exc is None:
            self._check_committed(self.record)

    @staticmethod
    def _check_committed(record: SessionRecord) -> None:
        if record.readonly or record.ephemeral:
            return
        outcome = record.outcome
        if record.status == "failed" or outcome is None or not outcome.committed:
            why = (
                (record.error.message if record.error else None)
                or (outcome.error if outcome else None)
                or (outcome.reason if outcome else None)
                or "the service did not say why"
            )
            name = record.profile_name or record.profile_id
            raise StateCommitFailed(
                f"Remote session {record.id} on profile {name!r} ended without committing "
                f"its state ({why}); the previous state is kept.",
                session=record.id,
            )


class RemoteSession(_RemoteBase):
    """``with RemoteSession(profile=..., store=ProfileStore(url, api_key=...)) as page:``:
    a browser on the profile service's machine, stopped and committed when the block ends
    (sync Playwright; :class:`AsyncRemoteSession` for asyncio)."""

    def __init__(
        self,
        profile: str | None = None,
        *,
        store: ProfileStore,
        playwright: Playwright | None = None,
        **options: Any,
    ) -> None:
        """``playwright``: a sync Playwright you already run (the session neither starts
        nor stops it). The other options: :class:`_RemoteBase`."""
        super().__init__(profile, store=store, **options)
        self._given = playwright
        self._playwright: Playwright | None = None
        self.browser: Browser | None = None
        self._page: Page | None = None
        self._signals = False

    @property
    def page(self) -> Page:
        if self._page is None:
            raise RuntimeError("The remote session is not open: enter it first.")
        return self._page

    def __enter__(self) -> Page:
        self._signals = _sync_signals.acquire()
        try:
            # The service starts its browser while this process starts its Playwright.
            starting = _STARTER.submit(self._start)
            try:
                self._playwright = self._given or _thread_playwright.acquire()
            finally:
                _, interrupted = _settled(starting)  # a session started is a session to stop
            if interrupted is not None:
                raise interrupted
            record = starting.result()
            assert record.connect_url is not None
            self.browser = self._playwright.chromium.connect_over_cdp(
                record.connect_url, headers=self.client.connect_headers()
            )
            context = self.browser.contexts[0] if self.browser.contexts else None
            if context is None:
                context = self.browser.new_context()
            self._page = context.pages[0] if context.pages else context.new_page()
            return self._page
        except BaseException as exc:
            self._end(exc)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        try:
            with _sync_signals.deferring():
                if self.browser is not None:
                    with contextlib.suppress(Exception):
                        self.browser.close()  # a CDP connection: disconnects, closes nothing
                    self.browser = None
                self._page = None
                # The service stops its browser and commits while this process stops its
                # Playwright (which must stop in this thread).
                stopping = _STARTER.submit(self._stop, exc)
                try:
                    if self._playwright is not None and self._given is None:
                        with contextlib.suppress(Exception):
                            _thread_playwright.release()
                    self._playwright = None
                finally:
                    error, _ = _settled(stopping)
                if error is not None:
                    raise error
        finally:
            if self._signals:
                self._signals = False
                _sync_signals.release()


class AsyncRemoteSession(_RemoteBase):
    """``async with AsyncRemoteSession(profile=..., store=...) as page:``. The service's
    calls run in a worker thread; SIGTERM and SIGHUP (when their handler is the default
    one) cancel the block, which then stops and commits the session and exits with
    ``SystemExit(128 + signal)``."""

    def __init__(
        self,
        profile: str | None = None,
        *,
        store: ProfileStore,
        playwright: AsyncPlaywright | None = None,
        **options: Any,
    ) -> None:
        super().__init__(profile, store=store, **options)
        self._given = playwright
        self._playwright: AsyncPlaywright | None = None
        self.browser: AsyncBrowser | None = None
        self._page: AsyncPage | None = None
        self._signalled: int | None = None
        self._installed: list[int] = []

    @property
    def page(self) -> AsyncPage:
        if self._page is None:
            raise RuntimeError("The remote session is not open: enter it first.")
        return self._page

    async def __aenter__(self) -> AsyncPage:
        self._install_signals()
        try:
            # The service starts its browser while this process starts its Playwright.
            starting = asyncio.ensure_future(asyncio.to_thread(self._start))
            try:
                if self._given is None:
                    with _own_process_group():
                        self._playwright = await async_playwright().start()
                else:
                    self._playwright = self._given
            finally:
                # A session started is a session to stop, whatever interrupted the wait.
                await asyncio.wait([starting])
            record = starting.result()
            assert record.connect_url is not None
            self.browser = await self._playwright.chromium.connect_over_cdp(
                record.connect_url, headers=self.client.connect_headers()
            )
            context = self.browser.contexts[0] if self.browser.contexts else None
            if context is None:
                context = await self.browser.new_context()
            self._page = context.pages[0] if context.pages else await context.new_page()
            return self._page
        except BaseException as exc:
            await self._end(exc)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._end(exc)
        if self._signalled is not None and isinstance(exc, asyncio.CancelledError):
            raise SystemExit(128 + self._signalled) from None

    async def _end(self, exc: BaseException | None) -> None:
        try:
            if self.browser is not None:
                with contextlib.suppress(Exception):
                    await self.browser.close()
                self.browser = None
            self._page = None
            if self._playwright is not None and self._given is None:
                with contextlib.suppress(Exception):
                    await self._playwright.stop()
            self._playwright = None
            # Shielded: a cancellation (Ctrl-C under asyncio.run) must not cut the stop short.
            stopping = asyncio.ensure_future(asyncio.to_thread(self._stop, exc))
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                await stopping
                raise
        finally:
            self._uninstall_signals()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            return
        for sig in EXIT_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                continue  # the application's own handler: left alone
            try:
                loop.add_signal_handler(sig, self._on_signal, int(sig), task)
            except (NotImplementedError, RuntimeError, ValueError) as exc:
                log.debug("cannot handle signal %s on this loop: %s", sig, exc)
            else:
                self._installed.append(int(sig))

    def _on_signal(self, signum: int, task: asyncio.Task[Any]) -> None:
        if self._signalled is None:
            self._signalled = signum
            task.cancel()

    def _uninstall_signals(self) -> None:
        if not self._installed:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sig in self._installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        self._installed = []
