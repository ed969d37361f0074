"""``profiles open``: a browser session on a profile from a shell, ended by the window,
Ctrl-C or SIGTERM. Loaded only when the command runs, because it imports the driver."""

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

from profiles.cli import UsageError, _err, _json, _out, _size, log
from profiles.errors import StateCommitFailed
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
    """SIGTERM during ``profiles open``: end the session as Ctrl-C does. A BaseException,
    like KeyboardInterrupt, so that asyncio and Playwright hand it to the waiting caller."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_ends_the_wait() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_until_closed(session: Session, banner: str) -> bool:
    """Print ``banner``, then block until the browser goes away (True), or Ctrl-C or
    SIGTERM (False)."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        with _sigterm_ends_the_wait():
            _err(banner)  # inside the try: a Ctrl-C right after it must not escape
            # Playwright raises a signal's exception that arrives during a sync wait in the
            # caller and keeps its loop intact, so the session can still close and commit.
            session.context.wait_for_event("close", timeout=0)
    except (KeyboardInterrupt, _Terminated):
        return False
    except PlaywrightError as exc:  # the driver connection went away
        log.warning("lost the browser: %s", exc)
    return True


def run_open(store: ProfileStore, args: argparse.Namespace) -> None:
    _check_display(args)
    from driver import Session  # the one place the profiles package reaches up to the driver

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
    browser_went_away = False
    with session:
        before = session.profile
        name = before.name
        if not args.exit:
            saves = "nothing is saved: read-only" if args.readonly else "that saves the profile"
            if args.headed:
                hint = f"Close the browser window or press Ctrl-C here ({saves})."
            else:
                hint = f"Press Ctrl-C to close the browser ({saves})."
            where = f" at {args.url}" if args.url else ""
            banner = f"Browser open on profile {name}{where}. {hint}"
            browser_went_away = _wait_until_closed(session, banner)
            if not browser_went_away:
                _err("closing the browser" + ("" if args.readonly else " and saving the profile"))
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
