"""The behaviour suite every catalog backend must pass (the contract of
:mod:`profiles.catalog.base`, rules 1-10).

Subclass :class:`CatalogContract` in a test module (name the subclass ``Test...``) and
provide the fixture ``catalog_factory``: a picklable callable without arguments that opens
a new :class:`~profiles.catalog.base.Catalog` on one database, the same database on every
call, empty at the start of each test. The suite opens several catalogs on it (other
connections, other threads, other processes) through ``make_catalog``, and closes all of
them. Override the hooks :meth:`CatalogContract.make_schema_newer`,
:meth:`CatalogContract.inject_fault` and :meth:`CatalogContract.unreachable_catalog`::

    class TestMyCatalog(CatalogContract):
        @pytest.fixture
        def catalog_factory(self, tmp_path):
            return functools.partial(MyCatalog, tmp_path / "db")

        def make_schema_newer(self, catalog): ...
        def inject_fault(self, catalog): ...
        def unreachable_catalog(self, tmp_path): ...

Concurrency is real: threads each with their own catalog (a connection or a pool), a
catalog shared by threads, and processes started with ``spawn``. Timing is used only to
show that something *waits* (it must still be waiting after a short while) and for lease
expiry (tiny TTLs); nothing depends on a machine being fast.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from profiles.catalog.base import UPDATABLE_FIELDS, Catalog, StateUpdate
from profiles.errors import (
    Conflict,
    LeaseLost,
    NotFound,
    ProfileError,
    StorageUnavailable,
    TierLimit,
    ValidationFailed,
)
from profiles.models import AuditEvent, Holder, Profile, Snapshot, new_id, utcnow

__all__ = ["CatalogContract", "CatalogFactory", "make_event", "make_profile", "make_snapshot"]

#: Opens a new catalog on the suite's database (picklable: processes use it too).
CatalogFactory = Callable[[], Catalog]
R = TypeVar("R")

T0 = datetime(2026, 5, 9, 22, 0, 0, 123456, tzinfo=UTC)
WAIT = 0.3  # how long something that must wait is watched still waiting
TIMEOUT = 30.0  # how long anything may take before the test fails instead of hanging


def make_profile(name: str | None = None, *, at: datetime | None = None, **fields: Any) -> Profile:
    """A new profile record (unique name unless given)."""
    now = at or utcnow()
    return Profile(
        id=new_id("prof"),
        name=name or f"p-{uuid.uuid4().hex[:12]}",
        archetype="desktop-chrome",
        browser_name="chromium",
        created_at=now,
        updated_at=now,
        **fields,
    )


def make_snapshot(
    parent: Profile, *, checksum: str | None = None, at: datetime | None = None
) -> Snapshot:
    return Snapshot(
        id=new_id("psnap"),
        parent_profile_id=parent.id,
        parent_name=parent.name,
        parent_archetype=parent.archetype,
        browser_name=parent.browser_name,
        browser_version="130.0",
        label="before",
        description="a snapshot",
        captured_at=at or utcnow(),
        blob_size=None if checksum is None else 42,
        checksum=checksum,
        cookie_domains=[".example.com", "a.example"],
    )


def make_event(profile_id: str | None, *, at: datetime | None = None) -> AuditEvent:
    return AuditEvent(
        id=new_id("evt"),
        type="profile.updated",
        profile_id=profile_id,
        at=at or utcnow(),
        payload={"z": 1, "a": {"nested": [1, "two", None]}, "name": "n"},
    )


def make_state(checksum: str, *, browser_version: str | None = "131.0.1") -> StateUpdate:
    return StateUpdate(
        checksum=checksum,
        blob_size=1234,
        uploaded_at=utcnow(),
        browser_version=browser_version,
        cookie_domains=["b.example", ".a.example"],
    )


def holder(kind: str = "session") -> Holder:
    return Holder.model_validate(
        {"kind": kind, "host": "host-a", "pid": os.getpid(), "since": utcnow()}
    )


def run_concurrently(calls: Sequence[Callable[[], R]]) -> list[R | BaseException]:
    """Run every call in its own thread, all released at once; results or exceptions, in
    order."""
    barrier = threading.Barrier(len(calls))

    def start(call: Callable[[], R]) -> R:
        barrier.wait(TIMEOUT)
        return call()

    outcomes: list[R | BaseException] = []
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(start, call) for call in calls]
        for future in futures:
            error = future.exception(TIMEOUT)
            outcomes.append(error if error is not None else future.result())
    return outcomes


def _in_process(factory: CatalogFactory, profile_id: str, bumps: int, cap: int) -> str:
    """One process of :meth:`CatalogContract.test_processes_bump_and_race_the_cap`."""
    catalog = factory()
    try:
        for _ in range(bumps):
            with catalog.transaction() as tx:
                tx.bump_usage(profile_id, utcnow())
        try:
            with catalog.transaction() as tx:
                tx.insert_profile(make_profile(), max_profiles=cap)
        except TierLimit as exc:
            return f"TierLimit {exc.limit} {exc.current}"
        return "inserted"
    finally:
        catalog.close()


def _process_main(args: tuple[CatalogFactory, str, int, int]) -> str:
    return _in_process(*args)


def _register_and_wait(
    factory: CatalogFactory, kind: str, reg_id: str, ttl: float, conn: Any
) -> None:
    """A process that registers a blob writer (or takes the collector lock), says so, and
    waits to be killed (see ``test_a_dead_process_stops_holding_the_other_side_off``)."""
    catalog = factory()
    with catalog.transaction() as tx:
        if kind == "writer":
            granted = tx.register_blob_writer(reg_id, ttl=ttl)
        else:
            granted = tx.acquire_collector(reg_id, ttl=ttl)
    conn.send(granted)
    time.sleep(3600)


class CatalogContract:
    """The contract of :mod:`profiles.catalog.base`, as tests. See the module docstring."""

    # ------------------------------------------------------------------ fixtures and hooks
    @pytest.fixture
    def catalog_factory(self) -> CatalogFactory:
        """Opens a new catalog on this test's database (override in the subclass)."""
        raise NotImplementedError("a CatalogContract subclass provides catalog_factory")

    @pytest.fixture
    def make_catalog(self, catalog_factory: CatalogFactory) -> Iterator[CatalogFactory]:
        """Another catalog (another connection) on the same database; closed after the
        test."""
        opened: list[Catalog] = []

        def make() -> Catalog:
            catalog = catalog_factory()
            opened.append(catalog)
            return catalog

        yield make
        for catalog in opened:
            catalog.close()

    @pytest.fixture
    def catalog(self, make_catalog: CatalogFactory) -> Catalog:
        return make_catalog()

    def make_schema_newer(self, catalog: Catalog) -> None:
        """Make the stored schema version newer than this code knows (backend-specific)."""
        raise NotImplementedError

    def inject_fault(self, catalog: Catalog) -> None:
        """Make ``catalog``'s storage fail under a transaction in progress: its next
        statement must fail (a lost connection, a closed file)."""
        raise NotImplementedError

    def unreachable_catalog(self, tmp_path: Path) -> tuple[CatalogFactory, str | None]:
        """A factory whose catalog cannot be reached, and the secret (password) that its
        location holds and no message may show (``None`` if it has none)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def add(catalog: Catalog, profile: Profile | None = None) -> Profile:
        profile = profile or make_profile()
        with catalog.transaction() as tx:
            tx.insert_profile(profile)
        return profile

    @staticmethod
    def get(catalog: Catalog, profile_id: str) -> Profile | None:
        with catalog.transaction(write=False) as tx:
            return tx.get_profile(profile_id)

    # ================================================================== CRUD
    def test_profile_round_trip(self, catalog: Catalog, make_catalog: CatalogFactory) -> None:
        profile = make_profile(
            "round-trip",
            at=T0,
            description="desc",
            browser_version="130.0",
            labels={"team": "qa", "env": "prod", "a": ""},
            cookie_domains=[".z.example", "a.example"],
            last_used_at=T0 + timedelta(microseconds=1),
        )
        self.add(catalog, profile)
        with make_catalog().transaction(write=False) as tx:
            got = tx.get_profile(profile.id)
            assert tx.get_profile_by_name("round-trip") == got
            assert tx.get_profile("prof_missing") is None
            assert tx.get_profile_by_name("missing") is None
        assert got == profile
        assert got.created_at == T0 and got.created_at.utcoffset() == timedelta(0)
        assert got.cookie_domains == [".z.example", "a.example"]  # order kept
        assert got.model_dump(mode="json")["created_at"] == "2026-05-09T22:00:00.123456Z"

    def test_count_and_names(self, catalog: Catalog) -> None:
        for name in ("b-two", "a-one", "C-three"):
            self.add(catalog, make_profile(name))
        with catalog.transaction(write=False) as tx:
            assert tx.count_profiles() == 3
            assert tx.profile_names() == ["C-three", "a-one", "b-two"]

    def test_naive_and_offset_timestamps_are_stored_as_instants(self, catalog: Catalog) -> None:
        other_zone = T0.astimezone(timezone(timedelta(hours=-5)))
        profile = self.add(catalog, make_profile(at=other_zone))
        got = self.get(catalog, profile.id)
        assert got is not None
        assert got.created_at == T0
        assert got.model_dump(mode="json")["created_at"] == "2026-05-09T22:00:00.123456Z"

    def test_update_fields(self, catalog: Catalog) -> None:
        profile = self.add(catalog, make_profile("before", labels={"k": "v"}))
        later = T0 + timedelta(days=1)
        with catalog.transaction() as tx:
            updated = tx.update_fields(profile.id, {"description": "new", "updated_at": later})
            assert tx.update_fields("prof_missing", {"description": "x"}) is None
            unchanged = tx.update_fields(profile.id, {})
        assert updated is not None and unchanged == updated
        assert updated.description == "new" and updated.updated_at == later
        assert updated.name == "before" and updated.labels == {"k": "v"}
        assert updated.model_dump(exclude={"description", "updated_at"}) == profile.model_dump(
            exclude={"description", "updated_at"}
        )
        with catalog.transaction() as tx:
            renamed = tx.update_fields(profile.id, {"name": "after"})
            assert renamed is not None and renamed.name == "after"
            assert tx.get_profile_by_name("before") is None
        with pytest.raises(ValueError), catalog.transaction() as tx:
            tx.update_fields(profile.id, {"usage_count": 7})
        assert {"name", "description", "updated_at"} == UPDATABLE_FIELDS

    def test_merge_labels(self, catalog: Catalog) -> None:
        profile = self.add(catalog, make_profile(labels={"a": "1", "b": "2", "c": "3"}))
        with catalog.transaction() as tx:
            merged = tx.merge_labels(
                profile.id, add={"d": "4", "a": "9"}, remove=frozenset({"b", "zz"}),
                replace=None, updated_at=T0,
            )  # fmt: skip
            assert merged is not None
            assert merged.labels == {"a": "9", "c": "3", "d": "4"} and merged.updated_at == T0
            replaced = tx.merge_labels(
                profile.id, add={"y": "1"}, remove=frozenset({"x"}),
                replace={"x": "0", "w": "2"}, updated_at=T0,
            )  # fmt: skip
            assert replaced is not None and replaced.labels == {"w": "2", "y": "1"}
            cleared = tx.merge_labels(
                profile.id, add={}, remove=frozenset(), replace={}, updated_at=T0
            )
            assert cleared is not None and cleared.labels == {}
            assert (
                tx.merge_labels("prof_missing", add={"a": "b"}, remove=frozenset(),
                                replace=None, updated_at=T0)
                is None
            )  # fmt: skip

    def test_bump_usage(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        with catalog.transaction() as tx:
            first = tx.bump_usage(profile.id, T0)
            second = tx.bump_usage(profile.id, T0 + timedelta(seconds=1))
            assert tx.bump_usage("prof_missing", T0) is None
        assert first is not None and first.usage_count == 1 and first.last_used_at == T0
        assert second is not None and second.usage_count == 2
        assert second.last_used_at == T0 + timedelta(seconds=1)

    def test_set_state_returns_replaced_checksum(self, catalog: Catalog) -> None:
        profile = self.add(catalog, make_profile(browser_version="120.0"))
        with catalog.transaction() as tx:
            first, old = tx.set_state(profile.id, make_state("sha-1"), epoch=None)
            assert old is None
            assert first.status == "ready" and first.checksum == "sha-1"
            assert first.blob_size == 1234 and first.browser_version == "131.0.1"
            assert first.cookie_domains == ["b.example", ".a.example"]
            assert first.blob_uploaded_at is not None and first.updated_at == first.blob_uploaded_at
            second, old = tx.set_state(
                profile.id, make_state("sha-2", browser_version=None), epoch=None
            )
            assert old == "sha-1" and second.checksum == "sha-2"
            assert second.browser_version == "131.0.1"  # None keeps the recorded one
            with pytest.raises(NotFound):
                tx.set_state("prof_missing", make_state("sha-3"), epoch=None)

    def test_set_status_and_settle_status(self, catalog: Catalog) -> None:
        empty = self.add(catalog)
        with catalog.transaction() as tx:
            uploading = tx.set_status(empty.id, "uploading")
            assert uploading is not None and uploading.status == "uploading"
            settled = tx.settle_status(empty.id)
            assert settled is not None and settled.status == "empty"
            tx.set_state(empty.id, make_state("sha-s"), epoch=None)
            tx.set_status(empty.id, "uploading")
            settled = tx.settle_status(empty.id)
            assert settled is not None and settled.status == "ready"
            assert tx.set_status("prof_missing", "ready") is None
            assert tx.settle_status("prof_missing") is None

    def test_delete_profile_keeps_snapshots(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        snapshot = make_snapshot(profile, checksum="sha-snap")
        with catalog.transaction() as tx:
            tx.insert_snapshot(snapshot)
            tx.insert_event(make_event(profile.id))
        with catalog.transaction() as tx:
            deleted = tx.delete_profile(profile.id)
            assert tx.delete_profile(profile.id) is None
        assert deleted == profile
        with catalog.transaction(write=False) as tx:
            assert tx.get_profile(profile.id) is None
            kept = tx.get_snapshot(snapshot.id)
            assert kept is not None and kept.parent_profile_id is None
            assert kept.model_dump(exclude={"parent_profile_id"}) == snapshot.model_dump(
                exclude={"parent_profile_id"}
            )
            assert [e.profile_id for e in tx.list_events(profile_id=profile.id, limit=5,
                                                         after=None)] == [profile.id]  # fmt: skip

    def test_snapshot_round_trip_and_delete(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        snapshot = make_snapshot(profile, checksum="sha-x", at=T0)
        with catalog.transaction() as tx:
            tx.insert_snapshot(snapshot)
            assert tx.get_snapshot(snapshot.id) == snapshot
            assert tx.get_snapshot("psnap_missing") is None
        with catalog.transaction() as tx:
            assert tx.delete_snapshot(snapshot.id) == snapshot
            assert tx.delete_snapshot(snapshot.id) is None
            assert tx.get_snapshot(snapshot.id) is None

    def test_event_round_trip(self, catalog: Catalog) -> None:
        event = make_event(None, at=T0)
        with catalog.transaction() as tx:
            tx.insert_event(event)
        with catalog.transaction(write=False) as tx:
            (got,) = tx.list_events(profile_id=None, limit=10, after=None)
        assert got == event and got.payload == {"z": 1, "a": {"nested": [1, "two", None]},
                                                "name": "n"}  # fmt: skip

    def test_duplicate_ids_are_profile_errors(self, catalog: Catalog) -> None:
        """Rule 9: nothing but a ProfileError escapes, even for a record id used twice."""
        profile = self.add(catalog)
        snapshot = make_snapshot(profile)
        with catalog.transaction() as tx:
            tx.insert_snapshot(snapshot)
        with pytest.raises(ProfileError), catalog.transaction() as tx:
            tx.insert_snapshot(snapshot)
        with pytest.raises(ProfileError), catalog.transaction() as tx:
            tx.insert_profile(profile.model_copy(update={"name": "other-name"}))

    # ================================================================== pagination
    def test_profiles_keyset_pagination(self, catalog: Catalog) -> None:
        # Several share a created_at: the id breaks the tie (descending).
        stamps = [T0, T0, T0 + timedelta(microseconds=1), T0 - timedelta(days=1), T0, T0]
        with catalog.transaction() as tx:
            profiles = [make_profile(at=at) for at in stamps]
            for profile in profiles:
                tx.insert_profile(profile)
        expected = sorted(profiles, key=lambda p: (p.created_at, p.id), reverse=True)
        seen: list[Profile] = []
        after: str | None = None
        with catalog.transaction(write=False) as tx:
            while True:
                page = tx.list_profiles(limit=4, after=after)
                assert len(page) <= 4
                seen.extend(page)
                if len(page) < 4:
                    break
                after = page[-1].id
        assert [p.id for p in seen] == [p.id for p in expected]
        assert seen == expected

    def test_snapshot_and_event_pagination(self, catalog: Catalog) -> None:
        a, b = self.add(catalog), self.add(catalog)
        stamps = [T0, T0, T0 + timedelta(seconds=1), T0 - timedelta(seconds=1), T0]
        snaps = [make_snapshot(a if i % 2 else b, at=at) for i, at in enumerate(stamps)]
        events = [make_event(a.id if i % 2 else b.id, at=at) for i, at in enumerate(stamps)]
        with catalog.transaction() as tx:
            for snap in snaps:
                tx.insert_snapshot(snap)
            for event in events:
                tx.insert_event(event)

        def snap_key(s: Snapshot) -> tuple[datetime, str]:
            return (s.captured_at, s.id)

        def event_key(e: AuditEvent) -> tuple[datetime, str]:
            return (e.at, e.id)

        with catalog.transaction(write=False) as tx:
            for parent in (None, a.id, b.id):
                want_s = sorted(
                    (s for s in snaps if parent in (None, s.parent_profile_id)),
                    key=snap_key, reverse=True,
                )  # fmt: skip
                got_s: list[Snapshot] = []
                after: str | None = None
                while page := tx.list_snapshots(profile_id=parent, limit=2, after=after):
                    got_s.extend(page)
                    after = page[-1].id
                assert got_s == want_s
                want_e = sorted(
                    (e for e in events if parent in (None, e.profile_id)),
                    key=event_key, reverse=True,
                )  # fmt: skip
                got_e: list[AuditEvent] = []
                after = None
                while page_e := tx.list_events(profile_id=parent, limit=2, after=after):
                    got_e.extend(page_e)
                    after = page_e[-1].id
                assert got_e == want_e

    def test_stale_cursor_is_validation_failed(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        snapshot = make_snapshot(profile)
        with catalog.transaction() as tx:
            tx.insert_snapshot(snapshot)
            tx.delete_snapshot(snapshot.id)
            tx.delete_profile(profile.id)
        with catalog.transaction(write=False) as tx:
            for call in (
                lambda: tx.list_profiles(limit=3, after=profile.id),
                lambda: tx.list_snapshots(profile_id=None, limit=3, after=snapshot.id),
                lambda: tx.list_events(profile_id=None, limit=3, after="evt_missing"),
            ):
                with pytest.raises(ValidationFailed) as info:
                    call()
                assert info.value.field == "cursor"

    # ================================================================== rule 1: atomicity
    def test_rollback_on_exception_leaves_nothing(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        kept = self.add(catalog)
        profile = make_profile()

        class Boom(Exception):
            pass

        with pytest.raises(Boom), catalog.transaction() as tx:
            tx.insert_profile(profile)
            tx.insert_snapshot(make_snapshot(profile, checksum="sha-gone"))
            tx.insert_event(make_event(profile.id))
            tx.bump_usage(kept.id, T0)
            tx.merge_labels(kept.id, add={"x": "y"}, remove=frozenset(), replace=None,
                            updated_at=T0)  # fmt: skip
            raise Boom
        with make_catalog().transaction(write=False) as tx:
            assert tx.count_profiles() == 1
            assert tx.get_profile(kept.id) == kept
            assert tx.list_snapshots(profile_id=None, limit=5, after=None) == []
            assert tx.list_events(profile_id=None, limit=5, after=None) == []
            assert not tx.checksum_in_use("sha-gone")

    def test_profile_error_inside_rolls_back_too(self, catalog: Catalog) -> None:
        taken = self.add(catalog)
        fresh = make_profile()
        with pytest.raises(Conflict), catalog.transaction() as tx:
            tx.insert_profile(fresh)
            tx.insert_profile(make_profile(taken.name))
        assert self.get(catalog, fresh.id) is None

    def test_commit_is_seen_by_other_connections(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        other = make_catalog()
        profile = self.add(catalog)
        assert self.get(other, profile.id) == profile

    def test_read_transaction_sees_one_state(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        first = self.add(catalog)
        other = make_catalog()
        with catalog.transaction(write=False) as tx:
            assert tx.count_profiles() == 1
            self.add(other)  # committed meanwhile by another connection
            with other.transaction() as otx:
                otx.bump_usage(first.id, T0)
            assert tx.count_profiles() == 1
            got = tx.get_profile(first.id)
            assert got is not None and got.usage_count == 0
        with catalog.transaction(write=False) as tx:
            assert tx.count_profiles() == 2

    def _read_while_writer_holds(self, writer_catalog: Catalog, reader_catalog: Catalog) -> None:
        """A writer holds an open write transaction (an insert and a row change); a read
        transaction elsewhere must finish without waiting, not seeing those writes."""
        profile = self.add(writer_catalog)
        pending = make_profile()
        writing, finish = threading.Event(), threading.Event()

        def writer() -> None:
            with writer_catalog.transaction() as tx:
                tx.insert_profile(pending)
                tx.bump_usage(profile.id, T0)
                writing.set()
                assert finish.wait(TIMEOUT)

        with ThreadPoolExecutor(max_workers=2) as pool:
            held = pool.submit(writer)
            try:
                assert writing.wait(TIMEOUT)

                def reader() -> tuple[int, Profile | None]:
                    with reader_catalog.transaction(write=False) as tx:
                        return tx.count_profiles(), tx.get_profile(profile.id)

                count, seen = pool.submit(reader).result(timeout=3)
                assert count == 1 and seen == profile
            finally:
                finish.set()
                held.result(TIMEOUT)

    def test_read_transaction_never_waits_for_writers(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        self._read_while_writer_holds(catalog, make_catalog())

    def test_read_on_a_shared_catalog_never_waits_for_writers(self, catalog: Catalog) -> None:
        """The catalog is shared by threads (as the store shares it): a read in one
        thread does not wait for a write transaction open in another."""
        self._read_while_writer_holds(catalog, catalog)

    # ================================================================== rule 2: narrow writes
    def test_concurrent_merge_labels_on_distinct_keys(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(20)]
        profile = self.add(catalogs[0], make_profile(labels={"base": "1"}))

        def merge(i: int) -> Callable[[], Profile | None]:
            def call() -> Profile | None:
                with catalogs[i].transaction() as tx:
                    return tx.merge_labels(
                        profile.id, add={f"k{i}": str(i)}, remove=frozenset(), replace=None,
                        updated_at=utcnow(),
                    )  # fmt: skip

            return call

        outcomes = run_concurrently([merge(i) for i in range(20)])
        assert all(isinstance(o, Profile) for o in outcomes), outcomes
        got = self.get(catalogs[0], profile.id)
        assert got is not None
        assert got.labels == {"base": "1", **{f"k{i}": str(i) for i in range(20)}}

    def test_concurrent_bump_usage_is_exact(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(10)]  # five threads share each
        profile = self.add(catalogs[0])

        def bump(i: int) -> Callable[[], Profile | None]:
            def call() -> Profile | None:
                with catalogs[i % 10].transaction() as tx:
                    return tx.bump_usage(profile.id, utcnow())

            return call

        outcomes = run_concurrently([bump(i) for i in range(50)])
        assert all(isinstance(o, Profile) for o in outcomes), outcomes
        got = self.get(catalogs[0], profile.id)
        assert got is not None and got.usage_count == 50

    def test_update_fields_does_not_lose_a_concurrent_merge(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        """A transaction that read the profile, then a label edit lands from elsewhere, then
        the first one sets the description: both changes stay."""
        profile = self.add(catalog, make_profile(labels={"old": "1"}))
        other = make_catalog()
        merged = threading.Event()

        def merge() -> None:
            with other.transaction() as tx:
                tx.merge_labels(profile.id, add={"new": "2"}, remove=frozenset({"old"}),
                                replace=None, updated_at=T0)  # fmt: skip
            merged.set()

        with ThreadPoolExecutor(max_workers=1) as pool:
            with catalog.transaction() as tx:
                read = tx.get_profile(profile.id)
                assert read is not None and read.labels == {"old": "1"}
                edit = pool.submit(merge)
                merged.wait(WAIT)  # done (MVCC) or waiting for us (one writer at a time)
                tx.update_fields(profile.id, {"description": "described", "updated_at": T0})
            edit.result(TIMEOUT)
        got = self.get(catalog, profile.id)
        assert got is not None
        assert got.description == "described" and got.labels == {"new": "2"}

    def test_concurrent_narrow_writes_all_survive(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(4)]
        profile = self.add(catalogs[0])

        def write(i: int) -> Callable[[], object]:
            def call() -> object:
                with catalogs[i % 4].transaction() as tx:
                    if i % 3 == 0:
                        return tx.bump_usage(profile.id, T0)
                    if i % 3 == 1:
                        return tx.merge_labels(profile.id, add={f"k{i}": "v"}, remove=frozenset(),
                                               replace=None, updated_at=T0)  # fmt: skip
                    return tx.update_fields(profile.id, {"description": f"d{i}"})

            return call

        outcomes = run_concurrently([write(i) for i in range(12)])
        assert all(isinstance(o, Profile) for o in outcomes), outcomes
        got = self.get(catalogs[0], profile.id)
        assert got is not None
        assert got.usage_count == 4
        assert set(got.labels) == {f"k{i}" for i in range(12) if i % 3 == 1}
        assert got.description in {f"d{i}" for i in range(12) if i % 3 == 2}

    # ================================================================== rule 3: names, cap
    def test_unique_names(self, catalog: Catalog) -> None:
        first = self.add(catalog, make_profile("taken"))
        second = self.add(catalog, make_profile("free"))
        with pytest.raises(Conflict) as info, catalog.transaction() as tx:
            tx.insert_profile(make_profile("taken"))
        assert info.value.message == "A profile named 'taken' already exists; choose another name."
        assert info.value.details["field"] == "name"
        with pytest.raises(Conflict) as info, catalog.transaction() as tx:
            tx.update_fields(second.id, {"name": "taken", "description": "lost"})
        assert "'taken'" in info.value.message
        with catalog.transaction(write=False) as tx:
            assert tx.count_profiles() == 2
            assert tx.get_profile(second.id) == second
            assert tx.get_profile_by_name("taken") == first

    def test_concurrent_inserts_of_one_name(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(10)]

        def insert(i: int) -> Callable[[], str]:
            def call() -> str:
                with catalogs[i].transaction() as tx:
                    tx.insert_profile(make_profile("contested"))
                return "ok"

            return call

        outcomes = run_concurrently([insert(i) for i in range(10)])
        assert outcomes.count("ok") == 1, outcomes
        assert all(isinstance(o, Conflict) for o in outcomes if o != "ok"), outcomes
        with catalogs[0].transaction(write=False) as tx:
            assert tx.count_profiles() == 1

    def test_cap(self, catalog: Catalog) -> None:
        for _ in range(3):
            with catalog.transaction() as tx:
                tx.insert_profile(make_profile(), max_profiles=3)
        with pytest.raises(TierLimit) as info, catalog.transaction() as tx:
            tx.insert_profile(make_profile(), max_profiles=3)
        assert (info.value.limit, info.value.current) == (3, 3)
        with pytest.raises(TierLimit) as info, catalog.transaction() as tx:
            tx.insert_profile(make_profile(), max_profiles=2)
        assert (info.value.limit, info.value.current) == (2, 3)
        with catalog.transaction() as tx:
            tx.insert_profile(make_profile())  # no cap
            assert tx.count_profiles() == 4

    def test_cap_under_concurrency(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(20)]
        cap = 5
        for _ in range(cap - 1):
            self.add(catalogs[0])

        def insert(i: int) -> Callable[[], str]:
            def call() -> str:
                with catalogs[i].transaction() as tx:
                    tx.insert_profile(make_profile(), max_profiles=cap)
                return "ok"

            return call

        outcomes = run_concurrently([insert(i) for i in range(20)])
        assert outcomes.count("ok") == 1, outcomes
        losers = [o for o in outcomes if o != "ok"]
        assert all(isinstance(o, TierLimit) for o in losers), losers
        assert {(o.limit, o.current) for o in losers if isinstance(o, TierLimit)} == {(cap, cap)}
        with catalogs[0].transaction(write=False) as tx:
            assert tx.count_profiles() == cap

    def test_processes_bump_and_race_the_cap(
        self, catalog: Catalog, catalog_factory: CatalogFactory
    ) -> None:
        """Other processes (spawned, each with its own catalog) increment one counter and
        race to create the last profile under the cap."""
        profile = self.add(catalog)
        cap = 3
        self.add(catalog)
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            outcomes = pool.map(_process_main, [(catalog_factory, profile.id, 10, cap)] * 4)
        assert sorted(outcomes) == ["TierLimit 3 3"] * 3 + ["inserted"], outcomes
        got = self.get(catalog, profile.id)
        assert got is not None and got.usage_count == 40
        with catalog.transaction(write=False) as tx:
            assert tx.count_profiles() == cap

    # ================================================================== rule 4: share
    def test_get_profile_for_share_holds_the_state(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        """While a transaction copies a profile's checksum into a snapshot, a concurrent
        set_state from another connection waits until that transaction ends."""
        profile = self.add(catalog)
        with catalog.transaction() as tx:
            tx.set_state(profile.id, make_state("sha-old"), epoch=None)
        other = make_catalog()
        shared, release, written = threading.Event(), threading.Event(), threading.Event()
        snapshot_ids: list[str] = []

        def share() -> None:
            with catalog.transaction() as tx:
                got = tx.get_profile_for_share(profile.id)
                assert got is not None and got.checksum == "sha-old"
                shared.set()
                assert release.wait(TIMEOUT)
                snapshot = make_snapshot(got, checksum=got.checksum)
                tx.insert_snapshot(snapshot)
                snapshot_ids.append(snapshot.id)

        def replace() -> str | None:
            with other.transaction() as tx:
                _, old = tx.set_state(profile.id, make_state("sha-new"), epoch=None)
                # Freed after commit only if nothing references it any more.
                in_use = tx.checksum_in_use("sha-old")
            written.set()
            assert in_use, "the snapshot's reference must have landed first"
            return old

        with ThreadPoolExecutor(max_workers=2) as pool:
            sharing = pool.submit(share)
            try:
                assert shared.wait(TIMEOUT)
                replacing = pool.submit(replace)
                assert not written.wait(WAIT), "set_state did not wait for the share"
            finally:
                release.set()
                sharing.result(TIMEOUT)
            assert replacing.result(TIMEOUT) == "sha-old"
        with catalog.transaction(write=False) as tx:
            snapshot = tx.get_snapshot(snapshot_ids[0])
            assert snapshot is not None and snapshot.checksum == "sha-old"
            current = tx.get_profile(profile.id)
            assert current is not None and current.checksum == "sha-new"

    def test_get_profile_for_share_missing(self, catalog: Catalog) -> None:
        with catalog.transaction() as tx:
            assert tx.get_profile_for_share("prof_missing") is None

    # ================================================================== state bytes
    def test_checksums_in_use(self, catalog: Catalog) -> None:
        a, b = self.add(catalog), self.add(catalog)
        with catalog.transaction() as tx:
            tx.set_state(a.id, make_state("sha-a"), epoch=None)
            tx.insert_snapshot(make_snapshot(b, checksum="sha-s"))
            tx.insert_snapshot(make_snapshot(b, checksum="sha-a"))
            tx.insert_snapshot(make_snapshot(b, checksum=None))
        with catalog.transaction(write=False) as tx:
            assert tx.checksum_in_use("sha-a") and tx.checksum_in_use("sha-s")
            assert not tx.checksum_in_use("sha-none")
            assert tx.checksums_in_use() == {"sha-a", "sha-s"}
        with catalog.transaction() as tx:
            tx.delete_profile(a.id)
            for snap in tx.list_snapshots(profile_id=None, limit=10, after=None):
                if snap.checksum == "sha-s":
                    tx.delete_snapshot(snap.id)
        with catalog.transaction(write=False) as tx:
            assert tx.checksum_in_use("sha-a")  # a snapshot still holds it
            assert not tx.checksum_in_use("sha-s")
            assert tx.checksums_in_use() == {"sha-a"}

    # ================================================================== rule 5: leases
    def test_lease_acquire_renew_release(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        who = holder()
        with catalog.transaction() as tx:
            grant = tx.acquire_lease(profile.id, who, ttl=60)
            assert grant is not None and grant.profile_id == profile.id and grant.epoch == 1
            assert grant.expires_at is not None
            assert abs((grant.expires_at - utcnow()).total_seconds() - 60) < 30
            assert tx.acquire_lease(profile.id, holder("import"), ttl=60) is None
            assert tx.lease_holder(profile.id) == (who, 1)
            assert tx.leases() == [(profile.id, who, 1)]
            assert tx.renew_lease(profile.id, 1, ttl=120)
            assert not tx.renew_lease(profile.id, 0, ttl=120)
            tx.release_lease(profile.id, 0)  # not the current epoch: nothing
            assert tx.lease_holder(profile.id) == (who, 1)
            tx.release_lease(profile.id, 1)
            assert tx.lease_holder(profile.id) is None and tx.leases() == []
            again = tx.acquire_lease(profile.id, who, ttl=None)
            assert again is not None and again.epoch == 2 and again.expires_at is None
            assert tx.leases() == [(profile.id, who, 2)]
            with pytest.raises(NotFound):
                tx.acquire_lease("prof_missing", who, ttl=60)
        with catalog.transaction(write=False) as tx:
            assert tx.lease_holder(profile.id) == (who, 2)

    def test_force_takes_a_held_lease(self, catalog: Catalog) -> None:
        profile = self.add(catalog)
        with catalog.transaction() as tx:
            first = tx.acquire_lease(profile.id, holder(), ttl=None)
            forced = tx.acquire_lease(profile.id, holder("maintenance"), ttl=60, force=True)
            assert first is not None and forced is not None and forced.epoch == first.epoch + 1
            assert not tx.renew_lease(profile.id, first.epoch, ttl=60)
            holding = tx.lease_holder(profile.id)
            assert holding is not None and holding[0].kind == "maintenance"

    def test_lease_fencing_after_expiry(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        """epoch N expires, another writer takes N+1: a late set_state with N is refused
        and changes nothing; renew and release with N do nothing."""
        profile = self.add(catalog)
        other = make_catalog()
        with catalog.transaction() as tx:
            tx.set_state(profile.id, make_state("sha-before"), epoch=None)
            old = tx.acquire_lease(profile.id, holder(), ttl=0.2)
        assert old is not None
        time.sleep(0.5)
        with other.transaction(write=False) as tx:
            assert tx.lease_holder(profile.id) is None and tx.leases() == []
        new_holder = holder("import")
        with other.transaction() as tx:
            new = tx.acquire_lease(profile.id, new_holder, ttl=60)
        assert new is not None and new.epoch == old.epoch + 1
        before = self.get(catalog, profile.id)
        with pytest.raises(LeaseLost) as info, catalog.transaction() as tx:
            tx.set_state(profile.id, make_state("sha-late"), epoch=old.epoch)
        assert info.value.details["epoch"] == old.epoch
        assert info.value.details["current_epoch"] == new.epoch
        with catalog.transaction() as tx:
            assert tx.get_profile(profile.id) == before
            assert not tx.checksum_in_use("sha-late")
            assert not tx.renew_lease(profile.id, old.epoch, ttl=60)
            tx.release_lease(profile.id, old.epoch)
            assert tx.lease_holder(profile.id) == (new_holder, new.epoch)
            updated, replaced = tx.set_state(profile.id, make_state("sha-new"), epoch=new.epoch)
            assert replaced == "sha-before" and updated.checksum == "sha-new"

    def test_fenced_set_state_inside_a_failed_transaction_changes_nothing(
        self, catalog: Catalog
    ) -> None:
        profile = self.add(catalog)
        with catalog.transaction() as tx:
            grant = tx.acquire_lease(profile.id, holder(), ttl=60)
            assert grant is not None
            tx.acquire_lease(profile.id, holder(), ttl=60, force=True)
        with pytest.raises(LeaseLost), catalog.transaction() as tx:
            tx.insert_event(make_event(profile.id))
            tx.set_state(profile.id, make_state("sha-x"), epoch=grant.epoch)
        with catalog.transaction(write=False) as tx:
            assert tx.list_events(profile_id=None, limit=5, after=None) == []
            got = tx.get_profile(profile.id)
            assert got is not None and got.checksum is None and got.status == "empty"

    def test_expired_lease_is_not_live_and_epochs_never_decrease(self, catalog: Catalog) -> None:
        a, b = self.add(catalog), self.add(catalog)
        with catalog.transaction() as tx:
            tx.acquire_lease(a.id, holder(), ttl=0.2)
            long = tx.acquire_lease(b.id, holder(), ttl=60)
        assert long is not None
        time.sleep(0.5)
        with catalog.transaction() as tx:
            assert tx.lease_holder(a.id) is None
            assert [lease[0] for lease in tx.leases()] == [b.id]
            epochs = []
            for _ in range(3):
                grant = tx.acquire_lease(a.id, holder(), ttl=60)
                assert grant is not None
                epochs.append(grant.epoch)
                tx.release_lease(a.id, grant.epoch)
            assert epochs == [2, 3, 4]

    def test_concurrent_acquire_grants_one(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(10)]
        profile = self.add(catalogs[0])

        def acquire(i: int) -> Callable[[], int | None]:
            def call() -> int | None:
                with catalogs[i].transaction() as tx:
                    grant = tx.acquire_lease(profile.id, holder(), ttl=60)
                return None if grant is None else grant.epoch

            return call

        outcomes = run_concurrently([acquire(i) for i in range(10)])
        assert sorted(outcomes, key=str) == [1] + [None] * 9, outcomes

    # ================================================================== rule 7: collector
    def test_blob_writers_and_collector_exclude_each_other(self, catalog: Catalog) -> None:
        with catalog.transaction() as tx:
            assert tx.register_blob_writer("w1", ttl=60)
            assert tx.register_blob_writer("w1", ttl=60)  # extends
            assert not tx.acquire_collector("c1", ttl=60)
            tx.unregister_blob_writer("w1")
            assert tx.acquire_collector("c1", ttl=60)
            assert tx.acquire_collector("c1", ttl=60)  # the holder again: extends
            assert not tx.acquire_collector("c2", ttl=60)
            assert not tx.register_blob_writer("w2", ttl=60)
            tx.release_collector("c2")  # not the holder: nothing
            assert not tx.register_blob_writer("w2", ttl=60)
            tx.release_collector("c1")
            assert tx.register_blob_writer("w2", ttl=60)
            assert not tx.acquire_collector("c2", ttl=60)

    def test_blob_writer_and_collector_expire(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        other = make_catalog()
        with catalog.transaction() as tx:
            assert tx.register_blob_writer("dies", ttl=0.2)
        with other.transaction() as tx:
            assert not tx.acquire_collector("c1", ttl=60)
        time.sleep(0.5)
        with other.transaction() as tx:
            assert tx.acquire_collector("c1", ttl=0.2)
        with catalog.transaction() as tx:
            assert not tx.register_blob_writer("w", ttl=60)
        time.sleep(0.5)
        with catalog.transaction() as tx:
            assert tx.register_blob_writer("w", ttl=60)
            tx.unregister_blob_writer("w")
            assert tx.acquire_collector("c2", ttl=60)

    def test_blob_writers_and_collectors_race(self, make_catalog: CatalogFactory) -> None:
        """Writers and collectors start at once from many connections: never is a
        collector granted while a writer is registered, nor two collectors at once."""
        catalogs = [make_catalog() for _ in range(8)]
        for round_ in range(4):

            def contend(i: int, round_: int = round_) -> Callable[[], tuple[str, bool]]:
                def call() -> tuple[str, bool]:
                    with catalogs[i].transaction() as tx:
                        if (i + round_) % 2:
                            return ("w", tx.register_blob_writer(f"w{i}", ttl=60))
                        return ("c", tx.acquire_collector(f"c{i}", ttl=60))

                return call

            outcomes = run_concurrently([contend(i) for i in range(8)])
            assert all(isinstance(o, tuple) for o in outcomes), outcomes
            granted = [o for o in outcomes if isinstance(o, tuple) and o[1]]
            kinds = {kind for kind, _ in granted}
            assert len(kinds) == 1, outcomes
            if kinds == {"c"}:
                assert len(granted) == 1, outcomes
            with catalogs[0].transaction() as tx:
                for i in range(8):
                    tx.unregister_blob_writer(f"w{i}")
                    tx.release_collector(f"c{i}")

    def test_renewal_keeps_a_registration_and_fails_once_it_was_dropped(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        """A renewed registration stays live past its first ttl; once it lapsed and the
        other side dropped it, renewing answers False (the holder must assume the other
        side ran) and never registers it again."""
        other = make_catalog()
        ttl = 1.0
        with catalog.transaction() as tx:
            assert tx.register_blob_writer("w", ttl=ttl)
        for _ in range(4):  # 1.6 s: live only because renewed
            time.sleep(0.4)
            with catalog.transaction() as tx:
                assert tx.renew_blob_writer("w", ttl=ttl)
            with other.transaction() as tx:
                assert not tx.acquire_collector("c", ttl=ttl)
        time.sleep(ttl + 0.3)
        with other.transaction() as tx:
            assert tx.acquire_collector("c", ttl=ttl)  # drops the lapsed writer
        with catalog.transaction() as tx:
            assert not tx.renew_blob_writer("w", ttl=60)
            assert not tx.renew_blob_writer("never-registered", ttl=60)
        with other.transaction() as tx:
            assert not tx.acquire_collector("c2", ttl=60)  # "w" did not come back
        for _ in range(4):
            time.sleep(0.4)
            with other.transaction() as tx:
                assert tx.renew_collector("c", ttl=ttl)
            with catalog.transaction() as tx:
                assert not tx.register_blob_writer("w2", ttl=60)
        time.sleep(ttl + 0.3)
        with catalog.transaction() as tx:
            assert tx.register_blob_writer("w2", ttl=60)  # drops the lapsed collector lock
        with other.transaction() as tx:
            assert not tx.renew_collector("c", ttl=60)
            assert not tx.renew_collector("nobody", ttl=60)
            tx.release_collector("c")
        with catalog.transaction() as tx:
            tx.unregister_blob_writer("w2")
            assert not tx.renew_blob_writer("w2", ttl=60)
        with other.transaction() as tx:
            assert tx.acquire_collector("c3", ttl=60)
            tx.release_collector("c3")

    @pytest.mark.parametrize("kind", ["writer", "collector"])
    def test_a_dead_process_stops_holding_the_other_side_off(
        self, catalog: Catalog, catalog_factory: CatalogFactory, kind: str
    ) -> None:
        """Another process registers a blob writer (or takes the collector lock) and is
        killed with SIGKILL: while it lives the other side is refused; once it is dead, at
        once where the catalog sees dead processes, else within the registration's ttl."""
        ttl = 4.0
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        reg_id = f"{kind}-{uuid.uuid4().hex[:8]}"
        child = context.Process(
            target=_register_and_wait, args=(catalog_factory, kind, reg_id, ttl, theirs)
        )
        child.start()
        try:
            assert ours.poll(TIMEOUT), "the child did not register"
            assert ours.recv() is True
            registered = time.monotonic()

            def other_side() -> bool:
                with catalog.transaction() as tx:
                    if kind == "writer":
                        granted = tx.acquire_collector("contract-collector", ttl=60)
                        if granted:
                            tx.release_collector("contract-collector")
                        return granted
                    granted = tx.register_blob_writer("contract-writer", ttl=60)
                    if granted:
                        tx.unregister_blob_writer("contract-writer")
                    return granted

            assert not other_side(), f"a live {kind} must hold the other side off"
        finally:
            child.kill()
            child.join(TIMEOUT)
        if catalog.sees_dead_processes:
            assert other_side(), f"a dead {kind} must stop counting at once"
            return
        if time.monotonic() - registered < ttl - 1:
            assert not other_side()  # not yet expired: a dead process looks slow from here
        while not other_side():
            assert time.monotonic() - registered < ttl + 5, f"a dead {kind} held on past its ttl"
            time.sleep(0.1)

    # ================================================================== rule 10: engine caches
    def test_engine_cache_round_trip(self, catalog: Catalog, make_catalog: CatalogFactory) -> None:
        a, b, c = (hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
        key = "153.7.0-0123456789abcdef01234567"
        with catalog.transaction(write=False) as tx:
            assert tx.engine_cache_get("firefox", key) is None
            assert tx.engine_cache_checksums() == set()
        with catalog.transaction() as tx:
            tx.engine_cache_put("firefox", key, a)
            tx.engine_cache_put("chromium", key, b)  # another engine: another entry
        other = make_catalog()
        with other.transaction(write=False) as tx:
            assert tx.engine_cache_get("firefox", key) == a
            assert tx.engine_cache_get("chromium", key) == b
            assert tx.engine_cache_get("webkit", key) is None
            assert tx.engine_cache_get("firefox", "153.7.1-other") is None
            assert tx.engine_cache_checksums() == {a, b}
            assert tx.checksums_in_use() == set()  # engine caches are not profile state
        with other.transaction() as tx:
            tx.engine_cache_put("firefox", key, c)  # an upsert: the last writer wins
        with catalog.transaction(write=False) as tx:
            assert tx.engine_cache_get("firefox", key) == c
            assert tx.engine_cache_checksums() == {b, c}
        with pytest.raises(RuntimeError), catalog.transaction() as tx:  # rolled back
            tx.engine_cache_put("firefox", key, a)
            raise RuntimeError("abort")
        with catalog.transaction(write=False) as tx:
            assert tx.engine_cache_get("firefox", key) == c

    def test_engine_cache_values_are_validated(self, catalog: Catalog) -> None:
        good = hashlib.sha256(b"good").hexdigest()
        bad_calls: list[tuple[str, str, str]] = [
            ("netscape", "153.7.0-abc", good),
            ("", "153.7.0-abc", good),
            ("firefox", "", good),
            ("firefox", "../../etc/passwd", good),
            ("firefox", "a/b", good),
            ("firefox", "-leading-dash", good),
            ("firefox", "k" * 129, good),
            ("firefox", "ok\x00", good),
            ("firefox", "153.7.0-abc", "sha-a"),
            ("firefox", "153.7.0-abc", good.upper()),
            ("firefox", "153.7.0-abc", good[:-1]),
            ("firefox", "153.7.0-abc", ""),
        ]
        with catalog.transaction() as tx:
            for engine, key, checksum in bad_calls:
                with pytest.raises(ValidationFailed):
                    tx.engine_cache_put(engine, key, checksum)
                if checksum == good:
                    with pytest.raises(ValidationFailed):
                        tx.engine_cache_get(engine, key)
            tx.engine_cache_put("firefox", "k" * 128, good)  # the transaction is still usable
        with catalog.transaction(write=False) as tx:
            assert tx.engine_cache_checksums() == {good}
            assert tx.engine_cache_get("firefox", "k" * 128) == good

    def test_concurrent_engine_cache_puts_all_succeed(self, make_catalog: CatalogFactory) -> None:
        catalogs = [make_catalog() for _ in range(6)]
        checksums = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6)]
        key = "153.7.0-race"

        def put(i: int) -> None:
            with catalogs[i].transaction() as tx:
                tx.engine_cache_put("firefox", key, checksums[i])

        outcomes = run_concurrently([lambda i=i: put(i) for i in range(6)])  # type: ignore[misc]
        assert outcomes == [None] * 6, outcomes
        with catalogs[0].transaction(write=False) as tx:
            winner = tx.engine_cache_get("firefox", key)
            assert winner in checksums
            assert tx.engine_cache_checksums() == {winner}

    # ================================================================== rule 8: migrations
    def test_opening_again_and_concurrently_is_fine(self, make_catalog: CatalogFactory) -> None:
        outcomes = run_concurrently([make_catalog for _ in range(6)])
        assert all(isinstance(o, Catalog) for o in outcomes), outcomes
        catalogs = [o for o in outcomes if isinstance(o, Catalog)]
        self.add(catalogs[0])
        with make_catalog().transaction(write=False) as tx:
            assert tx.count_profiles() == 1

    def test_newer_schema_is_refused(self, catalog: Catalog, make_catalog: CatalogFactory) -> None:
        profile = self.add(catalog)
        self.make_schema_newer(catalog)
        with pytest.raises(ProfileError) as info:
            make_catalog()
        assert not isinstance(info.value, StorageUnavailable)
        assert "newer" in info.value.message and "Upgrade" in info.value.message
        assert self.get(catalog, profile.id) == profile  # nothing was touched

    # ================================================================== rule 9: faults
    def test_unreachable_catalog_is_storage_unavailable(self, tmp_path: Path) -> None:
        factory, secret = self.unreachable_catalog(tmp_path)
        with pytest.raises(StorageUnavailable) as info:
            factory().close()
        error = info.value
        assert error.home and error.cause
        if secret is not None:
            assert secret not in str(error) and secret not in repr(error.to_dict())

    def test_fault_during_a_transaction_is_storage_unavailable(
        self, catalog: Catalog, make_catalog: CatalogFactory
    ) -> None:
        kept = self.add(catalog)
        with pytest.raises(StorageUnavailable) as info, catalog.transaction() as tx:
            tx.count_profiles()
            tx.insert_profile(make_profile("never-committed"))
            self.inject_fault(catalog)
            tx.bump_usage(kept.id, T0)
        assert info.value.cause
        with make_catalog().transaction(write=False) as tx:
            assert tx.get_profile_by_name("never-committed") is None
            assert tx.get_profile(kept.id) == kept

    def test_errors_name_the_catalog_location(self, catalog: Catalog) -> None:
        location = catalog.location
        assert isinstance(location, str) and location
        with pytest.raises(StorageUnavailable) as info, catalog.transaction() as tx:
            self.inject_fault(catalog)
            tx.count_profiles()
        assert location in info.value.message
