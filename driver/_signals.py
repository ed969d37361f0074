"""The plumbing under a session that is not Playwright calls: Playwright's driver started
in a process group of its own, and signals (Ctrl-C, SIGTERM, SIGHUP) turned into a clean
end of the session, for the sync API (raised in the caller's greenlet) and the async one
(through the running loop).

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
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from types import FrameType
from typing import TYPE_CHECKING, Any

import greenlet
from playwright.sync_api import Error as PlaywrightError

from driver.interrupts import current_greenlet, raise_in_caller

try:  # what Playwright raises once the browser is gone; not exported publicly
    from playwright._impl._errors import TargetClosedError
except ImportError:  # pragma: no cover - a Playwright that moved it
    TargetClosedError = PlaywrightError  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from driver.session import AsyncSession

log = logging.getLogger("driver.session")

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


# ------------------------------------------------------------------------- sync: signals


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
