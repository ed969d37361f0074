"""The index of a chunked state: its manifest, how it is written and how it is read.

A manifest lists per entry its relative path, kind, mtime (ns), size, mode and its chunk
list ``(chunk checksum, length, SHA-256 of the uncompressed bytes)``, then the packs it
uses ``(checksum, size)`` and one location ``(pack index, offset, length)`` per distinct
chunk in entry order, as canonical JSON (sorted keys, no whitespace, ASCII) compressed
with zstd behind a zstd *skippable frame* naming the format (:data:`MANIFEST_MAGIC`: any
zstd tool still reads it, the archive reader refuses it clearly, and :func:`is_manifest`
tells the two formats apart from four bytes). The manifest is a blob too; its checksum is
the state's identity. :mod:`profiles.state.chunked` writes and reads the chunks it names.

Formats: 1 (every chunk a blob of its own), 2 (chunks in packs) and 3, a :class:`Delta`:
the difference from a full manifest of format 1 or 2, its *base*, read together with it
(:func:`parse_manifest` with ``bases``); a delta's base is never a delta.

Manifests may come from anyone (an import, an upload): :func:`parse_manifest` validates
them with pydantic and the archive's rules (relative canonical paths, no ``..``, no
control characters, sorted unique paths with their parents first, sizes that add up,
counts and totals within :class:`~profiles.state.archive.ArchiveLimits`) and raises
``ArchiveInvalid``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, BinaryIO, Literal, TypeAlias

import zstandard
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from profiles.blobs.base import BlobStore
from profiles.errors import ArchiveInvalid, NotFound, StateCorrupt
from profiles.state.archive import _CONTROL, MAX_DEPTH, NAME_MAX, PATH_MAX, ArchiveLimits
from profiles.state.rules import Engine
from profiles.state.tar_guard import shown

__all__ = [
    "MANIFEST_MAGIC",
    "Chunk",
    "Delta",
    "Entry",
    "Location",
    "Manifest",
    "PackRef",
    "check_manifest",
    "encode_delta",
    "encode_manifest",
    "is_manifest",
    "load_manifest",
    "locate",
    "parse_manifest",
    "read_capped",
]

MiB = 1024 * 1024
MAX_CHUNK_BYTES = 16 * MiB  # the largest chunk a manifest may name (we write CHUNK_SIZE)
MAX_MANIFEST_BYTES = 256 * MiB  # decompressed manifest JSON
MAX_MANIFEST_BLOB = 64 * MiB  # compressed manifest blob
MAX_CHUNKS = 2_000_000  # chunk references in one manifest
MAX_PACK_BYTES = 256 * MiB  # the largest pack a manifest may name (we write ~PACK_TARGET)
ZSTD_LEVEL = 3
FORMAT_VERSION: Literal[2] = 2
FILE_MODE: Literal[0o644] = 0o644  # what pack_dir writes for every file
DIR_MODE: Literal[0o755] = 0o755
MAX_MTIME_NS = 2**63 - 1
_TAG = b"playwright-profiles manifest v1"
# A zstd skippable frame (magic 0x184D2A5E, little-endian length, payload) naming the format.
MANIFEST_MAGIC = (0x184D2A5E).to_bytes(4, "little") + len(_TAG).to_bytes(4, "little") + _TAG

Checksum = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Chunk: TypeAlias = tuple[Checksum, Annotated[int, Field(ge=1, le=MAX_CHUNK_BYTES)], Checksum]
"""A chunk reference: (SHA-256 of the zstd bytes, uncompressed length, uncompressed
SHA-256)."""
PackRef: TypeAlias = tuple[Checksum, Annotated[int, Field(ge=1, le=MAX_PACK_BYTES)]]
"""A pack a state uses: (blob checksum, size in bytes)."""
Location: TypeAlias = tuple[
    Annotated[int, Field(ge=-1, le=MAX_CHUNKS)],
    Annotated[int, Field(ge=0, le=MAX_PACK_BYTES)],
    Annotated[int, Field(ge=0, le=MAX_PACK_BYTES)],
]
"""Where a chunk's zstd bytes are: (index into ``packs``, offset, length), or
``(-1, 0, 0)`` for a chunk stored as a blob of its own (format 1)."""
StandAlone: Location = (-1, 0, 0)
_WhereMap: TypeAlias = dict[str, tuple[str, int, int]]


# ---------------------------------------------------------------------------- the manifest


class Entry(BaseModel):
    """One file or directory of a state."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    path: Annotated[str, Field(min_length=1, max_length=PATH_MAX)]
    kind: Literal["file", "dir"]
    mtime_ns: Annotated[int, Field(ge=0, le=MAX_MTIME_NS)]
    size: Annotated[int, Field(ge=0)]
    mode: Literal[0o644, 0o755]
    chunks: tuple[Chunk, ...]


class Manifest(BaseModel):
    """The index of a state: its entries in walk order (parents first, names sorted)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    version: Literal[1, 2]
    engine: Engine
    entries: tuple[Entry, ...]
    # Format 2: the packs used, and one location per distinct chunk in entry order.
    packs: tuple[PackRef, ...] = ()
    locations: tuple[Location, ...] = ()

    _checksum: str | None = PrivateAttr(default=None)
    _where: dict[str, tuple[str, int, int]] | None = PrivateAttr(default=None)
    _base: Manifest | None = PrivateAttr(default=None)
    _blob_size: int | None = PrivateAttr(default=None)

    @property
    def base(self) -> Manifest | None:
        """The full manifest this state's blob is a delta against (format 3), or ``None``
        when the blob is a full manifest itself."""
        return self._base

    @property
    def blob_size(self) -> int:
        """The size of this state's manifest blob (a delta's, for a delta)."""
        if self._blob_size is None:
            self._blob_size = len(encode_manifest(self))
        return self._blob_size

    @property
    def checksum(self) -> str:
        """The checksum of the manifest blob: the state's identity."""
        if self._checksum is None:
            self._checksum = hashlib.sha256(encode_manifest(self)).hexdigest()
        return self._checksum

    def chunk_checksums(self) -> set[str]:
        """Every chunk this state references, packed or not."""
        return {chunk[0] for entry in self.entries for chunk in entry.chunks}

    def distinct_chunks(self) -> list[str]:
        """Each chunk checksum once, in the order the entries first name it (the order of
        ``locations``)."""
        return list(dict.fromkeys(chunk[0] for entry in self.entries for chunk in entry.chunks))

    def where(self) -> dict[str, tuple[str, int, int]]:
        """``chunk checksum -> (pack checksum, offset, length)`` of every packed chunk; a
        chunk not in it is a blob of its own."""
        if self._where is None:
            where: dict[str, tuple[str, int, int]] = {}
            if self.locations:
                for checksum, (pack, offset, length) in zip(
                    self.distinct_chunks(), self.locations, strict=False
                ):
                    if pack >= 0:
                        where[checksum] = (self.packs[pack][0], offset, length)
            self._where = where
        return self._where

    def blob_checksums(self) -> set[str]:
        """Every blob this state needs besides its manifest: its packs and its chunks
        stored on their own (what a collector must keep, what a transfer copies)."""
        where = self.where()
        needed = {pack for pack, _ in self.packs} | {
            c for c in self.chunk_checksums() if c not in where
        }
        if self._base is not None:  # a delta is read with its base
            needed.add(self._base.checksum)
        return needed

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    def files(self) -> Iterator[Entry]:
        return (entry for entry in self.entries if entry.kind == "file")


def is_manifest(head: bytes) -> bool:
    """Whether a state blob starting with ``head`` (its first 8 bytes or more) is a
    manifest; old whole-archive states start with the gzip or zstd magic instead."""
    if len(head) >= len(MANIFEST_MAGIC):
        return head.startswith(MANIFEST_MAGIC)
    return len(head) >= 8 and MANIFEST_MAGIC.startswith(head)


def _entry_document(e: Entry) -> dict[str, Any]:
    return {
        "path": e.path,
        "kind": e.kind,
        "mtime_ns": e.mtime_ns,
        "size": e.size,
        "mode": e.mode,
        "chunks": e.chunks,
    }


def _document(manifest: Manifest) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": manifest.version,
        "engine": manifest.engine,
        "entries": [_entry_document(e) for e in manifest.entries],
    }
    if manifest.version >= 2:
        document["packs"] = manifest.packs
        document["locations"] = manifest.locations
    return document


def _canonical_json(document: Any) -> bytes:
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest's blob: the format's skippable frame, then zstd of canonical JSON."""
    return MANIFEST_MAGIC + _compressor().compress(_canonical_json(_document(manifest)))


def _manifest_refused(why: str, **details: Any) -> ArchiveInvalid:
    return ArchiveInvalid(f"The state manifest {why}.", field="manifest", **details)


def _json_of(blob: bytes) -> bytes:
    """The canonical JSON inside a manifest blob, decompressed within the caps."""
    if not is_manifest(blob):
        raise _manifest_refused("is not a manifest of this library (wrong magic bytes)")
    body = blob[len(MANIFEST_MAGIC) :]
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise _manifest_refused(f"is not zstd data ({exc})") from exc
    if size < 0 or size > MAX_MANIFEST_BYTES:
        raise _manifest_refused(
            f"does not declare a decompressed size of at most {MAX_MANIFEST_BYTES // MiB} MB"
        )
    try:
        return _decompressor().decompress(body, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise _manifest_refused(f"is damaged zstd data ({exc})") from exc


def parse_manifest(
    blob: bytes,
    *,
    limits: ArchiveLimits | None = None,
    bases: Callable[[str], Manifest] | None = None,
) -> Manifest:
    """A manifest from its blob bytes, validated as hostile input (``ArchiveInvalid``).

    A delta (format 3) is read with its base, which ``bases`` returns for a checksum (it
    must be a full manifest; without ``bases`` a delta is refused); the result is the
    merged state, validated as a whole."""
    text = _json_of(blob)
    try:
        document = _DOCUMENT.validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _manifest_refused(
            f"has a bad value at {where or 'the top'}: {first['msg']} "
            f"({exc.error_count()} problem(s))"
        ) from None
    if isinstance(document, Delta):
        if _canonical_json(_delta_document(document)) != text:
            raise _manifest_refused("is not canonical JSON (sorted keys, no whitespace, ASCII)")
        if bases is None:
            raise _manifest_refused(
                f"is a delta against {document.base} where a full manifest is needed "
                "(the base of a delta must be a full manifest)"
            )
        manifest = _merge(document, bases(document.base), limits)
    else:
        manifest = document
        if _canonical_json(_document(manifest)) != text:
            raise _manifest_refused("is not canonical JSON (sorted keys, no whitespace, ASCII)")
        check_manifest(manifest, limits)
    manifest._blob_size = len(blob)
    return manifest


def load_manifest(
    blobs: BlobStore, checksum: str, *, limits: ArchiveLimits | None = None
) -> Manifest:
    """Read and validate the manifest stored under ``checksum``; a delta's base is read
    from ``blobs`` too (and must be a full manifest)."""

    def from_blobs(base: str) -> Manifest:
        return _load(blobs, base, limits, None)

    return _load(blobs, checksum, limits, from_blobs)


def _load(
    blobs: BlobStore,
    checksum: str,
    limits: ArchiveLimits | None,
    bases: Callable[[str], Manifest] | None,
) -> Manifest:
    try:
        with blobs.open(checksum) as src:
            blob = read_capped(src, MAX_MANIFEST_BLOB)
    except NotFound:
        raise StateCorrupt(
            f"The state manifest {checksum} is missing from {blobs.location}.",
            chunk=checksum,
        ) from None
    if blob is None:
        raise _manifest_refused(f"is larger than {MAX_MANIFEST_BLOB // MiB} MB")
    if hashlib.sha256(blob).hexdigest() != checksum:
        raise StateCorrupt(
            f"The state manifest {checksum} in {blobs.location} does not hash to its name.",
            chunk=checksum,
        )
    manifest = parse_manifest(blob, limits=limits, bases=bases)
    manifest._checksum = checksum
    return manifest


def _delta_base_refused(base: str) -> ArchiveInvalid:
    return _manifest_refused(
        f"names as its base {base}, a delta itself (the base of a delta must be a full manifest)"
    )


# ---------------------------------------------------------------------------- deltas


class Delta(BaseModel):
    """Format 3: a state written as the difference from a full manifest, its *base*: the
    entries that are new or differ from the base's (a file's chunks or their locations
    included), the paths the base has and the state has not, and the pack table of the
    changed entries' chunks (one location per distinct chunk in entry order, as in format
    2). Every other entry, and where its chunks lie, is the base's."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    version: Literal[3]
    engine: Engine
    base: Checksum
    entries: tuple[Entry, ...]
    removed: tuple[Annotated[str, Field(min_length=1, max_length=PATH_MAX)], ...]
    packs: tuple[PackRef, ...]
    locations: tuple[Location, ...]


_DOCUMENT: TypeAdapter[Manifest | Delta] = TypeAdapter(
    Annotated[Manifest | Delta, Field(discriminator="version")]
)


def _delta_document(delta: Delta) -> dict[str, Any]:
    return {
        "version": 3,
        "engine": delta.engine,
        "base": delta.base,
        "entries": [_entry_document(e) for e in delta.entries],
        "removed": delta.removed,
        "packs": delta.packs,
        "locations": delta.locations,
    }


def _same(a: Entry, b: Entry, here: _WhereMap, there: _WhereMap) -> bool:
    """Whether two entries of one path are the same, their chunks' locations included."""
    return (
        a.kind == b.kind
        and a.mtime_ns == b.mtime_ns
        and a.size == b.size
        and a.mode == b.mode
        and len(a.chunks) == len(b.chunks)
        and all(tuple(x) == tuple(y) for x, y in zip(a.chunks, b.chunks, strict=True))
        and all(here.get(c[0]) == there.get(c[0]) for c in a.chunks)
    )


def encode_delta(manifest: Manifest, base: Manifest) -> bytes | None:
    """The blob of ``manifest`` written as a delta against the full manifest ``base``, or
    ``None`` when the two are the same state (which is then stored as the base is)."""
    if base.base is not None:
        raise ValueError("the base of a delta must be a full manifest")
    theirs = {entry.path: entry for entry in base.entries}
    here, there = manifest.where(), base.where()
    changed = [
        entry
        for entry in manifest.entries
        if (old := theirs.get(entry.path)) is None or not _same(entry, old, here, there)
    ]
    kept = {entry.path for entry in manifest.entries}
    removed = tuple(path for path in theirs if path not in kept)
    if not changed and not removed:
        return None
    sizes = dict(manifest.packs)
    packs, locations = locate(changed, here, sizes)
    delta = Delta.model_construct(
        version=3,
        engine=manifest.engine,
        base=base.checksum,
        entries=tuple(changed),
        removed=removed,
        packs=packs,
        locations=locations,
    )
    return MANIFEST_MAGIC + _compressor().compress(_canonical_json(_delta_document(delta)))


def locate(
    entries: Iterable[Entry], where: _WhereMap, sizes: dict[str, int]
) -> tuple[tuple[PackRef, ...], tuple[Location, ...]]:
    """The pack table of ``entries``: packs in order of first use, one location per
    distinct chunk in entry order (:data:`StandAlone` for one not in ``where``)."""
    index: dict[str, int] = {}
    table: list[PackRef] = []
    locations: list[Location] = []
    seen: set[str] = set()
    for entry in entries:
        for chunk in entry.chunks:
            if chunk[0] in seen:
                continue
            seen.add(chunk[0])
            found = where.get(chunk[0])
            if found is None:
                locations.append(StandAlone)
                continue
            pack, offset, length = found
            if pack not in index:
                index[pack] = len(table)
                table.append((pack, sizes[pack]))
            locations.append((index[pack], offset, length))
    return tuple(table), tuple(locations)


def sub_manifest(manifest: Manifest, paths: Iterable[str]) -> Manifest:
    """The part of ``manifest`` that holds ``paths`` (those it has) and their parent
    directories: a state of just those files, read from the same packs."""
    wanted: set[str] = set()
    for path in paths:
        parts = path.split("/")
        wanted.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = tuple(entry for entry in manifest.entries if entry.path in wanted)
    if manifest.version == 1:
        return Manifest(version=1, engine=manifest.engine, entries=entries)
    packs, locations = locate(entries, manifest.where(), dict(manifest.packs))
    return Manifest(
        version=2, engine=manifest.engine, entries=entries, packs=packs, locations=locations
    )


def _walk_key(entry: Entry) -> list[str]:
    return entry.path.split("/")


def _merge(delta: Delta, base: Manifest, limits: ArchiveLimits | None) -> Manifest:
    """The state a delta describes: its base with the delta's changes, checked whole."""
    if base.base is not None:
        raise _delta_base_refused(delta.base)
    if base.engine != delta.engine:
        raise _manifest_refused(f"is for {delta.engine} but its base is for {base.engine}")
    own = Manifest.model_construct(
        version=2, engine=delta.engine, entries=delta.entries, packs=delta.packs,
        locations=delta.locations,
    )  # fmt: skip
    _check_locations(own)
    for name, listed in (("entries", [e.path for e in delta.entries]), ("removed", delta.removed)):
        keys = [path.split("/") for path in listed]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise _manifest_refused(f"lists its {name} out of order or twice")
    changed = {entry.path: entry for entry in delta.entries}
    theirs = {entry.path for entry in base.entries}
    for path in delta.removed:
        if path not in theirs or path in changed:
            raise _entry_refused(path, "is removed, but its base lacks it or the delta names it")
    gone = set(delta.removed) | changed.keys()
    entries = sorted(
        [entry for entry in base.entries if entry.path not in gone] + list(delta.entries),
        key=_walk_key,
    )
    where = dict(base.where())
    standalone = set(own.distinct_chunks()) - own.where().keys()
    for checksum in standalone:
        where.pop(checksum, None)
    where.update(own.where())
    sizes = dict(base.packs) | dict(delta.packs)
    packs, locations = locate(entries, where, sizes)
    merged = Manifest.model_construct(
        version=2, engine=delta.engine, entries=tuple(entries), packs=packs, locations=locations
    )
    check_manifest(merged, limits)
    merged._base = base
    return merged


def _path_problem(path: str) -> str | None:
    """Why ``path`` is not a canonical relative path the archive reader would accept."""
    if _CONTROL.search(path):
        return "has a control character in its name"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "has a name that is not valid UTF-8"
    parts = path.split("/")
    if path.startswith(("/", "\\")) or ".." in parts:
        return "points outside the profile (absolute path or '..')"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' part in its name"
    if any(len(part.encode()) > NAME_MAX for part in parts):
        return f"has a name part longer than {NAME_MAX} bytes"
    if len(parts) > MAX_DEPTH:
        return f"is nested too deep (more than {MAX_DEPTH} levels)"
    if len(encoded) > PATH_MAX:
        return "has a path too long to unpack"
    return None


def _entry_refused(path: str, why: str) -> ArchiveInvalid:
    detail = path[:256].encode("utf-8", "backslashreplace").decode("utf-8")
    return ArchiveInvalid(
        f"State manifest entry {shown(path)} {why}.", field="manifest", member=detail
    )


def check_manifest(
    manifest: Manifest, limits: ArchiveLimits | None = None, *, root: Path | None = None
) -> None:
    """The rules pydantic's types do not say, as ``ArchiveInvalid``: canonical paths in walk
    order with their parent directory before them, sizes that add up, and the archive's
    caps. With ``root``, every path must also fit under it."""
    limits = limits or ArchiveLimits()
    if len(manifest.entries) > limits.max_members:
        raise _manifest_refused(f"has more than {limits.max_members} entries")
    room = PATH_MAX - len(os.fsencode(root)) - 2 if root is not None else PATH_MAX
    total = chunks = 0
    dirs: set[str] = set()
    previous: list[str] | None = None
    for entry in manifest.entries:
        path = entry.path
        why = _path_problem(path)
        if why is not None:
            raise _entry_refused(path, why)
        if len(path.encode()) > room:
            raise _entry_refused(path, "has a path too long to unpack")
        parts = path.split("/")
        if previous is not None and parts <= previous:
            raise _entry_refused(path, "is out of order or repeated (paths are sorted, unique)")
        previous = parts
        parent = path.rpartition("/")[0]
        if parent and parent not in dirs:
            raise _entry_refused(path, "comes without its parent directory before it")
        if entry.kind == "dir":
            if entry.size or entry.chunks or entry.mode != DIR_MODE:
                raise _entry_refused(path, "is a directory with a size, chunks or a file mode")
            dirs.add(path)
            continue
        if entry.mode != FILE_MODE:
            raise _entry_refused(path, "is a file with a directory mode")
        if entry.size > limits.max_member_bytes:
            raise _entry_refused(
                path,
                f"is {entry.size // MiB} MB; at most {limits.max_member_bytes // MiB} MB "
                "per file is allowed",
            )
        added = sum(chunk[1] for chunk in entry.chunks)
        if added != entry.size:
            raise _entry_refused(
                path, f"has chunks adding up to {added} bytes, not its size {entry.size}"
            )
        total += entry.size
        chunks += len(entry.chunks)
        if total > limits.max_uncompressed_bytes:
            raise _manifest_refused(
                f"expands to more than {limits.max_uncompressed_bytes // MiB} MB "
                f"(entry {shown(path)})"
            )
        if chunks > MAX_CHUNKS:
            raise _manifest_refused(f"names more than {MAX_CHUNKS} chunks")
    _check_locations(manifest)


def _stored_cap(length: int) -> int:
    """The most zstd bytes an honest chunk of ``length`` bytes takes: zstd never grows
    data by more than ~1/128 plus a frame header."""
    return length + length // 64 + 1024


def _check_locations(manifest: Manifest) -> None:
    """Format 2's pack table: one location per distinct chunk, each inside a pack the
    manifest names, no more compressed bytes than the chunk could take, every pack used.
    (Whether the bytes there are the chunk is checked by hash when it is read.)"""
    if manifest.version == 1:
        if manifest.packs or manifest.locations:
            raise _manifest_refused("is format 1 but names packs")
        return
    if len(manifest.packs) > MAX_CHUNKS:
        raise _manifest_refused(f"names more than {MAX_CHUNKS} packs")
    if len({pack for pack, _ in manifest.packs}) != len(manifest.packs):
        raise _manifest_refused("names a pack twice")
    lengths: dict[str, int] = {}
    for entry in manifest.entries:
        for checksum, length, _ in entry.chunks:
            lengths.setdefault(checksum, length)
    if len(manifest.locations) != len(lengths):
        raise _manifest_refused(
            f"has {len(manifest.locations)} chunk locations for {len(lengths)} distinct chunks"
        )
    used = [False] * len(manifest.packs)
    for (checksum, length), (pack, offset, stored) in zip(
        lengths.items(), manifest.locations, strict=True
    ):
        if pack == -1:
            if offset or stored:
                raise _manifest_refused(f"gives chunk {checksum} an offset but no pack")
            continue
        if pack >= len(manifest.packs):
            raise _manifest_refused(f"puts chunk {checksum} in pack {pack}, which it lacks")
        if not 1 <= stored <= _stored_cap(length):
            raise _manifest_refused(
                f"gives chunk {checksum} of {length} bytes {stored} compressed bytes"
            )
        if offset + stored > manifest.packs[pack][1]:
            raise _manifest_refused(f"puts chunk {checksum} past the end of its pack")
        used[pack] = True
    if not all(used):
        raise _manifest_refused("names a pack no chunk is in")


# ---------------------------------------------------------------------------- zstd per thread

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


# ---------------------------------------------------------------------------- reading


def read_capped(src: IO[bytes] | BinaryIO, cap: int) -> bytes | None:
    """All of ``src``, or ``None`` if it holds more than ``cap`` bytes."""
    pieces: list[bytes] = []
    got = 0
    while True:
        piece = src.read(min(MiB, cap + 1 - got))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        got += len(piece)
        if got > cap:
            return None
