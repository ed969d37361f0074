"""Import, export and the lifecycle of committed state, through the ProfileStore."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from support.backends import store_on

from driver import Session
from profiles import (
    ArchiveInvalid,
    NoStateData,
    ProfileBusy,
    ProfileStore,
    StateCorrupt,
    ValidationFailed,
)
from profiles.models import Profile
from profiles.service.catalog import CatalogService
from profiles.state.archive import detect_codec, tree_digest, unpack_archive

from conftest import require_engine

# The behaviour suite runs on every backend: embedded, PostgreSQL + S3, and HTTP.
pytestmark = pytest.mark.backends()


@pytest.fixture(scope="module")
def chromium_state(tmp_path_factory: pytest.TempPathFactory, http_server: str) -> Path:
    """A .tar.gz exported from a real Chromium session that logged in to a local page."""
    require_engine("chromium")
    home = tmp_path_factory.mktemp("source-home")
    archive = home / "state.tar.gz"
    with ProfileStore(home) as store:
        with Session(profile="source", store=store) as page:
            page.goto(f"{http_server}/set-cookie")
            page.evaluate("window.bumpCounter()")
        store.export_state("source", archive)
    return archive


def test_import_then_export_round_trip(
    store: ProfileStore, chromium_state: Path, tmp_path: Path
) -> None:
    store.create("target")
    profile = store.import_state("target", chromium_state, browser_version="156.0.1.2")
    assert profile.status == "ready"
    assert profile.browser_version == "156.0.1.2"
    assert profile.cookie_domains == ["127.0.0.1"]
    assert profile.checksum and profile.blob_size
    assert [e.type for e in store.audit(profile="target").data][:1] == ["state.uploaded"]

    for codec, suffix in (("gzip", ".tar.gz"), ("zstd", ".tar.zst")):
        out = tmp_path / f"out{suffix}"
        written = store.export_state("target", out, codec=codec)  # type: ignore[arg-type]
        assert written == out.stat().st_size
        assert detect_codec(out.read_bytes()[:4]) == codec
        unpack_archive(out, tmp_path / codec)
    assert tree_digest(tmp_path / "gzip") == tree_digest(tmp_path / "zstd")
    assert (tmp_path / "gzip" / "Local State").is_file()

    # A file object works as well as a path, both ways.
    buffer = io.BytesIO()
    store.export_state("target", buffer)
    buffer.seek(0)
    store.create("again")
    assert store.import_state("again", buffer).cookie_domains == ["127.0.0.1"]


def test_import_errors_leave_the_profile_as_it_was(
    store: ProfileStore, chromium_state: Path, tmp_path: Path
) -> None:
    store.create("kept")
    before = store.import_state("kept", chromium_state)

    with pytest.raises(ValidationFailed, match="No file provided"):
        store.import_state("kept", None)
    with pytest.raises(ValidationFailed, match="No file provided"):
        store.import_state("kept", tmp_path / "missing.tar.gz")

    zipped = tmp_path / "state.tar.gz"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("Local State", "{}")
    with pytest.raises(ArchiveInvalid, match=r"Only \.tar\.gz") as err:
        store.import_state("kept", zipped)
    assert err.value.status == 400

    not_a_profile = tmp_path / "notes.tar.gz"
    with tarfile.open(not_a_profile, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("notes.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveInvalid, match="no Chromium, Firefox or WebKit profile"):
        store.import_state("kept", not_a_profile)

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(chromium_state.read_bytes()[: chromium_state.stat().st_size // 2])
    with pytest.raises(ArchiveInvalid, match="not a complete"):
        store.import_state("kept", truncated)

    store.create("firefox-one", archetype="desktop-firefox")
    with pytest.raises(ValidationFailed, match=r"chromium profile.*desktop-firefox"):
        store.import_state("firefox-one", chromium_state)
    with pytest.raises(ValidationFailed, match="browser_name"):
        store.import_state("kept", chromium_state, browser_name="firefox")
    with pytest.raises(ValidationFailed, match="Unsupported browser_name"):
        store.import_state("kept", chromium_state, browser_name="netscape")

    after = store.get("kept")
    assert after == before
    assert store.get("firefox-one").status == "empty"
    assert not list(store.tmp_dir.iterdir())


def test_status_is_uploading_during_an_import(
    local_store: ProfileStore, chromium_state: Path
) -> None:
    local_store.create("watched")
    seen: set[str] = set()

    def progress(done: int) -> None:
        seen.add(local_store.get("watched").status)

    local_store.import_state("watched", chromium_state, progress=progress)
    assert seen == {"uploading"}
    assert local_store.get("watched").status == "ready"


def test_an_import_that_died_is_repaired(local_store: ProfileStore, chromium_state: Path) -> None:
    profile = local_store.create("interrupted")
    with local_store.catalog.transaction() as tx:  # what a process killed mid-import leaves
        tx.set_status(profile.id, "uploading")
    lock = local_store.lock("interrupted")
    lock.acquire()
    try:
        repaired, _ = local_store.checkout("interrupted", lock=lock)
    finally:
        lock.release()
    assert repaired.status == "empty"


def test_import_waits_for_the_writer_lock(store: ProfileStore, chromium_state: Path) -> None:
    store.create("locked")
    holder = store.lock("locked")
    holder.acquire()
    try:
        with pytest.raises(ProfileBusy):
            store.import_state("locked", chromium_state, lock_timeout=0.1)
    finally:
        holder.release()
    assert store.get("locked").status == "empty"


def test_export_without_state_is_the_documented_error(store: ProfileStore, tmp_path: Path) -> None:
    store.create("blank")
    with pytest.raises(NoStateData, match="Profile has no data to download") as err:
        store.export_state("blank", tmp_path / "x.tar.gz")
    assert err.value.status == 400
    assert not (tmp_path / "x.tar.gz").exists()


def test_state_bytes_are_shared_and_freed(local_store: ProfileStore, chromium_state: Path) -> None:
    local_store.create("one")
    checksum = local_store.import_state("one", chromium_state).checksum
    assert checksum is not None
    local_store.clone("one", name="two", with_state=True)
    snap = local_store.snapshot("one")
    local_store.delete("one")
    assert local_store.blobs.exists(checksum)  # the clone and the snapshot still use it
    local_store.delete("two")
    assert local_store.blobs.exists(checksum)  # the snapshot still does
    restored = local_store.restore(snap.id)
    assert restored.checksum == checksum and restored.status == "ready"
    local_store.delete_snapshot(snap.id)
    local_store.delete(restored.id)
    # A full manifest, which deltas elsewhere may name as their base, waits for the
    # collector, as do its packs (maybe shared).
    assert local_store.blobs.exists(checksum)
    local_store.collect_garbage(min_age=0)
    assert not list(local_store.blobs.list())


def test_collect_garbage_frees_only_old_orphans(
    local_store: ProfileStore, chromium_state: Path
) -> None:
    local_store.create("live")
    live = local_store.import_state("live", chromium_state).checksum
    orphan = hashlib.sha256(b"orphan").hexdigest()  # bytes of a commit that then crashed
    local_store.blobs.put(orphan, io.BytesIO(b"orphan"), size=6)
    assert local_store.collect_garbage() == []  # too young: could be a commit in flight
    time.sleep(1.1)
    assert local_store.collect_garbage(min_age=1.0) == [orphan]
    assert not local_store.blobs.exists(orphan)
    assert live is not None and local_store.blobs.exists(live)


def test_a_compacted_pack_is_collected_once_no_kept_state_names_it(
    local_store: ProfileStore, tmp_path: Path
) -> None:
    """A commit that rewrote most of a pack copies what it still uses into its own pack;
    the old pack stays while a snapshot's state names it and goes with the snapshot."""
    import random

    store = local_store
    store.create("packs")
    rng = random.Random(5)

    def commit(big: bytes) -> Profile:
        with store.lock("packs") as lease:
            _, work = store.checkout("packs", lock=lease)
            (work / "Default").mkdir(exist_ok=True)
            (work / "Default" / "big.bin").write_bytes(big)
            if not (work / "Default" / "keep.bin").exists():
                (work / "Default" / "keep.bin").write_bytes(rng.randbytes(200_000))
            return store.commit_state("packs", work, epoch=lease.epoch)

    first = commit(rng.randbytes(3 * 1024 * 1024))
    assert isinstance(store.service, CatalogService)
    old = store.service.manifest_of(first)
    assert old is not None and len(old.packs) == 1
    snap = store.snapshot("packs")
    second = commit(rng.randbytes(3 * 1024 * 1024))
    new = store.service.manifest_of(second)
    assert new is not None
    assert old.blob_checksums().isdisjoint(new.blob_checksums())  # "keep" moved along
    assert store.collect_garbage(min_age=0) == []  # the snapshot still names the old pack
    assert all(store.blobs.exists(b) for b in old.blob_checksums())
    store.delete_snapshot(snap.id)
    freed = set(store.collect_garbage(min_age=0))
    assert old.blob_checksums() <= freed
    assert all(store.blobs.exists(b) for b in new.blob_checksums())
    target = tmp_path / "export.tar.zst"
    store.export_state("packs", target, codec="zstd")  # every chunk read and checked
    assert store.verify(full=True) == []


def test_delta_states_keep_their_base_and_free_at_once(
    local_store: ProfileStore, tmp_path: Path
) -> None:
    """A small commit stores its manifest as a delta against the last full one: the delta
    goes as soon as nothing names it, the full manifest it needs stays while any kept
    delta names it (the collector decides), and a missing base is a clear corruption that
    names the profile, never a partial state."""
    store = local_store
    store.create("deltas")
    service = store.service
    assert isinstance(service, CatalogService)

    def commit(name: str, data: bytes) -> Profile:
        with store.lock("deltas") as lease:
            _, work = store.checkout("deltas", lock=lease)
            (work / "Default").mkdir(exist_ok=True)
            for n in range(30):  # enough entries for a delta to pay
                if not (work / "Default" / f"f{n}").exists():
                    (work / "Default" / f"f{n}").write_bytes(b"x" * 100 + bytes([n]))
            (work / "Default" / name).write_bytes(data)
            return store.commit_state("deltas", work, epoch=lease.epoch)

    full = commit("a", b"first")
    assert full.checksum is not None
    assert (service.manifest_of(full) or pytest.fail()).base is None
    snap = store.snapshot("deltas")  # keeps the full manifest
    first_delta = commit("b", b"second")
    delta = service.manifest_of(first_delta)
    assert delta is not None and delta.base is not None
    assert delta.base.checksum == full.checksum
    second_delta = commit("c", b"third")
    assert first_delta.checksum is not None and second_delta.checksum is not None
    assert not store.blobs.exists(first_delta.checksum)  # a replaced delta goes at once
    store.delete_snapshot(snap.id)
    assert store.blobs.exists(full.checksum)  # the base of the current state stays
    assert full.checksum not in store.collect_garbage(min_age=0)
    assert store.verify(full=True) == []
    # As a fresh process would (no manifest kept in memory), the delta is read with its base.
    service.manifests.forget()
    target = tmp_path / "export.tar.gz"
    store.export_state("deltas", target)
    with tarfile.open(target) as tar:
        assert tar.extractfile("Default/c").read() == b"third"  # type: ignore[union-attr]
        assert "Default/b" in tar.getnames()
    # Without its base the state is corrupt: named, nothing partial served.
    store.blobs.delete(full.checksum)
    service.manifests.forget()
    with pytest.raises(StateCorrupt, match="base manifest") as caught:
        store.export_state("deltas", tmp_path / "broken.tar.gz")
    assert caught.value.details["profile_id"] == second_delta.id
    assert not (tmp_path / "broken.tar.gz").exists()
    assert any("base manifest" in why for _, why in store.verify())


def _exported_files(store: ProfileStore, ref: str, where: Path) -> dict[str, str]:
    archive = where.with_suffix(".tar.gz")
    store.export_state(ref, archive)
    with archive.open("rb") as src:
        unpack_archive(src, where)
    return tree_digest(where)


def test_migrate_converts_an_archive_state_and_keeps_its_files(
    local_store: ProfileStore, chromium_state: Path, tmp_path: Path
) -> None:
    store = local_store
    assert isinstance(store.service, CatalogService)
    store.create("old")
    store.chunked = False  # as the store wrote states before chunking: a whole archive
    archived = store.import_state("old", chromium_state)
    assert archived.checksum is not None and store.service.manifest_of(archived) is None
    snap = store.snapshot("old")
    files = _exported_files(store, "old", tmp_path / "before")
    with pytest.raises(ValidationFailed, match="chunked=False"):
        store.migrate("old")
    store.chunked = True
    with store.lock("old"), pytest.raises(ProfileBusy):  # a session holds it
        store.migrate("old", lock_timeout=0)
    migrated = store.migrate("old")
    assert migrated is not None and migrated.checksum not in (None, archived.checksum)
    manifest = store.service.manifest_of(migrated)
    assert manifest is not None and manifest.version == 2 and manifest.base is None
    event = store.audit(profile="old", limit=1).data[0]
    assert event.type == "state.uploaded" and event.payload["migrated_from"] == "archive"
    assert _exported_files(store, "old", tmp_path / "after") == files
    assert store.migrate("old") is None  # already current
    # The snapshot still names the archive: it stays, and restores as it was taken.
    assert store.blobs.exists(archived.checksum)
    assert store.restore(snap.id).checksum == archived.checksum
    assert store.verify(full=True) == []


def test_migrate_packs_a_state_of_the_first_chunked_format(
    local_store: ProfileStore, chromium_state: Path, tmp_path: Path
) -> None:
    """Format 1 stored every chunk as a blob of its own: migrate moves them into packs."""
    from profiles.catalog.base import StateUpdate
    from profiles.state.manifest import Manifest, encode_manifest

    store = local_store
    service = store.service
    assert isinstance(service, CatalogService)
    store.create("v1")
    packed = store.import_state("v1", chromium_state)
    current = service.manifest_of(packed)
    assert current is not None
    for chunk, (pack, offset, length) in current.where().items():
        raw = store.blobs.read_range(pack, offset, length)
        store.blobs.put(chunk, io.BytesIO(raw), size=len(raw))
    v1 = Manifest.model_construct(version=1, engine="chromium", entries=current.entries)
    spool = tmp_path / "v1.manifest"
    spool.write_bytes(encode_manifest(v1))
    checksum = hashlib.sha256(spool.read_bytes()).hexdigest()
    old = service.commit_archive(
        packed,
        spool,
        StateUpdate(
            checksum=checksum,
            blob_size=spool.stat().st_size,
            uploaded_at=packed.blob_uploaded_at,
            browser_version=packed.browser_version,
            cookie_domains=packed.cookie_domains,
        ),
        epoch=None,
        event="state.uploaded",
    )
    assert (service.manifest_of(old) or pytest.fail()).version == 1
    files = _exported_files(store, "v1", tmp_path / "before")
    migrated = store.migrate("v1")
    assert migrated is not None and migrated.checksum != checksum
    manifest = service.manifest_of(migrated)
    assert manifest is not None and manifest.version == 2
    assert manifest.blob_checksums() == {p for p, _ in manifest.packs}  # no loose chunk
    assert store.audit(profile="v1", limit=1).data[0].payload["migrated_from"] == "chunks"
    assert _exported_files(store, "v1", tmp_path / "after") == files
    store.collect_garbage(min_age=0)  # the loose chunks go; the packed state stays whole
    assert not any(store.blobs.exists(c) for c in v1.chunk_checksums())
    assert store.verify(full=True) == []


def test_migrate_over_http_has_nothing_to_do_without_a_state(
    home: Path, request: pytest.FixtureRequest
) -> None:
    # A server that speaks chunks takes a migration's commit like any other (the conversion
    # itself is tested in test_http_chunks.py).
    with contextlib.closing(store_on(request, home, "http")) as stores:
        store = next(stores)
        store.create("remote")
        assert store.migrate("remote") is None
