"""The store on the shared backend (PostgreSQL + S3) under concurrency, and moving a store
between backends. The behaviour suites (test_profile_store, test_state) run here too; these
are the races only a shared backend has."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backends import store_on
from support.storefaults import chromium_dir

from profiles import Conflict, LeaseLost, NotFound, ProfileBusy, ProfileStore, TierLimit
from profiles.maintenance.transfer import transfer
from profiles.state.archive import tree_digest, unpack_archive


def _machine(shared_urls: tuple[str, str], home: Path, **options: object) -> ProfileStore:
    """Another machine on the same backend: its own home (workspace), the same catalog."""
    return ProfileStore(home, catalog=shared_urls[0], blobs=shared_urls[1], **options)  # type: ignore[arg-type]


def _race(n: int, work: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
    results: list[object] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            results.append(work(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_twenty_creates_at_the_cap_leave_exactly_the_cap(
    shared_urls: tuple[str, str], tmp_path: Path
) -> None:
    with _machine(shared_urls, tmp_path / "m", max_profiles=10) as store:
        for i in range(9):
            store.create(f"p{i}")
        stores = [_machine(shared_urls, tmp_path / f"m{i}", max_profiles=10) for i in range(20)]
        try:
            created, errors = _race(20, lambda i: stores[i].create(f"racer-{i}"))
        finally:
            for s in stores:
                s.close()
        assert len(created) == 1
        assert len(errors) == 19 and all(isinstance(e, TierLimit) for e in errors)
        assert store.list(limit=100).data.__len__() == 10


def test_twenty_concurrent_label_edits_all_survive(
    shared_store: ProfileStore, tmp_path: Path
) -> None:
    shared_store.create("labelled")
    _, errors = _race(20, lambda i: shared_store.update("labelled", add_labels={f"k{i}": str(i)}))
    assert errors == []
    assert shared_store.get("labelled").labels == {f"k{i}": str(i) for i in range(20)}


def test_clone_racing_delete_leaves_no_dangling_state(
    shared_store: ProfileStore, tmp_path: Path
) -> None:
    for round_ in range(10):
        name = f"source-{round_}"
        shared_store.create(name)
        shared_store.commit_state(name, chromium_dir(tmp_path / f"s{round_}", seed=round_))
        _, errors = _race(
            2,
            lambda i, name=name: (  # type: ignore[misc]
                shared_store.clone(name, name=f"{name}-clone", with_state=True)
                if i == 0
                else shared_store.delete(name)
            ),
        )
        assert all(isinstance(e, NotFound) for e in errors), errors
        for profile in shared_store.iter_profiles():
            if profile.checksum:  # every state referenced is really there
                assert shared_store.blobs.exists(profile.checksum), profile.name
    for snap in shared_store.snapshots(limit=100).data:
        assert snap.checksum is None or shared_store.blobs.exists(snap.checksum)


def test_snapshot_during_commits_always_points_at_stored_bytes(
    shared_store: ProfileStore, tmp_path: Path
) -> None:
    shared_store.create("busy")
    shared_store.commit_state("busy", chromium_dir(tmp_path / "first", seed=0))
    stop = threading.Event()
    snapshots: list[str] = []

    def snap() -> None:
        while not stop.is_set():
            snapshots.append(shared_store.snapshot("busy").id)

    thread = threading.Thread(target=snap)
    thread.start()
    try:
        for i in range(6):
            shared_store.commit_state("busy", chromium_dir(tmp_path / f"c{i}", seed=i + 1))
    finally:
        stop.set()
        thread.join(60)
    assert snapshots
    for snap_id in snapshots:
        checksum = shared_store.get_snapshot(snap_id).checksum
        assert checksum is not None and shared_store.blobs.exists(checksum)
    restored = shared_store.restore(snapshots[-1])
    assert restored.checksum and shared_store.blobs.exists(restored.checksum)


def test_a_lease_fences_a_late_writer(shared_urls: tuple[str, str], tmp_path: Path) -> None:
    with (
        _machine(shared_urls, tmp_path / "a", lease_ttl=0.6) as a,
        _machine(shared_urls, tmp_path / "b", lease_ttl=0.6) as b,
    ):
        a.create("fenced")
        late = a.lock("fenced")
        late.acquire()
        late.pause_heartbeat()  # this worker is paused: its heartbeat stops renewing the lease
        with pytest.raises(ProfileBusy):
            b.lock("fenced").acquire(timeout=0.2)  # still held: not yet expired
        winner = b.lock("fenced")
        winner.acquire(timeout=5)  # waits for the late writer's lease to expire
        assert winner.epoch is not None and late.epoch is not None
        assert winner.epoch > late.epoch
        _, work = b.checkout("fenced", lock=winner)
        chromium_dir(work, seed=7)
        newer = b.commit_state("fenced", work, epoch=winner.epoch)
        winner.release()
        with pytest.raises(LeaseLost):
            a.commit_state("fenced", chromium_dir(tmp_path / "late", seed=8), epoch=late.epoch)
        late.release()
        assert a.get("fenced").checksum == newer.checksum


def test_a_dead_workers_lease_expires(shared_urls: tuple[str, str], tmp_path: Path) -> None:
    with _machine(shared_urls, tmp_path / "a", lease_ttl=0.5) as a:
        a.create("abandoned")
        lease = a.lock("abandoned")
        lease.acquire()
        lease.pause_heartbeat()  # as if the process died: no more heartbeats, nothing released
        holder = a.holder("abandoned")
        assert holder is not None and holder.kind == "session"
        with _machine(shared_urls, tmp_path / "b", lease_ttl=0.5) as b:
            started = time.monotonic()
            other = b.lock("abandoned")
            other.acquire(timeout=10)
            assert time.monotonic() - started < 5
            other.release()


def test_a_heartbeat_keeps_a_lease_past_its_ttl(
    shared_urls: tuple[str, str], tmp_path: Path
) -> None:
    with (
        _machine(shared_urls, tmp_path / "a", lease_ttl=0.5) as a,
        _machine(shared_urls, tmp_path / "b", lease_ttl=0.5) as b,
    ):
        a.create("kept")
        lease = a.lock("kept")
        lease.acquire()
        time.sleep(1.5)  # three times the ttl: renewed by the heartbeat
        with pytest.raises(ProfileBusy, match="pid"):
            b.lock("kept").acquire(timeout=0.3)
        assert not lease.lost
        lease.release()
        with b.lock("kept", timeout=1):
            pass


def test_names_stay_unique_across_machines(shared_urls: tuple[str, str], tmp_path: Path) -> None:
    stores = [_machine(shared_urls, tmp_path / f"m{i}") for i in range(8)]
    try:
        created, errors = _race(8, lambda i: stores[i].create("only-one"))
    finally:
        for s in stores:
            s.close()
    assert len(created) == 1 and all(isinstance(e, Conflict) for e in errors)


# ----------------------------------------------------------------------------- transfer


def test_transfer_to_the_shared_backend_and_back(
    request: pytest.FixtureRequest, tmp_path: Path, shared_urls: tuple[str, str]
) -> None:
    source_dir = chromium_dir(tmp_path / "state", seed=3)
    embedded_gen = store_on(request, tmp_path / "embedded", "embedded")
    embedded = next(embedded_gen)
    embedded.create("travels", labels={"team": "data"}, description="moves")
    embedded.commit_state("travels", source_dir)  # a full manifest...
    (source_dir / "Default" / "note-1").write_bytes(b"one")
    embedded.commit_state("travels", source_dir)  # ...and deltas against it, which no
    snap = embedded.snapshot("travels", label="before")  # profile or snapshot names itself
    (source_dir / "Default" / "note-2").write_bytes(b"two")
    embedded.commit_state("travels", source_dir)
    digest = tree_digest(source_dir)
    delta = embedded.service.manifest_of(embedded.get("travels"))  # type: ignore[attr-defined]
    assert delta is not None and delta.base is not None
    embedded.create("empty-one")
    with _machine(shared_urls, tmp_path / "fleet") as shared:
        first = transfer(embedded, shared)
        assert first.profiles_copied == 2 and first.snapshots_copied == 1
        assert first.blobs_copied >= 2 and first.events_copied >= 4  # chunks + manifest
        again = transfer(embedded, shared)  # resumable: nothing twice
        assert again.blobs_copied == again.profiles_copied == again.events_copied == 0
        moved = shared.get("travels")
        assert moved == embedded.get("travels")
        assert shared.get_snapshot(snap.id) == embedded.get_snapshot(snap.id)
        assert len(shared.audit(limit=100).data) == len(embedded.audit(limit=100).data)
        out = tmp_path / "out.tar.gz"
        shared.export_state("travels", out)
        unpack_archive(out, tmp_path / "unpacked")
        assert tree_digest(tmp_path / "unpacked") == digest
        assert shared.blobs.exists(delta.base.checksum)  # the deltas' base came along
        restored = shared.restore(snap.id, name="before")
        shared.export_state(restored.id, tmp_path / "before.tar.gz")
        unpack_archive(tmp_path / "before.tar.gz", tmp_path / "before")
        assert (tmp_path / "before" / "Default" / "note-1").read_bytes() == b"one"
        assert not (tmp_path / "before" / "Default" / "note-2").exists()
        with ProfileStore(tmp_path / "back-home") as back:
            transfer(shared, back)
            assert back.get("travels") == moved
            assert back.get("empty-one").status == "empty"
    embedded_gen.close()
