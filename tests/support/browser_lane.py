"""Which tests use a browser: the rule behind the ``browser`` marker (see conftest.py).

A test uses a browser when it passes through :func:`conftest.require_engine`, the gate every
browser test goes through (it fails or skips when the engine is not installed): called by
the test itself, by a fixture it requests (directly or through other fixtures, as the
``engine`` fixture does), or by a helper function of the tests that either one calls, at any
depth. The rule reads the names the compiled functions refer to (their code objects, nested
functions included), so it needs no source and runs nothing.

The rule is checked while the tests run: a test the rule leaves unmarked runs with every
``PROFILES_<ENGINE>_PATH`` naming :data:`NO_BROWSER`, a file that does not exist, so a
browser it tried to launch (in the test's process or in a child) fails with that path in
the message instead of quietly running in the fast lane.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

#: What the tests outside the browser lane find as every engine's browser.
NO_BROWSER = "/nonexistent/the-browser-marker-rule-says-this-test-uses-no-browser"

#: The names that mean "this test needs a real browser".
GATES = frozenset({"require_engine"})

# Helpers are followed into the tests' own modules only, not into the library or pytest.
_NOT_FOLLOWED = ("profiles", "driver", "pytest", "_pytest", "playwright")


def _referenced_names(func: Callable[..., Any], seen: set[types.FunctionType]) -> set[str]:
    """Every global or attribute name ``func`` refers to, and those of the tests' helper
    functions it refers to, at any depth."""
    func = inspect.unwrap(func)
    if not isinstance(func, types.FunctionType) or func in seen:
        return set()
    seen.add(func)
    names: set[str] = set()

    def walk(code: types.CodeType) -> None:
        names.update(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    walk(func.__code__)
    for name in list(names):
        helper = func.__globals__.get(name)
        if (
            isinstance(helper, types.FunctionType)
            and helper.__module__.split(".")[0] not in _NOT_FOLLOWED
        ):
            names |= _referenced_names(helper, seen)
    return names


def uses_a_browser(test: Callable[..., Any] | None, fixtures: Iterable[Callable[..., Any]]) -> bool:
    """Whether ``test`` or one of its ``fixtures`` (the functions of its fixture closure)
    reaches a :data:`GATES` name."""
    seen: set[types.FunctionType] = set()
    for func in (test, *fixtures):
        if func is not None and _referenced_names(func, seen) & GATES:
            return True
    return False
