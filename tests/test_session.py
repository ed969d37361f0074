"""Sessions on real Chromium and Firefox: state survives, writers serialise, crashes are safe."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page
from support.waiting import wait_until

from driver import AsyncSession, Session
from driver.browsers import ENV_OVERRIDE, find_browser
from driver.lifecycle import SESSION_COOKIES_FILE
from profiles import (
    BrowserDowngrade,
    BrowserNotFound,
    NotFound,
    ProfileBusy,
    ProfileStore,
    StateCommitFailed,
    ValidationFailed,
)
from profiles.state.rules import Engine

from conftest import ARCHETYPE_OF, require_engine


def _fill_state(page: object, base: str, *, worker: bool = True) -> None:
    """Visit the test page and leave every kind of state a profile should keep."""
    assert isinstance(page, Page)
    page.goto(f"{base}/set-cookie")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    page.evaluate("window.bumpCounter()")
    page.evaluate("window.idbPut('answer', 42)")
    if worker:
        page.evaluate("window.registerWorker()")


def _read_state(page: object, base: str) -> dict[str, object]:
    assert isinstance(page, Page)
    page.goto(f"{base}/")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return {
        "cookies": cookies,
        "counter": page.evaluate("window.readCounter()"),
        "idb": page.evaluate("window.idbGet('answer')"),
        "workers": page.evaluate("window.workerScopes()"),
    }


def test_state_survives_close_and_reopen(
    store: ProfileStore, engine: Engine, http_server: str
) -> None:
    name = f"keep-{engine}"
    with Session(profile=name, store=store, archetype=ARCHETYPE_OF[engine]) as page:
        _fill_state(page, http_server)
    profile = store.get(name)
    assert profile.status == "ready"
    assert profile.browser_name == engine
    assert profile.browser_version
    assert profile.checksum and profile.blob_size
    assert "127.0.0.1" in profile.cookie_domains
    assert profile.usage_count == 1

    store.working_copies.remove(profile.id)  # force a cold start from the committed archive
    with Session(profile=name, store=store) as page:
        state = _read_state(page, http_server)
    assert state["cookies"] == {"persistent": "kept", "sessiononly": "kept"}
    assert state["counter"] == 1
    assert state["idb"] == 42
    assert state["workers"] == [f"{http_server}/"]
    assert store.get(name).usage_count == 2


def test_state_survives_export_and_import_into_another_store(
    tmp_path: Path, store: ProfileStore, engine: Engine, http_server: str
) -> None:
    with Session(profile="origin", store=store, archetype=ARCHETYPE_OF[engine]) as page:
        _fill_state(page, http_server)
    archive = tmp_path / "state.tar.gz"
    store.export_state("origin", archive)

    with ProfileStore(tmp_path / "other-home") as other:
        other.create("copy", archetype=ARCHETYPE_OF[engine])
        imported = other.import_state("copy", archive)
        assert imported.status == "ready"
        assert "127.0.0.1" in imported.cookie_domains
        with Session(profile="copy", store=other) as page:
            state = _read_state(page, http_server)
    assert state["cookies"] == {"persistent": "kept", "sessiononly": "kept"}
    assert state["counter"] == 1
    assert state["idb"] == 42
    assert state["workers"] == [f"{http_server}/"]


def test_warm_start_reuses_the_working_copy(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="warm", store=store) as page:
        page.goto(f"{http_server}/")
    profile = store.get("warm")
    work = store.working_copies.path(profile.id)
    marker = work / "marker-from-the-last-session"
    marker.write_text("still here")
    # A file the browser does not know stays in the working copy, so the warm start reused it
    # (a cold start would unpack the archive committed before the file existed).
    store.working_copies.mark_clean(profile.id, profile.checksum or "")
    with Session(profile="warm", store=store) as page:
        page.goto(f"{http_server}/")
    assert marker.exists()


def test_session_cookies_can_be_dropped(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="nokeep", store=store, keep_session_cookies=False) as page:
        page.goto(f"{http_server}/set-cookie")
    with Session(profile="nokeep", store=store, keep_session_cookies=False) as page:
        page.goto(f"{http_server}/")
        names = {c["name"] for c in page.context.cookies()}
    assert names == {"persistent"}


def test_save_modes(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="modes", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("window.bumpCounter()")
    committed = store.get("modes").checksum

    with (
        pytest.raises(ValueError),
        Session(profile="modes", store=store, save="on_success") as page,
    ):
        page.goto(f"{http_server}/")
        page.evaluate("window.bumpCounter()")
        raise ValueError("scrape failed")
    assert store.get("modes").checksum == committed

    with Session(profile="modes", store=store, save="never") as page:
        page.goto(f"{http_server}/")
        page.evaluate("window.bumpCounter()")
    assert store.get("modes").checksum == committed

    with pytest.raises(ValueError), Session(profile="modes", store=store) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.bumpCounter()") == 2  # the failed runs were discarded
        raise ValueError("after the login")
    assert store.get("modes").checksum != committed  # save="always" keeps what happened

    with Session(profile="modes", store=store, readonly=True) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 2
    ended = [e for e in store.audit(profile="modes", limit=100).data if e.type == "session.ended"]
    assert [e.payload["committed"] for e in ended] == [False, True, False, False, True]
    assert ended[-1].payload["reason"] is None


def _writer_process(home: str, base: str, rounds: int, engine: str) -> None:
    store = ProfileStore(home)
    for _ in range(rounds):
        with Session(profile="counter", store=store, archetype=ARCHETYPE_OF[engine]) as page:  # type: ignore[index]
            page.goto(f"{base}/")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            value = page.evaluate("window.readCounter()")
            page.evaluate(f"localStorage.setItem('counter', String({value} + 1))")
    store.close()


def test_no_lost_update_between_two_writer_processes(
    home: Path, http_server: str, engine: Engine
) -> None:
    ProfileStore(home).create("counter", archetype=ARCHETYPE_OF[engine])
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_writer_process, args=(str(home), http_server, 10, engine))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    with (
        ProfileStore(home) as store,
        Session(profile="counter", store=store, readonly=True) as page,
    ):
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 20
        assert store.get("counter").usage_count == 21


def test_readonly_sessions_run_in_parallel_and_change_nothing(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    with Session(profile="shared", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("window.bumpCounter()")
    before = store.get("shared")
    writer_lock = store.lock("shared", timeout=0)
    writer_lock.acquire()  # a writer is busy: readers must not care
    try:
        with (
            Session(profile="shared", store=store, readonly=True) as a,
            Session(profile="shared", store=store, readonly=True) as b,
        ):
            for page in (a, b):
                page.goto(f"{http_server}/")
                assert page.evaluate("window.bumpCounter()") == 2
    finally:
        writer_lock.release()
    after = store.get("shared")
    assert after.checksum == before.checksum
    assert after.usage_count == before.usage_count + 2
    assert not list((store.home / "tmp").iterdir())


def test_profile_busy_names_the_holder(store: ProfileStore) -> None:
    require_engine("chromium")
    store.create("busy")
    holder = store.lock("busy")
    holder.acquire()
    try:
        with (
            pytest.raises(ProfileBusy) as err,
            Session(profile="busy", store=store, lock_timeout=0.2),
        ):
            pass
    finally:
        holder.release()
    assert f"pid {os.getpid()}" in err.value.message
    assert err.value.status == 409


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from driver import Session
    from profiles import ProfileStore
    store = ProfileStore(sys.argv[1])
    with Session(profile="victim", store=store) as page:
        page.goto(sys.argv[2] + "/")
        page.evaluate("localStorage.setItem('counter', '99')")
        print("ready", flush=True)
        time.sleep(600)
    """
)


def _signal_session_child(home: Path, base: str, signum: int) -> int:
    """Run KILLED_CHILD until its session is open, send it ``signum``, return its exit code."""
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(home), base], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signum)
        return child.wait(timeout=60)


def test_killed_session_frees_the_lock_and_keeps_the_last_commit(
    home: Path, http_server: str
) -> None:
    require_engine("chromium")
    with ProfileStore(home) as store, Session(profile="victim", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '7')")
    assert _signal_session_child(home, http_server, signal.SIGKILL) == -signal.SIGKILL
    with (
        ProfileStore(home) as store,
        Session(profile="victim", store=store, lock_timeout=30) as page,
    ):
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 7


def test_sigterm_commits_like_a_normal_exit(home: Path, http_server: str) -> None:
    require_engine("chromium")
    assert _signal_session_child(home, http_server, signal.SIGTERM) == 128 + signal.SIGTERM
    with ProfileStore(home) as store, Session(profile="victim", store=store) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 99


def test_crashed_browser_keeps_the_previous_state(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="crash", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '5')")
    committed = store.get("crash").checksum
    with Session(profile="crash", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '6')")
        pid = _browser_pid(store, "crash")
        os.kill(pid, signal.SIGKILL)
        _until_playwright_sees_the_browser_gone(page)
    assert store.get("crash").checksum == committed
    ended = store.audit(profile="crash", limit=1).data[0]
    assert ended.type == "session.ended"
    assert ended.payload["outcome"] == "crashed"
    assert ended.payload["committed"] is False
    with Session(profile="crash", store=store) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 5


def _until_playwright_sees_the_browser_gone(page: Page) -> None:
    """Until the browser's pages are closed as Playwright sees them. Its sync API reads the
    browser's events only while one of its calls runs (a sleep would wait for nothing), so
    each look waits briefly for the context's close."""

    def gone() -> bool:
        if page.context.pages:
            with contextlib.suppress(PlaywrightError):  # a timeout, or a context gone
                page.context.wait_for_event("close", timeout=200)
        return not page.context.pages

    wait_until(gone, timeout=20, interval=0, what="Playwright to see the browser gone")


def _browser_pid(store: ProfileStore, name: str) -> int:
    """The pid of the browser process whose command line names the profile's working copy."""
    work = str(store.working_copies.path(store.get(name).id))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(work.encode() in arg for arg in cmdline) and not any(
            b"--type=" in arg for arg in cmdline
        ):
            return int(entry.name)
    raise AssertionError("no browser process found for the profile")


def test_profile_deleted_during_session_fails_loudly(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with pytest.raises(NotFound, match="deleted"), Session(profile="doomed", store=store) as page:
        page.goto(f"{http_server}/")
        profile_id = store.get("doomed").id
        store.delete("doomed")
    assert not store.working_copies.path(profile_id).exists()
    assert not list(store.blobs.list())


def test_downgrade_guard(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="newer", store=store) as page:
        page.goto(f"{http_server}/")
    written_by = store.get("newer").browser_version
    assert written_by and not written_by.startswith("1.")
    # Pretend the Chromium at hand is far older than the one that wrote the state: the
    # version probe's cache (keyed by the binary's identity) says so.
    cache = store.home / "browser-versions.json"
    versions = json.loads(cache.read_text())
    cache.write_text(json.dumps(dict.fromkeys(versions, "1.0.0.0")))
    with (
        pytest.raises(BrowserDowngrade, match=r"newer than the 1\.0\.0\.0"),
        Session(profile="newer", store=store),
    ):
        pass
    assert not store.lock("newer").is_locked
    with Session(profile="newer", store=store, allow_downgrade=True) as page:
        page.goto(f"{http_server}/")
    assert store.get("newer").usage_count == 2


def test_missing_engine_says_what_to_install(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "none"))
    for variable in ENV_OVERRIDE.values():  # nor one named by the environment
        monkeypatch.delenv(variable, raising=False)
    for engine, hint in [("chromium", "apt-get install chromium"), ("firefox", "firefox-esr")]:
        with pytest.raises(BrowserNotFound, match=hint):
            find_browser(engine)  # type: ignore[arg-type]
    with (
        pytest.raises(BrowserNotFound, match="playwright install"),
        Session(profile="nobrowser", store=store),
    ):
        pass
    assert not store.lock("nobrowser").is_locked


def test_session_is_single_use_and_exit_is_idempotent(store: ProfileStore) -> None:
    require_engine("chromium")
    session = Session(profile="once", store=store)
    with session as page:
        assert session.context is page.context
        assert session.profile.name == "once"
    session.__exit__(None, None, None)
    with pytest.raises(RuntimeError, match="already been used"), session:
        pass


def test_session_refuses_a_running_event_loop(store: ProfileStore) -> None:
    import asyncio

    async def inside() -> None:
        with Session(profile="loop", store=store):
            pass

    with pytest.raises(RuntimeError, match="AsyncSession"):
        asyncio.run(inside())
    with pytest.raises(NotFound):  # refused before anything was created or locked
        store.get("loop")


def test_create_false_and_archetype_device(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with pytest.raises(NotFound), Session(profile="absent", store=store, create=False):
        pass
    with Session(profile="phone", store=store, archetype="pixel-7") as page:
        page.goto(f"{http_server}/")
        width = page.evaluate("screen.width")
        agent = page.evaluate("navigator.userAgent")
        touch = page.evaluate("navigator.maxTouchPoints")
    assert width == 412
    assert "Android" in agent
    assert touch > 0
    with Session(profile="phone", store=store, viewport={"width": 800, "height": 600}) as page:
        assert page.evaluate("screen.width") == 800


@pytest.mark.asyncio
async def test_async_session(store: ProfileStore, http_server: str) -> None:
    require_engine("firefox")
    async with AsyncSession(profile="async", store=store, archetype="desktop-firefox") as page:
        await page.goto(f"{http_server}/set-cookie")
        await page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        await page.evaluate("window.bumpCounter()")
    async with AsyncSession(profile="async", store=store) as page:
        await page.goto(f"{http_server}/")
        await page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        assert await page.evaluate("window.readCounter()") == 1
        names = {c["name"] for c in await page.context.cookies()}
    assert names == {"persistent", "sessiononly"}
    assert store.get("async").browser_name == "firefox"


def test_session_cookie_file_travels_with_the_state(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="jar", store=store) as page:
        page.goto(f"{http_server}/set-cookie")
    work = store.working_copies.path(store.get("jar").id)
    saved = json.loads((work / SESSION_COOKIES_FILE).read_text())
    assert [c["name"] for c in saved] == ["sessiononly"]


def test_webkit_session(store: ProfileStore, http_server: str) -> None:
    require_engine("webkit")
    with Session(profile="safari", store=store, archetype="desktop-webkit") as page:
        page.goto(f"{http_server}/set-cookie")
        page.evaluate("window.bumpCounter()")
    with Session(profile="safari", store=store) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 1


def test_a_launch_that_fails_half_way_cleans_up(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="halfway", store=store) as page:
        page.goto(f"{http_server}/")
    committed = store.get("halfway").checksum
    # The browser "executable" exits at once: launch fails after the lock and working copy
    # were taken.
    bad = Session(profile="halfway", store=store, launch_options={"executable_path": "/bin/false"})
    with pytest.raises(PlaywrightError), bad:
        pass
    assert not store.lock("halfway").is_locked
    holder = store.lock("halfway", timeout=0)
    holder.acquire()  # nobody holds it: the failed start-up released it
    holder.release()
    assert store.get("halfway").checksum == committed
    ended = [e.type for e in store.audit(profile="halfway", limit=3).data]
    assert ended[0] != "session.created"  # the failed launch recorded no use
    with pytest.raises(RuntimeError, match="already been used"), bad:
        pass


def test_readonly_copies_a_clean_working_copy_with_its_caches(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    with Session(profile="warmread", store=store) as page:
        page.goto(f"{http_server}/")
    profile = store.get("warmread")
    work = store.working_copies.path(profile.id)
    assert (work / "Default" / "Cache").is_dir()  # a cache the archive leaves out
    session = Session(profile="warmread", store=store, readonly=True)
    with session as page:
        assert (session.user_data_dir / "Default" / "Cache").is_dir()
        assert session.user_data_dir != work
        page.goto(f"{http_server}/")
    assert store.get("warmread").checksum == profile.checksum
    assert store.working_copies.clean_state(profile.id) == profile.checksum


def test_session_archetype_mistakes_are_reported(store: ProfileStore) -> None:
    with (
        pytest.raises(ValidationFailed, match="iphone-15-pro"),
        Session(profile="new", store=store, archetype="iphone-15-por"),
    ):
        pass
    store.create("pinned")
    with (
        pytest.raises(ValidationFailed, match="pinned to 'desktop-chromium'"),
        Session(profile="pinned", store=store, archetype="pixel-7"),
    ):
        pass
    assert [p.name for p in store.list().data] == ["pinned"]


def _close_browser_from_inside(page: object) -> None:
    """Make Chromium shut itself down gracefully, as when a person closes its last window."""
    assert isinstance(page, Page)
    cdp = page.context.new_cdp_session(page)
    with contextlib.suppress(PlaywrightError):
        cdp.send("Browser.close")
    _until_playwright_sees_the_browser_gone(page)


@pytest.mark.parametrize("commit", [True, False])
def test_a_browser_closed_by_hand(store: ProfileStore, http_server: str, commit: bool) -> None:
    require_engine("chromium")
    name = f"byhand-{commit}"
    with Session(profile=name, store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '1')")
    with Session(profile=name, store=store, commit_on_browser_close=commit) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '2')")
        _close_browser_from_inside(page)
    ended = store.audit(profile=name, limit=1).data[0]
    assert ended.type == "session.ended"
    assert ended.payload["committed"] is commit
    assert ended.payload["outcome"] == ("ok" if commit else "crashed")
    with Session(profile=name, store=store, readonly=True) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == (2 if commit else 1)


def test_ctrl_c_in_a_terminal_commits(home: Path, http_server: str) -> None:
    """Ctrl-C reaches the whole process group, Playwright's driver and browser included."""
    require_engine("chromium")
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(home), http_server],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.killpg(child.pid, signal.SIGINT)
        assert child.wait(timeout=60) != 0  # KeyboardInterrupt, after the session ended
    with ProfileStore(home) as store, Session(profile="victim", store=store) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 99


def test_a_commit_that_cannot_write_keeps_the_previous_state(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    with Session(profile="nospace", store=store) as page:
        page.goto(f"{http_server}/")
    committed = store.get("nospace").checksum
    objects = store.home / "blobs" / "sha256"
    away = objects.with_name("sha256.away")
    with (
        pytest.raises(StateCommitFailed, match="previous committed state is kept"),
        Session(profile="nospace", store=store) as page,
    ):
        page.goto(f"{http_server}/")
        page.evaluate("window.bumpCounter()")
        objects.rename(away)
        objects.write_text("a file where the blob store writes: every write fails")
    objects.unlink()
    away.rename(objects)
    assert store.get("nospace").checksum == committed
    ended = store.audit(profile="nospace", limit=1).data[0]
    assert ended.type == "session.ended" and ended.payload["committed"] is False
    assert ended.payload["reason"].startswith("writing the state failed")
    with Session(profile="nospace", store=store, lock_timeout=0) as page:  # lock is free
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 0


# ---------------------------------------------------------------- closing inside the block


@pytest.mark.parametrize("how", ["context", "browser", "last-page"])
def test_closing_inside_the_block_commits(
    store: ProfileStore, http_server: str, engine: Engine, how: str
) -> None:
    """``context.close()``, ``browser.close()`` or closing the last page is a normal way to
    end: the browser flushed its state, so the session commits it."""
    name = f"closed-{how}-{engine}"
    with Session(profile=name, store=store, archetype=ARCHETYPE_OF[engine]) as page:
        page.goto(f"{http_server}/set-cookie")
        page.evaluate("localStorage.setItem('counter', '8')")
        if how == "context":
            page.context.close()
        elif how == "browser":
            browser = page.context.browser
            if browser is None:
                pytest.skip(f"{engine}: a persistent context has no Browser object")
            browser.close()
        else:
            page.close()
    ended = store.audit(profile=name, limit=1).data[0]
    assert ended.type == "session.ended"
    assert ended.payload["outcome"] == "ok", ended.payload
    assert ended.payload["committed"] is True
    with Session(profile=name, store=store, readonly=True) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 8
        names = {c["name"] for c in page.context.cookies()}
    assert names == {"persistent", "sessiononly"}  # captured before the close


@pytest.mark.asyncio
async def test_async_context_close_inside_the_block_commits(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("firefox")
    async with AsyncSession(profile="aclose", store=store, archetype="desktop-firefox") as page:
        await page.goto(f"{http_server}/")
        await page.evaluate("localStorage.setItem('counter', '4')")
        await page.context.close()
    ended = store.audit(profile="aclose", limit=1).data[0]
    assert ended.payload["committed"] is True and ended.payload["outcome"] == "ok"
    async with AsyncSession(profile="aclose", store=store, readonly=True) as page:
        await page.goto(f"{http_server}/")
        assert await page.evaluate("window.readCounter()") == 4


def test_a_killed_firefox_keeps_the_previous_state(store: ProfileStore, http_server: str) -> None:
    require_engine("firefox")
    with Session(profile="fxcrash", store=store, archetype="desktop-firefox") as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '5')")
    committed = store.get("fxcrash").checksum
    with Session(profile="fxcrash", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '6')")
        os.kill(_browser_pid(store, "fxcrash"), signal.SIGKILL)
        _until_playwright_sees_the_browser_gone(page)
    assert store.get("fxcrash").checksum == committed
    ended = store.audit(profile="fxcrash", limit=1).data[0]
    assert ended.payload["outcome"] == "crashed" and ended.payload["committed"] is False


# ---------------------------------------------------------------- a failing start_url


def test_a_failing_start_url_records_the_end(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(profile="badurl", store=store) as page:
        page.goto(f"{http_server}/")
        page.evaluate("localStorage.setItem('counter', '2')")
    committed = store.get("badurl").checksum
    bad = "http://user:hunter2@127.0.0.1:9/login?token=s3cr3t"
    with pytest.raises(PlaywrightError), Session(profile="badurl", store=store, start_url=bad):
        pass
    events = store.audit(profile="badurl", limit=2).data
    assert [e.type for e in events] == ["session.ended", "session.created"]
    ended = events[0].payload
    assert ended["outcome"] == "error" and ended["committed"] is False
    assert ended["error"].startswith("Error: ")
    assert "s3cr3t" not in ended["error"] and "hunter2" not in ended["error"]
    assert store.get("badurl").checksum == committed
    assert not store.lock("badurl").is_locked
    with Session(profile="badurl", store=store, readonly=True) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("window.readCounter()") == 2


@pytest.mark.parametrize("as_json", [False, True])
def test_profiles_open_with_a_failing_url_prints_one_error(home: Path, as_json: bool) -> None:
    require_engine("chromium")
    url = "http://127.0.0.1:9/callback?code=s3cr3t"
    command = [sys.executable, "-m", "profiles", "--home", str(home)]
    command += [*(["--json"] if as_json else []), "open", "openfail", "--url", url, "--exit"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "s3cr3t" not in done.stderr
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    if as_json:
        error = json.loads(last)["error"]
        assert "could not open" in error["message"]
        assert "127.0.0.1:9" in error["message"]
    else:
        assert last.startswith("error: could not open"), done.stderr
        assert "127.0.0.1:9" in last


# ---------------------------------------------------------------- typos, readonly


def test_a_new_profile_close_to_an_existing_name_warns(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    require_engine("chromium")
    store.create("production")
    with caplog.at_level("WARNING", logger="driver"), Session(profile="prodcution", store=store):
        pass
    assert "created new profile 'prodcution'; did you mean 'production'?" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="driver"), Session(profile="unrelated", store=store):
        pass
    assert "did you mean" not in caplog.text


def test_readonly_never_creates(store: ProfileStore) -> None:
    store.create("production")
    with (
        pytest.raises(NotFound, match="production"),
        Session(profile="prodcution", store=store, readonly=True),
    ):
        pass
    assert [p.name for p in store.list().data] == ["production"]


# ---------------------------------------------------------------- option validation


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"save": "sometimes"}, "save"),
        ({"lock_timeout": -1}, "lock_timeout"),
        ({"viewport": {"width": "x", "height": 600}}, "viewport.width"),
        ({"viewport": {"width": 800}}, "viewport"),
        ({"viewport": "800x600"}, "viewport"),
        ({"headless": "yes"}, "headless"),
        ({"readonly": 1}, "readonly"),
        ({"proxy": {"username": "u", "password": "p4ssw0rd"}}, "proxy"),
        ({"proxy": "http://proxy:3128"}, "proxy"),
        ({"launch_options": ["--foo"]}, "launch_options"),
        ({"args": "--foo"}, "args"),
        ({"args": ["--ok", 3]}, "args.1"),
        ({"start_url": 5}, "start_url"),
        ({"playwright": "not a playwright"}, "playwright"),
    ],
)
def test_bad_options_raise_validation_failed(
    store: ProfileStore, options: dict[str, object], field: str
) -> None:
    for cls in (Session, AsyncSession):
        with pytest.raises(ValidationFailed) as err:
            cls(profile="opts", store=store, **options)  # type: ignore[arg-type]
        assert err.value.field == field, err.value.message
        assert field.split(".")[0] in err.value.message
        assert "p4ssw0rd" not in err.value.message
    assert err.value.code == "ValidationFailed"
    with pytest.raises(ValidationFailed, match="'always', 'on_success' or 'never'"):
        Session(profile="opts", store=store, save="sometimes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the caller's Playwright


def test_session_in_a_thread_running_sync_playwright(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    try:
        with (
            pytest.raises(RuntimeError, match=r"sync Playwright.*playwright=p") as err,
            Session(profile="mine", store=store),
        ):
            pass
        assert "asyncio event loop" not in str(err.value)
        with Session(profile="mine", store=store, playwright=p) as page:
            page.goto(f"{http_server}/")
            page.evaluate("window.bumpCounter()")
        with Session(profile="mine", store=store, playwright=p) as page:  # p still runs
            page.goto(f"{http_server}/")
            assert page.evaluate("window.readCounter()") == 1
        browser = p.chromium.launch(**find_browser("chromium").launch_options())
        browser.close()
    finally:
        p.stop()


@pytest.mark.asyncio
async def test_async_session_with_the_callers_playwright(
    store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        async with AsyncSession(profile="amine", store=store, playwright=p) as page:
            await page.goto(f"{http_server}/")
            await page.evaluate("window.bumpCounter()")
        async with AsyncSession(profile="amine", store=store, playwright=p) as page:
            await page.goto(f"{http_server}/")
            assert await page.evaluate("window.readCounter()") == 1


# ---------------------------------------------------------------- merged options


def test_launch_options_add_to_the_sessions_options(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    require_engine("chromium")
    from driver.lifecycle import SessionLifecycle, SessionOptions

    store.create("merge", archetype="pixel-7")
    options = SessionOptions(
        args=("--lang=fr",),
        viewport={"width": 800, "height": 600},
        proxy={"server": "http://127.0.0.1:3128", "username": "u", "password": "p4ssw0rd"},
        launch_options={
            "args": ["--mute-audio", "--lang=fr"],
            "extra_http_headers": {"X-Test": "1"},
            "viewport": {"height": 700},
        },
    )
    life = SessionLifecycle("merge", store, options)
    with caplog.at_level("INFO", logger="driver"):
        plan = life.prepare()
    life.abort()
    assert plan.options["args"] == ["--lang=fr", "--mute-audio"]
    assert plan.options["viewport"] == {"width": 800, "height": 700}
    assert plan.options["extra_http_headers"] == {"X-Test": "1"}
    assert plan.options["is_mobile"] is True and plan.options["has_touch"] is True
    lines = [r.getMessage() for r in caplog.records if "archetype" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "pixel-7" in lines[0]
    assert "device_scale_factor" in lines[0] and "overridden" in lines[0]
    assert "viewport" in lines[0]
    assert "p4ssw0rd" not in caplog.text


def test_session_args_reach_the_browser(store: ProfileStore, http_server: str) -> None:
    require_engine("chromium")
    with Session(
        profile="lang",
        store=store,
        args=["--lang=de-DE"],
        launch_options={"args": ["--accept-lang=de-DE"], "extra_http_headers": {"X-A": "1"}},
    ) as page:
        page.goto(f"{http_server}/")
        assert page.evaluate("navigator.language").startswith("de")


# ------------------------------------------------------------------ overlapped start and end


def test_a_busy_profile_stops_the_playwright_started_beside_it(store: ProfileStore) -> None:
    """The profile is prepared while Playwright starts: when preparing fails, the Playwright
    this session started is stopped again, and the next session starts a new one."""
    from driver.session import _thread_playwright

    require_engine("chromium")
    store.create("busy2")
    with store.lock("busy2"):
        with pytest.raises(ProfileBusy), Session(profile="busy2", store=store, lock_timeout=0.2):
            pass
        assert _thread_playwright.playwright is None and _thread_playwright.users == 0
    with Session(profile="busy2", store=store) as page:
        page.set_content("<title>ok</title>")
    assert store.get("busy2").checksum is not None


class _NoDriver:
    def start(self) -> object:
        raise RuntimeError("the Playwright driver did not start")


class _NoAsyncDriver:
    async def start(self) -> object:
        raise RuntimeError("the Playwright driver did not start")


def test_a_playwright_that_fails_to_start_releases_the_profile(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import driver.session

    monkeypatch.setattr(driver.session, "sync_playwright", _NoDriver)
    with (
        pytest.raises(RuntimeError, match="did not start"),
        Session(profile="nodriver", store=store),
    ):
        pass
    assert store.holder("nodriver") is None
    with store.lock("nodriver", timeout=0):  # nothing holds it
        pass
    assert store.get("nodriver").usage_count == 0


@pytest.mark.asyncio
async def test_an_async_playwright_that_fails_to_start_releases_the_profile(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import driver.session

    monkeypatch.setattr(driver.session, "async_playwright", _NoAsyncDriver)
    with pytest.raises(RuntimeError, match="did not start"):
        async with AsyncSession(profile="nodriver-async", store=store):
            pass
    assert store.holder("nodriver-async") is None
    with store.lock("nodriver-async", timeout=0):
        pass


@pytest.mark.asyncio
async def test_a_busy_profile_stops_the_async_playwright_started_beside_it(
    store: ProfileStore,
) -> None:
    require_engine("chromium")
    store.create("busy3")
    with store.lock("busy3"), pytest.raises(ProfileBusy):
        async with AsyncSession(profile="busy3", store=store, lock_timeout=0.2):
            pass
    async with AsyncSession(profile="busy3", store=store) as page:
        await page.set_content("<title>ok</title>")
    assert store.get("busy3").checksum is not None


def test_sessions_do_not_collect_catalog_connections(store: ProfileStore) -> None:
    """Each session prepares and commits in short-lived threads: their SQLite connections
    are closed when the threads end."""
    require_engine("chromium")
    for _ in range(3):
        with Session(profile="conns", store=store) as page:
            page.set_content("<title>ok</title>")
    catalog = store.catalog
    assert len(catalog._open) <= 2  # type: ignore[attr-defined]
