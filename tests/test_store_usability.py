"""What the store tells a person: close names for a typo, a missing home, who holds a
profile and for how long, and a working-copy cache that does not grow without bound."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
from support.storefaults import chromium_dir, lock_held_elsewhere

from profiles import NotFound, ProfileBusy, ProfileStore
from profiles.state.archive import tree_digest

# ----------------------------------------------------------------------------- typos


def test_not_found_suggests_the_closest_names(store: ProfileStore) -> None:
    store.create("production")
    store.create("staging")
    with pytest.raises(NotFound, match="Did you mean 'production'") as err:
        store.get("prodcution")
    assert err.value.details["suggestions"] == ["production"]
    assert store.similar_names("Production") == ["production"]
    assert store.similar_names("zzz") == []
    with pytest.raises(NotFound, match="profiles list"):
        store.get("completely-different")


# ----------------------------------------------------------------------------- missing home


def test_a_missing_home_is_not_created_for_reads(tmp_path: Path) -> None:
    typo = tmp_path / "porfiles"
    with pytest.raises(NotFound, match=str(typo)) as err:
        ProfileStore(typo, create=False)
    assert err.value.details["resource"] == "store"
    assert not typo.exists()
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(NotFound, match="no catalog"):
        ProfileStore(empty, create=False)
    assert list(empty.iterdir()) == []
    with ProfileStore(typo) as created:  # writers still create it
        created.create("first")
    with ProfileStore(typo, create=False) as reader:
        assert reader.get("first").name == "first"


def test_a_new_home_named_explicitly_is_created_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def warnings() -> list[str]:
        found = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "did not exist" in r.getMessage()
        ]
        caplog.clear()
        return found

    caplog.set_level(logging.WARNING, logger="profiles.store")
    typo = tmp_path / "porfiles"
    with ProfileStore(typo):  # by argument
        pass
    [said] = warnings()
    assert str(typo) in said and "the home argument" in said and "check the path" in said
    with ProfileStore(typo):  # the second time it is a store: quiet
        pass
    assert warnings() == []
    env_typo = tmp_path / "env-porfiles"
    monkeypatch.setenv("PROFILES_HOME", str(env_typo))
    with ProfileStore():  # by $PROFILES_HOME
        pass
    [said] = warnings()
    assert str(env_typo) in said and "$PROFILES_HOME" in said
    # The platform's default home is made quietly on first use.
    monkeypatch.delenv("PROFILES_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with ProfileStore() as default:
        assert default.home.is_relative_to(tmp_path / "xdg")
    assert warnings() == []


# ----------------------------------------------------------------------------- holders


def test_a_waiting_writer_says_once_who_holds_the_profile(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.create("contended")
    with (
        lock_held_elsewhere(store.home, "contended") as pid,
        caplog.at_level(logging.WARNING, logger="profiles.workspace.locks"),
    ):
        started = time.monotonic()
        with pytest.raises(ProfileBusy, match=f"pid {pid}"):
            store.lock("contended").acquire(timeout=2.5)
        assert time.monotonic() - started >= 2.5
    notices = [r.getMessage() for r in caplog.records if "waiting for profile" in r.getMessage()]
    assert len(notices) == 1
    assert f"pid {pid}" in notices[0] and "contended" in notices[0]


def test_a_quick_hand_off_says_nothing(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.create("quick")
    lock = store.lock("quick")
    lock.acquire()
    threading.Timer(0.2, lock.release).start()
    with caplog.at_level(logging.WARNING, logger="profiles.workspace.locks"), store.lock("quick"):
        pass
    assert not [r for r in caplog.records if "waiting for profile" in r.getMessage()]


def test_activity_lists_writers_imports_and_readers(store: ProfileStore) -> None:
    store.create("written")
    store.create("imported")
    read = store.create("read")
    assert store.activity() == []
    with (
        lock_held_elsewhere(store.home, "written") as writer,
        lock_held_elsewhere(store.home, "imported", kind="import") as importer,
    ):
        mark = store.reader_mark(read.id)
        assert mark is not None
        try:
            rows = {(a.profile_name, a.kind, a.pid) for a in store.activity()}
            assert rows == {
                ("written", "session", writer),
                ("imported", "import", importer),
                ("read", "readonly", os.getpid()),
            }
            held = store.holder("written")
            assert held is not None and held.pid == writer
            assert "since" in held.describe() and str(writer) in held.describe()
        finally:
            mark.release()
    assert store.activity() == []  # the holders died (killed): nothing stale is listed
    assert store.holder("written") is None


# ----------------------------------------------------------------------------- the cache


def _session(store: ProfileStore, name: str, tmp: Path, seed: int, size: int) -> None:
    lock = store.lock(name)
    lock.acquire()
    try:
        _, work = store.checkout(name, lock=lock)
        chromium_dir(work, payload_bytes=size, seed=seed)
        store.commit_state(name, work)
    finally:
        lock.release()


def test_working_copies_stay_under_the_cache_cap(tmp_path: Path) -> None:
    mib = 1 << 20
    with ProfileStore(tmp_path / "home", cache_max_bytes=int(2.5 * mib)) as store:
        ids = [store.create(f"p{i}").id for i in range(3)]
        for i in range(3):
            _session(store, f"p{i}", tmp_path, seed=i, size=mib)
            time.sleep(0.02)  # distinct last-use times
        kept = {c.profile_id for c in store.working_copies.copies()}
        assert kept == {ids[1], ids[2]}  # the least recently used went first
        assert sum(c.bytes for c in store.working_copies.copies()) <= 2.5 * mib
        # An evicted copy comes back from the committed state, identical.
        expected = tree_digest(store.working_copies.path(ids[2]))
        lock = store.lock("p0")
        with lock:
            _, work = store.checkout("p0", lock=lock)
            assert (work / "Local State").read_text() == '{"seed": 0}'
        # A copy in use is never evicted, whatever the cap.
        with lock_held_elsewhere(store.home, "p2"):
            result = store.prune_cache(0)
        assert ids[2] not in result.removed and set(result.removed) >= {ids[1]}
        assert result.freed_bytes >= mib and result.kept_bytes >= mib
        assert tree_digest(store.working_copies.path(ids[2])) == expected
        assert store.prune_cache(0).removed == [ids[2]]
        assert store.working_copies.copies() == []
