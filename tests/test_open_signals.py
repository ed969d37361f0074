"""``profiles open`` ended the way people end it: Ctrl-C, SIGTERM or SIGHUP a few seconds
after the banner, while the browser sits idle on a page, several sessions in a row on one
profile, to the process and to its group, headless and headed (on a private Xvfb), on
Chromium and Firefox. Every one of them must close the browser, save and exit 0.

A signal right after the banner is not enough: the page is still loading then, and the
browser's messages wake Playwright's event loop. A few seconds later the loop sleeps in
``select()`` with no timeout, and a handler that threw into the caller without waking it
left ``profiles open`` hanging for good (issue 18). One session of each run is ended by a
real Ctrl-C typed into a pseudo-terminal, which the terminal's line discipline turns into
SIGINT to the foreground process group.

Every child leads its own process group (or session), so a group signal never reaches
pytest.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.waiting import wait_until

from driver import Session
from profiles import ProfileStore
from profiles.state.rules import Engine

from conftest import open_command

PROFILE = "by-hand"
BANNER = b"Browser open on profile"
# How long a person looks at the page before pressing Ctrl-C: long enough for the page to
# have loaded and the browser to have gone quiet.
PAUSES = (2.0, 3.5, 2.5, 3.0, 2.0, 4.0, 2.5)
END_WITHIN = 90.0


@dataclass(frozen=True)
class Ending:
    how: str  # "tty" (Ctrl-C typed into a terminal), "process" or "group"
    sig: signal.Signals = signal.SIGINT

    @property
    def id(self) -> str:
        return "ctrl-c-in-a-terminal" if self.how == "tty" else f"{self.sig.name}-{self.how}"


HEADLESS_RUN = (
    Ending("tty"),
    Ending("process", signal.SIGTERM),
    Ending("group", signal.SIGHUP),
    Ending("process", signal.SIGINT),
    Ending("group", signal.SIGTERM),
    Ending("process", signal.SIGHUP),
    Ending("group", signal.SIGINT),
)
HEADED_RUN = (Ending("tty"), Ending("group", signal.SIGTERM), Ending("process", signal.SIGHUP))


@pytest.fixture(scope="module")
def xvfb_display() -> Iterator[str]:
    """A private X server (Xvfb) for headed browsers: its display, e.g. ``:7``."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        message = "Xvfb is not installed (scripts/setup.sh installs Debian's xvfb)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    read, write = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], 1.0)
            if ready:
                chunk = os.read(read, 16)
                if not chunk:
                    break
                number += chunk
        assert number.strip().isdigit(), f"Xvfb did not report a display: {number!r}"
        yield f":{number.strip().decode()}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(timeout=30)


def _command(home: Path, base: str, engine: Engine, *, headed: bool) -> list[str]:
    extra = ["--headed"] if headed else []
    return open_command(home, PROFILE, engine, f"{base}/visit.html", *extra)


def _read_until(fd: int, wanted: bytes, seen: bytearray, deadline: float) -> bool:
    """Read ``fd`` into ``seen`` until ``wanted`` is in it (True), EOF or the deadline."""
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other side is gone
            return wanted in seen
        if not chunk:
            return wanted in seen
        seen += chunk
    return True


def _run_in_a_terminal(command: list[str], env: dict[str, str], pause: float) -> tuple[int, str]:
    """Run ``command`` on a new pseudo-terminal, type Ctrl-C ``pause`` s after its banner;
    its exit status and everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        try:
            os.chdir(Path(__file__).parent.parent)
            os.execve(command[0], command, env)
        finally:
            os._exit(127)
    seen = bytearray()
    try:
        assert _read_until(fd, BANNER, seen, time.monotonic() + 120), bytes(seen)
        _read_until(fd, b"\n", seen, time.monotonic() + 5)
        time.sleep(pause)
        os.write(fd, b"\x03")  # the terminal sends SIGINT to its foreground process group
        deadline = time.monotonic() + END_WITHIN
        _read_until(fd, b"\x00never", seen, deadline)  # to EOF: the child closed the pty

        def exited() -> tuple[int, int] | None:
            done, status = os.waitpid(pid, os.WNOHANG)
            return (done, status) if done else None

        _, status = wait_until(
            exited,
            timeout=max(0.1, deadline - time.monotonic()),
            interval=0.1,
            what=f"an exit {END_WITHIN} s after Ctrl-C",
            detail=lambda: repr(bytes(seen)),
        )
        return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")
    finally:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)


def _run_with_a_signal(
    command: list[str], env: dict[str, str], ending: Ending, pause: float
) -> tuple[int, str]:
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    seen = bytearray()
    try:
        assert _read_until(fd, BANNER, seen, time.monotonic() + 120), bytes(seen)
        _read_until(fd, b"\n", seen, time.monotonic() + 5)
        time.sleep(pause)
        if ending.how == "group":
            os.killpg(child.pid, ending.sig)
        else:
            child.send_signal(ending.sig)
        deadline = time.monotonic() + END_WITHIN
        _read_until(fd, b"\x00never", seen, deadline)
        try:
            status = child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit {END_WITHIN} s after {ending.id}: {bytes(seen)!r}"
            ) from None
        return status, seen.decode(errors="replace")
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        child.stdout.close()


def _visits(home: Path, base: str) -> tuple[int, set[str]]:
    """What the saved profile remembers of the page: its visit count and cookie names."""
    with ProfileStore(home) as store, Session(profile=PROFILE, store=store, readonly=True) as page:
        page.goto(f"{base}/index.html")
        count = page.evaluate("Number(localStorage.getItem('visits') || '0')")
        cookies = {c["name"] for c in page.context.cookies()}
    return int(count), cookies


@pytest.mark.parametrize("headed", [False, True], ids=["headless", "headed"])
def test_open_ends_and_saves_on_a_signal_seconds_after_the_banner(
    home: Path, http_server: str, engine: Engine, headed: bool, request: pytest.FixtureRequest
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if headed:
        env["DISPLAY"] = request.getfixturevalue("xvfb_display")
    command = _command(home, http_server, engine, headed=headed)
    run = HEADED_RUN if headed else HEADLESS_RUN
    for ending, pause in zip(run, PAUSES, strict=False):
        if ending.how == "tty":
            status, output = _run_in_a_terminal(command, env, pause)
        else:
            status, output = _run_with_a_signal(command, env, ending, pause)
        assert status == 0, (ending.id, output)
        assert "closing the browser and saving the profile" in output, (ending.id, output)
        assert f"saved {PROFILE}: ready" in output, (ending.id, output)
        with ProfileStore(home) as store:
            ended = [
                e for e in store.audit(profile=PROFILE, limit=1).data if e.type == "session.ended"
            ]
        assert ended and ended[0].payload["committed"] is True, (ending.id, ended)
    visits, cookies = _visits(home, http_server)
    assert visits == len(run)  # every session's visit was saved, none lost
    assert "visited" in cookies
