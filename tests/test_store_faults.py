"""Faults and hostile situations around the store: stale reads, killed imports, concurrent
label edits, a full disk, a read-only home, other local users, lock files, names that look
like ids, scratch outside the home. Each test makes its own fault."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.storefaults import chromium_archive, chromium_dir, lock_held_elsewhere, python
from support.waiting import wait_until

from profiles import (
    ArchiveInvalid,
    NotFound,
    ProfileBusy,
    ProfileStore,
    StateCorrupt,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.redact import describe_error, redact_text
from profiles.state.archive import tree_digest
from profiles.workspace.locks import read_holder

AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a tmpfs / bind mount and to switch users"
)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: a disk that fills up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


# ----------------------------------------------------------------------------- stale reads


def test_a_failed_import_settles_the_status_from_what_is_read_under_the_lock(
    store: ProfileStore, tmp_path: Path
) -> None:
    """The import waits for the lock; meanwhile a session commits. The import then fails:
    the profile must stay 'ready' with the state the session committed."""
    store.create("busy")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    lock = store.lock("busy")
    lock.acquire()
    errors: list[BaseException] = []
    asked = threading.Event()

    def importer() -> None:
        try:
            with ProfileStore(store.home) as other:
                take_lock = other.lock

                def lock(*args: Any, **kwargs: Any) -> Any:
                    asked.set()  # the import has read the profile ('empty'): now it waits
                    return take_lock(*args, **kwargs)

                other.lock = lock  # type: ignore[method-assign]
                other.import_state("busy", bad, lock_timeout=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=importer)
    thread.start()
    wait_until(asked.is_set, timeout=30, what="the import to ask for the writer lock")
    committed = store.commit_state("busy", chromium_dir(tmp_path / "session"))
    lock.release()
    thread.join(30)
    assert errors and isinstance(errors[0], ArchiveInvalid)
    after = store.get("busy")
    assert after.status == "ready"
    assert after.checksum == committed.checksum
    assert store.export_state("busy", tmp_path / "out.tar.gz") > 0


# ----------------------------------------------------------------------------- killed imports

_KILLED_IMPORT = """
import os, signal, sys, time
from profiles import ProfileStore
home, archive, after = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = ProfileStore(home)
started = time.monotonic()
def progress(done):
    if time.monotonic() - started >= after:
        os.kill(os.getpid(), signal.SIGKILL)
print("start", flush=True)
store.import_state("victim", archive, progress=progress)
print("finished", flush=True)
"""


def test_a_killed_import_leaves_the_committed_state_readable_and_scratch_swept(
    store: ProfileStore, tmp_path: Path
) -> None:
    first = store.create("victim")
    archive = chromium_archive(tmp_path / "big.tar.gz", tmp_path / "big", payload_bytes=24 << 20)
    store.commit_state("victim", chromium_dir(tmp_path / "small", seed=1))
    rng = random.Random(8)
    for _ in range(4):  # SIGKILL at random points of the import
        before = store.get("victim")
        child = python(_KILLED_IMPORT, str(store.home), str(archive), f"{rng.uniform(0, 0.4)}")
        out, err = child.communicate(timeout=120)
        if "finished" in out:  # the import won the race
            continue
        assert child.returncode == -signal.SIGKILL, err
        # What every reader sees straight away, before any repair:
        seen = store.get("victim")
        assert seen.status == "ready" and seen.checksum == before.checksum
        assert store.list().data[0].status == "ready"
        assert store.export_state("victim", tmp_path / "out.tar.gz") > 0
        clone = store.clone("victim", with_state=True)
        assert clone.status == "ready" and clone.checksum == before.checksum
        store.delete(clone.id)
    assert first.id == store.get("victim").id
    # Left-overs of the dead imports are swept by the next store to open the home.
    with ProfileStore(store.home):
        pass
    assert not [p.name for p in (store.home / "tmp").iterdir()]
    assert not list((store.home / "blobs" / "tmp").iterdir())
    assert not [n for n in os.listdir(store.home / "work") if n.startswith(".")]


def test_sweeping_leaves_the_scratch_of_a_live_import_alone(
    store: ProfileStore, tmp_path: Path
) -> None:
    store.create("slow")
    archive = chromium_archive(tmp_path / "a.tar.gz", tmp_path / "a", payload_bytes=8 << 20)
    code = """
    import sys
    from profiles import ProfileStore
    store = ProfileStore(sys.argv[1])
    said = []
    def progress(done):
        if not said:
            said.append(1)
            print("importing", flush=True)
            sys.stdin.readline()  # until the test has looked
    store.import_state("slow", sys.argv[2], progress=progress)
    print("done", flush=True)
    """
    child = python(code, str(store.home), str(archive), stdin=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "importing"
    assert store.get("slow").status == "uploading"  # a live import is visible
    assert store.holder("slow") is not None and store.holder("slow").kind == "import"  # type: ignore[union-attr]
    assert store.sweep_scratch() == []
    out, err = child.communicate("go on\n", timeout=60)
    assert "done" in out, err
    assert store.get("slow").status == "ready"


# ----------------------------------------------------------------------------- labels

_LABELER = """
import sys
from profiles import ProfileStore
with ProfileStore(sys.argv[1]) as store:
    store.update("shared", add_labels={sys.argv[2]: "yes"})
"""


def test_concurrent_label_edits_all_survive(store: ProfileStore) -> None:
    store.create("shared", labels={"keep": "me"})
    children = [python(_LABELER, str(store.home), f"k{i}") for i in range(16)]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    labels = store.get("shared").labels
    assert labels == {"keep": "me", **{f"k{i}": "yes" for i in range(16)}}
    updated = store.update("shared", remove_labels=["k0", "k1", "absent"], add_labels={"k2": "no"})
    assert "k0" not in updated.labels and updated.labels["k2"] == "no"
    with pytest.raises(ValidationFailed):
        store.update("shared", remove_labels="k3")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- a full disk


@ROOT_ONLY
def test_a_full_disk_is_storage_unavailable_and_keeps_the_last_state(
    small_disk: Path, tmp_path: Path
) -> None:
    home = small_disk / "home"
    store = ProfileStore(home)
    store.create("kept")
    first = chromium_dir(tmp_path / "one", seed=1)
    digest = tree_digest(first)
    good = store.commit_state("kept", first)
    filler = _fill(small_disk)
    try:
        for attempt in (
            lambda: store.create("new"),
            lambda: store.snapshot("kept"),
            lambda: store.commit_state(
                "kept", chromium_dir(tmp_path / "two", seed=2, payload_bytes=1 << 20)
            ),
            lambda: store.import_state(
                "kept",
                chromium_archive(tmp_path / "x.tar.gz", tmp_path / "x", payload_bytes=1 << 20),
            ),
            lambda: store.update("kept", description="more"),
        ):
            with pytest.raises(StorageUnavailable) as err:
                attempt()
            assert str(home) in err.value.message and err.value.home == str(home)
            assert err.value.cause
    finally:
        filler.unlink()
    after = store.get("kept")
    assert after.checksum == good.checksum and after.status == "ready"
    store.export_state("kept", tmp_path / "back.tar.gz")
    restored = tmp_path / "restored"
    from profiles.state.archive import unpack_archive

    unpack_archive(tmp_path / "back.tar.gz", restored)
    assert tree_digest(restored) == digest
    store.close()


# ----------------------------------------------------------------------------- read-only home


@ROOT_ONLY
def test_a_read_only_home_serves_reads_and_refuses_writes_clearly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ProfileStore(home) as store:
        store.create("readable", description="kept")
        store.commit_state("readable", chromium_dir(tmp_path / "state"))
        store.snapshot("readable")
    view = tmp_path / "view"
    view.mkdir()
    _mount("--bind", str(home), str(view))
    try:
        _mount("-o", "remount,bind,ro", str(view))
        with ProfileStore(view) as ro:
            assert ro.read_only
            assert ro.get("readable").description == "kept"
            assert [p.name for p in ro.list().data] == ["readable"]
            assert ro.audit(profile="readable").data
            assert ro.snapshots("readable").data
            assert ro.export_state("readable", tmp_path / "out.tar.gz") > 0
            copy = tmp_path / "private" / "state"
            ro.private_copy("readable", copy)
            assert (copy / "Local State").is_file()
            for write in (
                lambda: ro.create("nope"),
                lambda: ro.update("readable", description="x"),
                lambda: ro.lock("readable").acquire(timeout=0),
            ):
                with pytest.raises(StorageUnavailable, match=r"read-only|Read-only"):
                    write()
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


# ----------------------------------------------------------------------------- other users


def _everything_under(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def test_the_home_and_everything_under_it_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = tmp_path / "home"
        with ProfileStore(home) as store:
            store.create("private")
            work = store.working_copies.path(store.get("private").id)
            lock = store.lock("private")
            lock.acquire()
            _, work = store.checkout("private", lock=lock)
            chromium_dir(work)  # what a browser writes under umask 022: 0644 files, 0755 dirs
            (work / "Default" / "Cookies").write_bytes(b"secret")
            os.chmod(work / "Default", 0o755)
            store.commit_state("private", work)
            lock.release()
            store.snapshot("private")
            with store.catalog.transaction(write=False):
                pass
        loose = [
            (str(p.relative_to(tmp_path)), oct(p.lstat().st_mode & 0o777))
            for p in _everything_under(home)
            if p.lstat().st_mode & 0o077
        ]
        assert loose == []
    finally:
        os.umask(old)


@ROOT_ONLY
def test_another_local_user_cannot_read_cookies_or_take_locks(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    with ProfileStore(home) as store:
        profile = store.create("mine")
        store.commit_state("mine", chromium_dir(tmp_path / "s"))
        lock_path = home / "locks" / f"{profile.id}.lock"
        lock = store.lock("mine")
        lock.acquire()
        lock.release()
    targets = [home / "catalog.sqlite3", lock_path, home / "work", home / "blobs"]
    for target in targets:
        nobody = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "ls",
                "-la",
                str(target),
            ],
            capture_output=True,
            text=True,
        )
        assert nobody.returncode != 0, f"another user could read {target}: {nobody.stdout}"
    grab = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-n",
            str(lock_path),
            "true",
        ],
        capture_output=True,
        text=True,
    )
    assert grab.returncode != 0


def test_a_home_readable_by_others_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "open-home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="profiles.store"), ProfileStore(home):
        pass
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- lock files


def test_holder_information_comes_from_the_current_holder(store: ProfileStore) -> None:
    profile = store.create("held")
    lock_path = store.home / "locks" / f"{profile.id}.lock"
    with lock_held_elsewhere(store.home, "held") as pid:
        holder = store.holder("held")
        assert holder is not None and holder.pid == pid and holder.kind == "session"
        with pytest.raises(ProfileBusy, match=f"pid {pid}") as err:
            store.lock("held").acquire(timeout=0.1)
        assert err.value.details["holder"]["pid"] == pid
        assert stat.S_IMODE(lock_path.stat().st_mode) == 0o600
    # The holder died (killed): nothing it wrote is shown as a holder any more.
    assert store.holder("held") is None
    lock_path.write_text(
        '{"kind": "session", "host": "x", "pid": 1, "since": "2020-01-01T00:00:00Z"}'
    )
    assert read_holder(lock_path) is None
    lock = store.lock("held")
    lock.acquire(timeout=1)
    assert store.holder("held") is not None and store.holder("held").pid == os.getpid()  # type: ignore[union-attr]
    lock.release()
    assert store.holder("held") is None


def test_deleting_a_profile_removes_its_lock_file(store: ProfileStore) -> None:
    profile = store.create("gone")
    with store.lock("gone"):
        pass
    store.delete("gone")
    assert not (store.home / "locks" / f"{profile.id}.lock").exists()


# ----------------------------------------------------------------------------- names and ids


@pytest.mark.parametrize(
    "name",
    ["prof_0b8c4f7e-8d1e-4c55-9d7a-5b3a2c1d0e9f", "psnap_1234abcd", "evt_00000000-0000"],
)
def test_a_name_that_looks_like_an_id_is_refused(store: ProfileStore, name: str) -> None:
    with pytest.raises(ValidationFailed, match="looks like an id"):
        store.create(name)
    store.create("ok")
    with pytest.raises(ValidationFailed, match="looks like an id"):
        store.update("ok", name=name)


def test_deleting_by_a_name_never_hits_another_profiles_id(store: ProfileStore) -> None:
    victim = store.create("victim")
    with pytest.raises(ValidationFailed):
        store.create(victim.id)
    with pytest.raises(NotFound):
        store.delete("prof_does-not-exist")
    assert store.get("victim").id == victim.id


# ----------------------------------------------------------------------------- scratch


def test_commits_and_imports_keep_their_scratch_inside_the_home(
    store: ProfileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system temp directory is missing: anything that tries to use it fails loudly.
    system_tmp = tmp_path / "no-system-tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    store.create("scratchy")
    src = chromium_dir(tmp_path / "s")
    # A real cookie database, so that reading cookie domains has something to copy.
    import sqlite3

    with sqlite3.connect(src / "Default" / "Cookies") as db:
        db.execute("CREATE TABLE cookies (host_key TEXT)")
        db.execute("INSERT INTO cookies VALUES ('.example.com')")
    db.close()
    profile = store.commit_state("scratchy", src)
    assert profile.cookie_domains == ["example.com"]
    archive = tmp_path / "a.tar.gz"
    store.export_state("scratchy", archive)
    store.import_state("scratchy", archive)
    assert not system_tmp.exists()
    assert list((store.home / "tmp").iterdir()) == []


# ----------------------------------------------------------------------------- redaction


def test_error_text_is_redacted_before_it_is_kept() -> None:
    exc = RuntimeError(
        "page.goto: net::ERR_CONNECTION_REFUSED at "
        "https://alice:pw@login.example.com/cb?code=abc123&token=s3cr3t#frag\n"
        "Call log: navigating to https://login.example.com/cb?code=abc123"
    )
    text = describe_error(exc)
    assert text.startswith("RuntimeError: page.goto: net::ERR_CONNECTION_REFUSED")
    assert "login.example.com/cb" in text
    for secret in ("abc123", "s3cr3t", "alice", "pw@", "frag", "Call log"):
        assert secret not in text
    assert "\x1b" not in redact_text("name\x1b[31m=x")
    assert "hunter2" not in redact_text("password=hunter2 and Cookie: sid=xyz")
    assert "xyz" not in redact_text("password=hunter2 and Cookie: sid=xyz")
    assert len(redact_text("a" * 10_000)) <= 500


@pytest.mark.parametrize(
    "text",
    ["x" * 300_000, "a." * 150_000, "a1" * 150_000, "token" * 60_000, "a-token" * 40_000 + "="],
)
def test_redaction_takes_time_linear_in_the_text(text: str) -> None:
    """A client's audit text reaches the redaction (issue 20, hole 4): 300 KB of it took
    minutes when a pattern scanned a run again from each of its positions."""
    started = time.perf_counter()
    redact_text(text)
    assert time.perf_counter() - started < 2.0


def test_store_errors_never_escape_as_raw_os_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ProfileStore(home) as store:
        store.create("p")
        good = store.commit_state("p", chromium_dir(tmp_path / "s"))
        objects = home / "blobs" / "sha256"
        shutil.rmtree(objects)
        with pytest.raises(StateCorrupt, match=r"'p'.*missing"):
            store.export_state("p", tmp_path / "o.tar.gz")
        objects.write_text("not a directory")  # every new blob now fails with an OSError
        with pytest.raises(StorageUnavailable, match=str(home)):
            store.commit_state("p", chromium_dir(tmp_path / "t", seed=3))
        assert store.get("p").checksum == good.checksum
