"""The behaviour suite every :class:`~profiles.service.protocol.ProfileService` must pass.

Subclass :class:`ServiceContract` in a test module (name the subclass ``Test...``) and give
it a ``service`` fixture that yields a fresh, empty service (closed afterwards)::

    class TestMyService(ServiceContract):
        @pytest.fixture
        def service(self, tmp_path):
            svc = CatalogService(SQLiteCatalog(tmp_path / "c.sqlite3"),
                                 LocalBlobStore(tmp_path / "blobs"))
            yield svc
            svc.close()

The suite speaks only the protocol: records, snapshots, the audit log, state committed with
:meth:`~ProfileService.commit_archive` (a spooled archive and a :class:`StateUpdate`) and read
back with :meth:`~ProfileService.open_state`, and writer leases with epoch fencing. Errors
must be the same classes on every backend (``NotFound``, ``Conflict``, ``ValidationFailed``,
``LeaseLost``, ``NoStateData``), with the same ``field``/``resource`` details.

Where the protocol lets backends differ, the suite checks the documented rule, and a
subclass says which side it is on with a class attribute:

``keeps_archives``
    ``True`` (the default) when the service stores a committed archive as it was sent: the
    record's checksum is the one announced and :meth:`open_state` gives back those very
    bytes. ``False`` for a service that may store the state in its own form (a server that
    unpacks and chunks it): then the record names the state it stored, and what
    :meth:`open_state` gives is an archive of the same files.

States are tiny Chromium-shaped directories; no browser runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from profiles.catalog.base import StateUpdate
from profiles.errors import (
    Conflict,
    LeaseLost,
    NoStateData,
    NotFound,
    ProfileError,
    ValidationFailed,
)
from profiles.models import AuditEvent, Holder, Page, Profile, Snapshot, utcnow
from profiles.service.protocol import ProfileService
from profiles.state.archive import pack_dir, tree_digest, unpack_archive

__all__ = ["CommittedState", "ServiceContract", "make_state"]

BROWSER_VERSION = "131.0.6778.85"


@dataclass(frozen=True)
class CommittedState:
    """An archive for :meth:`ProfileService.commit_archive`, and what it holds."""

    data: bytes
    update: StateUpdate
    files: dict[str, str]  # relpath -> sha256 of every file the archive holds
    root: Path

    @property
    def spool(self) -> Path:
        """A new spool file of the archive: a service may take the one it is given
        (move it into its store)."""
        path = self.root / f"spool-{uuid.uuid4().hex}"
        path.write_bytes(self.data)
        return path


def make_state(root: Path, marker: str = "1", *, payload: bytes = b"") -> CommittedState:
    """A small Chromium-shaped user-data-dir under ``root``, packed (gzip) into a spool."""
    root.mkdir(parents=True, exist_ok=True)
    source = root / f"state-{uuid.uuid4().hex[:8]}"
    (source / "Default").mkdir(parents=True)
    (source / "Local State").write_text(f'{{"marker": "{marker}"}}')
    (source / "Last Version").write_text(BROWSER_VERSION)
    (source / "Default" / "Preferences").write_text(f'{{"marker": "{marker}"}}')
    (source / "Default" / "blob.bin").write_bytes(payload or marker.encode() * 100)
    spool = root / f"{source.name}.tar.gz"
    with spool.open("wb") as out:
        pack_dir(source, out, engine="chromium", codec="gzip")
    data = spool.read_bytes()
    update = StateUpdate(
        checksum=hashlib.sha256(data).hexdigest(),
        blob_size=len(data),
        uploaded_at=utcnow(),
        browser_version=BROWSER_VERSION,
        cookie_domains=[],
    )
    spool.unlink()
    return CommittedState(data, update, tree_digest(source, engine="chromium"), root)


def holder(host: str = "host-a", pid: int | None = None) -> Holder:
    return Holder(
        kind="session", host=host, pid=os.getpid() if pid is None else pid, since=utcnow()
    )


def _raised(expected: type[ProfileError], fn: Any, *args: Any, **kwargs: Any) -> ProfileError:
    """The error ``fn`` raises, which must be exactly of class ``expected``."""
    with pytest.raises(ProfileError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert type(err) is expected, f"{type(err).__name__} ({err}), expected {expected.__name__}"
    return err


def _all_pages(fetch: Any, limit: int) -> list[Any]:
    """Every record of a paginated listing, following ``next_cursor``."""
    seen: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        page = fetch(limit=limit, cursor=cursor)
        assert isinstance(page, Page)
        assert len(page.data) <= limit
        seen.extend(page.data)
        if not page.has_more:
            assert page.next_cursor is None
            return seen
        assert page.next_cursor is not None and len(page.data) == limit
        cursor = page.next_cursor
    pytest.fail("pagination did not end")


class ServiceContract:
    """The contract of :mod:`profiles.service.protocol`, as tests. See the module docstring."""

    #: The service stores a committed archive as sent (see the module docstring).
    keeps_archives: ClassVar[bool] = True

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def service(self) -> Iterator[ProfileService]:
        """A fresh, empty service (override in the subclass)."""
        raise NotImplementedError("a ServiceContract subclass provides the service fixture")

    @pytest.fixture
    def states(self, tmp_path: Path) -> Path:
        """Where this test's states are made."""
        path = tmp_path / "states"
        path.mkdir()
        return path

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def commit(
        service: ProfileService,
        profile: Profile,
        state: CommittedState,
        *,
        epoch: int | None = None,
        **payload: Any,
    ) -> Profile:
        """Commit ``state`` the protocol's way, under a lease of its own unless ``epoch``."""
        own = None
        if epoch is None:
            own = service.acquire_lease(profile.id, holder(), ttl=30.0)
            assert own is not None, "the profile's lease is free"
            epoch = own.epoch
        try:
            return service.commit_archive(
                profile, state.spool, state.update, epoch=epoch, event="state.uploaded", **payload
            )
        finally:
            if own is not None:
                service.release_lease(profile.id, own.epoch)

    def read_state(self, service: ProfileService, profile: Profile, into: Path) -> bytes:
        """The bytes ``open_state`` gives, read to the end and closed."""
        with service.open_state(profile) as stream:
            chunks = []
            while block := stream.read(64 * 1024):
                chunks.append(block)
        return b"".join(chunks)

    def assert_holds(
        self, service: ProfileService, profile: Profile, state: CommittedState, scratch: Path
    ) -> None:
        """``profile``'s committed state, read back through the service, is ``state``."""
        data = self.read_state(service, profile, scratch)
        if self.keeps_archives:
            assert profile.checksum == state.update.checksum
            assert data == state.data
        target = scratch / f"read-{uuid.uuid4().hex[:8]}"
        archive = scratch / f"{target.name}.archive"
        archive.write_bytes(data)
        unpack_archive(archive, target)
        assert tree_digest(target, engine="chromium") == state.files
        shutil.rmtree(target)
        archive.unlink()

    @staticmethod
    def events(service: ProfileService, ref: str | None = None) -> list[AuditEvent]:
        """Every audit event (of ``ref``), newest first."""
        return _all_pages(lambda **kw: service.audit(profile=ref, **kw), 100)

    # ================================================================== records
    def test_create_and_get_by_id_and_by_name(self, service: ProfileService) -> None:
        created = service.create(
            "alpha", description="the first", labels={"team": "qa", "env": "prod"}
        )
        assert created.id.startswith("prof_") and created.name == "alpha"
        assert created.archetype == "desktop-chromium" and created.browser_name == "chromium"
        assert created.description == "the first"
        assert created.labels == {"team": "qa", "env": "prod"}
        assert created.status == "empty" and created.checksum is None
        assert created.usage_count == 0 and created.last_used_at is None
        assert created.created_at == created.updated_at
        assert service.get(created.id) == created
        assert service.get("alpha") == created

    def test_create_with_archetypes(self, service: ProfileService) -> None:
        firefox = service.create("fox", archetype="desktop-firefox")
        assert firefox.archetype == "desktop-firefox" and firefox.browser_name == "firefox"
        phone = service.create("phone", archetype="iphone-13")
        assert phone.browser_name == "webkit"
        err = _raised(ValidationFailed, service.create, "bad-arch", archetype="desktop-netscape")
        assert err.details.get("field") == "archetype"
        _raised(NotFound, service.get, "bad-arch")  # nothing was created

    @pytest.mark.parametrize(
        "name",
        ["", "has space", "tab\tname", "x" * 65, "prof_0123456789abcdef", "psnap_abc", "bell\x07"],
    )
    def test_create_refuses_bad_names(self, service: ProfileService, name: str) -> None:
        err = _raised(ValidationFailed, service.create, name)
        assert err.details.get("field") == "name"
        assert service.list().data == []

    def test_names_may_be_unicode_and_64_characters(self, service: ProfileService) -> None:
        for name in ("prod-eu", "ünïcødé-名前", "n" * 64, "a.b_c:d"):
            assert service.get(service.create(name).id).name == name

    def test_a_taken_name_is_conflict(self, service: ProfileService) -> None:
        first = service.create("taken")
        err = _raised(Conflict, service.create, "taken")
        assert "taken" in err.message
        other = service.create("other")
        _raised(Conflict, service.update, "other", name="taken")
        assert service.get("taken") == first and service.get("other") == other

    def test_missing_profiles_are_not_found(self, service: ProfileService) -> None:
        service.create("production")
        err = _raised(NotFound, service.get, "productoin")
        assert err.details.get("resource") == "profile"
        assert "production" in err.message  # the close name is suggested
        _raised(NotFound, service.get, "prof_00000000000000000000000000")
        _raised(NotFound, service.update, "missing", description="x")
        _raised(NotFound, service.delete, "missing")
        _raised(NotFound, service.clone, "missing")
        _raised(NotFound, service.snapshot, "missing")
        _raised(NotFound, service.snapshots, "missing")
        _raised(NotFound, service.record_use, "missing")

    def test_list_paginates_newest_first(self, service: ProfileService) -> None:
        assert service.list() == Page[Profile](data=[], has_more=False, next_cursor=None)
        made = [service.create(f"page-{i}") for i in range(7)]
        for limit in (1, 2, 3, 7, 50):
            listed = _all_pages(service.list, limit)
            assert [p.id for p in listed] == [
                p.id for p in sorted(made, key=lambda p: (p.created_at, p.id), reverse=True)
            ]
        first = service.list(limit=3)
        assert first.has_more and first.next_cursor == first.data[-1].id
        assert service.list(limit=7).has_more is False

    @pytest.mark.parametrize("limit", [0, -1, 101])
    def test_list_limits_are_checked(self, service: ProfileService, limit: int) -> None:
        err = _raised(ValidationFailed, service.list, limit=limit)
        assert err.details.get("field") == "limit"

    def test_update_changes_only_what_is_passed(self, service: ProfileService) -> None:
        created = service.create("upd", description="d", labels={"a": "1", "b": "2"})
        time.sleep(0.002)
        renamed = service.update("upd", name="upd-2")
        assert renamed.name == "upd-2" and renamed.description == "d"
        assert renamed.labels == {"a": "1", "b": "2"} and renamed.updated_at > created.updated_at
        _raised(NotFound, service.get, "upd")
        assert service.get("upd-2") == renamed
        cleared = service.update(created.id, description=None)
        assert cleared.description is None and cleared.name == "upd-2"
        assert service.update(created.id) == cleared  # nothing passed: nothing changes
        same = service.update(created.id, name="upd-2", archetype="desktop-chromium")
        assert same == cleared
        err = _raised(ValidationFailed, service.update, created.id, archetype="desktop-firefox")
        assert err.details.get("field") == "archetype"
        _raised(ValidationFailed, service.update, created.id, name="bad name")
        assert service.get(created.id) == cleared

    def test_update_labels_replace_add_and_remove(self, service: ProfileService) -> None:
        profile = service.create("labels", labels={"a": "1", "b": "2", "c": "3"})
        merged = service.update(
            profile.id, add_labels={"d": "4", "a": "9"}, remove_labels=["b", "not-there"]
        )
        assert merged.labels == {"a": "9", "c": "3", "d": "4"}
        replaced = service.update(profile.id, labels={"x": "0"})
        assert replaced.labels == {"x": "0"}
        assert service.update(profile.id, remove_labels=["x"]).labels == {}
        err = _raised(ValidationFailed, service.update, profile.id, remove_labels="x")
        assert err.details.get("field") == "remove_labels"
        err = _raised(ValidationFailed, service.update, profile.id, labels={"bad key": "v"})
        assert err.details.get("field") == "labels"
        assert service.get(profile.id).labels == {}

    def test_delete_returns_the_record_and_a_second_delete_is_not_found(
        self, service: ProfileService
    ) -> None:
        profile = service.create("doomed", labels={"k": "v"})
        deleted = service.delete("doomed")
        assert deleted.id == profile.id and deleted.name == "doomed"
        _raised(NotFound, service.get, profile.id)
        _raised(NotFound, service.delete, profile.id)
        _raised(NotFound, service.delete, "doomed")
        assert service.list().data == []
        again = service.create("doomed")  # the name is free again, under a new id
        assert again.id != profile.id

    def test_similar_names(self, service: ProfileService) -> None:
        for name in ("production", "Production-EU", "staging"):
            service.create(name)
        assert service.similar_names("productoin") == ["production"]
        assert "production" not in service.similar_names("production")
        assert service.similar_names("PRODUCTION")[0] == "production"  # case compacted first
        assert service.similar_names("zzzzzz") == []
        assert len(service.similar_names("production", limit=1)) <= 1

    # ================================================================== clones
    def test_clone_without_state_derives_copy_names(
        self, service: ProfileService, states: Path
    ) -> None:
        source = service.create(
            "src", archetype="desktop-chrome", description="origin", labels={"t": "1"}
        )
        self.commit(service, source, make_state(states))
        first = service.clone("src")
        assert first.name == "src-copy" and first.id != source.id
        assert first.archetype == "desktop-chrome" and first.description == "origin"
        assert first.labels == {"t": "1"}
        assert first.status == "empty" and first.checksum is None
        assert service.clone("src").name == "src-copy-2"
        assert service.clone("src").name == "src-copy-3"
        assert service.clone("src-copy").name == "src-copy-copy"
        named = service.clone("src", name="explicit")
        assert named.name == "explicit"
        _raised(Conflict, service.clone, "src", name="explicit")
        _raised(ValidationFailed, service.clone, "src", name="bad name")
        long = service.create("l" * 64)
        derived = service.clone(long.id)
        assert derived.name == "l" * 59 + "-copy" and len(derived.name) == 64

    def test_clone_with_state_shares_the_committed_state(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        source = service.create("stateful")
        state = make_state(states)
        committed = self.commit(service, source, state)
        clone = service.clone("stateful", with_state=True)
        assert clone.status == "ready" and clone.checksum == committed.checksum
        assert clone.browser_version == committed.browser_version
        self.assert_holds(service, clone, state, tmp_path)
        # The source going away leaves the clone's state readable.
        service.delete("stateful")
        self.assert_holds(service, service.get(clone.id), state, tmp_path)

    def test_clone_repins_the_archetype_only_within_the_engine_for_state(
        self, service: ProfileService, states: Path
    ) -> None:
        source = service.create("pinned")
        self.commit(service, source, make_state(states))
        repinned = service.clone("pinned", name="as-firefox", archetype="desktop-firefox")
        assert repinned.browser_name == "firefox" and repinned.status == "empty"
        err = _raised(
            ValidationFailed, service.clone, "pinned", with_state=True, archetype="desktop-firefox"
        )
        assert err.details.get("field") == "archetype"
        same_engine = service.clone("pinned", with_state=True, archetype="desktop-chrome")
        assert same_engine.archetype == "desktop-chrome" and same_engine.status == "ready"

    # ================================================================== snapshots
    def test_snapshot_create_get_list_and_delete(
        self, service: ProfileService, states: Path
    ) -> None:
        a = service.create("snap-a", archetype="desktop-chrome")
        b = service.create("snap-b")
        committed = self.commit(service, a, make_state(states))
        s1 = service.snapshot("snap-a", label="before", description="first")
        assert s1.id.startswith("psnap_") and s1.parent_profile_id == a.id
        assert s1.parent_name == "snap-a" and s1.parent_archetype == "desktop-chrome"
        assert s1.browser_name == "chromium" and s1.browser_version == BROWSER_VERSION
        assert s1.label == "before" and s1.description == "first"
        assert s1.checksum == committed.checksum and s1.blob_size == committed.blob_size
        empty = service.snapshot(b.id)
        assert empty.checksum is None and empty.label is None
        s2 = service.snapshot(a.id)
        assert service.get_snapshot(s1.id) == s1
        assert [s.id for s in _all_pages(lambda **kw: service.snapshots("snap-a", **kw), 1)] == [
            s2.id,
            s1.id,
        ]
        assert [s.id for s in service.snapshots(b.id).data] == [empty.id]
        everything = _all_pages(lambda **kw: service.snapshots(None, **kw), 2)
        assert [s.id for s in everything] == [s2.id, empty.id, s1.id]
        service.delete_snapshot(s2.id)
        err = _raised(NotFound, service.get_snapshot, s2.id)
        assert err.details.get("resource") == "snapshot"
        _raised(NotFound, service.delete_snapshot, s2.id)
        _raised(NotFound, service.restore, s2.id)
        assert [s.id for s in service.snapshots("snap-a").data] == [s1.id]
        err = _raised(ValidationFailed, service.snapshot, a.id, label="x" * 129)
        assert err.details.get("field") == "label"

    def test_snapshots_outlive_their_profile_and_state_changes(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        profile = service.create("parent")
        first = make_state(states, "first")
        self.commit(service, profile, first)
        snap = service.snapshot("parent", label="v1")
        self.commit(service, service.get("parent"), make_state(states, "second"))
        service.delete("parent")
        kept = service.get_snapshot(snap.id)
        assert kept.parent_profile_id is None
        assert kept.model_dump(exclude={"parent_profile_id"}) == snap.model_dump(
            exclude={"parent_profile_id"}
        )
        assert [s.id for s in service.snapshots(None).data] == [snap.id]
        restored = service.restore(snap.id)
        assert restored.name == "parent-restored"
        self.assert_holds(service, restored, first, tmp_path)

    def test_restore_makes_a_new_profile_and_leaves_the_parent(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        parent = service.create("orig", archetype="desktop-edge", description="keep me")
        first = make_state(states, "first")
        self.commit(service, parent, first)
        snap = service.snapshot("orig", description="as it was")
        later = self.commit(service, service.get("orig"), make_state(states, "second"))
        restored = service.restore(snap.id)
        assert restored.id != parent.id and restored.name == "orig-restored"
        # The snapshot's archetype, description and state.
        assert restored.archetype == "desktop-edge" and restored.description == "as it was"
        assert restored.status == "ready" and restored.checksum == snap.checksum
        assert restored.browser_version == BROWSER_VERSION
        self.assert_holds(service, restored, first, tmp_path)
        assert service.get("orig") == later  # the parent is untouched
        assert service.restore(snap.id).name == "orig-restored-2"
        assert service.restore(snap.id, name="chosen").name == "chosen"
        _raised(Conflict, service.restore, snap.id, name="chosen")
        _raised(ValidationFailed, service.restore, snap.id, name="bad name")
        empty_snap = service.snapshot(service.create("blank").id)
        from_empty = service.restore(empty_snap.id)
        assert from_empty.status == "empty" and from_empty.checksum is None

    # ================================================================== audit
    def test_operations_are_recorded_in_the_audit_log(
        self, service: ProfileService, states: Path
    ) -> None:
        profile = service.create("audited")
        service.update("audited", description="new", add_labels={"k": "v"})
        snap = service.snapshot("audited", label="l")
        service.delete_snapshot(snap.id)
        used = service.record_use("audited", source="contract")
        assert used.usage_count == 1 and used.last_used_at is not None
        assert service.record_use(profile.id).usage_count == 2
        committed = self.commit(service, profile, make_state(states), source="contract")
        service.delete("audited")
        events = self.events(service, profile.id)
        assert all(e.profile_id == profile.id and e.id.startswith("evt_") for e in events)
        assert [e.type for e in reversed(events)] == [
            "profile.created",
            "profile.updated",
            "snapshot.created",
            "snapshot.deleted",
            "session.created",
            "session.created",
            "state.uploaded",
            "profile.deleted",
        ]
        by_type = {e.type: e.payload for e in events}
        assert by_type["profile.created"]["name"] == "audited"
        assert by_type["profile.created"]["archetype"] == "desktop-chromium"
        assert by_type["profile.updated"]["changed"] == ["description", "labels"]
        assert by_type["snapshot.created"]["snapshot_id"] == snap.id
        assert by_type["snapshot.deleted"]["snapshot_id"] == snap.id
        assert by_type["state.uploaded"]["checksum"] == committed.checksum
        assert by_type["state.uploaded"]["source"] == "contract"
        assert by_type["profile.deleted"]["name"] == "audited"
        assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)

    def test_clone_and_restore_record_where_they_came_from(self, service: ProfileService) -> None:
        source = service.create("origin")
        clone = service.clone("origin")
        snap = service.snapshot("origin")
        restored = service.restore(snap.id)
        (cloned,) = self.events(service, clone.id)
        assert cloned.type == "profile.created" and cloned.payload["cloned_from"] == source.id
        (made,) = self.events(service, restored.id)
        assert made.payload["restored_from_snapshot"] == snap.id

    def test_record_event_and_audit_pagination(self, service: ProfileService) -> None:
        a = service.create("log-a")
        b = service.create("log-b")
        for i in range(5):
            service.record_event("session.ended", a.id, n=i, ok=True, note=None, ratio=0.5)
        service.record_event("state.exported", b.id, format="tar.gz")
        mine = _all_pages(lambda **kw: service.audit(profile="log-a", **kw), 2)
        assert [e.type for e in mine] == ["session.ended"] * 5 + ["profile.created"]
        assert [e.payload["n"] for e in mine[:5]] == [4, 3, 2, 1, 0]
        assert mine[0].payload == {"n": 4, "ok": True, "note": None, "ratio": 0.5}
        assert len({e.id for e in mine}) == 6
        by_id = _all_pages(lambda **kw: service.audit(profile=a.id, **kw), 4)
        assert by_id == mine
        everything = _all_pages(lambda **kw: service.audit(**kw), 3)
        assert len(everything) == 8 and {e.profile_id for e in everything} == {a.id, b.id}
        assert everything[0].type == "state.exported"
        assert everything[0].payload == {"format": "tar.gz"}
        _raised(NotFound, service.audit, profile="no-such-profile")
        _raised(ValidationFailed, service.audit, limit=0)

    def test_a_deleted_profiles_events_stay_readable_by_id(self, service: ProfileService) -> None:
        profile = service.create("gone")
        service.delete("gone")
        assert [e.type for e in self.events(service, profile.id)] == [
            "profile.deleted",
            "profile.created",
        ]

    # ================================================================== state
    def test_a_new_profile_has_no_state(self, service: ProfileService, tmp_path: Path) -> None:
        profile = service.create("bare")
        err = _raised(NoStateData, self.read_state, service, profile, tmp_path)
        assert err.details.get("field") == "profile"

    def test_commit_archive_then_open_it_back(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        profile = service.create("stored")
        state = make_state(states, payload=os.urandom(200_000))
        lease = service.acquire_lease(profile.id, holder(), ttl=30.0)
        assert lease is not None
        updated = service.commit_archive(
            profile, state.spool, state.update, epoch=lease.epoch, event="state.uploaded"
        )
        service.release_lease(profile.id, lease.epoch)
        assert updated.id == profile.id and updated.status == "ready"
        assert updated.checksum is not None and len(updated.checksum) == 64
        assert updated.blob_size is not None and updated.blob_size > 0
        assert updated.blob_uploaded_at is not None
        assert updated.browser_version == BROWSER_VERSION
        assert updated.updated_at >= profile.updated_at
        assert service.get(profile.id) == updated
        self.assert_holds(service, updated, state, tmp_path)

    def test_a_second_commit_replaces_the_state(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        profile = service.create("twice")
        first = self.commit(service, profile, make_state(states, "one"))
        second_state = make_state(states, "two")
        second = self.commit(service, first, second_state)
        assert second.checksum != first.checksum
        self.assert_holds(service, service.get("twice"), second_state, tmp_path)

    def test_the_same_state_twice_is_one_state(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        a, b = service.create("same-a"), service.create("same-b")
        state = make_state(states)
        first = self.commit(service, a, state)
        second = self.commit(service, b, state)
        assert first.checksum == second.checksum
        service.delete("same-a")  # the bytes b still names stay
        self.assert_holds(service, service.get("same-b"), state, tmp_path)

    def test_commit_to_a_deleted_profile_is_not_found(
        self, service: ProfileService, states: Path
    ) -> None:
        profile = service.create("vanishing")
        lease = service.acquire_lease(profile.id, holder(), ttl=30.0)
        assert lease is not None
        service.delete(profile.id)
        state = make_state(states)
        _raised(
            NotFound,
            service.commit_archive,
            profile,
            state.spool,
            state.update,
            epoch=lease.epoch,
            event="state.uploaded",
        )

    def test_commit_can_end_the_session(self, service: ProfileService, states: Path) -> None:
        profile = service.create("ending")
        lease = service.acquire_lease(profile.id, holder(), ttl=30.0)
        assert lease is not None
        state = make_state(states)
        updated = service.commit_archive(
            profile,
            state.spool,
            state.update,
            epoch=lease.epoch,
            event="session.ended",
            end_session={"reason": "closed", "clean": True},
        )
        assert updated.status == "ready"
        assert service.lease_holder(profile.id) is None
        newest, committed = self.events(service, profile.id)[:2]
        assert newest.type == "session.ended" and newest.payload["reason"] == "closed"
        assert committed.type == "session.ended"
        assert committed.payload["checksum"] == updated.checksum

    def test_end_session_releases_and_records(self, service: ProfileService) -> None:
        profile = service.create("end")
        lease = service.acquire_lease(profile.id, holder(), ttl=30.0)
        assert lease is not None
        service.end_session(profile.id, lease.epoch, reason="done")
        assert service.lease_holder(profile.id) is None
        newest = self.events(service, profile.id)[0]
        assert newest.type == "session.ended" and newest.payload["reason"] == "done"

    # ================================================================== leases
    def test_lease_acquire_refuse_renew_release(self, service: ProfileService) -> None:
        profile = service.create("leased")
        me, other = holder("host-a", 111), holder("host-b", 222)
        assert service.lease_holder(profile.id) is None and service.leases() == []
        grant = service.acquire_lease(profile.id, me, ttl=30.0)
        assert grant is not None and grant.profile_id == profile.id
        assert grant.expires_at is not None and grant.expires_at > utcnow()
        held = service.lease_holder(profile.id)
        assert held is not None and (held.kind, held.host, held.pid) == ("session", "host-a", 111)
        assert [(pid, (h.host, h.pid)) for pid, h in service.leases()] == [
            (profile.id, ("host-a", 111))
        ]
        assert service.acquire_lease(profile.id, other, ttl=30.0) is None
        assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is True
        assert service.renew_lease(profile.id, grant.epoch + 1, ttl=30.0) is False
        service.release_lease(profile.id, grant.epoch + 1)  # not its epoch: nothing happens
        assert service.lease_holder(profile.id) is not None
        service.release_lease(profile.id, grant.epoch)
        assert service.lease_holder(profile.id) is None and service.leases() == []
        assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is False
        service.release_lease(profile.id, grant.epoch)  # a second release is harmless
        again = service.acquire_lease(profile.id, other, ttl=30.0)
        assert again is not None and again.epoch > grant.epoch
        held = service.lease_holder(profile.id)
        assert held is not None and held.host == "host-b"

    def test_leases_of_missing_profiles(self, service: ProfileService) -> None:
        _raised(NotFound, service.acquire_lease, "prof_missing000000", holder(), ttl=30.0)
        assert service.lease_holder("prof_missing000000") is None

    def test_an_expired_lease_is_taken_over(self, service: ProfileService) -> None:
        profile = service.create("expiring")
        grant = service.acquire_lease(profile.id, holder("host-a"), ttl=0.2)
        assert grant is not None
        deadline = time.monotonic() + 30
        while service.lease_holder(profile.id) is not None:
            assert time.monotonic() < deadline, "the lease did not expire"
            time.sleep(0.05)
        assert service.leases() == []
        taken = service.acquire_lease(profile.id, holder("host-b"), ttl=30.0)
        assert taken is not None and taken.epoch > grant.epoch
        assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is False

    def test_a_commit_with_a_stale_epoch_is_lease_lost(
        self, service: ProfileService, states: Path, tmp_path: Path
    ) -> None:
        profile = service.create("fenced")
        first = make_state(states, "first")
        kept = self.commit(service, profile, first)
        old = service.acquire_lease(profile.id, holder("host-a"), ttl=0.2)
        assert old is not None
        deadline = time.monotonic() + 30
        while (new := service.acquire_lease(profile.id, holder("host-b"), ttl=30.0)) is None:
            assert time.monotonic() < deadline, "the lease did not expire"
            time.sleep(0.05)
        late = make_state(states, "late")
        err = _raised(
            LeaseLost,
            service.commit_archive,
            kept,
            late.spool,
            late.update,
            epoch=old.epoch,
            event="state.uploaded",
            end_session={"reason": "late"},
        )
        assert isinstance(err, Conflict)
        # Nothing changed: the state, the new holder's lease, and no session ended.
        assert service.get(profile.id) == kept
        self.assert_holds(service, kept, first, tmp_path)
        held = service.lease_holder(profile.id)
        assert held is not None and held.host == "host-b"
        assert "session.ended" not in [e.type for e in self.events(service, profile.id)]
        winner = make_state(states, "winner")
        done = self.commit(service, kept, winner, epoch=new.epoch)
        self.assert_holds(service, done, winner, tmp_path)

    def test_errors_are_profile_errors_with_codes(self, service: ProfileService) -> None:
        service.create("coded")
        for err, code, status in (
            (_raised(NotFound, service.get, "uncoded"), "NotFound", 404),
            (_raised(Conflict, service.create, "coded"), "Conflict", 409),
            (_raised(ValidationFailed, service.create, "a b"), "ValidationFailed", 400),
        ):
            assert err.code == code and err.status == status
            assert err.to_dict()["code"] == code

    def test_empty_references_are_validation_failed(self, service: ProfileService) -> None:
        by_profile: list[Callable[[str], object]] = [
            service.get,
            service.delete,
            service.similar_names,
            service.snapshot,
        ]
        for call in by_profile:
            err = _raised(ValidationFailed, call, "")
            assert err.details.get("field") == "profile"
        _raised(ValidationFailed, service.audit, profile="")
        by_snapshot: list[Callable[[str], object]] = [
            service.get_snapshot,
            service.delete_snapshot,
            service.restore,
        ]
        for call in by_snapshot:
            err = _raised(ValidationFailed, call, "")
            assert err.details.get("field") == "snapshot"

    @pytest.mark.parametrize("limit", [0, 101])
    def test_similar_names_limits_are_checked(self, service: ProfileService, limit: int) -> None:
        service.create("base")
        err = _raised(ValidationFailed, service.similar_names, "base", limit=limit)
        assert err.details.get("field") == "limit"

    @pytest.mark.parametrize("labels", [{"a": 1}, {"a": None}, {"k" * 65: "v"}])
    def test_bad_labels_are_refused_alike(
        self, service: ProfileService, labels: dict[str, Any]
    ) -> None:
        err = _raised(ValidationFailed, service.create, "labelled", labels=labels)
        assert err.details.get("field") == "labels"
        service.create("labelled")
        err = _raised(ValidationFailed, service.update, "labelled", add_labels=labels)
        assert err.details.get("field") == "labels"

    @pytest.mark.parametrize("ttl", [0, -1.0])
    def test_a_lease_ttl_must_be_positive(self, service: ProfileService, ttl: float) -> None:
        profile = service.create("ttl")
        err = _raised(ValidationFailed, service.acquire_lease, profile.id, holder(), ttl=ttl)
        assert err.details.get("field") == "ttl"
        assert service.lease_holder(profile.id) is None

    def test_a_deleted_profiles_lease_is_lost_not_an_error(self, service: ProfileService) -> None:
        """The holder of a lease whose profile was deleted learns it has lost the lease
        (renew answers False, as for any lease no longer held); releasing it is harmless."""
        profile = service.create("deleted-under-lease")
        grant = service.acquire_lease(profile.id, holder(), ttl=30.0)
        assert grant is not None
        service.delete(profile.id)
        assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is False
        service.release_lease(profile.id, grant.epoch)
        assert service.lease_holder(profile.id) is None

    def test_events_of_a_missing_profile_are_not_found(self, service: ProfileService) -> None:
        err = _raised(NotFound, service.record_event, "session.ended", "prof_missing000000")
        assert err.details.get("resource") == "profile"
        assert service.audit().data == []

    def test_records_are_models(self, service: ProfileService) -> None:
        """What comes back is the shared pydantic models, not look-alikes."""
        profile = service.create("typed")
        assert type(profile) is Profile
        snap = service.snapshot("typed")
        assert type(snap) is Snapshot and type(service.get_snapshot(snap.id)) is Snapshot
        (event,) = service.audit(profile="typed", limit=1).data
        assert type(event) is AuditEvent
        assert isinstance(service.shared, bool) and isinstance(service.location, str)
