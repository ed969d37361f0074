"""A signal's exception, raised where the sync session's caller waits.

Playwright's sync API runs its asyncio loop in a greenlet of the caller's own thread (the
"dispatcher"), and a Python signal handler runs in whichever greenlet executes when the
signal arrives. Raised while the loop sleeps in ``select()``, the exception leaves the loop
and Playwright throws it into the caller's pending sync call, its loop intact. Raised while
a task runs a step (the task that reads the driver's messages, for one), it ends that task
instead: asyncio keeps it as the task's result (KeyboardInterrupt and SystemExit end the
task too), the connection to the driver is gone, and the session can neither close the
browser nor commit. A SIGTERM that arrived as the browser sent a message lost the session's
state that way.

So a handler raises through :func:`raise_in_caller`: when it does not run in the caller's
greenlet, it throws the exception into the caller directly, as Playwright does for the
loop's own exceptions. The interrupted task step stays suspended, and resumes where it was
on the caller's next Playwright call (closing the browser, for one).

Resuming is not enough on its own. A handler that ran while the loop slept in ``select()``
returns into that ``select()``, which Python retries with the timeout it computed before:
none at all when nothing was scheduled (``context.wait_for_event("close", timeout=0)``
while a person looks at the page). The caller's next call only queued its task with
``call_soon``, which does not wake the selector, so the loop slept on with the task ready
and the browser alive: ``profiles open`` hung for good after a Ctrl-C seconds after its
banner. So before throwing, the handler wakes the loop through its self-pipe (what
``call_soon_threadsafe`` is for): the retried ``select()`` returns at once.
"""

from __future__ import annotations

import asyncio

import greenlet

__all__ = ["current_greenlet", "raise_in_caller"]


def current_greenlet() -> greenlet.greenlet:
    """The greenlet running now: record it as the caller when installing a handler."""
    return greenlet.getcurrent()


def raise_in_caller(caller: greenlet.greenlet | None, exc: BaseException) -> None:
    """Raise ``exc`` from a signal handler in ``caller``: right here when the handler runs
    in it (or ``caller`` is None, or gone), else thrown into it where it is suspended."""
    here = greenlet.getcurrent()
    if caller is None or caller is here or not caller:  # not caller: dead (or unstarted)
        raise exc
    _wake_running_loop()
    # Returns when something switches back here: the caller's next Playwright call
    # resumes the dispatcher, and with it the step this handler interrupted.
    caller.throw(exc)


def _noop() -> None:
    return None


def _wake_running_loop() -> None:
    """Make the loop this handler interrupted (if any) look at its ready queue again when it
    resumes, instead of sleeping on in the ``select()`` the signal broke into."""
    loop = asyncio._get_running_loop()
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(_noop)
