"""``profiles open``: a browser session on a profile from a shell, ended by the window,
Ctrl-C, SIGTERM or SIGHUP (to the process or to its whole process group, as GNU ``timeout``
and job runners send them). Loaded only when the command runs, because it imports the
driver: the one module of the profiles package that reaches up to it."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from driver.interrupts import current_greenlet, raise_in_caller
from profiles.cli.output import UsageError, _err, _json, _out, _size, log
from profiles.errors import NavigationFailed, ProfileError, StateCommitFailed
from profiles.redact import describe_error, redact_url
from profiles.store import ProfileStore

if TYPE_CHECKING:
    from driver import Session

__all__ = ["run_open"]


def _check_display(args: argparse.Namespace) -> None:
    if (
        args.headed
        and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        raise UsageError(
            "--headed needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set. Run "
            f"it under a virtual one (xvfb-run profiles open {args.ref} --headed ...) or drop "
            "--headed to open the browser headless."
        )


class _Terminated(BaseException):
    """SIGTERM or SIGHUP during ``profiles open``: end the session as Ctrl-C does. A
    BaseException, like KeyboardInterrupt, so that asyncio and Playwright hand it to the
    waiting caller."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """What Ctrl-C, SIGTERM and SIGHUP do while ``profiles open`` runs: the first one ends
    the wait (or the start-up); any later one, and any that arrives once the session is
    ending, is ignored so that closing the browser and saving finish. GNU ``timeout``, for
    one, signals its child and then its whole process group: the child gets two."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.ending = False
        self.caller = current_greenlet()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None or self.ending:
            log.info("signal %d: already closing the browser", signum)
            return
        self.received = signum
        # In the greenlet waiting on the browser: raised inside Playwright's event loop, it
        # would end the task that reads the driver's messages, and nothing could be saved.
        exc = KeyboardInterrupt() if signum == signal.SIGINT else _Terminated(signum)
        raise_in_caller(self.caller, exc)


@contextlib.contextmanager
def _signals_end_the_session() -> Iterator[_Signals]:
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    wanted = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {sig: signal.signal(sig, signals.handle) for sig in wanted}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_until_closed(session: Session, banner: str) -> bool:
    """Print ``banner``, then block until the browser goes away (True), or Ctrl-C, SIGTERM
    or SIGHUP (False)."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        _err(banner)  # inside the try: a Ctrl-C right after it must not escape
        # Playwright raises a signal's exception that arrives during a sync wait in the
        # caller and keeps its loop intact, so the session can still close and commit.
        session.context.wait_for_event("close", timeout=0)
    except (KeyboardInterrupt, _Terminated):
        return False
    except PlaywrightError as exc:  # the driver connection went away
        log.warning("lost the browser: %s", describe_error(exc))
    return True


def _start_failed(exc: Exception, args: argparse.Namespace) -> ProfileError:
    """The browser did not start, or the page at --url did not open: one clear error."""
    from driver.session import START_URL_NOTE

    what = describe_error(exc).removeprefix("Error: ")
    notes = getattr(exc, "__notes__", None) or []
    if args.url and any(str(note).startswith(START_URL_NOTE) for note in notes):
        url = redact_url(args.url)
        return NavigationFailed(f"could not open URL {url}: {what}", url=url)
    return ProfileError(f"could not start the browser: {what}")


def run_open(store: ProfileStore, args: argparse.Namespace) -> None:
    _check_display(args)
    from driver import Session

    session = Session(
        profile=args.ref,
        store=store,
        headless=not args.headed,
        readonly=args.readonly,
        lock_timeout=args.lock_timeout,
        start_url=args.url,
        create=not args.no_create,
        archetype=args.archetype,
        # A person closing the window is how a headed session ends: commit then.
        commit_on_browser_close=args.headed,
    )
    from playwright.sync_api import Error as PlaywrightError

    browser_went_away = False
    with _signals_end_the_session() as signals:
        try:
            with session:
                before = session.profile
                name = before.name
                if not args.exit:
                    browser_went_away = _wait(session, args, name)
                signals.ending = True
        except PlaywrightError as exc:  # from the start: the launch or the --url
            raise _start_failed(exc, args) from None
        except _Terminated as terminated:  # during the start-up: nothing to save yet
            raise SystemExit(128 + terminated.signum) from None
    after = session.profile
    saved = after.blob_uploaded_at != before.blob_uploaded_at
    if not args.readonly and not saved:
        if browser_went_away:
            message = (
                f"Nothing was saved to {name!r}: the browser exited on its own, and a "
                "session keeps the previous state then. End 'profiles open' with Ctrl-C in "
                "the terminal to save."
            )
        else:
            message = f"Nothing was saved to {name!r}: the session did not commit."
        raise StateCommitFailed(message, profile_id=before.id)
    if args.json:
        _json(after)
    elif args.readonly:
        _out(f"closed {after.name} (read-only, nothing saved)")
    else:
        size, domains = _size(after.blob_size), len(after.cookie_domains)
        _out(f"saved {after.name}: {after.status}, {size}, cookies of {domains} domains")


def _wait(session: Session, args: argparse.Namespace, name: str) -> bool:
    saves = "nothing is saved: read-only" if args.readonly else "that saves the profile"
    if args.headed:
        hint = f"Close the browser window or press Ctrl-C here ({saves})."
    else:
        hint = f"Press Ctrl-C to close the browser ({saves})."
    where = f" at {redact_url(args.url)}" if args.url else ""
    banner = f"Browser open on profile {name}{where}. {hint}"
    browser_went_away = _wait_until_closed(session, banner)
    if not browser_went_away:
        _err("closing the browser" + ("" if args.readonly else " and saving the profile"))
    return browser_went_away
