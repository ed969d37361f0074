"""Waiting for a condition instead of sleeping for a guess of how long it takes."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a true value, and return
    that value (at once when the first call does). After ``timeout`` seconds fail with an
    AssertionError that names what was awaited (``what``, else the predicate's source), the
    last value seen, and ``detail()`` when given (a server's log, say). What the predicate
    raises is not caught."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    message = f"gave up after {timeout:g} s waiting for {what or _describe(predicate)}"
    message += f" (last value: {value!r})"
    if detail is not None:
        message += f"\n{detail()}"
    raise AssertionError(message)


def _describe(predicate: Callable[[], object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
