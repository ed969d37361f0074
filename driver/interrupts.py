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
"""

from __future__ import annotations

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
    # Returns when something switches back here: the caller's next Playwright call
    # resumes the dispatcher, and with it the step this handler interrupted.
    caller.throw(exc)
