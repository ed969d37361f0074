"""Signals and sessions, with real process groups and real browsers.

A signal to the whole process group (GNU ``timeout``, ``kill -TERM -- -PGID``, systemd's
``KillMode=control-group``, CI job runners, Ctrl-C in a terminal) must end a session the way
a signal to its pid does: the ``with`` block ends, the browser closes and the state is
committed. A SIGKILL must leave no driver or browser process behind.

Every child here leads its own process group (``start_new_session=True``), so a group signal
never reaches pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.waiting import wait_until

from driver import AsyncSession, Session
from profiles import ProfileStore
from profiles.state.rules import Engine

from conftest import ARCHETYPE_OF, open_command, require_engine

PROFILE = "sig"
VALUE = 42

CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from driver import AsyncSession, Session
    from profiles import ProfileStore

    home, base, archetype, mode = sys.argv[1:5]
    SET = "localStorage.setItem('counter', '42')"


    def run_sync(wait_in_playwright):
        store = ProfileStore(home)
        with Session(profile="sig", store=store, archetype=archetype) as page:
            page.goto(base + "/set-cookie")
            page.evaluate(SET)
            print("ready", flush=True)
            if wait_in_playwright == "idle":
                page.context.wait_for_event("close", timeout=0)  # nothing to wake the loop
            elif wait_in_playwright:
                page.wait_for_timeout(600_000)
            else:
                time.sleep(600)


    async def run_async():
        store = ProfileStore(home)
        async with AsyncSession(profile="sig", store=store, archetype=archetype) as page:
            await page.goto(base + "/set-cookie")
            await page.evaluate(SET)
            print("ready", flush=True)
            await asyncio.sleep(600)


    if mode == "sync":
        run_sync(False)
    elif mode == "sync-pw-wait":
        run_sync(True)
    elif mode == "sync-idle":
        run_sync("idle")
    else:
        asyncio.run(run_async())
    """
)


def _child_command(tmp_path: Path, home: Path, base: str, engine: Engine, mode: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    if mode == "cli":
        return open_command(home, PROFILE, engine, f"{base}/set-cookie")
    return [sys.executable, str(script), str(home), base, ARCHETYPE_OF[engine], mode]


@contextlib.contextmanager
def _running(command: list[str], *, cli: bool) -> Iterator[subprocess.Popen[str]]:
    """Start ``command`` as the leader of a new process group and wait until its session is
    open (``ready`` on stdout, or the banner of ``profiles open`` on stderr)."""
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if cli else None,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        stream = child.stderr if cli else child.stdout
        assert stream is not None
        seen = []
        while True:
            line = stream.readline()
            seen.append(line)
            if not line:
                raise AssertionError(f"the child ended before its session opened: {seen}")
            if (cli and line.startswith("Browser open")) or (not cli and line.strip() == "ready"):
                break
        yield child
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


def _assert_committed(home: Path, base: str, *, localstorage: bool) -> None:
    """The last session on the profile ended cleanly and committed what the child did."""
    with ProfileStore(home) as store:
        profile = store.get(PROFILE)
        assert profile.status == "ready"
        events = store.audit(profile=PROFILE, limit=100).data
        ended = [e for e in events if e.type == "session.ended"]
        assert ended, [e.type for e in events]
        assert ended[0].payload["committed"] is True, ended[0].payload
        assert ended[0].payload["outcome"] == "ok", ended[0].payload
        assert "127.0.0.1" in profile.cookie_domains
        with Session(profile=PROFILE, store=store, readonly=True) as page:
            page.goto(f"{base}/")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            cookies = {c["name"] for c in page.context.cookies()}
            counter = page.evaluate("window.readCounter()")
    assert {"persistent", "sessiononly"} <= cookies
    if localstorage:
        assert counter == VALUE


def _expected_status(mode: str, how: str) -> int:
    if mode == "cli":
        return 0  # 'profiles open' ends its wait on the signal, saves and succeeds
    if how == "SIGINT":
        return -signal.SIGINT  # an unhandled KeyboardInterrupt re-raises SIGINT (shell: 130)
    return 128 + signal.SIGTERM


@pytest.mark.parametrize("how", ["timeout", "SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", ["sync", "async", "cli"])
def test_a_signal_to_the_process_group_commits(
    tmp_path: Path, home: Path, http_server: str, engine: Engine, mode: str, how: str
) -> None:
    command = _child_command(tmp_path, home, http_server, engine, mode)
    if how == "timeout":
        # GNU timeout signals its child and then its whole process group. SIGALRM is how
        # timeout's own timer fires, so sending it one now is the deadline, without waiting.
        command = ["timeout", "--preserve-status", "-s", "TERM", "300", *command]
    with _running(command, cli=mode == "cli") as child:
        if how == "timeout":
            os.kill(child.pid, signal.SIGALRM)
        else:
            os.killpg(child.pid, getattr(signal, how))
        status = child.wait(timeout=120)
        out = child.stdout.read() if mode == "cli" and child.stdout else ""
        err = child.stderr.read() if mode == "cli" and child.stderr else ""
    assert status == _expected_status(mode, how), (out, err)
    if mode == "cli":
        assert out.startswith(f"saved {PROFILE}: ready"), out
    _assert_committed(home, http_server, localstorage=mode != "cli")


# A signal that arrives while Playwright's sync API runs Python code in its event loop (the
# task that reads the driver's messages) must still end the session with a commit: raised
# in that task, it used to end it, and with it the connection; nothing could be saved.
IN_A_DISPATCH = textwrap.dedent(
    """
    import os, signal, sys
    from playwright._impl import _connection
    import profiles.cli.session

    mode, how, home, base, archetype = sys.argv[1:6]
    armed = False
    dispatch = _connection.Connection.dispatch

    def signalling_dispatch(self, message):
        global armed
        if armed:
            armed = False
            print("signalled in a dispatch", file=sys.stderr, flush=True)
            os.kill(os.getpid(), getattr(signal, how))
            sum(range(100_000))  # Python runs the handler in here, in the reading task's step
        return dispatch(self, message)

    _connection.Connection.dispatch = signalling_dispatch

    if mode == "cli":
        banner = profiles.cli.session._err

        def arming_banner(message):
            global armed
            banner(message)
            armed = message.startswith("Browser open")  # next: the page's navigation

        profiles.cli.session._err = arming_banner
        from profiles.cli.main import main

        sys.exit(main(["--home", home, "open", "sig", "--archetype", archetype,
                       "--url", base + "/navigate-soon.html"]))

    from driver import Session
    from profiles import ProfileStore

    with Session(profile="sig", store=ProfileStore(home), archetype=archetype) as page:
        page.goto(base + "/navigate-soon.html")
        page.wait_for_url(base + "/")
        armed = True
        while True:
            page.wait_for_timeout(200)  # the driver's answer is a message to dispatch
    """
)


@pytest.mark.parametrize(
    ("mode", "how"), [("cli", "SIGTERM"), ("sync", "SIGTERM"), ("sync", "SIGINT")]
)
def test_a_signal_during_a_dispatch_still_commits(
    tmp_path: Path, home: Path, http_server: str, engine: Engine, mode: str, how: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(IN_A_DISPATCH)
    command = [sys.executable, str(script), mode, how, str(home), http_server, ARCHETYPE_OF[engine]]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
    )
    assert "signalled in a dispatch" in done.stderr, done.stderr
    assert done.returncode == _expected_status(mode, how), (done.stdout, done.stderr)
    if mode == "cli":
        assert done.stdout.startswith(f"saved {PROFILE}: ready"), done.stdout
    _assert_committed(home, http_server, localstorage=True)


def test_a_group_sigterm_while_waiting_inside_playwright_commits(
    tmp_path: Path, home: Path, http_server: str
) -> None:
    require_engine("chromium")
    command = _child_command(tmp_path, home, http_server, "chromium", "sync-pw-wait")
    with _running(command, cli=False) as child:
        os.killpg(child.pid, signal.SIGTERM)
        assert child.wait(timeout=120) == 128 + signal.SIGTERM
    _assert_committed(home, http_server, localstorage=True)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_seconds_into_an_idle_wait_inside_playwright_commits(
    tmp_path: Path, home: Path, http_server: str, how: str
) -> None:
    """The script waits in Playwright with no timeout and the page has gone quiet, so the
    event loop sleeps in select() with nothing to wake it: the signal must still end the
    session (it hung there before the handler woke the loop)."""
    require_engine("chromium")
    command = _child_command(tmp_path, home, http_server, "chromium", "sync-idle")
    with _running(command, cli=False) as child:
        time.sleep(2.5)
        child.send_signal(getattr(signal, how))
        assert child.wait(timeout=90) == _expected_status("sync", how)
    _assert_committed(home, http_server, localstorage=True)


def test_async_session_commits_on_sigterm_to_its_pid(
    tmp_path: Path, home: Path, http_server: str
) -> None:
    require_engine("chromium")
    command = _child_command(tmp_path, home, http_server, "chromium", "async")
    with _running(command, cli=False) as child:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 128 + signal.SIGTERM
    _assert_committed(home, http_server, localstorage=True)


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, state, command line) of every process, from /proc."""
    found: dict[int, tuple[int, str, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return found


def _alive(pid: int) -> bool:
    info = _processes().get(pid)
    return info is not None and info[1] != "Z"


def test_sigkill_of_the_group_leaves_no_driver_or_browser_behind(
    tmp_path: Path, home: Path, http_server: str, engine: Engine
) -> None:
    with ProfileStore(home) as store:
        store.create(PROFILE, archetype=ARCHETYPE_OF[engine])
        work = str(store.working_copies.path(store.get(PROFILE).id)).encode()
    command = _child_command(tmp_path, home, http_server, engine, "sync")
    with _running(command, cli=False) as child:
        procs = _processes()
        drivers = [
            pid
            for pid, (ppid, _, cmd) in procs.items()
            if ppid == child.pid and b"run-driver" in cmd
        ]
        browsers = [pid for pid, (_, _, cmd) in procs.items() if work in cmd]
        assert len(drivers) == 1, procs
        assert browsers
        # The driver has a process group of its own: a signal to ours does not reach it.
        assert os.getpgid(drivers[0]) != os.getpgid(child.pid)
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    # Its stdin closed with our process: the driver closes the browser and exits.
    wait_until(
        lambda: not any(_alive(pid) for pid in drivers + browsers),
        timeout=60,
        interval=0.2,
        what="the driver and the browser to exit",
        detail=lambda: repr(
            {pid: _processes().get(pid) for pid in drivers + browsers if _alive(pid)}
        ),
    )
    with ProfileStore(home) as store:  # nothing was committed; the lock is free
        assert store.get(PROFILE).status != "ready"
        with Session(profile=PROFILE, store=store, lock_timeout=0) as page:
            page.goto(f"{http_server}/")
            assert page.evaluate("window.readCounter()") == 0


# --------------------------------------------------------------- AsyncSession and handlers


@pytest.mark.asyncio
async def test_async_session_sigterm_in_process_ends_the_block_and_restores(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(SystemExit) as exited:
        async with AsyncSession(profile="term", store=store) as page:
            await page.goto(f"{http_server}/")
            await page.evaluate("localStorage.setItem('counter', '3')")
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(60)
            raise AssertionError("SIGTERM did not end the block")
    assert exited.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ended = store.audit(profile="term", limit=1).data[0]
    assert ended.type == "session.ended" and ended.payload["committed"] is True
    async with AsyncSession(profile="term", store=store, readonly=True) as page:
        await page.goto(f"{http_server}/")
        assert await page.evaluate("window.readCounter()") == 3


@pytest.mark.asyncio
async def test_async_session_leaves_the_applications_loop_handler_alone(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, received.set)
    try:
        async with AsyncSession(profile="app-loop", store=store) as page:
            await page.goto(f"{http_server}/")
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(received.wait(), 30)  # the app's handler ran, not ours
            assert await page.evaluate("1 + 1") == 2  # and the session is still open
        received.clear()
        os.kill(os.getpid(), signal.SIGTERM)  # still the app's handler after the session
        await asyncio.wait_for(received.wait(), 30)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    ended = store.audit(profile="app-loop", limit=1).data[0]
    assert ended.payload["outcome"] == "ok" and ended.payload["committed"] is True


@contextlib.contextmanager
def _own_handler(signum: int) -> Iterator[tuple[object, list[int]]]:
    """A Python handler of the application's for ``signum`` (it records what it gets)."""
    calls: list[int] = []

    def handler(received: int, frame: object) -> None:
        calls.append(received)

    previous = signal.signal(signum, handler)
    try:
        yield handler, calls
    finally:
        signal.signal(signum, previous)


@pytest.mark.asyncio
async def test_async_session_leaves_a_python_sigterm_handler_alone(store: ProfileStore) -> None:
    require_engine("chromium")
    with _own_handler(signal.SIGTERM) as (handler, calls):
        async with AsyncSession(profile="app-py", store=store):
            assert signal.getsignal(signal.SIGTERM) is handler
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: calls, what="the application's handler to run")
        assert signal.getsignal(signal.SIGTERM) is handler
        assert calls == [signal.SIGTERM]


def test_sync_session_restores_the_default_sigterm_and_ctrl_c(store: ProfileStore) -> None:
    require_engine("chromium")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with Session(profile="restore", store=store):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        with Session(profile="restore-2", store=store):
            pass
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the outer still open
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sync_session_leaves_a_python_sigint_handler_alone(store: ProfileStore) -> None:
    require_engine("chromium")
    with _own_handler(signal.SIGINT) as (handler, calls):
        with Session(profile="app-int", store=store) as page:
            assert signal.getsignal(signal.SIGINT) is handler
            os.kill(os.getpid(), signal.SIGINT)
            assert page.evaluate("1 + 1") == 2  # the handler ran; the session is still open
        assert signal.getsignal(signal.SIGINT) is handler
        assert calls == [signal.SIGINT]


def _ended(store: ProfileStore, profile: str) -> dict[str, object]:
    events = store.audit(profile=profile, limit=100).data
    return next(e for e in events if e.type == "session.ended").payload


def test_a_session_ended_by_a_signal_is_recorded_as_a_clean_end(
    store: ProfileStore, http_server: str
) -> None:
    """Ctrl-C and SIGTERM end a session cleanly (docs/sessions.md's word): ``outcome="ok"``,
    ``reason="interrupted (SIG...)"``, no error, the state committed, also with
    ``save="on_success"``."""
    require_engine("chromium")
    with pytest.raises(KeyboardInterrupt), Session(profile="ctrl-c", store=store) as page:
        page.goto(f"{http_server}/set-cookie")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, through the session's own handler
        page.wait_for_timeout(30_000)
    ended = _ended(store, "ctrl-c")
    assert ended["outcome"] == "ok" and ended["reason"] == "interrupted (SIGINT)", ended
    assert ended["error"] is None and ended["committed"] is True
    assert "127.0.0.1" in store.get("ctrl-c").cookie_domains

    with (
        pytest.raises(SystemExit) as stopped,
        Session(profile="term", store=store, save="on_success") as page,
    ):
        page.goto(f"{http_server}/set-cookie")
        os.kill(os.getpid(), signal.SIGTERM)
        page.wait_for_timeout(30_000)
    assert stopped.value.code == 128 + signal.SIGTERM
    ended = _ended(store, "term")
    assert ended["outcome"] == "ok" and ended["reason"] == "interrupted (SIGTERM)", ended
    assert ended["committed"] is True and store.get("term").status == "ready"

    # A real error is still one.
    with pytest.raises(RuntimeError), Session(profile="boom", store=store):
        raise RuntimeError("boom")
    ended = _ended(store, "boom")
    assert ended["outcome"] == "error" and ended["error"] == "RuntimeError: boom"
