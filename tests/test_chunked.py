"""Chunked states: a commit costs what changed; restores are complete, verified, atomic."""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import zstandard

from profiles.blobs.local import LocalBlobStore
from profiles.errors import ArchiveInvalid, ProfileError
from profiles.state import chunked
from profiles.state.archive import ArchiveLimits, _walk, pack_dir, unpack_archive
from profiles.state.chunked import (
    CHUNK_SIZE,
    MANIFEST_MAGIC,
    Manifest,
    PackResult,
    StatCache,
    StateCorrupt,
    apply_chunked,
    encode_manifest,
    is_manifest,
    load_manifest,
    missing_blobs,
    pack_chunked,
    parse_manifest,
    restore_chunked,
    tar_stream,
    walk_state,
)
from profiles.state.rules import RULES

MiB = 1024 * 1024
PAST = 1_600_000_000  # whole seconds, long ago: files that old are trusted by the stat cache


# ---------------------------------------------------------------------------- profiles


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _corpus(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [f"{rng.getrandbits(32):08x}" for _ in range(500)]
    return "".join(
        f"https://{rng.choice(words)}.example.com/{rng.choice(words)}?q={rng.choice(words)};"
        for _ in range(40_000)
    ).encode()


CORPUS = _corpus(0)  # ~2 MB of URL-like text


def _text(rng: random.Random, n: int) -> bytes:
    """Compressible, profile-like bytes (URLs, JSON-ish text)."""
    out = bytearray()
    while len(out) < n:
        start = rng.randrange(len(CORPUS) - 4096)
        out += CORPUS[start : start + min(n - len(out), rng.randrange(256, 4096))]
    return bytes(out)


def _sqlite(path: Path, rows: int, rng: random.Random, row_bytes: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        db.execute(
            "CREATE TABLE cookies (id INTEGER PRIMARY KEY, host TEXT, name TEXT, value TEXT)"
        )
        db.executemany(
            "INSERT INTO cookies VALUES (?, ?, ?, ?)",
            (
                (i, f"h{i % 97}.example.com", f"n{i}", _text(rng, row_bytes).decode())
                for i in range(rows)
            ),
        )
        db.commit()
    finally:
        db.close()


def make_profile(root: Path, *, mb: float = 2, seed: int = 0) -> Path:
    """A Chromium-shaped user-data-dir of about ``mb`` MB (kept files), with excluded
    caches and a lock beside it, all with whole-second mtimes in the past."""
    rng = random.Random(seed)
    total = int(mb * MiB)
    _write(root / "Local State", json.dumps({"browser": {"last_version": "130.0"}}).encode())
    _write(root / "First Run", b"")
    _write(root / "SingletonLock", b"excluded")
    _write(root / "Default" / "Preferences", json.dumps({"profile": {"name": "x"}}).encode())
    _sqlite(root / "Default" / "Cookies", rows=max(50, total // 20_000), rng=rng)
    _sqlite(root / "Default" / "History", rows=max(50, int(total * 0.3) // 260), rng=rng)
    leveldb = root / "Default" / "Local Storage" / "leveldb"
    _write(leveldb / "CURRENT", b"MANIFEST-000001\n")
    _write(leveldb / "LOG", b"")
    _write(leveldb / "MANIFEST-000001", _text(rng, 200))
    _write(leveldb / "000003.log", _text(rng, int(total * 0.1)))
    idb = root / "Default" / "IndexedDB" / "https_example.com_0.indexeddb.leveldb"
    _write(idb / "CURRENT", b"MANIFEST-000001\n")
    _write(idb / "000005.ldb", _text(rng, int(total * 0.1)) + rng.randbytes(int(total * 0.05)))
    blobs = root / "Default" / "IndexedDB" / "https_example.com_0.indexeddb.blob" / "1" / "00"
    left = int(total * 0.4)
    i = 0
    while left > 0:
        n = min(left, rng.choice([3_000, 40_000, 300_000, 1_500_000]))
        _write(blobs / str(i), rng.randbytes(n))
        left -= n
        i += 1
    (root / "Default" / "Extension State").mkdir(parents=True)
    _write(root / "Default" / "Cache" / "Cache_Data" / "data_0", rng.randbytes(50_000))
    _write(root / "Default" / "Code Cache" / "js" / "index", b"cache")
    set_mtimes(root)
    return root


def set_mtimes(root: Path, base: int = PAST) -> None:
    """Whole-second mtimes in the past, children before their directories."""
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, path in enumerate(paths):
        t = (base + i) * 1_000_000_000
        os.utime(path, ns=(t, t))


def update_cookie(root: Path, row: int = 7, value: str = "changed") -> None:
    db = sqlite3.connect(root / "Default" / "Cookies")
    try:
        db.execute("UPDATE cookies SET value = ? WHERE id = ?", (value, row))
        db.commit()
    finally:
        db.close()


def snapshot(root: Path, *, seconds: bool = False) -> dict[str, tuple[str, bytes | None, int]]:
    """Every kept entry: kind, bytes, mtime (ns, or whole seconds)."""
    rules = RULES["chromium"]
    out: dict[str, tuple[str, bytes | None, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rules.excludes(rel):
            continue
        mtime = path.stat().st_mtime_ns
        if seconds:
            mtime //= 1_000_000_000
        if path.is_dir():
            out[rel] = ("dir", None, mtime)
        else:
            out[rel] = ("file", path.read_bytes(), mtime)
    return out


def file_contents(root: Path) -> dict[str, bytes | None]:
    return {rel: data for rel, (_kind, data, _m) in snapshot(root).items()}


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return make_profile(tmp_path / "profile")


def store_bytes(blobs: LocalBlobStore) -> int:
    return sum(b.size for b in blobs.list())


def pack(directory: Path, blobs: LocalBlobStore, **kwargs: Any) -> PackResult:
    return pack_chunked(directory, "chromium", blobs, **kwargs)


def commit_again(directory: Path, blobs: LocalBlobStore, last: PackResult) -> PackResult:
    return pack(directory, blobs, previous=last.manifest, previous_stat=last.stat_cache)


# ---------------------------------------------------------------------------- walking


def test_walk_is_pack_dirs_walk(profile: Path) -> None:
    ours = [(rel, entry is None) for rel, entry in walk_state(profile, "chromium")]
    theirs = [(rel, entry is None) for rel, entry, _ in _walk(profile, "chromium", True)]
    assert ours == theirs
    assert ("Default/Cache", True) in ours
    assert ("SingletonLock", True) in ours


# ---------------------------------------------------------------------------- round trip


def test_round_trip_restores_bytes_and_mtimes(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    # Sub-second mtimes survive too.
    t = PAST * 1_000_000_000 + 123_456_789
    os.utime(profile / "Default" / "Preferences", ns=(t, t))
    result = pack(profile, blobs)
    assert result.stats.files_read == result.stats.files > 10
    assert result.stats.chunks_written > 0
    target = tmp_path / "restored"
    restored = restore_chunked(result.manifest, blobs, target)
    assert snapshot(target) == snapshot(profile)
    assert restored.stats.files == result.stats.files
    assert not (target / "Default" / "Cache").exists()
    assert not (target / "SingletonLock").exists()
    assert (target / "Default" / "Preferences").stat().st_mtime_ns == t
    assert (target / "Default" / "Cookies").stat().st_mode & 0o777 == 0o600
    assert (target / "Default").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # The restored tree is the same state: the same identity, nothing written.
    again = pack(target, blobs)
    assert again.checksum == result.checksum
    assert again.stats.chunks_written == 0
    assert again.stats.bytes_written == 0


def test_manifest_is_a_blob_named_by_its_checksum(profile: Path, blobs: LocalBlobStore) -> None:
    result = pack(profile, blobs)
    loaded = load_manifest(blobs, result.checksum)
    assert loaded == result.manifest
    assert loaded.checksum == result.checksum == result.manifest.checksum
    with blobs.open(result.checksum) as f:
        head = f.read(64)
    assert is_manifest(head)
    assert is_manifest(head[:8])
    # Any zstd tool reads it (the magic is a skippable frame), and it is canonical JSON.
    text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(encode_manifest(loaded))).read()
    doc = json.loads(text)
    assert json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() == text
    # Every blob is the manifest or one of its packs; every chunk is in a pack.
    assert {b.checksum for b in blobs.list()} == loaded.blob_checksums() | {result.checksum}
    assert loaded.version == 2
    assert set(loaded.where()) == loaded.chunk_checksums()
    assert {pack for pack, _ in loaded.packs} == loaded.blob_checksums()


def test_old_archives_are_not_manifests(profile: Path) -> None:
    raw = io.BytesIO()
    pack_dir(profile, raw, engine="chromium", codec="zstd")
    assert not is_manifest(raw.getvalue()[:64])
    raw = io.BytesIO()
    pack_dir(profile, raw, engine="chromium", codec="gzip")
    assert not is_manifest(raw.getvalue()[:64])
    assert not is_manifest(b"")


def test_edge_sizes_round_trip(tmp_path: Path, blobs: LocalBlobStore) -> None:
    root = tmp_path / "p"
    rng = random.Random(3)
    sizes = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]
    for n in sizes:
        _write(root / "d" / f"f{n}", rng.randbytes(n))
    _write(root / "zeros", bytes(4 * CHUNK_SIZE))
    (root / "empty-dir" / "nested").mkdir(parents=True)
    set_mtimes(root)
    result = pack(root, blobs)
    by_path = {e.path: e for e in result.manifest.entries}
    assert [len(by_path[f"d/f{n}"].chunks) for n in sizes] == [0, 1, 1, 1, 2, 3]
    # Four identical zero chunks are one blob.
    assert len({c[0] for c in by_path["zeros"].chunks}) == 1
    restore_chunked(result.manifest, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(root)


# ---------------------------------------------------------------------------- dedup


def test_identical_commit_writes_nothing_and_reads_nothing(
    profile: Path, blobs: LocalBlobStore
) -> None:
    first = pack(profile, blobs)
    second = commit_again(profile, blobs, first)
    assert second.checksum == first.checksum
    assert second.stats.files_read == 0
    assert second.stats.files_reused == first.stats.files
    assert second.stats.chunks_written == 0
    assert second.stats.bytes_written == 0


def test_without_stat_cache_files_are_hashed_not_stored(
    profile: Path, blobs: LocalBlobStore
) -> None:
    first = pack(profile, blobs)
    second = pack(profile, blobs, previous=first.manifest)
    assert second.checksum == first.checksum
    assert second.stats.files_read == first.stats.files
    assert second.stats.chunks_reused == second.stats.chunks
    assert second.stats.bytes_written == 0


def test_one_cookie_reads_and_stores_one_file(
    profile: Path, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pack(profile, blobs)
    update_cookie(profile)
    opened: list[str] = []
    real_open = chunked._open_for_read

    def counting(path: str) -> BinaryIO:
        opened.append(Path(path).relative_to(profile).as_posix())
        return real_open(path)

    monkeypatch.setattr(chunked, "_open_for_read", counting)
    second = commit_again(profile, blobs, first)
    assert opened == ["Default/Cookies"]
    assert second.stats.files_read == 1
    assert second.checksum != first.checksum
    assert 1 <= second.stats.chunks_written <= 2
    cookies = next(e for e in second.manifest.entries if e.path == "Default/Cookies")
    assert cookies.path not in second.stat_cache.entries  # just written: racily clean
    # The next commit reads it again (racy), but nothing else, and stores nothing.
    opened.clear()
    third = commit_again(profile, blobs, second)
    assert opened == ["Default/Cookies"]
    assert third.checksum == second.checksum
    assert third.stats.bytes_written == 0


def test_stat_cache_only_vouches_for_its_manifest(profile: Path, blobs: LocalBlobStore) -> None:
    first = pack(profile, blobs)
    stale = StatCache("0" * 64, first.stat_cache.entries)
    second = pack(profile, blobs, previous=first.manifest, previous_stat=stale)
    assert second.stats.files_read == first.stats.files


def test_a_rewritten_file_with_the_same_size_and_mtime_is_read(
    profile: Path, blobs: LocalBlobStore
) -> None:
    first = pack(profile, blobs)
    prefs = profile / "Default" / "Preferences"
    st = prefs.stat()
    data = prefs.read_bytes()
    prefs.write_bytes(data.replace(b"x", b"y"))
    os.utime(prefs, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves
    second = commit_again(profile, blobs, first)
    assert second.stats.files_read == 1
    assert second.checksum != first.checksum


def test_stat_cache_survives_bytes_and_refuses_garbage(
    profile: Path, blobs: LocalBlobStore
) -> None:
    cache = pack(profile, blobs).stat_cache
    assert StatCache.from_bytes(cache.to_bytes()) == cache
    for garbage in (b"", b"{", b"[]", b'{"manifest": 1, "entries": {}}', b'{"manifest": "x"}'):
        assert StatCache.from_bytes(garbage) is None
    assert StatCache.from_bytes(b'{"manifest":"x","entries":{"a":[1,2,3]}}') is None


def test_one_row_update_on_a_100_mb_profile_writes_under_1_mb(
    tmp_path: Path, blobs: LocalBlobStore
) -> None:
    root = make_profile(tmp_path / "big", mb=100, seed=1)
    first = pack(root, blobs)
    assert first.stats.uncompressed_bytes > 90 * MiB
    update_cookie(root, row=123)
    second = commit_again(root, blobs, first)
    assert second.stats.files_read == 1
    assert second.stats.bytes_written < 1 * MiB, second.stats
    assert second.stats.chunks_written <= 3


def test_a_ten_percent_change_writes_about_ten_percent(
    tmp_path: Path, blobs: LocalBlobStore
) -> None:
    root = make_profile(tmp_path / "p", mb=20, seed=2)
    first = pack(root, blobs)
    # Overwrite blob files worth ~10% of the profile with new (incompressible) bytes.
    rng = random.Random(9)
    blob_dir = root / "Default" / "IndexedDB" / "https_example.com_0.indexeddb.blob" / "1" / "00"
    changed = files = 0
    for path in sorted(blob_dir.iterdir(), key=lambda p: int(p.name)):
        if changed >= first.stats.uncompressed_bytes // 10:
            break
        n = path.stat().st_size
        path.write_bytes(rng.randbytes(n))
        changed += n
        files += 1
    second = commit_again(root, blobs, first)
    assert second.stats.files_read == files
    assert second.stats.bytes_read == changed
    written = second.stats.bytes_written - second.stats.manifest_bytes
    assert changed <= written < 1.01 * changed


def test_ten_one_cookie_commits_cost_under_1_1x_one(tmp_path: Path, blobs: LocalBlobStore) -> None:
    root = make_profile(tmp_path / "p", mb=20, seed=4)
    last = pack(root, blobs)
    one = store_bytes(blobs)
    for i in range(10):
        update_cookie(root, row=i, value=f"v{i}")
        last = commit_again(root, blobs, last)
    assert store_bytes(blobs) < 1.1 * one


def test_a_state_shares_the_packs_of_the_state_it_came_from(
    tmp_path: Path, blobs: LocalBlobStore
) -> None:
    a = make_profile(tmp_path / "a", seed=5)
    first = pack(a, blobs)
    before = store_bytes(blobs)
    b = tmp_path / "b"
    restore_chunked(first.manifest, blobs, b)
    # The same tree packs to the same packs: packing is deterministic.
    again = pack(b, blobs)
    assert again.checksum == first.checksum
    assert again.stats.bytes_written == 0
    # A state made from another (a clone, an import over a profile) with one file more
    # stores that file and its manifest: the rest stays in the first state's packs.
    (b / "Default" / "new.txt").write_bytes(b"only in b")
    second = pack(b, blobs, previous=first.manifest)
    assert second.stats.files_read == second.stats.files
    assert second.stats.chunks_written == 1
    assert second.stats.packs_written == 1
    assert store_bytes(blobs) - before < 64 * 1024
    assert first.manifest.blob_checksums() < second.manifest.blob_checksums()


# ---------------------------------------------------------------------------- restore


def test_parallel_restore_equals_sequential(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    manifest = pack(profile, blobs).manifest
    restore_chunked(manifest, blobs, tmp_path / "one", workers=1)
    restore_chunked(manifest, blobs, tmp_path / "many", workers=16)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "many") == snapshot(profile)


def test_restore_stat_cache_lets_the_next_commit_read_nothing(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    first = pack(profile, blobs)
    target = tmp_path / "work"
    restored = restore_chunked(first.manifest, blobs, target)
    again = pack(target, blobs, previous=first.manifest, previous_stat=restored.stat_cache)
    assert again.stats.files_read == 0
    assert again.checksum == first.checksum


def test_restore_refuses_an_existing_target_unless_replacing(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    manifest = pack(profile, blobs).manifest
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(ValueError):
        restore_chunked(manifest, blobs, target)
    restore_chunked(manifest, blobs, target, replace=True)
    assert snapshot(target) == snapshot(profile)


def _chunk_at(
    blobs: LocalBlobStore, manifest: Manifest, member: str, index: int = 0
) -> tuple[Path, int, int]:
    """The pack file holding a member's chunk, and the chunk's offset and length in it."""
    entry = next(e for e in manifest.entries if e.path == member)
    pack, offset, length = manifest.where()[entry.chunks[index][0]]
    path = blobs.local_path(pack)
    assert path is not None
    return path, offset, length


def _chunk_path(blobs: LocalBlobStore, manifest: Manifest, member: str, index: int = 0) -> Path:
    return _chunk_at(blobs, manifest, member, index)[0]


def test_missing_chunk_is_state_corrupt_and_leaves_nothing(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    manifest = pack(profile, blobs).manifest
    member = "Default/History"
    _chunk_path(blobs, manifest, member, 1).unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StateCorrupt) as caught:
        restore_chunked(manifest, blobs, out / "target", workers=4)
    assert isinstance(caught.value, ProfileError)
    assert caught.value.code == "StateCorrupt" and caught.value.status == 500
    # The whole pack is gone: the error names the first chunk missed, its file and pack.
    lost = caught.value.details["blob"]
    in_pack = {
        e.path for e in manifest.entries for c in e.chunks if manifest.where()[c[0]][0] == lost
    }
    assert member in in_pack
    assert caught.value.details["member"] in in_pack
    assert caught.value.details["chunk"] in str(caught.value)
    assert lost in str(caught.value)
    assert list(out.iterdir()) == []
    assert missing_blobs(manifest, blobs) == [caught.value.details["blob"]]


def test_failed_restore_keeps_the_old_target(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    manifest = pack(profile, blobs).manifest
    _chunk_path(blobs, manifest, "Default/Cookies").unlink()
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(StateCorrupt):
        restore_chunked(manifest, blobs, target, replace=True)
    assert [p.name for p in target.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs", "profile", "t"]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"garbage" + data[7:], id="not zstd"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(
            lambda data: zstandard.ZstdCompressor().compress(
                bytes(zstandard.frame_content_size(data))
            ),
            id="other bytes, same length",
        ),
        pytest.param(lambda data: zstandard.ZstdCompressor().compress(bytes(1 << 30)), id="a bomb"),
    ],
)
def test_damaged_chunk_is_state_corrupt(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    manifest = pack(profile, blobs).manifest
    path, offset, length = _chunk_at(blobs, manifest, "Default/History")
    path.chmod(0o600)
    data = path.read_bytes()
    path.write_bytes(
        data[:offset] + damage(data[offset : offset + length]) + data[offset + length :]
    )
    with pytest.raises(StateCorrupt, match=r"damaged|does not hold"):
        restore_chunked(manifest, blobs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(StateCorrupt):
        b"".join(tar_stream(manifest, blobs))


def test_missing_or_damaged_manifest_is_state_corrupt(profile: Path, blobs: LocalBlobStore) -> None:
    result = pack(profile, blobs)
    path = blobs.local_path(result.checksum)
    assert path is not None
    path.chmod(0o600)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(StateCorrupt, match="does not hash"):
        load_manifest(blobs, result.checksum)
    path.unlink()
    with pytest.raises(StateCorrupt, match="missing"):
        load_manifest(blobs, result.checksum)


def test_verify_rereads_everything_and_repairs_missing_blobs(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    first = pack(profile, blobs)
    _chunk_path(blobs, first.manifest, "Default/History").unlink()
    assert len(missing_blobs(first.manifest, blobs)) == 1
    checked = pack(
        profile, blobs, previous=first.manifest, previous_stat=first.stat_cache, verify=True
    )
    assert checked.stats.files_read == first.stats.files
    assert checked.stats.chunks_written == len(first.manifest.chunk_checksums())
    assert checked.checksum == first.checksum
    assert missing_blobs(first.manifest, blobs) == []
    restore_chunked(first.manifest, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(profile)


# ---------------------------------------------------------------------------- hostile


def _hostile(doc: Any) -> bytes:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return MANIFEST_MAGIC + zstandard.ZstdCompressor().compress(text)


def _doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "engine": "chromium", "entries": list(entries)}


H = "a" * 64


def _file(path: str, size: int = 3, chunks: list[Any] | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "kind": "file",
        "mtime_ns": 0,
        "size": size,
        "mode": 0o644,
        "chunks": [[H, size, H]] if chunks is None else chunks,
    }


def _dir(path: str) -> dict[str, Any]:
    return {"path": path, "kind": "dir", "mtime_ns": 0, "size": 0, "mode": 0o755, "chunks": []}


HOSTILE: dict[str, tuple[bytes, str]] = {
    "absolute path": (_hostile(_doc(_file("/etc/passwd"))), "outside"),
    "dot-dot": (_hostile(_doc(_dir("a"), _file("a/../../x"))), "outside"),
    "bare dot-dot": (_hostile(_doc(_file(".."))), "outside"),
    "dot part": (_hostile(_doc(_dir("a"), _file("a/./x"))), "'.' part"),
    "empty part": (_hostile(_doc(_dir("a"), _file("a//x"))), "empty"),
    "control character": (_hostile(_doc(_file("a\nb"))), "control character"),
    "lone surrogate": (_hostile(_doc(_file("a\udcffb"))), "surrogate|UTF-8"),
    "duplicate path": (_hostile(_doc(_file("a"), _file("a"))), "repeated"),
    "file and dir": (_hostile(_doc(_dir("a"), _file("a"))), "repeated"),
    "unsorted": (_hostile(_doc(_file("b"), _file("a"))), "out of order"),
    "no parent": (_hostile(_doc(_file("a/b"))), "parent"),
    "file as parent": (_hostile(_doc(_file("a"), _file("a/b"))), "parent"),
    "huge size": (
        _hostile(_doc(_file("a", size=3 * 1024 * MiB, chunks=[[H, 1, H]] * 0))),
        "adding up|per file",
    ),
    "huge file": (
        _hostile(_doc(_file("a", size=3 * 1024 * MiB, chunks=[[H, 16 * MiB, H]] * 192))),
        "per file",
    ),
    "size as string": (_hostile(_doc({**_file("a"), "size": "3"})), "size"),
    "size as float": (_hostile(_doc({**_file("a"), "size": 3.0})), "size"),
    "negative mtime": (_hostile(_doc({**_file("a"), "mtime_ns": -1})), "mtime_ns"),
    "bool mode": (_hostile(_doc({**_file("a"), "mode": True})), "mode"),
    "setuid mode": (_hostile(_doc({**_file("a"), "mode": 0o4755})), "mode"),
    "dir mode on a file": (_hostile(_doc({**_file("a"), "mode": 0o755})), "directory mode"),
    "dir with chunks": (_hostile(_doc({**_dir("a"), "size": 3, "chunks": [[H, 3, H]]})), "chunks"),
    "symlink kind": (_hostile(_doc({**_file("a"), "kind": "symlink"})), "kind"),
    "chunk lengths do not add up": (
        _hostile(_doc(_file("a", size=10, chunks=[[H, 3, H], [H, 3, H]]))),
        "adding up to 6 bytes",
    ),
    "zero-length chunk": (_hostile(_doc(_file("a", size=0, chunks=[[H, 0, H]]))), "chunks"),
    "giant chunk": (_hostile(_doc(_file("a", size=1 << 30, chunks=[[H, 1 << 30, H]]))), "chunks"),
    "bad checksum": (_hostile(_doc(_file("a", chunks=[["A" * 64, 3, H]]))), "chunks"),
    "short checksum": (_hostile(_doc(_file("a", chunks=[["ab", 3, H]]))), "chunks"),
    "chunk as object": (_hostile(_doc(_file("a", chunks=[{"c": H}]))), "chunks"),
    "extra field": (_hostile(_doc({**_file("a"), "owner": "root"})), "owner"),
    "missing field": (
        _hostile(_doc({k: v for k, v in _file("a").items() if k != "mtime_ns"})),
        "mtime_ns",
    ),
    "version 4": (_hostile({**_doc(), "version": 4}), "version"),
    "unknown engine": (_hostile({**_doc(), "engine": "lynx"}), "engine"),
    "entries not a list": (_hostile({**_doc(), "entries": {"a": 1}}), "entries"),
    "not json": (MANIFEST_MAGIC + zstandard.ZstdCompressor().compress(b"{nope"), "bad value"),
    "not canonical": (
        MANIFEST_MAGIC + zstandard.ZstdCompressor().compress(json.dumps(_doc(_file("a"))).encode()),
        "canonical",
    ),
    "no magic": (zstandard.ZstdCompressor().compress(b"{}"), "magic"),
    "not zstd": (MANIFEST_MAGIC + b"garbage", "zstd"),
    "no declared size": (
        MANIFEST_MAGIC + zstandard.ZstdCompressor(write_content_size=False).compress(b"{}"),
        "decompressed size",
    ),
    "a bomb": (MANIFEST_MAGIC + zstandard.ZstdCompressor().compress(bytes(300 * MiB)), "size"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_manifests_are_refused(name: str) -> None:
    blob, why = HOSTILE[name]
    with pytest.raises(ArchiveInvalid, match=why) as caught:
        parse_manifest(blob)
    assert caught.value.code == "ArchiveInvalid"
    assert caught.value.details["field"] == "manifest"


def test_manifest_limits_apply() -> None:
    blob = _hostile(_doc(_file("a"), _file("b"), _file("c")))
    assert len(parse_manifest(blob).entries) == 3
    with pytest.raises(ArchiveInvalid, match="more than 2 entries"):
        parse_manifest(blob, limits=ArchiveLimits(max_members=2))
    with pytest.raises(ArchiveInvalid, match="expands to more than"):
        parse_manifest(blob, limits=ArchiveLimits(max_uncompressed_bytes=5))


def test_restore_revalidates_manifests_it_is_given(blobs: LocalBlobStore, tmp_path: Path) -> None:
    bad = Manifest.model_construct(
        version=1,
        engine="chromium",
        entries=(
            chunked.Entry.model_construct(
                path="../escape", kind="file", mtime_ns=0, size=0, mode=0o644, chunks=()
            ),
        ),
    )
    with pytest.raises(ArchiveInvalid, match="outside"):
        restore_chunked(bad, blobs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["blobs"]


# ---------------------------------------------------------------------------- export


def test_tar_stream_is_what_pack_dir_writes(profile: Path, blobs: LocalBlobStore) -> None:
    manifest = pack(profile, blobs).manifest
    raw = io.BytesIO()
    pack_dir(profile, raw, engine="chromium", codec="zstd")
    expected = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw.getvalue())).read()
    assert b"".join(tar_stream(manifest, blobs)) == expected


def test_export_unpacks_and_reimports_to_the_same_state(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    first = pack(profile, blobs)
    exported = zstandard.ZstdCompressor().compress(b"".join(tar_stream(first.manifest, blobs)))
    target = tmp_path / "imported"
    unpack_archive(io.BytesIO(exported), target)
    assert file_contents(target) == file_contents(profile)
    # unpack_archive keeps file mtimes, not directory ones: give those back as the tar says.
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(exported)).read()
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        for member in tar:
            if member.isdir():
                os.utime(target / member.name, (member.mtime, member.mtime))
    assert snapshot(target) == snapshot(profile)
    again = pack(target, blobs)
    assert again.checksum == first.checksum
    assert again.stats.bytes_written == 0


# ---------------------------------------------------------------------------- apply


def _mutate(root: Path) -> None:
    """A session's worth of changes of every kind."""
    update_cookie(root)
    rng = random.Random(11)
    default = root / "Default"
    (default / "Preferences").write_bytes(b'{"changed": true}')
    blob_dir = default / "IndexedDB" / "https_example.com_0.indexeddb.blob" / "1" / "00"
    (blob_dir / "0").unlink()
    with (default / "Local Storage" / "leveldb" / "000003.log").open("ab") as f:
        f.write(_text(rng, 5000))
    idb = default / "IndexedDB" / "https_example.com_0.indexeddb.leveldb" / "000005.ldb"
    idb.write_bytes(idb.read_bytes()[: CHUNK_SIZE + 10])  # shrinks
    _write(default / "Sessions" / "Session_1", rng.randbytes(70_000))  # a new directory
    (default / "Extension State").rmdir()
    _write(default / "Extension State", b"now a file")  # a directory becomes a file
    (root / "First Run").unlink()
    (root / "First Run").mkdir()  # a file becomes a directory
    t = (PAST + 5000) * 1_000_000_000
    os.utime(root / "Local State", ns=(t, t))  # only the mtime changes


def test_incremental_apply_equals_full_restore(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    old = pack(profile, blobs)
    work = tmp_path / "work"
    at_old = restore_chunked(old.manifest, blobs, work)
    _write(work / "Default" / "Cache" / "Cache_Data" / "warm", b"kept cache")
    _mutate(profile)
    new = commit_again(profile, blobs, old)
    applied = apply_chunked(old.manifest, new.manifest, blobs, work, stat_cache=at_old.stat_cache)
    restore_chunked(new.manifest, blobs, tmp_path / "full")
    assert snapshot(work) == snapshot(tmp_path / "full")
    assert (work / "Default" / "Cache" / "Cache_Data" / "warm").read_bytes() == b"kept cache"
    stats = applied.stats
    assert stats.files_patched >= 2  # Cookies, the leveldb log, the shrunk table
    assert stats.files_touched == 1  # Local State
    assert stats.removed >= 3
    history = next(e for e in new.manifest.entries if e.path == "Default/History")
    assert stats.bytes_fetched < history.size  # only what changed came from the store
    # The returned stat cache vouches for the result: the next commit reads only racy files.
    again = pack(work, blobs, previous=new.manifest, previous_stat=applied.stat_cache)
    assert again.checksum == new.checksum
    assert again.stats.files_read == 6  # what _mutate wrote just now
    assert again.stats.bytes_written == 0


def test_apply_to_the_same_state_does_nothing(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    result = pack(profile, blobs)
    work = tmp_path / "work"
    restore_chunked(result.manifest, blobs, work)
    before = snapshot(work)
    applied = apply_chunked(result.manifest, result.manifest, blobs, work)
    assert applied.stats.chunks_fetched == 0
    assert applied.stats.files_created == applied.stats.files_patched == 0
    assert snapshot(work) == before


def test_pack_timing_is_reported(profile: Path, blobs: LocalBlobStore) -> None:
    started = time.perf_counter()
    result = pack(profile, blobs)
    assert 0 < result.stats.seconds <= time.perf_counter() - started


def test_names_a_manifest_cannot_hold_are_left_out(tmp_path: Path, blobs: LocalBlobStore) -> None:
    root = tmp_path / "p"
    _write(root / "ok", b"ok")
    _write(root / "bad\nname", b"x")
    _write(root / "bad\tdir" / "inner", b"x")
    result = pack(root, blobs)
    assert [e.path for e in result.manifest.entries] == ["ok"]
    assert load_manifest(blobs, result.checksum) == result.manifest


def test_apply_with_a_missing_chunk_is_state_corrupt(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    old = pack(profile, blobs)
    work = tmp_path / "work"
    restore_chunked(old.manifest, blobs, work)
    update_cookie(profile)
    new = commit_again(profile, blobs, old)
    fresh = new.manifest.chunk_checksums() - old.manifest.chunk_checksums()
    assert fresh
    for checksum in fresh:  # the pack each new chunk went into
        blobs.delete(new.manifest.where()[checksum][0])
    with pytest.raises(StateCorrupt, match="missing"):
        apply_chunked(old.manifest, new.manifest, blobs, work)


def test_verify_content_catches_a_manifest_whose_digests_lie(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    manifest = pack(profile, blobs).manifest
    lying = Manifest.model_construct(
        version=2,
        engine="chromium",
        entries=tuple(
            e.model_copy(update={"chunks": tuple((c[0], c[1], "0" * 64) for c in e.chunks)})
            for e in manifest.entries
        ),
        packs=manifest.packs,
        locations=manifest.locations,
    )
    restore_chunked(lying, blobs, tmp_path / "names")  # the stored bytes are intact
    assert snapshot(tmp_path / "names") == snapshot(profile)
    with pytest.raises(StateCorrupt, match="does not hold"):
        restore_chunked(lying, blobs, tmp_path / "content", verify_content=True)
    assert not (tmp_path / "content").exists()
    restore_chunked(manifest, blobs, tmp_path / "honest", verify_content=True)
    assert snapshot(tmp_path / "honest") == snapshot(profile)


# ---------------------------------------------------------------------------- packs


def _v2(entries: list[dict[str, Any]], packs: list[Any], locations: list[Any]) -> bytes:
    return _hostile({**_doc(*entries), "version": 2, "packs": packs, "locations": locations})


P = "b" * 64
HOSTILE_PACKS: dict[str, tuple[bytes, str]] = {
    "format 1 with packs": (
        _hostile({**_doc(_file("a")), "packs": [[P, 10]], "locations": [[0, 0, 5]]}),
        "canonical|packs",
    ),
    "format 2 without a table": (_hostile({**_doc(_file("a")), "version": 2}), "canonical"),
    "fewer locations than chunks": (_v2([_file("a")], [[P, 10]], []), "locations"),
    "more locations than chunks": (
        _v2([_file("a")], [[P, 10]], [[0, 0, 5], [0, 5, 5]]),
        "locations",
    ),
    "pack index past the table": (_v2([_file("a")], [[P, 10]], [[1, 0, 5]]), "lacks"),
    "negative pack index": (_v2([_file("a")], [[P, 10]], [[-2, 0, 5]]), "locations"),
    "chunk past the pack's end": (_v2([_file("a")], [[P, 10]], [[0, 8, 5]]), "past the end"),
    "more bytes than the chunk could take": (
        _v2([_file("a", size=3)], [[P, 5000]], [[0, 0, 4000]]),
        "compressed bytes",
    ),
    "empty stored chunk": (_v2([_file("a")], [[P, 10]], [[0, 0, 0]]), "compressed bytes"),
    "a pack no chunk is in": (
        _v2([_file("a")], [[P, 10], ["c" * 64, 10]], [[0, 0, 5]]),
        "no chunk",
    ),
    "a pack twice": (_v2([_file("a")], [[P, 10], [P, 10]], [[0, 0, 5]]), "twice"),
    "a stand-alone chunk with an offset": (_v2([_file("a")], [], [[-1, 4, 0]]), "offset"),
    "a bad pack checksum": (_v2([_file("a")], [["../x", 10]], [[0, 0, 5]]), "packs"),
    "a huge pack": (_v2([_file("a")], [[P, 1 << 40]], [[0, 0, 5]]), "packs"),
    "a location as an object": (_v2([_file("a")], [[P, 10]], [{"pack": 0}]), "locations"),
}


@pytest.mark.parametrize("name", HOSTILE_PACKS)
def test_hostile_pack_tables_are_refused(name: str) -> None:
    blob, why = HOSTILE_PACKS[name]
    with pytest.raises(ArchiveInvalid, match=why) as caught:
        parse_manifest(blob)
    assert caught.value.details["field"] == "manifest"


def test_an_honest_pack_table_parses() -> None:
    blob = _v2([_file("a"), _file("b", chunks=[[P, 3, H]])], [[P, 10]], [[0, 0, 5], [0, 5, 5]])
    manifest = parse_manifest(blob)
    assert manifest.where() == {H: (P, 0, 5), P: (P, 5, 5)}
    assert manifest.blob_checksums() == {P}


class CountingBlobs(LocalBlobStore):
    """A local store that counts requests, as an object store would bill them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.requests: list[str] = []

    def open(self, checksum: str) -> BinaryIO:
        self.requests.append(f"get {checksum}")
        return super().open(checksum)

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        self.requests.append(f"range {checksum} {offset} {length}")
        return super().read_range(checksum, offset, length)


def test_a_restore_reads_packs_a_span_at_a_time(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path / "blobs")
    root = make_profile(tmp_path / "p", mb=24, seed=4)
    result = pack(root, blobs)
    stored = sum(size for _, size in result.manifest.packs)
    assert len(result.manifest.packs) == result.stats.packs_written >= 2
    blobs.requests.clear()
    restore_chunked(result.manifest, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(root)
    # One request per READ_SPAN of stored bytes (plus a pack boundary or a repeated chunk
    # here and there), not one per chunk.
    assert all(r.startswith("range ") for r in blobs.requests)
    assert len(blobs.requests) <= stored // chunked.READ_SPAN + 2 * len(result.manifest.packs) + 4
    assert len(blobs.requests) < result.stats.chunks // 4
    blobs.requests.clear()
    b"".join(tar_stream(result.manifest, blobs))
    assert len(blobs.requests) <= stored // chunked.READ_SPAN + 2 * len(result.manifest.packs) + 4


def _format_1(directory: Path, blobs: LocalBlobStore) -> Manifest:
    """``directory`` stored the way format 1 did: each chunk a blob of its own."""
    packed = pack(directory, LocalBlobStore(directory.parent / "scratch-blobs"))
    scratch = LocalBlobStore(directory.parent / "scratch-blobs")
    for checksum, (pack_sum, offset, length) in packed.manifest.where().items():
        raw = scratch.read_range(pack_sum, offset, length)
        blobs.put(checksum, io.BytesIO(raw), size=len(raw))
    v1 = Manifest.model_construct(version=1, engine="chromium", entries=packed.manifest.entries)
    blob = chunked.encode_manifest(v1)
    import hashlib

    blobs.put(hashlib.sha256(blob).hexdigest(), io.BytesIO(blob), size=len(blob))
    return load_manifest(blobs, hashlib.sha256(blob).hexdigest())


def test_format_1_states_are_read_and_packed_by_the_next_commit(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    old = _format_1(profile, blobs)
    assert old.version == 1 and old.packs == () and old.where() == {}
    assert old.blob_checksums() == old.chunk_checksums()
    restore_chunked(old, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(profile)
    b"".join(tar_stream(old, blobs))
    # The next commit moves the stand-alone chunks into a pack (up to COMPACTION_MAX a commit).
    update_cookie(profile)
    new = pack(profile, blobs, previous=old)
    assert new.manifest.version == 2
    assert new.stats.chunks_moved == len(old.chunk_checksums() & new.manifest.chunk_checksums())
    assert new.manifest.base is None  # every entry moved: a full manifest
    assert new.manifest.blob_checksums() == {p for p, _ in new.manifest.packs}
    restore_chunked(new.manifest, blobs, tmp_path / "new")
    assert snapshot(tmp_path / "new") == snapshot(profile)


def test_many_commits_keep_a_state_in_few_packs(profile: Path, blobs: LocalBlobStore) -> None:
    last = pack(profile, blobs)
    counts = []
    for n in range(5 * chunked.MAX_SMALL_PACKS):
        update_cookie(profile, row=n % 40 + 1, value=f"v{n}")
        (profile / "Default" / f"note-{n}").write_bytes(os.urandom(2000))  # a new small file
        set_mtimes(profile, base=PAST + 10 * (n + 1))
        last = commit_again(profile, blobs, last)
        counts.append(len(last.manifest.packs))
    # Each commit adds a small pack; packs whose chunks die (the old cookie) are compacted at
    # once, and once more than MAX_SMALL_PACKS small ones live the next commit compaction them.
    assert max(counts) <= chunked.MAX_SMALL_PACKS + 2
    assert any(c < counts[i - 1] for i, c in enumerate(counts) if i)
    assert sum(1 for _, size in last.manifest.packs if size < chunked.SMALL_PACK) <= (
        chunked.MAX_SMALL_PACKS + 1
    )


def test_compaction_never_copies_a_small_profiles_first_pack_again(
    tmp_path: Path, blobs: LocalBlobStore
) -> None:
    """A small profile's whole first state is one small pack; compacting the small packs of
    many one-row commits copies the small ones, not that pack (a full rewrite each time)."""
    root = make_profile(tmp_path / "small", mb=0.8)
    last = first = pack(root, blobs)
    assert len(first.manifest.packs) == 1 and first.manifest.packs[0][1] < chunked.SMALL_PACK
    written = 0
    for n in range(4 * chunked.MAX_SMALL_PACKS):
        update_cookie(root, row=(n * 7) % 40 + 1, value=f"v{n}")
        (root / "Default" / f"note-{n}").write_bytes(os.urandom(500))
        set_mtimes(root, base=PAST + 10 * (n + 1))
        last = commit_again(root, blobs, last)
        written += last.stats.bytes_written - last.stats.manifest_bytes  # packs
        assert len(last.manifest.packs) <= chunked.MAX_SMALL_PACKS + 1
    assert first.manifest.packs[0] in last.manifest.packs
    assert written < first.manifest.packs[0][1] // 2


def _one_pack(root: Path, blobs: LocalBlobStore, rng: random.Random) -> PackResult:
    """A state of one pack: a 3 MiB file and a small one ("keep")."""
    _write(root / "big", rng.randbytes(3 * MiB))
    _write(root / "keep", rng.randbytes(200_000))
    set_mtimes(root)
    first = pack(root, blobs)
    assert len(first.manifest.packs) == 1
    return first


def _rewrite_big(
    root: Path, blobs: LocalBlobStore, rng: random.Random, first: PackResult
) -> PackResult:
    """A session rewrote the big file: the first pack is now mostly dead."""
    _write(root / "big", rng.randbytes(3 * MiB))
    set_mtimes(root, base=PAST + 100)
    return commit_again(root, blobs, first)


def test_a_pack_the_state_barely_uses_is_compacted(tmp_path: Path, blobs: LocalBlobStore) -> None:
    root = tmp_path / "p"
    rng = random.Random(9)
    first = _one_pack(root, blobs, rng)
    second = _rewrite_big(root, blobs, rng, first)
    old_pack = first.manifest.packs[0][0]
    assert old_pack not in second.manifest.blob_checksums()
    assert second.stats.chunks_moved == 1  # "keep" was copied along
    restore_chunked(second.manifest, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(root)


def test_damaged_chunks_are_left_in_place_when_compacting(
    tmp_path: Path, blobs: LocalBlobStore
) -> None:
    root = tmp_path / "p"
    rng = random.Random(10)
    first = _one_pack(root, blobs, rng)
    path, offset, _ = _chunk_at(blobs, first.manifest, "keep")
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    second = _rewrite_big(root, blobs, rng, first)
    assert second.stats.chunks_moved == 0
    assert first.manifest.packs[0][0] in second.manifest.blob_checksums()


def test_a_failed_pack_upload_fails_the_commit_before_the_manifest(
    profile: Path, tmp_path: Path
) -> None:
    class Failing(LocalBlobStore):
        def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
            if size > 100_000:
                raise chunked.StateCorrupt("disk on fire")  # any ProfileError
            return super().put(checksum, source, size=size)

    blobs = Failing(tmp_path / "failing")
    with pytest.raises(ProfileError, match="disk on fire"):
        pack(profile, blobs)
    assert not any(is_manifest(blobs.read_range(b.checksum, 0, 64)) for b in blobs.list())


def test_a_restore_of_a_changed_state_reads_each_pack_in_few_spans(tmp_path: Path) -> None:
    """After a session changed chunks all over a file, the state interleaves an old pack
    and a new one; a restore reads in pack order, across small gaps, not in file order."""
    blobs = CountingBlobs(tmp_path / "blobs")
    root = tmp_path / "p"
    rng = random.Random(11)
    data = bytearray(rng.randbytes(12 * MiB))
    _write(root / "big", bytes(data))
    set_mtimes(root)
    first = pack(root, blobs)
    for at in range(0, len(data), MiB):  # one byte in every fourth chunk
        data[at] ^= 0xFF
    _write(root / "big", bytes(data))
    set_mtimes(root, base=PAST + 50)
    second = commit_again(root, blobs, first)
    assert second.stats.chunks_written == 12
    assert len(second.manifest.packs) == len(first.manifest.packs) + 1
    blobs.requests.clear()
    restore_chunked(second.manifest, blobs, tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == bytes(data)
    # In file order that is 24 alternating reads; in pack order, a few spans per pack.
    stored = sum(size for _, size in second.manifest.packs)
    assert len(blobs.requests) <= stored // chunked.READ_SPAN + 2 * len(second.manifest.packs)


# ---------------------------------------------------------------------------- deltas


def _blob(blobs: LocalBlobStore, checksum: str) -> bytes:
    with blobs.open(checksum) as src:
        return src.read()


def test_a_small_change_is_a_delta_against_the_last_full_manifest(
    profile: Path, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    first = pack(profile, blobs)
    assert first.manifest.base is None
    update_cookie(profile)
    second = commit_again(profile, blobs, first)
    base = second.manifest.base
    assert base is not None and base.checksum == first.checksum
    assert second.stats.manifest_bytes * 3 < first.stats.manifest_bytes
    assert first.checksum in second.manifest.blob_checksums()
    # Read back: the same state, merged with its base, and restored byte for byte.
    loaded = load_manifest(blobs, second.checksum)
    assert loaded.entries == second.manifest.entries
    assert loaded.where() == second.manifest.where()
    assert loaded.blob_checksums() == second.manifest.blob_checksums()
    restore_chunked(loaded, blobs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(profile)
    # The next change is a delta against the same full manifest, never a delta of a delta.
    update_cookie(profile, row=9, value="again")
    (profile / "Default" / "Preferences").unlink()
    third = commit_again(profile, blobs, second)
    assert third.manifest.base is not None and third.manifest.base.checksum == first.checksum
    assert "Default/Preferences" in json.loads(_text_of(_blob(blobs, third.checksum)))["removed"]
    restore_chunked(load_manifest(blobs, third.checksum), blobs, tmp_path / "third")
    assert snapshot(tmp_path / "third") == snapshot(profile)
    # Committing the same tree again is the same state: same checksum, nothing written.
    again = commit_again(profile, blobs, third)
    assert again.checksum == third.checksum and again.stats.bytes_written == 0


def _text_of(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob[len(MANIFEST_MAGIC) :])


def test_a_delta_gives_way_to_a_full_manifest_when_it_grows(
    profile: Path, blobs: LocalBlobStore
) -> None:
    first = pack(profile, blobs)
    for n in range(60):  # many new files: the delta would be most of a manifest
        _write(profile / "Default" / "Sessions" / f"Tabs_{n}", os.urandom(100))
    set_mtimes(profile, base=PAST + 100)
    second = commit_again(profile, blobs, first)
    assert second.manifest.base is None
    assert parse_manifest(_blob(blobs, second.checksum)).entries == second.manifest.entries
    update_cookie(profile)
    third = commit_again(profile, blobs, second)  # and the full one is the next base
    assert third.manifest.base is not None and third.manifest.base.checksum == second.checksum


def test_a_verifying_commit_writes_a_full_manifest(profile: Path, blobs: LocalBlobStore) -> None:
    first = pack(profile, blobs)
    update_cookie(profile)
    repaired = pack(profile, blobs, previous=first.manifest, verify=True)
    assert repaired.manifest.base is None


def _sqlite_header(page: int) -> bytes:
    return b"SQLite format 3\x00" + page.to_bytes(2, "big") + bytes(82)


@pytest.mark.parametrize(
    ("head", "size", "expected"),
    [
        (_sqlite_header(4096), 70_000, 4096),  # a small database: a page a chunk
        (_sqlite_header(4096), 300_000, 16 * 1024),  # at most SQLITE_CHUNKS chunks
        (_sqlite_header(4096), 400 * MiB, CHUNK_SIZE),  # a big one: CHUNK_SIZE chunks
        (_sqlite_header(512), 10_000, chunked.MIN_PAGE_CHUNK),  # small pages: 4 KiB at least
        (_sqlite_header(1), 70_000, 65536),  # 1 means 65536
        (_sqlite_header(3000), 70_000, CHUNK_SIZE),  # not a page size: any file
        (_sqlite_header(256), 70_000, CHUNK_SIZE),
        (b"SQLite format 3\x00", 70_000, CHUNK_SIZE),  # too short for a page size
        (b"not a database at all", 70_000, CHUNK_SIZE),
    ],
)
def test_sqlite_databases_are_cut_at_their_pages(
    tmp_path: Path, head: bytes, size: int, expected: int
) -> None:
    path = tmp_path / "db"
    path.write_bytes(head)
    with path.open("rb") as f:
        assert chunked._chunk_size_of(f, size, CHUNK_SIZE) == expected


def test_a_one_row_update_of_a_small_database_stores_its_pages(
    profile: Path, blobs: LocalBlobStore
) -> None:
    first = pack(profile, blobs)
    cookies = next(e for e in first.manifest.entries if e.path == "Default/Cookies")
    assert len(cookies.chunks) > 1 and all(c[1] % 4096 == 0 for c in cookies.chunks)
    update_cookie(profile)
    second = commit_again(profile, blobs, first)
    assert second.stats.chunks_written <= 3  # the header page and the row's page (or two)
    assert second.stats.bytes_written < 16 * 1024


def _delta_doc(base: str, **changes: Any) -> dict[str, Any]:
    return {
        "version": 3,
        "engine": "chromium",
        "base": base,
        "entries": [],
        "removed": [],
        "packs": [],
        "locations": [],
        **changes,
    }


def _put(blobs: LocalBlobStore, blob: bytes) -> str:
    import hashlib

    checksum = hashlib.sha256(blob).hexdigest()
    blobs.put(checksum, io.BytesIO(blob), size=len(blob))
    return checksum


@pytest.fixture
def base_state(blobs: LocalBlobStore) -> str:
    """A full manifest: a directory, a file in it (in a pack) and a file beside it."""
    return _put(
        blobs,
        _v2(
            [_dir("d"), _file("d/x"), _file("y", chunks=[[P, 3, H]])],
            [[P, 10]],
            [[0, 0, 5], [0, 5, 5]],
        ),
    )


HOSTILE_DELTAS: dict[str, tuple[Callable[[str, LocalBlobStore], dict[str, Any]], str]] = {
    "its base is missing": (lambda b, _: _delta_doc("e" * 64), "base manifest|missing"),
    "its base is itself a delta": (
        lambda b, blobs: _delta_doc(_put(blobs, _hostile(_delta_doc(b, removed=["y"])))),
        "delta",
    ),
    "its base is not a manifest": (
        lambda b, blobs: _delta_doc(_put(blobs, zstandard.ZstdCompressor().compress(b"x"))),
        "magic",
    ),
    "another engine": (lambda b, _: _delta_doc(b, engine="firefox"), "for firefox"),
    "removes what its base lacks": (lambda b, _: _delta_doc(b, removed=["nope"]), "lacks"),
    "removes and changes one path": (
        lambda b, _: _delta_doc(b, removed=["y"], entries=[_file("y")], locations=[[-1, 0, 0]]),
        "removed",
    ),
    "removes a directory but not its file": (
        lambda b, _: _delta_doc(b, removed=["d"]),
        "parent",
    ),
    "changes an entry twice": (
        lambda b, _: _delta_doc(b, entries=[_file("z"), _file("z")], locations=[[-1, 0, 0]]),
        "out of order or twice",
    ),
    "removed out of order": (
        lambda b, _: _delta_doc(b, removed=["y", "d/x"]),
        "out of order or twice",
    ),
    "a path outside": (
        lambda b, _: _delta_doc(b, entries=[_file("../z")], locations=[[-1, 0, 0]]),
        "outside",
    ),
    "a new file without its directory": (
        lambda b, _: _delta_doc(b, entries=[_file("e/z")], locations=[[-1, 0, 0]]),
        "parent",
    ),
    "fewer locations than chunks": (lambda b, _: _delta_doc(b, entries=[_file("z")]), "locations"),
    "a location past its pack": (
        lambda b, _: _delta_doc(b, entries=[_file("z")], packs=[[P, 10]], locations=[[0, 8, 5]]),
        "past the end",
    ),
    "a bad base checksum": (lambda b, _: _delta_doc("../" + b[3:]), "base"),
    "an extra field": (lambda b, _: _delta_doc(b, parent=b), "parent"),
}


@pytest.mark.parametrize("name", HOSTILE_DELTAS)
def test_hostile_deltas_are_refused(name: str, blobs: LocalBlobStore, base_state: str) -> None:
    make, why = HOSTILE_DELTAS[name]
    checksum = _put(blobs, _hostile(make(base_state, blobs)))
    with pytest.raises((ArchiveInvalid, StateCorrupt), match=why):
        load_manifest(blobs, checksum)


def test_a_delta_naming_itself_as_its_base_is_refused_without_recursion(
    blobs: LocalBlobStore, base_state: str
) -> None:
    # A blob cannot name its own hash, but it can name a delta that names it back.
    first = _hostile(_delta_doc(base_state, removed=["y"]))
    ring = _put(blobs, _hostile(_delta_doc(_put(blobs, first))))
    with pytest.raises(ArchiveInvalid, match="delta"):
        load_manifest(blobs, ring)


def test_an_honest_delta_merges_with_its_base(blobs: LocalBlobStore, base_state: str) -> None:
    doc = _delta_doc(
        base_state,
        entries=[_file("d/x", size=4, chunks=[["c" * 64, 4, H]]), _file("z")],
        removed=["y"],
        packs=[["f" * 64, 20]],
        locations=[[0, 0, 6], [0, 6, 5]],
    )
    merged = load_manifest(blobs, _put(blobs, _hostile(doc)))
    assert [e.path for e in merged.entries] == ["d", "d/x", "z"]
    assert merged.where() == {"c" * 64: ("f" * 64, 0, 6), H: ("f" * 64, 6, 5)}
    assert merged.blob_checksums() == {"f" * 64, base_state}  # P is no longer used
    with pytest.raises(ArchiveInvalid, match="full manifest is needed"):
        parse_manifest(_hostile(doc))  # a delta alone cannot be read
