"""The documented profile and snapshot semantics of ProfileStore (no browser needed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import driver
import profiles
from profiles import (
    Conflict,
    NotFound,
    ProfileError,
    ProfileStore,
    TierLimit,
    ValidationFailed,
)
from profiles.catalog.sqlite import MIGRATIONS, SQLiteCatalog
from profiles.models import Profile, new_id, utcnow
from profiles.state.archive import pack_dir
from profiles.validation import check_name

# The behaviour suite runs on every backend: embedded, PostgreSQL + S3, and HTTP.
pytestmark = pytest.mark.backends()


def _chromium_dir(root: Path, marker: str = "1") -> Path:
    """A directory laid out as a Chromium user-data-dir (its files, written as data)."""
    (root / "Default").mkdir(parents=True)
    (root / "Local State").write_text(json.dumps({"marker": marker}))
    (root / "Last Version").write_text("156.0.0.0")
    (root / "Default" / "Preferences").write_text("{}")
    return root


# ---------------------------------------------------------------------------- records


def test_create_returns_the_documented_record(store: ProfileStore) -> None:
    p = store.create("production", description="prod scrape", labels={"team": "data"})
    assert p.id.startswith("prof_") and len(p.id) == 5 + 36
    assert (p.archetype, p.browser_name, p.browser_version) == (
        "desktop-chromium",
        "chromium",
        None,
    )
    assert (p.status, p.blob_size, p.checksum, p.usage_count) == ("empty", None, None, 0)
    assert p.created_at.tzinfo is not None and p.created_at == p.updated_at
    body = json.loads(p.model_dump_json())
    assert body["created_at"].endswith("Z") and body["last_used_at"] is None
    assert store.get("production") == p == store.get(p.id)


def test_archetypes_pin_the_engine(store: ProfileStore) -> None:
    assert store.create("f", archetype="desktop-firefox").browser_name == "firefox"
    assert store.create("w", archetype="desktop-webkit").browser_name == "webkit"
    assert store.create("i", archetype="iphone-15-pro").browser_name == "webkit"
    assert store.create("a", archetype="pixel-7").browser_name == "chromium"
    with pytest.raises(ValidationFailed, match="iphone-15-pro") as err:
        store.create("x", archetype="iphone-15-por")
    assert err.value.details["suggestions"][0] == "iphone-15-pro"


def test_the_archetype_is_sticky(store: ProfileStore) -> None:
    store.create("pinned", archetype="pixel-7")
    with pytest.raises(ValidationFailed, match="clone") as err:
        store.update("pinned", archetype="desktop-chromium")
    assert err.value.field == "archetype"
    assert store.update("pinned", archetype="pixel-7").archetype == "pixel-7"  # no change: fine


def test_update_changes_only_what_is_passed(store: ProfileStore) -> None:
    p = store.create("edit", description="before", labels={"a": "1"})
    renamed = store.update("edit", name="edited")
    assert (renamed.name, renamed.description, renamed.labels) == ("edited", "before", {"a": "1"})
    assert renamed.updated_at > p.updated_at
    assert store.update(p.id, description=None).description is None
    assert store.update(p.id, labels={"b": "2"}).labels == {"b": "2"}
    assert store.update(p.id).updated_at == store.get(p.id).updated_at  # nothing passed
    store.create("other")
    with pytest.raises(Conflict):
        store.update(p.id, name="other")
    events = [e.type for e in store.audit(profile=p.id).data]
    assert events == ["profile.updated"] * 3 + ["profile.created"]


def test_delete_twice_is_not_found(store: ProfileStore) -> None:
    p = store.create("gone")
    store.delete("gone")
    with pytest.raises(NotFound) as err:
        store.delete(p.id)
    assert err.value.status == 404 and err.value.code == "NotFound"
    assert [e.type for e in store.audit(profile=p.id).data] == [
        "profile.deleted",
        "profile.created",
    ]


def test_an_export_is_in_the_audit_log(store: ProfileStore, tmp_path: Path) -> None:
    store.create("exported")
    archive = tmp_path / "in.tar.gz"
    with archive.open("wb") as out:
        pack_dir(_chromium_dir(tmp_path / "src"), out, engine="chromium", codec="gzip")
    state = store.import_state("exported", archive).checksum
    written = store.export_state("exported", tmp_path / "out.tar.gz")
    [event] = [e for e in store.audit(profile="exported").data if e.type == "state.exported"]
    assert event.payload == {
        "codec": "gzip",
        "bytes": written,
        "to": "file",
        "state_checksum": state,
    }
    assert str(tmp_path) not in json.dumps(event.payload)  # no path of this machine


# ---------------------------------------------------------------------------- validation

HOSTILE_NAMES = [
    "",
    "x" * 65,
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "carriage\rreturn",
    "space here",
    "nbsp\u00a0here",
    "em\u2003space",
    "ideographic\u3000space",
    "line\u2028separator",
    "zero\u200bwidth",
    "bidi\u202eoverride",
    "bell\x07",
    "del\x7f",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_are_refused(store: ProfileStore, name: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        store.create(name)
    assert err.value.status == 400 and err.value.field == "name"
    assert store.list().data == []


@pytest.mark.parametrize("bad", [None, 42, b"bytes"])
def test_non_string_names_are_refused(store: ProfileStore, bad: object) -> None:
    with pytest.raises(ValidationFailed):
        store.create(bad)  # type: ignore[arg-type]


def test_limits_on_names_descriptions_and_labels(store: ProfileStore) -> None:
    assert store.create("x" * 64).name == "x" * 64
    assert store.create("café-日本-Ω").name == "café-日本-Ω"
    assert store.create("d", description="d" * 2048).description == "d" * 2048
    with pytest.raises(ValidationFailed, match="2049"):
        store.create("e", description="d" * 2049)
    with pytest.raises(ValidationFailed, match="at most 32"):
        store.create("f", labels={f"k{i}": "v" for i in range(33)})
    with pytest.raises(ValidationFailed, match="Label key"):
        store.create("g", labels={"has space": "v"})
    with pytest.raises(ValidationFailed, match="256"):
        store.create("h", labels={"k": "v" * 257})
    with pytest.raises(ValidationFailed):
        store.create("i", labels={"k": 1})  # type: ignore[dict-item]


NAME_CHARS = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
)


@pytest.fixture(scope="module")
def names_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileStore]:
    """One embedded store for the examples of a property: each leaves it as it found it."""
    with ProfileStore(tmp_path_factory.mktemp("names")) as store:
        yield store


@settings(max_examples=200)
@given(
    name=st.text(NAME_CHARS, min_size=1, max_size=64).filter(
        lambda s: (
            not any(c.isspace() for c in s)
            and not re.fullmatch(r"(prof|psnap|evt)_[0-9A-Fa-f-]+", s)
        )
    )
)
def test_any_printable_name_round_trips(names_store: ProfileStore, name: str) -> None:
    assert names_store.list().data == []  # the store holds no other profile
    created = names_store.create(name)
    try:
        assert names_store.get(name) == created
        assert names_store.get(created.id).name == name
    finally:
        names_store.delete(created.id)


@given(
    prefix=st.text(NAME_CHARS, max_size=20),
    bad=st.sampled_from([" ", "\t", "\n", "\x00", "\u00a0", "\u2028", "\u3000", "\x1b", "\u200b"]),
    suffix=st.text(NAME_CHARS, max_size=20),
)
def test_any_name_with_whitespace_or_control_is_refused(prefix: str, bad: str, suffix: str) -> None:
    with pytest.raises(ValidationFailed):
        check_name(prefix + bad + suffix)


# ---------------------------------------------------------------------------- pagination


@pytest.mark.parametrize("limit", [0, 101, -1, True, 2.5, "10"])
def test_limit_must_be_1_to_100(store: ProfileStore, limit: object) -> None:
    with pytest.raises(ValidationFailed, match="1 to 100"):
        store.list(limit=limit)  # type: ignore[arg-type]


def test_pages_are_ordered_and_stable_across_inserts(store: ProfileStore) -> None:
    originals = [store.create(f"p{i:03d}").id for i in range(250)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(limit=40, cursor=cursor)
        pages += 1
        seen.extend(p.id for p in page.data)
        store.create(f"new-{pages}")  # inserted between pages: must not shift the walk
        if not page.has_more:
            assert page.next_cursor is None
            break
        assert page.next_cursor == page.data[-1].id
        cursor = page.next_cursor
    assert seen == list(reversed(originals))
    assert pages == 7
    newest_first = store.list(limit=100).data
    keys = [(p.created_at, p.id) for p in newest_first]
    assert keys == sorted(keys, reverse=True)


def test_a_cursor_to_a_deleted_record_says_to_restart(store: ProfileStore) -> None:
    for i in range(5):
        store.create(f"c{i}")
    page = store.list(limit=2)
    assert page.next_cursor is not None
    store.delete(page.next_cursor)
    with pytest.raises(ValidationFailed, match="start again"):
        store.list(limit=2, cursor=page.next_cursor)


# ---------------------------------------------------------------------------- caps


def test_tier_limit_on_create_clone_and_restore(home: Path) -> None:
    store = ProfileStore(home, max_profiles=2)
    store.create("one")
    snap = store.snapshot("one")
    store.create("two")
    for attempt in (
        lambda: store.create("three"),
        lambda: store.clone("one"),
        lambda: store.restore(snap.id),
    ):
        with pytest.raises(TierLimit) as err:
            attempt()
        assert err.value.status == 429
        assert err.value.to_dict() | {"message": ""} == {
            "code": "TierLimit",
            "status": 429,
            "message": "",
            "limit": 2,
            "current": 2,
            "resource": "profile",
            "tier": "local",
        }
    assert [p.name for p in store.list().data] == ["two", "one"]
    store.close()


# ---------------------------------------------------------------------------- clone


def test_clone_copies_metadata_not_state(store: ProfileStore, tmp_path: Path) -> None:
    source = store.create("src", archetype="pixel-7", description="d", labels={"k": "v"})
    store.commit_state("src", _chromium_dir(tmp_path / "state"))
    copy = store.clone("src")
    assert (copy.name, copy.archetype, copy.description, copy.labels) == (
        "src-copy",
        "pixel-7",
        "d",
        {"k": "v"},
    )
    assert (copy.status, copy.checksum) == ("empty", None)
    created = store.audit(profile=copy.id).data[0]
    assert created.payload["cloned_from"] == source.id
    full = store.clone("src", name="with-state", with_state=True)
    assert full.status == "ready" and full.checksum == store.get("src").checksum
    with pytest.raises(Conflict):
        store.clone("src", name="with-state")
    with pytest.raises(ValidationFailed, match="firefox"):
        store.clone("src", archetype="desktop-firefox", with_state=True)
    repinned = store.clone("src", name="repinned", archetype="desktop-firefox")
    assert repinned.browser_name == "firefox"
    with pytest.raises(NotFound):
        store.clone("missing")


def test_clone_names_count_up_to_99_then_conflict(store: ProfileStore) -> None:
    store.create("base")
    names = [store.clone("base").name for _ in range(99)]
    assert names[:3] == ["base-copy", "base-copy-2", "base-copy-3"]
    assert names[-1] == "base-copy-99"
    with pytest.raises(Conflict, match="-copy-99"):
        store.clone("base")


def test_derived_names_fit_64_characters(store: ProfileStore) -> None:
    long = "n" * 64
    store.create(long)
    first, second = store.clone(long), store.clone(long)
    assert first.name == "n" * 59 + "-copy" and len(first.name) == 64
    assert second.name == "n" * 57 + "-copy-2" and len(second.name) == 64


# ---------------------------------------------------------------------------- snapshots


def test_snapshots_are_frozen_and_survive_the_parent(store: ProfileStore, tmp_path: Path) -> None:
    parent = store.create("parent", archetype="desktop-firefox", description="first")
    snap = store.snapshot("parent", label="before-rollout", description="kept")
    assert snap.id.startswith("psnap_")
    assert (snap.parent_profile_id, snap.parent_name, snap.parent_archetype) == (
        parent.id,
        "parent",
        "desktop-firefox",
    )
    store.update("parent", name="renamed", description="changed")
    assert store.get_snapshot(snap.id) == snap
    store.delete("renamed")
    orphan = store.get_snapshot(snap.id)
    assert orphan.parent_profile_id is None and orphan.parent_name == "parent"

    restored = store.restore(snap.id)
    assert (restored.name, restored.archetype, restored.description) == (
        "parent-restored",
        "desktop-firefox",
        "kept",
    )
    assert store.audit(profile=restored.id).data[0].payload["restored_from_snapshot"] == snap.id
    assert store.restore(snap.id).name == "parent-restored-2"
    assert store.restore(snap.id, name="explicit").name == "explicit"
    with pytest.raises(Conflict):
        store.restore(snap.id, name="explicit")


def test_snapshot_holds_the_state_at_capture(store: ProfileStore, tmp_path: Path) -> None:
    store.create("live")
    first = store.commit_state("live", _chromium_dir(tmp_path / "a", "first")).checksum
    snap = store.snapshot("live")
    second = store.commit_state("live", _chromium_dir(tmp_path / "b", "second")).checksum
    assert first != second and snap.checksum == first
    restored = store.restore(snap.id)
    assert restored.checksum == first and restored.status == "ready"
    assert store.get("live").checksum == second  # the parent is never touched


def test_snapshot_listing_and_deletion(store: ProfileStore) -> None:
    store.create("a")
    store.create("b")
    ids = [store.snapshot("a").id, store.snapshot("b").id, store.snapshot("a").id]
    assert [s.id for s in store.snapshots("a").data] == [ids[2], ids[0]]
    assert [s.id for s in store.snapshots().data] == list(reversed(ids))
    page = store.snapshots(limit=2)
    assert page.has_more and page.next_cursor == ids[1]
    assert [s.id for s in store.snapshots(limit=2, cursor=page.next_cursor).data] == [ids[0]]
    store.delete_snapshot(ids[0])
    with pytest.raises(NotFound):
        store.get_snapshot(ids[0])
    with pytest.raises(NotFound):
        store.delete_snapshot(ids[0])
    with pytest.raises(NotFound):
        store.restore(ids[0])
    with pytest.raises(ValidationFailed):
        store.snapshot("a", label="x" * 129)
    types = [e.type for e in store.audit(limit=3).data]
    assert types == ["snapshot.deleted", "snapshot.created", "snapshot.created"]


# ---------------------------------------------------------------------------- catalog


def test_catalog_schema_and_pragmas(home: Path) -> None:
    ProfileStore(home).close()
    conn = sqlite3.connect(home / "catalog.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(ProfileError, match="Upgrade playwright-profiles"):
        SQLiteCatalog(home / "catalog.sqlite3")


def test_a_reopened_store_keeps_everything(home: Path) -> None:
    with ProfileStore(home) as store:
        p = store.create("kept", labels={"a": "b"})
        store.snapshot("kept")
    with ProfileStore(home) as store:
        assert store.get("kept") == p
        assert len(store.snapshots("kept").data) == 1


def test_a_failed_transaction_leaves_nothing(local_store: ProfileStore) -> None:
    now = utcnow()
    with pytest.raises(RuntimeError), local_store.catalog.transaction() as tx:
        tx.insert_profile(
            Profile(
                id=new_id("prof"),
                name="half",
                archetype="desktop-chromium",
                browser_name="chromium",
                created_at=now,
                updated_at=now,
            )
        )
        raise RuntimeError("crash between steps")
    with pytest.raises(NotFound):
        local_store.get("half")


CRASHING_CHILD = textwrap.dedent(
    """
    import os, sys
    from profiles import ProfileStore
    from profiles.catalog.sqlite import _SQLiteTransaction
    store = ProfileStore(sys.argv[1])
    def die(self, event):
        os._exit(9)  # the profile row is written, its event not yet: the process dies
    _SQLiteTransaction.insert_event = die
    store.create("half-made")
    """
)


def test_a_crash_inside_a_transaction_leaves_no_half_record(home: Path) -> None:
    ProfileStore(home).close()
    child = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(home)], check=False)
    assert child.returncode == 9
    with ProfileStore(home) as store:
        with pytest.raises(NotFound):
            store.get("half-made")
        assert store.create("half-made").name == "half-made"  # and the store still works


def _create_forever(home: str) -> None:
    store = ProfileStore(home)
    i = 0
    while True:
        store.create(f"loop-{os.getpid()}-{i}")
        i += 1


def test_sigkill_during_creates_keeps_the_catalog_whole(home: Path) -> None:
    ProfileStore(home).close()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_create_forever, args=(str(home),))
    proc.start()
    with ProfileStore(home) as store:
        while len(store.list(limit=100).data) < 30:
            pass
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    conn = sqlite3.connect(home / "catalog.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with ProfileStore(home) as store:
        profiles_ = list(store.iter_profiles())
        created = {e.profile_id for e in store.audit(limit=100).data}
        cursor = None
        while True:
            page = store.audit(limit=100, cursor=cursor)
            created |= {e.profile_id for e in page.data if e.type == "profile.created"}
            if not page.has_more:
                break
            cursor = page.next_cursor
        assert len(profiles_) >= 30
        assert {p.id for p in profiles_} <= created


def _insert_many(home: str, tag: str) -> None:
    store = ProfileStore(home)
    for i in range(200):
        store.create(f"{tag}-{i}")
    store.close()


def test_two_processes_write_concurrently(home: Path) -> None:
    ProfileStore(home).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_insert_many, args=(str(home), tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with ProfileStore(home) as store:
        assert len(list(store.iter_profiles())) == 400


# ---------------------------------------------------------------------------- exports


def test_exported_members() -> None:
    assert sorted(profiles.__all__) == sorted(
        [
            "DEFAULT_ARCHETYPE",
            "ENGINES",
            "UNSET",
            "Archetype",
            "ArchiveInvalid",
            "ArchiveLimits",
            "AuditEvent",
            "AuthFailed",
            "BrowserDowngrade",
            "BrowserNotFound",
            "ChecksumMismatch",
            "Codec",
            "Conflict",
            "Engine",
            "Forbidden",
            "LeaseLost",
            "LinkExpired",
            "NavigationFailed",
            "NoStateData",
            "NotFound",
            "Page",
            "PendingConflict",
            "Profile",
            "ProfileBusy",
            "ProfileError",
            "ProfileStore",
            "RateLimited",
            "SignatureInvalid",
            "Snapshot",
            "StateCommitFailed",
            "StateCorrupt",
            "StorageUnavailable",
            "TierLimit",
            "Unauthorized",
            "ValidationFailed",
            "__version__",
            "all_archetypes",
            "default_home",
            "get_archetype",
        ]
    )
    assert sorted(driver.__all__) == sorted(
        [
            "AsyncRemoteSession",
            "AsyncSession",
            "BrowserDowngrade",
            "BrowserInstall",
            "BrowserNotFound",
            "ProfileBusy",
            "ProfileError",
            "RemoteSession",
            "Session",
            "find_browser",
        ]
    )
    for module in (profiles, driver):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (profiles.ProfileError, "ProfileError", 500),
        (profiles.ValidationFailed, "ValidationFailed", 400),
        (profiles.ArchiveInvalid, "ArchiveInvalid", 400),
        (profiles.ChecksumMismatch, "ChecksumMismatch", 400),
        (profiles.NoStateData, "NoStateData", 400),
        (profiles.NotFound, "NotFound", 404),
        (profiles.Conflict, "Conflict", 409),
        (profiles.ProfileBusy, "ProfileBusy", 409),
        (profiles.LeaseLost, "LeaseLost", 409),
        (profiles.PendingConflict, "PendingConflict", 409),
        (profiles.BrowserDowngrade, "BrowserDowngrade", 409),
        (profiles.TierLimit, "TierLimit", 429),
        (profiles.BrowserNotFound, "BrowserNotFound", 503),
        (profiles.StateCommitFailed, "StateCommitFailed", 500),
        (profiles.StorageUnavailable, "StorageUnavailable", 503),
        (profiles.StateCorrupt, "StateCorrupt", 500),
    ],
)
def test_error_tree(error: type[ProfileError], code: str, status: int) -> None:
    assert issubclass(error, ProfileError)
    assert (error.code, error.status) == (code, status)
    assert f"{code}" in (profiles.errors.__doc__ or "")


def test_the_profiles_package_does_not_import_playwright() -> None:
    """profiles/ is the metadata and state layer: it must load where no browser runs."""
    code = (
        "import sys, profiles, profiles.cli.main, profiles.store, profiles.state.archive; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('playwright', 'driver')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
