"""support.waiting.wait_until, which the tests use instead of sleeping for a guess."""

from __future__ import annotations

import time

import pytest
from support.waiting import wait_until


def test_it_returns_the_first_true_value_and_keeps_asking_until_then() -> None:
    answers = iter([0, [], None, "ready", "later"])
    assert wait_until(lambda: next(answers), interval=0) == "ready"
    assert next(answers) == "later"  # asked no more once it held


def test_it_fails_after_the_timeout_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        wait_until(
            list,
            timeout=0.2,
            interval=0.01,
            what="the door to open",
            detail=lambda: "the door is still shut",
        )
    assert time.monotonic() - started >= 0.2
    assert str(failed.value) == (
        "gave up after 0.2 s waiting for the door to open (last value: [])\nthe door is still shut"
    )


def test_without_a_description_it_quotes_the_predicate() -> None:
    with pytest.raises(AssertionError, match=r"waiting for .*lambda: 1 > 2"):
        wait_until(lambda: 1 > 2, timeout=0, interval=0)


def test_what_the_predicate_raises_is_not_caught() -> None:
    def broken() -> bool:
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="the server exited"):
        wait_until(broken, timeout=5)
