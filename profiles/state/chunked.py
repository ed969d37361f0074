"""Chunked states: write a directory as chunks in packs plus a manifest, and read it back.

:func:`pack_chunked` stores a user-data-dir as zstd chunks (fixed :data:`CHUNK_SIZE`
offsets per file, finer for SQLite databases) appended to packs of about
:data:`PACK_TARGET`, reusing the previous state's chunks and skipping files its
:class:`StatCache` shows unchanged, compacting chunks out of barely used packs,
and writing the manifest last (a delta while small). :func:`restore_chunked` builds a state's
tree all or nothing, :func:`apply_chunked` moves a working copy from one state to another
writing only what changed, and :func:`tar_stream` / :func:`write_tar` export a state as the
tar stream :func:`~profiles.state.archive.pack_dir` writes. A missing or damaged chunk is
:class:`StateCorrupt`. The manifest format is :mod:`profiles.state.manifest`; why the format
is built this way (and the measurements behind its constants): docs/state-format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeAlias

import zstandard
from pydantic import BaseModel, ConfigDict

from profiles.blobs.base import BlobStore, read_up_to
from profiles.errors import NotFound, StateCorrupt, ValidationFailed
from profiles.state.archive import ArchiveLimits, BinarySink, _swap_into_place
from profiles.state.manifest import (
    DIR_MODE,
    FILE_MODE,
    FORMAT_VERSION,
    MANIFEST_MAGIC,
    MAX_CHUNK_BYTES,
    MAX_MTIME_NS,
    Chunk,
    Entry,
    Manifest,
    _compressor,
    _decompressor,
    _path_problem,
    _stored_cap,
    check_manifest,
    encode_delta,
    encode_manifest,
    is_manifest,
    load_manifest,
    locate,
    parse_manifest,
    read_capped,
)
from profiles.state.rules import RULES, Engine
from profiles.state.tar_guard import shown

__all__ = [
    "CHUNK_SIZE",
    "MANIFEST_MAGIC",
    "ApplyResult",
    "ApplyStats",
    "Chunk",
    "ChunkedPackStats",
    "Entry",
    "Manifest",
    "PackResult",
    "RestoreResult",
    "RestoreStats",
    "StatCache",
    "StateCorrupt",
    "apply_chunked",
    "check_manifest",
    "encode_manifest",
    "is_manifest",
    "load_manifest",
    "missing_blobs",
    "pack_chunked",
    "parse_manifest",
    "read_capped",
    "restore_chunked",
    "tar_stream",
    "walk_state",
    "write_tar",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_SIZE = 256 * 1024
# Packs: new chunks of a commit are stored together, in walk order, as packs of about this
# many compressed bytes; a restore reads them a span at a time (one ranged GET per span).
PACK_TARGET = 4 * MiB  # with two uploads in flight, ~16 MB of memory at most
READ_SPAN = 4 * MiB
READ_GAP = 1 * MiB  # bytes between two chunks a read spans rather than making two requests
FETCH_AHEAD_BYTES = 16 * MiB  # decompressed chunks an export fetches ahead of its writing
# Compaction when committing: a pack the new state uses less than half of, a chunk stored
# on its own (format 1), or (more than MAX_SMALL_PACKS packs under SMALL_PACK) the small
# packs with the fewest live bytes have their live chunks copied into the new pack, at
# most COMPACTION_MAX bytes per commit.
MIN_PACK_USE = 0.5
SMALL_PACK = 1 * MiB
MAX_SMALL_PACKS = 8
COMPACTION_MAX = 64 * MiB
# A file whose mtime is this close to the walk is not trusted to be unchanged next time:
# it may be written again within the same timestamp tick (git's "racily clean" entries).
# One second covers file systems with coarse timestamps (ext3, HFS+).
RACY_NS = 1_000_000_000
DEFAULT_WORKERS = 8
INLINE_BYTES = 16 * 1024  # chunks this small are stored without the thread pool
# A commit writes its manifest as a delta against the last full one while the delta is
# at most this share of that full manifest's blob.
MAX_DELTA_SHARE = 0.5
# SQLite databases are cut at a multiple of their page size: the smallest power of two of
# at least MIN_PAGE_CHUNK that cuts the file into at most SQLITE_CHUNKS chunks (at most
# CHUNK_SIZE), so that a one-row update of a small database stores a page or two.
SQLITE_MAGIC = b"SQLite format 3\x00"
MIN_PAGE_CHUNK = 4 * 1024
SQLITE_CHUNKS = 32

_TAR_ENCODING = "utf-8"

StatKey: TypeAlias = tuple[int, int, int, int, int]  # size, mtime_ns, inode, ctime_ns, device
# ---------------------------------------------------------------------------- stat cache


@dataclass(frozen=True)
class StatCache:
    """What the files of a working copy looked like when they were known to hold the
    content of manifest ``manifest``: ``path -> (size, mtime_ns, inode, ctime_ns, dev)``.

    Local to one machine and one directory (inodes): keep it next to the working copy,
    never in a shared manifest. It only vouches for the manifest it names."""

    manifest: str
    entries: dict[str, StatKey]

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"manifest": self.manifest, "entries": self.entries}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> StatCache | None:
        """The cache, or ``None`` if ``data`` is not one (then every file is read)."""
        try:
            doc = json.loads(data)
            manifest = doc["manifest"]
            raw = doc["entries"]
            if not isinstance(manifest, str) or not isinstance(raw, dict):
                return None
            entries: dict[str, StatKey] = {}
            for path, key in raw.items():
                if not (
                    isinstance(key, list)
                    and len(key) == 5
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in key)
                ):
                    return None
                entries[path] = (key[0], key[1], key[2], key[3], key[4])
        except (ValueError, KeyError, TypeError):
            return None
        return cls(manifest, entries)


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)


# ---------------------------------------------------------------------------- packing


def walk_state(
    root: Path, engine: Engine, *, apply_excludes: bool = True
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """``(relative path, entry)`` of every regular file and directory :func:`pack_dir`
    packs, in its order (names sorted, parents first); ``entry`` is ``None`` for an
    excluded one (not descended into, and unlike ``pack_dir`` not measured)."""
    rules = RULES[engine]

    def visit(directory: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", directory, exc)
            return
        for entry in entries:
            relpath = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not (is_dir or is_file):
                log.debug("skipping %s: not a regular file or directory", relpath)
                continue
            if apply_excludes and rules.excludes_entry(relpath, entry.name):
                yield relpath, None
                continue
            yield relpath, entry
            if is_dir:
                yield from visit(entry.path, relpath + "/")

    yield from visit(os.fspath(root), "")


def _open_for_read(path: str) -> BinaryIO:
    """Open a file to chunk it (a seam: tests count the files read through it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb", buffering=0)


class ChunkedPackStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    files: int
    directories: int
    excluded: int
    uncompressed_bytes: int  # of every file in the state
    files_read: int
    files_reused: int  # skipped unread: the stat cache vouched for them
    bytes_read: int
    chunks: int  # referenced by the manifest
    chunks_reused: int  # read, but the same bytes as a chunk of the previous manifest
    chunks_written: int  # new chunks stored (in new packs)
    chunks_moved: int  # live chunks of barely used packs copied into a new pack
    packs_written: int
    bytes_written: int  # pack bytes and manifest bytes stored
    manifest_bytes: int
    seconds: float


@dataclass(frozen=True)
class PackResult:
    manifest: Manifest
    checksum: str  # the manifest blob's: the state's identity
    stats: ChunkedPackStats
    stat_cache: StatCache  # for the next commit of the same directory


class _PackWriter:
    """Appends chunks' zstd bytes to packs of about ``target`` bytes and uploads each full
    pack in the background (at most ``depth`` at a time). Not thread-safe: the caller
    serialises :meth:`add`."""

    def __init__(self, blobs: BlobStore, *, target: int, depth: int = 2) -> None:
        self._blobs = blobs
        self._target = target
        self._depth = depth
        self._buffer = bytearray()
        self._items: list[tuple[str, int, int]] = []  # chunk, offset, length
        self._uploads: deque[tuple[Future[bool], int, list[str]]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="pack-upload")
        self.packs: dict[str, int] = {}  # pack checksum -> size
        self.where: _Where = {}  # chunk -> (pack, offset, length), once its pack is sealed
        self._pending: set[str] = set()  # chunks in the open pack
        self.written = self.bytes_written = 0
        self.stored: set[str] = set()  # chunks in packs this writer stored (not found there)

    def has(self, checksum: str) -> bool:
        return checksum in self.where or checksum in self._pending

    def add(self, checksum: str, stored: bytes) -> None:
        if self.has(checksum):
            return
        self._items.append((checksum, len(self._buffer), len(stored)))
        self._pending.add(checksum)
        self._buffer += stored
        if len(self._buffer) >= self._target:
            self._seal()

    def _seal(self) -> None:
        if not self._items:
            return
        data = bytes(self._buffer)
        pack = hashlib.sha256(data).hexdigest()
        for checksum, offset, length in self._items:
            self.where[checksum] = (pack, offset, length)
        self.packs[pack] = len(data)
        chunks = [item[0] for item in self._items]
        self._buffer = bytearray()
        self._items = []
        self._pending.clear()
        while len(self._uploads) >= self._depth:
            self._collect(self._uploads.popleft())
        upload = self._pool.submit(self._blobs.put, pack, io.BytesIO(data), size=len(data))
        self._uploads.append((upload, len(data), chunks))

    def _collect(self, upload: tuple[Future[bool], int, list[str]]) -> None:
        future, size, chunks = upload
        if future.result():  # False: the same pack was stored already
            self.written += 1
            self.bytes_written += size
            self.stored.update(chunks)

    def finish(self) -> None:
        """Seal the open pack and wait until every pack is stored (raising the first
        failure): data first, before any manifest names it."""
        self._seal()
        while self._uploads:
            self._collect(self._uploads.popleft())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ChunkStore:
    """Hashes and compresses chunks in a thread pool and hands new ones to the
    :class:`_PackWriter` in submission (walk) order, so a file's chunks lie back to back
    in a pack; backpressure bounds memory."""

    def __init__(
        self,
        packs: _PackWriter,
        *,
        reuse: dict[str, Chunk],
        verify: bool,
        workers: int,
    ) -> None:
        self._packs = packs
        self._reuse = reuse
        self._verify = verify
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunk-pack")
        self._window = threading.BoundedSemaphore(workers * 3)
        self._submitted = 0
        self._next = 0  # the next submission to hand to the pack writer
        self._ready: dict[int, tuple[str, bytes] | None] = {}
        self.reused = 0

    def submit(self, data: bytes) -> Future[Chunk]:
        seq = self._submitted
        self._submitted += 1
        if len(data) <= INLINE_BYTES:
            # A small file's chunk costs less to hash and compress here than to hand to
            # the pool (a browser rewrites dozens of small files per session).
            done: Future[Chunk] = Future()
            try:
                done.set_result(self._store(seq, data))
            except BaseException as exc:
                done.set_exception(exc)
            return done
        self._window.acquire()
        try:
            future = self._pool.submit(self._store, seq, data)
        except BaseException:
            self._window.release()
            raise
        future.add_done_callback(lambda _: self._window.release())
        return future

    def _store(self, seq: int, data: bytes) -> Chunk:
        """Hash a chunk and reuse or compress it; whatever happens, its place in the order
        is filled, so the chunks after it reach the pack writer (a failure fails only this
        chunk's future)."""
        new: tuple[str, bytes] | None = None
        reused = False
        try:
            digest = hashlib.sha256(data).hexdigest()
            hit = None if self._verify else self._reuse.get(digest)
            if hit is not None and hit[1] == len(data):
                reused = True
                return hit
            compressed = _compressor().compress(data)
            new = (hashlib.sha256(compressed).hexdigest(), compressed)
            return (new[0], len(data), digest)
        finally:
            with self._lock:
                self.reused += reused
                self._ready[seq] = new
                self._drain()

    def _drain(self) -> None:
        while self._next in self._ready:
            item = self._ready.pop(self._next)
            self._next += 1
            if item is not None:
                self._packs.add(*item)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def pack_chunked(
    directory: Path,
    engine: Engine,
    blobs: BlobStore,
    *,
    previous: Manifest | None = None,
    previous_stat: StatCache | None = None,
    verify: bool = False,
    apply_excludes: bool = True,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
) -> PackResult:
    """Store ``directory`` (a user-data-dir of ``engine``, its browser closed) as a
    chunked state: new chunks first, the manifest last.

    ``previous`` is the state the directory was last committed as (or checked out at):
    its chunks are reused by content, and with ``previous_stat`` (the :class:`StatCache`
    of the last commit or restore of this directory, for that manifest) files whose
    stat is unchanged are not even read. New chunks go into new packs, in walk order;
    chunks of packs the new state barely uses are copied along (:func:`_plan_compaction`).
    The caller must keep a garbage collector away while this runs (the blob-writer
    registration), since it reuses stored blobs. ``verify`` reads and compresses every
    chunk and stores them all afresh, repairing whatever went missing from the store.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValidationFailed(f"{directory} is not a directory.", field="directory")
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise ValidationFailed(f"chunk_size {chunk_size} is out of range.", field="chunk_size")
    started = time.perf_counter()
    walk_ns = time.time_ns()
    trusted_before = walk_ns - RACY_NS
    by_path, reuse, cache = _previous_index(previous, previous_stat, verify)
    counts = _Counts()
    new_cache: dict[str, StatKey] = {}
    # Entries in walk order; a file being chunked holds its pending futures until the end.
    slots: list[_Slot] = []
    packs = _PackWriter(blobs, target=PACK_TARGET)
    store = _ChunkStore(packs, reuse=reuse, verify=verify, workers=workers or _pack_workers())
    skipped: str | None = None  # a directory left out, with all below it
    try:
        for relpath, dirent in walk_state(directory, engine, apply_excludes=apply_excludes):
            if dirent is None:
                counts.excluded += 1
                continue
            if skipped is not None and relpath.startswith(skipped):
                continue
            try:
                st = dirent.stat(follow_symlinks=False)
            except OSError:
                continue
            old = by_path.get(relpath)
            if stat.S_ISDIR(st.st_mode):
                if old is None and not _representable(relpath):
                    skipped = relpath + "/"
                    continue
                counts.dirs += 1
                slots.append(_dir_entry(relpath, st.st_mtime_ns))
                continue
            key = _stat_key(st)
            if _unchanged(old, cache.get(relpath), key, st):
                assert old is not None
                slots.append(old)
                new_cache[relpath] = key
                counts.files += 1
                counts.files_reused += 1
                counts.total += old.size
                continue
            if old is None and not _representable(relpath):
                continue
            slot = _chunk_file(relpath, dirent.path, store, chunk_size, trusted_before, counts)
            if slot is not None:
                slots.append(slot[0])
                if slot[1] is not None:
                    new_cache[relpath] = slot[1]
        entries = _settle(slots)
        store.close()
        compacted = _compact(blobs, packs, previous, entries, verify)
        packs.finish()
    finally:
        store.close()
        packs.close()
    manifest, blob, manifest_written = _seal(blobs, engine, entries, packs, previous, verify)
    stats = ChunkedPackStats(
        files=counts.files,
        directories=counts.dirs,
        excluded=counts.excluded,
        uncompressed_bytes=counts.total,
        files_read=counts.files_read,
        files_reused=counts.files_reused,
        bytes_read=counts.bytes_read,
        chunks=sum(len(entry.chunks) for entry in entries),
        chunks_reused=store.reused,
        chunks_written=len(packs.stored - compacted),
        chunks_moved=len(compacted),
        packs_written=packs.written,
        bytes_written=packs.bytes_written + manifest_written,
        manifest_bytes=len(blob),
        seconds=round(time.perf_counter() - started, 6),
    )
    log.debug("packed %s as %s: %s", directory, manifest.checksum, stats)
    return PackResult(manifest, manifest.checksum, stats, StatCache(manifest.checksum, new_cache))


# A file in walk order: its entry, or (path, mtime, the chunks being stored) until settled.
_Slot: TypeAlias = "Entry | tuple[str, int, list[Future[Chunk]]]"


@dataclass
class _Counts:
    """What a pack walked, for its stats."""

    files: int = 0
    dirs: int = 0
    excluded: int = 0
    total: int = 0
    files_read: int = 0
    files_reused: int = 0
    bytes_read: int = 0


def _previous_index(
    previous: Manifest | None, previous_stat: StatCache | None, verify: bool
) -> tuple[dict[str, Entry], dict[str, Chunk], dict[str, StatKey]]:
    """From the state a directory was last committed as: its entries by path, its chunks by
    content digest (reused by content), and the stat cache that lets unchanged files go
    unread (empty when it is for another state, or with ``verify``)."""
    by_path: dict[str, Entry] = {}
    reuse: dict[str, Chunk] = {}
    if previous is not None:
        by_path = {entry.path: entry for entry in previous.entries}
        for entry in previous.entries:
            for chunk in entry.chunks:
                reuse[chunk[2]] = chunk
    cache: dict[str, StatKey] = {}
    if previous is not None and previous_stat is not None and not verify:
        if previous_stat.manifest == previous.checksum:
            cache = previous_stat.entries
        else:
            log.debug(
                "stat cache is for %s, not %s: reading every file",
                previous_stat.manifest,
                previous.checksum,
            )
    return by_path, reuse, cache


def _unchanged(old: Entry | None, cached: StatKey | None, key: StatKey, st: os.stat_result) -> bool:
    """Whether the file is the previous state's, unread: same stat as when last packed."""
    return (
        old is not None
        and old.kind == "file"
        and cached == key
        and old.size == st.st_size
        and old.mtime_ns == st.st_mtime_ns
    )


def _chunk_file(
    relpath: str,
    path: str,
    store: _ChunkStore,
    chunk_size: int,
    trusted_before: int,
    counts: _Counts,
) -> tuple[_Slot, StatKey | None] | None:
    """Read the file and hand its chunks to ``store``: its slot, and its stat key when the
    stat cache may trust it next time (not changed while read, not too recent); ``None``
    for a file that is gone, unreadable or not a regular file."""
    try:
        with _open_for_read(path) as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                return None
            pending: list[Future[Chunk]] = []
            size = 0
            step = _chunk_size_of(f, before.st_size, chunk_size)
            while data := read_up_to(f, step):
                size += len(data)
                pending.append(store.submit(data))
            after = os.fstat(f.fileno())
    except (FileNotFoundError, PermissionError) as exc:
        log.warning("skipping %s: %s", relpath, exc)
        return None
    counts.files += 1
    counts.files_read += 1
    counts.bytes_read += size
    counts.total += size
    slot: _Slot = (relpath, _mtime(before.st_mtime_ns), pending)
    moved = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    if moved or before.st_size != size:
        log.warning("%s changed while it was packed (is the browser closed?)", relpath)
        return slot, None
    return slot, (_stat_key(before) if before.st_mtime_ns < trusted_before else None)


def _settle(slots: list[_Slot]) -> list[Entry]:
    """The entries in walk order, each file's chunks once they are stored."""
    entries: list[Entry] = []
    for slot in slots:
        if isinstance(slot, Entry):
            entries.append(slot)
            continue
        relpath, mtime_ns, pending = slot
        chunks = tuple(future.result() for future in pending)
        entries.append(
            Entry.model_construct(
                path=relpath,
                kind="file",
                mtime_ns=mtime_ns,
                size=sum(chunk[1] for chunk in chunks),
                mode=FILE_MODE,
                chunks=chunks,
            )
        )
    return entries


def _seal(
    blobs: BlobStore,
    engine: Engine,
    entries: list[Entry],
    packs: _PackWriter,
    previous: Manifest | None,
    verify: bool,
) -> tuple[Manifest, bytes, int]:
    """Store the manifest of ``entries`` (last: the packs are stored): the manifest, its
    blob, and the bytes written for it (0: the store held it already)."""
    manifest = _with_locations(
        Manifest.model_construct(version=FORMAT_VERSION, engine=engine, entries=tuple(entries)),
        packs,
        previous,
    )
    blob = _manifest_bytes(manifest, previous, verify)
    checksum = hashlib.sha256(blob).hexdigest()
    manifest._checksum = checksum
    manifest._blob_size = len(blob)
    # put is conditional and says whether it stored: no separate existence check.
    written = len(blob) if blobs.put(checksum, io.BytesIO(blob), size=len(blob)) else 0
    return manifest, blob, written


def _plan_compaction(
    previous: Manifest | None, refs: dict[str, Chunk], packs: _PackWriter
) -> list[str]:
    """Which reused chunks to copy into this commit's packs, so that a state never spreads
    over many barely used packs (each one a request to restore it, and bytes no collector
    can free while one chunk in them lives): the chunks of packs the new state uses less
    than :data:`MIN_PACK_USE` of, of the small packs holding the fewest live bytes once there
    are more than :data:`MAX_SMALL_PACKS` (down to half that: the biggest small packs, such
    as a small profile's first pack, are not copied again), and chunks stored on their own
    (format 1), least used first, up to :data:`COMPACTION_MAX` compressed bytes. Their old copies
    go when no state uses them."""
    if previous is None:
        return []
    where = previous.where()
    sizes = dict(previous.packs)
    by_pack: dict[str, list[str]] = {}
    alone: list[str] = []
    for checksum in refs:
        if packs.has(checksum):
            continue
        location = where.get(checksum)
        if location is None:
            alone.append(checksum)
        else:
            by_pack.setdefault(location[0], []).append(checksum)
    live = {pack: sum(where[c][2] for c in chunks) for pack, chunks in by_pack.items()}
    # Too many small packs: the ones with the fewest live bytes are compacted until half the
    # allowance is left, so the biggest (a small profile's first pack) stays where it is.
    small = sorted((p for p in by_pack if sizes[p] < SMALL_PACK), key=lambda p: (live[p], p))
    excess = (
        set(small[: len(small) - MAX_SMALL_PACKS // 2]) if len(small) > MAX_SMALL_PACKS else set()
    )
    chosen = [pack for pack in by_pack if live[pack] < MIN_PACK_USE * sizes[pack] or pack in excess]
    chosen.sort(key=lambda pack: (live[pack] / sizes[pack], pack))
    compaction: list[str] = []
    budget = COMPACTION_MAX
    for checksum in alone:
        budget -= _stored_cap(refs[checksum][1])
        if budget < 0:
            return compaction
        compaction.append(checksum)
    for pack in chosen:
        budget -= live[pack]
        if budget < 0:
            break
        compaction.extend(sorted(by_pack[pack], key=lambda c: where[c][1]))
    return compaction


def _compact(
    blobs: BlobStore,
    packs: _PackWriter,
    previous: Manifest | None,
    entries: list[Entry],
    verify: bool,
) -> set[str]:
    """Copy the chunks :func:`_plan_compaction` picks into the open pack, byte for byte (each
    checked against its name); returns those moved. A chunk that cannot be read stays
    where it is (it is no worse for not moving)."""
    if previous is None or verify:
        return set()
    refs: dict[str, Chunk] = {}
    for entry in entries:
        for chunk in entry.chunks:
            refs.setdefault(chunk[0], chunk)
    compaction = _plan_compaction(previous, refs, packs)
    moved: set[str] = set()
    for read in _plan_reads([("", 0, refs[c]) for c in compaction], previous.where()):
        try:
            raws = list(_read_raw(blobs, read))
        except StateCorrupt as exc:
            log.warning("chunks left in place while compacting: %s", exc.message)
            continue
        for (_, _, chunk), raw in zip(read.items, raws, strict=True):
            if raw is not None and hashlib.sha256(raw).hexdigest() == chunk[0]:
                packs.add(chunk[0], raw)
                moved.add(chunk[0])
            else:
                log.warning("chunk %s is damaged; left in place while compacting", chunk[0])
    if compaction:
        log.debug("compacting: moved %d of %d chunks", len(moved), len(compaction))
    return moved


def _with_locations(manifest: Manifest, packs: _PackWriter, previous: Manifest | None) -> Manifest:
    """``manifest`` with its pack table: each chunk where this commit stored it, else
    where the previous state had it, else a blob of its own."""
    where = dict(previous.where()) if previous is not None else {}
    where.update(packs.where)
    sizes = dict(previous.packs) if previous is not None else {}
    sizes.update(packs.packs)
    table, locations = locate(manifest.entries, where, sizes)
    return Manifest.model_construct(
        version=manifest.version,
        engine=manifest.engine,
        entries=manifest.entries,
        packs=table,
        locations=locations,
    )


def _manifest_bytes(manifest: Manifest, previous: Manifest | None, verify: bool) -> bytes:
    """The blob to store for ``manifest``: a delta against the full manifest the previous
    state is (or is a delta against) while the delta is at most :data:`MAX_DELTA_SHARE` of
    that base's size, else the full manifest (which becomes the next commits' base)."""
    base = None if previous is None or verify else (previous.base or previous)
    if base is not None and base.engine == manifest.engine:
        delta = encode_delta(manifest, base)
        if delta is not None and len(delta) <= MAX_DELTA_SHARE * base.blob_size:
            manifest._base = base
            return delta
    return encode_manifest(manifest)


def _chunk_size_of(f: BinaryIO, size: int, chunk_size: int) -> int:
    """The chunk size for a file: ``chunk_size``, or for a SQLite database the smallest
    multiple of its page size (a power of two, at least :data:`MIN_PAGE_CHUNK`) that cuts
    it into at most :data:`SQLITE_CHUNKS` chunks, capped at ``chunk_size``."""
    head = os.pread(f.fileno(), 18, 0)
    if len(head) < 18 or not head.startswith(SQLITE_MAGIC):
        return chunk_size
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return chunk_size  # not a page size SQLite writes: cut it like any file
    step = max(page, MIN_PAGE_CHUNK)
    while step < chunk_size and step * SQLITE_CHUNKS < size:
        step *= 2
    return min(step, chunk_size)


def _pack_workers() -> int:
    # Storing a blob is mostly waiting (fsync, a PUT), so more threads than cores pay.
    return DEFAULT_WORKERS


def _dir_entry(path: str, mtime_ns: int) -> Entry:
    return Entry.model_construct(
        path=path, kind="dir", mtime_ns=_mtime(mtime_ns), size=0, mode=DIR_MODE, chunks=()
    )


def _mtime(ns: int) -> int:
    return min(max(ns, 0), MAX_MTIME_NS)


def _representable(relpath: str) -> bool:
    why = _path_problem(relpath)
    if why is not None:
        log.warning("skipping %r: it %s", relpath, why)
        return False
    return True


# ---------------------------------------------------------------------------- fetching


_Where: TypeAlias = dict[str, tuple[str, int, int]]
# A chunk to write: (relative path of its file, offset in it, the chunk).
_Write: TypeAlias = tuple[str, int, Chunk]


@dataclass
class _Read:
    """One request: a span of a pack (``length`` bytes from ``offset``) holding the zstd
    bytes of ``items`` at ``places`` (offset in the span, length), or (``length`` None) one
    chunk stored on its own."""

    blob: str
    offset: int
    length: int | None
    items: list[_Write]
    places: list[tuple[int, int]]


def _plan_reads(writes: Iterable[_Write], where: _Where) -> list[_Read]:
    """Group ``writes`` (in their order) into reads: a chunk joins the read before it when it
    lies in the same pack at most :data:`READ_GAP` bytes after it, or inside it (a repeated
    chunk), up to :data:`READ_SPAN` bytes a request. Reading a small gap costs less than
    another request."""
    reads: list[_Read] = []
    current: _Read | None = None
    for write in writes:
        location = where.get(write[2][0])
        if location is None:
            reads.append(_Read(write[2][0], 0, None, [write], []))
            current = None
            continue
        pack, offset, length = location
        if current is not None and current.blob == pack and current.length is not None:
            start, end = current.offset, current.offset + current.length
            if start <= offset and offset + length <= end:  # already in this read
                current.items.append(write)
                current.places.append((offset - start, length))
                continue
            if end <= offset <= end + READ_GAP and offset + length - start <= READ_SPAN:
                current.length = offset + length - start
                current.items.append(write)
                current.places.append((offset - start, length))
                continue
        current = _Read(pack, offset, length, [write], [(0, length)])
        reads.append(current)
    return reads


def _pack_order(writes: list[_Write], where: _Where) -> list[_Write]:
    """``writes`` sorted by where their chunks lie (pack, offset), chunks stored on their
    own last: how a restore, which writes at offsets in any order, reads fewest spans."""
    far = ("~", 0, 0)
    return sorted(writes, key=lambda w: where.get(w[2][0], far)[:2])


def _missing(blobs: BlobStore, read: _Read, path: str, chunk: str) -> StateCorrupt:
    what = f"chunk {chunk} of {shown(path)}"
    if read.length is not None:
        what += f" (in pack {read.blob})"
    return StateCorrupt(
        f"The {what} is missing from {blobs.location}; the state cannot be restored.",
        chunk=chunk,
        blob=read.blob,
        member=path,
    )


def _read_raw(blobs: BlobStore, read: _Read) -> Iterator[bytes | None]:
    """The stored bytes of each item of ``read`` (``None``: more than the chunk could
    take), unchecked, one at a time (the span is fetched at the first);
    ``StateCorrupt`` if the blob is missing or short."""
    if read.length is None:
        path, _, chunk = read.items[0]
        try:
            src = blobs.open(read.blob)
        except NotFound:
            raise _missing(blobs, read, path, chunk[0]) from None
        with src:
            yield read_capped(src, _stored_cap(chunk[1]))
        return
    try:
        span = blobs.read_range(read.blob, read.offset, read.length)
    except NotFound:
        path, _, chunk = read.items[0]
        raise _missing(blobs, read, path, chunk[0]) from None
    if len(span) != read.length:
        path, _, chunk = read.items[0]
        raise StateCorrupt(
            f"Pack {read.blob} in {blobs.location} is shorter than the state says "
            f"(chunk {chunk[0]} of {shown(path)}); the state cannot be restored.",
            chunk=chunk[0],
            blob=read.blob,
            member=path,
        )
    for at, length in read.places:
        yield span[at : at + length]


def _iter_read(blobs: BlobStore, read: _Read, content: bool) -> Iterator[bytes]:
    """The decompressed, checked bytes of each item of ``read``, in order, one at a time."""
    for (path, _, chunk), raw in zip(read.items, _read_raw(blobs, read), strict=True):
        yield _check_chunk(blobs, path, chunk, raw, content)


def _fetch_read(blobs: BlobStore, read: _Read, content: bool) -> list[bytes]:
    return list(_iter_read(blobs, read, content))


def _fetch_in_order(
    blobs: BlobStore, writes: Iterable[_Write], where: _Where, workers: int, content: bool
) -> Generator[bytes, None, None]:
    """The decompressed chunks of ``writes`` in order, up to ``workers`` reads and
    :data:`FETCH_AHEAD_BYTES` of chunks at a time (what an export holds in memory)."""
    reads = _plan_reads(writes, where)
    workers = max(1, workers)
    if workers == 1:
        for read in reads:
            yield from _iter_read(blobs, read, content)
        return
    window: deque[tuple[Future[list[bytes]], int]] = deque()
    ahead = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunk-fetch")
    try:
        for read in reads:
            size = sum(item[2][1] for item in read.items)
            while window and (len(window) >= workers or ahead + size > FETCH_AHEAD_BYTES):
                future, done = window.popleft()
                ahead -= done
                yield from future.result()
            window.append((pool.submit(_fetch_read, blobs, read, content), size))
            ahead += size
        while window:
            yield from window.popleft()[0].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_chunks_in(
    manifest: Manifest,
    blobs: BlobStore,
    blobs_to_check: set[str],
    *,
    workers: int = DEFAULT_WORKERS,
) -> int:
    """Read every chunk ``manifest`` keeps in ``blobs_to_check`` (packs, or chunks stored on
    their own) and check it against the manifest, content digests included: how a service
    takes a manifest a client made, whose new packs it has not read. ``StateCorrupt`` for
    the first chunk that is not what the manifest says. Returns the bytes checked."""
    where = manifest.where()
    writes: list[_Write] = []
    seen: set[str] = set()
    for entry in manifest.files():
        for offset, chunk in _offsets(entry.chunks):
            if chunk[0] in seen:
                continue
            if where.get(chunk[0], (chunk[0], 0, 0))[0] in blobs_to_check:
                seen.add(chunk[0])
                writes.append((entry.path, offset, chunk))
    checked = 0
    for data in _fetch_in_order(blobs, _pack_order(writes, where), where, workers, True):
        checked += len(data)
    return checked


def missing_blobs(manifest: Manifest, blobs: BlobStore) -> list[str]:
    """Packs and chunks the manifest needs that the store does not hold (sorted)."""
    return sorted(c for c in manifest.blob_checksums() if not blobs.exists(c))


def _check_chunk(
    blobs: BlobStore, path: str, chunk: Chunk, raw: bytes | None, content: bool
) -> bytes:
    """A chunk's bytes from its stored ``raw`` bytes, checked (``StateCorrupt``): they
    must hash to the chunk's name and decompress to its length; with ``content``, the
    decompressed bytes must hash to the manifest's SHA-256 instead.

    Both pin the bytes: the manifest names the compressed bytes by their SHA-256 and zstd
    decompression is a function. Checking the name hashes about half the bytes (restores
    are then faster than ``unpack_archive``); checking the content also proves the
    manifest's own content digests honest, which matters for a manifest this library did
    not write (its digests decide which chunks the next commit reuses).
    """
    checksum, length, digest = chunk
    what = f"Chunk {checksum} of {shown(path)}"
    if raw is None or (not content and hashlib.sha256(raw).hexdigest() != checksum):
        raise StateCorrupt(
            f"{what} in {blobs.location} is damaged: its bytes do not hash to its name.",
            chunk=checksum,
            member=path,
        )
    try:
        if zstandard.frame_content_size(raw) != length:
            raise zstandard.ZstdError("the frame does not declare the chunk's length")
        data = _decompressor().decompress(raw, max_output_size=length)
    except zstandard.ZstdError as exc:
        raise StateCorrupt(
            f"{what} in {blobs.location} is damaged ({exc}).", chunk=checksum, member=path
        ) from exc
    if len(data) != length or (content and hashlib.sha256(data).hexdigest() != digest):
        raise StateCorrupt(
            f"{what} in {blobs.location} does not hold the bytes the manifest names.",
            chunk=checksum,
            member=path,
        )
    return data


# ---------------------------------------------------------------------------- restoring


class RestoreStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    files: int
    directories: int
    uncompressed_bytes: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    stats: RestoreStats
    stat_cache: StatCache  # pass to the next pack_chunked of this directory


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW  # pieces of a file, in a pool
_BATCH_BYTES = MiB  # chunks written by one task of the pool (at least one read)


def _write_batch(blobs: BlobStore, root: str, batch: list[_Read], content: bool) -> int:
    """Fetch, verify and write each chunk of ``batch`` at its offset in its file (made if
    missing: a file's chunks may be spread over batches); return the bytes written."""
    written = 0
    fd = -1
    current = None
    try:
        for read in batch:
            for (path, offset, _), data in zip(
                read.items, _iter_read(blobs, read, content), strict=True
            ):
                if path != current:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    fd = os.open(os.path.join(root, path), _WRITE, 0o600)
                    current = path
                os.pwrite(fd, data, offset)
                written += len(data)
    finally:
        if fd >= 0:
            os.close(fd)
    return written


def _write_chunks(
    blobs: BlobStore,
    root: str,
    writes: list[_Write],
    where: _Where,
    workers: int,
    content: bool,
) -> int:
    """Write every chunk of ``writes`` into its file, ``workers`` at a time.

    Chunks back to back in a pack are fetched with one ranged read (:func:`_plan_reads`).
    The pool fetches, checks and writes whole batches, so the waiting (a GET, a disk read,
    a file creation) and the zstd and SHA-256 work overlap and no thread hands chunks to
    another (the main thread would queue for the GIL behind the pool at every chunk). The
    first failure cancels the rest and is raised.
    """
    batches: list[list[_Read]] = []
    size = _BATCH_BYTES
    for read in _plan_reads(_pack_order(writes, where), where):
        if size >= _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(read)
        size += sum(item[2][1] for item in read.items)
    if workers <= 1 or len(batches) <= 1:
        return sum(_write_batch(blobs, root, batch, content) for batch in batches)
    total = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunk-write") as pool:
        futures = [pool.submit(_write_batch, blobs, root, b, content) for b in batches]
        try:
            for future in as_completed(futures):
                total += future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return total


def restore_chunked(
    manifest: Manifest,
    blobs: BlobStore,
    target: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    replace: bool = False,
    limits: ArchiveLimits | None = None,
    verify_content: bool = False,
) -> RestoreResult:
    """Build the state's tree at ``target``, all or nothing (like ``unpack_archive``).

    ``target`` must not exist unless ``replace``: the old tree is swapped out only once the
    new one is complete. Files are private (0600, directories 0700) with the manifest's
    mtimes. A missing or damaged chunk raises :class:`StateCorrupt`, a bad manifest
    ``ArchiveInvalid``; either way ``target`` is left as it was. Every chunk is checked
    against its name; ``verify_content`` checks the decompressed bytes against the
    manifest's digests instead (for a manifest from elsewhere).
    """
    started = time.perf_counter()
    target = Path(target)
    if target.exists() and not replace:
        raise ValueError(f"{target} exists; pass replace=True to swap it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        check_manifest(manifest, limits, root=staging)
        walk_ns = time.time_ns()
        root = os.fspath(staging)
        files = dirs = total = chunks = 0
        writes: list[_Write] = []
        for entry in manifest.entries:
            path = os.path.join(root, entry.path)
            if entry.kind == "dir":
                os.mkdir(path, 0o700)
                dirs += 1
                continue
            if entry.chunks:  # made by the pool as it writes
                writes.extend((entry.path, offset, c) for offset, c in _offsets(entry.chunks))
            else:
                os.close(os.open(path, _NEW_FILE, 0o600))
            files += 1
            total += entry.size
            chunks += len(entry.chunks)
        _write_chunks(blobs, root, writes, manifest.where(), workers, verify_content)
        cache: dict[str, StatKey] = {}
        for entry in manifest.entries:
            path = os.path.join(root, entry.path)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
            if entry.kind == "file" and entry.mtime_ns < walk_ns - RACY_NS:
                cache[entry.path] = _stat_key(os.stat(path))
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stats = RestoreStats(
        files=files,
        directories=dirs,
        uncompressed_bytes=total,
        chunks=chunks,
        seconds=round(time.perf_counter() - started, 6),
    )
    return RestoreResult(stats, StatCache(manifest.checksum, cache))


# ---------------------------------------------------------------------------- applying


class ApplyStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    files_created: int
    files_patched: int  # rewritten in place, only their changed chunks
    files_touched: int  # same bytes, new mtime
    removed: int
    chunks_fetched: int
    bytes_fetched: int
    seconds: float


@dataclass(frozen=True)
class ApplyResult:
    stats: ApplyStats
    stat_cache: StatCache


def _offsets(chunks: tuple[Chunk, ...]) -> Iterator[tuple[int, Chunk]]:
    offset = 0
    for chunk in chunks:
        yield offset, chunk
        offset += chunk[1]


@dataclass
class _ApplyPlan:
    """What applying a state writes: chunks at offsets, the entries whose size and mtime
    are set afterwards, and the counts for the stats."""

    writes: list[_Write] = field(default_factory=list)
    changed: list[Entry] = field(default_factory=list)
    created: int = 0
    patched: int = 0
    touched: int = 0


def _remove_what_went(old: Manifest, new: Manifest, root: str) -> int:
    """Remove what ``new`` does not have (or has as the other kind), deepest first; how
    many entries went."""
    new_by_path = {entry.path: entry for entry in new.entries}
    removed = 0
    for entry in reversed(old.entries):
        now = new_by_path.get(entry.path)
        if now is not None and now.kind == entry.kind:
            continue
        path = os.path.join(root, entry.path)
        if entry.kind == "dir":
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed += 1
    return removed


def _plan_apply(old: Manifest, new: Manifest, root: str) -> _ApplyPlan:
    """Make the new directories and (empty) new files, in order, and plan which chunks go
    where: every chunk of a new file, the chunks of a changed file that differ."""
    old_by_path = {entry.path: entry for entry in old.entries}
    plan = _ApplyPlan()
    for entry in new.entries:
        path = os.path.join(root, entry.path)
        was = old_by_path.get(entry.path)
        if entry.kind == "dir":
            if was is None or was.kind != "dir":
                os.makedirs(path, 0o700, exist_ok=True)
            continue
        if was is not None and was.kind == "file":
            if was.chunks == entry.chunks:
                if was.mtime_ns != entry.mtime_ns:
                    plan.touched += 1
                    plan.changed.append(entry)
                continue
            have = {(off, c[1], c[2]) for off, c in _offsets(was.chunks)}
            plan.writes.extend(
                (entry.path, off, c)
                for off, c in _offsets(entry.chunks)
                if (off, c[1], c[2]) not in have
            )
            plan.patched += 1
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _NOFOLLOW
            os.close(os.open(path, flags, 0o600))
            plan.writes.extend((entry.path, off, c) for off, c in _offsets(entry.chunks))
            plan.created += 1
        plan.changed.append(entry)
    return plan


def _applied_stat_cache(
    old: Manifest,
    new: Manifest,
    root: str,
    changed: list[Entry],
    stat_cache: StatCache | None,
) -> dict[str, StatKey]:
    """The stat cache of the applied directory: files written now (once not too recent),
    and what the old cache vouched for among the files left alone."""
    walk_ns = time.time_ns()
    carried = stat_cache.entries if stat_cache and stat_cache.manifest == old.checksum else {}
    written = {entry.path for entry in changed}
    cache: dict[str, StatKey] = {}
    for entry in new.files():
        if entry.path in written:
            if entry.mtime_ns < walk_ns - RACY_NS:
                cache[entry.path] = _stat_key(os.stat(os.path.join(root, entry.path)))
        elif entry.path in carried:
            cache[entry.path] = carried[entry.path]
    return cache


def apply_chunked(
    old: Manifest,
    new: Manifest,
    blobs: BlobStore,
    directory: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    stat_cache: StatCache | None = None,
    limits: ArchiveLimits | None = None,
    verify_content: bool = False,
) -> ApplyResult:
    """Turn ``directory``, known to hold exactly state ``old`` (its committed files; the
    excluded caches may be there too and are kept), into state ``new``, writing only what
    differs: new files, changed chunks of changed files (in place), mtimes, deletions.

    Not atomic: the caller marks the working copy dirty before and clean (with the
    returned stat cache) after. A crash in between leaves it dirty, so the next checkout
    does a full :func:`restore_chunked`. The result is only right if the directory really
    was at ``old``; when in doubt, restore. ``stat_cache`` (of the directory at ``old``)
    lets the returned cache keep vouching for files this did not touch.
    """
    started = time.perf_counter()
    directory = Path(directory)
    check_manifest(new, limits, root=directory)
    root = os.fspath(directory)
    removed = _remove_what_went(old, new, root)
    plan = _plan_apply(old, new, root)
    fetched_bytes = _write_chunks(blobs, root, plan.writes, new.where(), workers, verify_content)
    for entry in plan.changed:
        path = os.path.join(root, entry.path)
        os.truncate(path, entry.size)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
    for entry in new.entries:
        if entry.kind == "dir":
            os.utime(os.path.join(root, entry.path), ns=(entry.mtime_ns, entry.mtime_ns))
    cache = _applied_stat_cache(old, new, root, plan.changed, stat_cache)
    stats = ApplyStats(
        files_created=plan.created,
        files_patched=plan.patched,
        files_touched=plan.touched,
        removed=removed,
        chunks_fetched=len(plan.writes),
        bytes_fetched=fetched_bytes,
        seconds=round(time.perf_counter() - started, 6),
    )
    return ApplyResult(stats, StatCache(new.checksum, cache))


# ---------------------------------------------------------------------------- export


def tar_stream(
    manifest: Manifest,
    blobs: BlobStore,
    *,
    workers: int = DEFAULT_WORKERS,
    verify_content: bool = False,
) -> Iterator[bytes]:
    """The state as an uncompressed tar stream, byte for byte what :func:`pack_dir`
    writes before compressing (PAX, sorted members, 0644/0755, whole-second mtimes, no
    owner): compress it for an export."""
    check_manifest(manifest)
    writes = ((e.path, offset, c) for e in manifest.entries for offset, c in _offsets(e.chunks))
    data = _fetch_in_order(blobs, writes, manifest.where(), workers, verify_content)
    offset = 0
    try:
        for entry in manifest.entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime = entry.mtime_ns // 1_000_000_000
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = DIR_MODE
            else:
                info.mode = FILE_MODE
                info.size = entry.size
            header = info.tobuf(tarfile.PAX_FORMAT, _TAR_ENCODING, "surrogateescape")
            offset += len(header)
            yield header
            for _ in entry.chunks:
                yield next(data)
            pad = -entry.size % tarfile.BLOCKSIZE
            if pad:
                yield tarfile.NUL * pad
            offset += entry.size + pad
    finally:
        data.close()
    end = tarfile.BLOCKSIZE * 2
    offset += end
    yield tarfile.NUL * (end + (-offset % tarfile.RECORDSIZE))


def write_tar(
    manifest: Manifest,
    blobs: BlobStore,
    sink: BinarySink,
    *,
    workers: int = DEFAULT_WORKERS,
    verify_content: bool = False,
) -> int:
    """Write :func:`tar_stream` to ``sink``; return the number of bytes."""
    written = 0
    for piece in tar_stream(manifest, blobs, workers=workers, verify_content=verify_content):
        sink.write(piece)
        written += len(piece)
    return written
