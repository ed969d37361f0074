"""State archives: engine-aware packing and safe unpacking of hostile input.

An archive is a tar stream of a browser's user-data-dir, compressed with gzip (``.tar.gz``,
the documented interchange format) or zstd (``.tar.zst``). Readers tell the codec from the
magic bytes, never from a file name.

Unpacking assumes the archive came from anyone. The tar stream is read by
:mod:`profiles.state.tar_guard`, not by ``tarfile``'s reader: headers are capped in size before
they are read, every byte must belong to a member or to the end-of-archive marker and its
zero padding, and the compressed stream must end exactly where its codec says. Only regular
files and directories with plain relative names are accepted, by our own allow-list
(``tarfile``'s ``data`` filter is not run on top: :func:`_check_member` says why); every size
is capped (compressed, decompressed stream, total, per member, member count, expansion
ratio, header size) so a bomb stops early; every refusal is ``ArchiveInvalid`` naming the
member by its archive name, never by a path of this machine; and the tree is built in a
temporary sibling that is renamed into place only when complete.

Also here: :func:`remove_engine_locks` (the lock files a dead browser left) and
:func:`tree_digest` (a digest of a tree's kept files). Reading what a state says about itself
(engine, browser version, cookie domains) is :mod:`profiles.state.inspection`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol

import zstandard
from pydantic import BaseModel, ConfigDict

from profiles.errors import ArchiveInvalid, ValidationFailed
from profiles.fsutil import fsync_dir, remove_tree
from profiles.state.rules import RULES, Engine
from profiles.state.tar_guard import (
    BLOCK,
    MAX_ZERO_PADDING,
    GzipDecoder,
    Meter,
    TarFormatError,
    TarReader,
    ZstdDecoder,
    shown,
)

__all__ = [
    "CODECS",
    "ArchiveLimits",
    "BinarySink",
    "Codec",
    "PackStats",
    "UnpackStats",
    "detect_codec",
    "pack_dir",
    "remove_engine_locks",
    "tree_digest",
    "unpack_archive",
]

log = logging.getLogger(__name__)

Codec = Literal["gzip", "zstd"]
CODECS: tuple[Codec, ...] = ("gzip", "zstd")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# gzip -6 is what `tar czf` does; zstd -3 is zstd's own default and much faster for the size.
DEFAULT_LEVEL: dict[Codec, int] = {"gzip": 6, "zstd": 3}
CHUNK = 1024 * 1024
SMALL_FILE = 8 * 1024 * 1024  # read whole, so a file changing under us cannot break the tar
MiB = 1024 * 1024


class ArchiveLimits(BaseModel):
    """Caps that stop a hostile or broken archive early."""

    model_config = ConfigDict(frozen=True)

    max_compressed_bytes: int = 500 * MiB  # the documented upload limit
    max_uncompressed_bytes: int = 4 * 1024 * MiB
    max_members: int = 100_000
    max_member_bytes: int = 2 * 1024 * MiB
    max_ratio: int = 200  # uncompressed / compressed, checked past ratio_floor
    ratio_floor: int = 64 * MiB
    # A PAX or GNU long-name header is read whole into memory: cap it before reading it.
    max_header_bytes: int = 256 * 1024


class PackStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    files: int
    directories: int
    uncompressed_bytes: int
    compressed_bytes: int
    excluded_files: int
    excluded_bytes: int


class UnpackStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    files: int
    directories: int
    uncompressed_bytes: int
    codec: Codec


# ---------------------------------------------------------------------------- packing


class BinarySink(Protocol):
    """Anything bytes can be written to: a file, a socket wrapper, a blob store writer."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None: ...


class _CountingWriter(io.RawIOBase):
    def __init__(self, target: BinarySink) -> None:
        self._target = target
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._target.write(data)
        n = len(data)
        self.count += n
        return n


def _walk(
    root: Path, engine: Engine, apply_excludes: bool
) -> Iterator[tuple[str, os.DirEntry[str] | None, int]]:
    """Yield (relative path, entry, excluded bytes) in sorted order; entry None = excluded."""
    rules = RULES[engine]

    def visit(directory: Path, rel: str) -> Iterator[tuple[str, os.DirEntry[str] | None, int]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", directory, exc)
            return
        for entry in entries:
            relpath = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not (is_dir or is_file):
                log.debug("skipping %s: not a regular file or directory", relpath)
                continue
            if apply_excludes and rules.excludes_entry(relpath, entry.name):
                yield relpath, None, _tree_size(Path(entry.path)) if is_dir else _size(entry)
                continue
            yield relpath, entry, 0
            if is_dir:
                yield from visit(Path(entry.path), relpath + "/")

    yield from visit(root, "")


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def pack_dir(
    src: Path,
    dest: BinarySink,
    *,
    engine: Engine,
    codec: Codec = "zstd",
    apply_excludes: bool = True,
    level: int | None = None,
) -> PackStats:
    """Write ``src`` as a compressed tar to ``dest`` (left open), without the engine's caches
    and lock files. Members are relative, sorted, owner-less, with their mtimes kept."""
    if codec not in CODECS:
        raise ValidationFailed(f"Unknown codec {codec!r}; use gzip or zstd.", field="codec")
    src = Path(src)
    if not src.is_dir():
        raise ValidationFailed(f"{src} is not a directory.", field="directory")
    out = _CountingWriter(dest)
    files = directories = total = excluded_files = excluded_bytes = 0
    with contextlib.ExitStack() as stack:
        compressed: IO[bytes]
        if codec == "zstd":
            cctx = zstandard.ZstdCompressor(level=level or DEFAULT_LEVEL["zstd"], threads=-1)
            compressed = stack.enter_context(cctx.stream_writer(out, closefd=False))  # type: ignore[arg-type]
        else:
            compressed = stack.enter_context(
                gzip.GzipFile(  # type: ignore[arg-type]
                    fileobj=out, mode="wb", compresslevel=level or DEFAULT_LEVEL["gzip"], mtime=0
                )
            )
        tar = stack.enter_context(_tar_stream(compressed, "w|"))
        for relpath, entry, skipped in _walk(src, engine, apply_excludes):
            if entry is None:
                excluded_files += 1
                excluded_bytes += skipped
                continue
            info = tarfile.TarInfo(relpath)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                directories += 1
                continue
            info.mode = 0o644
            try:
                with open(entry.path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size <= SMALL_FILE:
                        data = f.read()
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    else:
                        info.size = size
                        tar.addfile(info, _ExactReader(f, size))
            except (FileNotFoundError, PermissionError) as exc:
                log.warning("skipping %s: %s", relpath, exc)
                continue
            files += 1
            total += info.size
    return PackStats(
        files=files,
        directories=directories,
        uncompressed_bytes=total,
        compressed_bytes=out.count,
        excluded_files=excluded_files,
        excluded_bytes=excluded_bytes,
    )


def _tar_stream(fileobj: IO[bytes], mode: Literal["r|", "w|"]) -> tarfile.TarFile:
    """A streaming tar over ``fileobj`` with large buffers (the defaults are 10-16 KiB)."""
    tar = tarfile.open(fileobj=fileobj, mode=mode, format=tarfile.PAX_FORMAT, bufsize=CHUNK)  # noqa: SIM115
    tar.copybufsize = CHUNK  # type: ignore[attr-defined]
    return tar


class _ExactReader:
    """Reads exactly ``size`` bytes, padding with zeros if the file shrank meanwhile."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self._raw = raw
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._raw.read(n)
        if len(data) < n:
            log.warning("a file shrank while being packed; padding it")
            data += b"\0" * (n - len(data))
        self._left -= len(data)
        return data


# ---------------------------------------------------------------------------- unpacking


def detect_codec(head: bytes) -> Codec:
    """The codec of an archive from its first bytes; ``ArchiveInvalid`` otherwise."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    raise ArchiveInvalid(
        f"Only .tar.gz (or .tar.zst) files are allowed: {not_an_archive(head)}", field="file"
    )


def not_an_archive(head: bytes) -> str:
    """Why bytes starting with ``head`` are no ``.tar.gz`` / ``.tar.zst``, and what to do:
    the end of the sentence every refusal of such a file uses (CLI, library and HTTP)."""
    if not head:
        what = "the file is empty"
    elif head.startswith(b"PK"):
        what = "it looks like a ZIP file"
    elif head.startswith((b"BZh", b"\xfd7zXZ")):
        what = "it is bzip2/xz compressed"
    elif head.startswith(b"ustar", 257):
        what = "it looks like an uncompressed tar; compress it (gzip or zstd)"
    else:
        what = f"it starts with {head[:8]!r}, not the gzip or zstd magic bytes"
    return (
        f"{what}. Pack the browser's user-data-dir with 'tar czf state.tar.gz -C <dir> .' "
        "or export it from a store."
    )


class _SourceReader(io.RawIOBase):
    """Counts compressed bytes read and stops past the compressed-size cap."""

    def __init__(self, raw: IO[bytes] | BinaryIO, prefix: bytes, limit: int) -> None:
        self._raw = raw
        self._prefix = prefix
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
        else:
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        self.count += n
        if self.count > self._limit:
            raise ArchiveInvalid(
                f"The archive is larger than {self._limit // MiB} MB, the upload limit.",
                field="file",
            )
        return n


def _known_size(source: IO[bytes] | BinaryIO) -> int | None:
    try:
        return os.fstat(source.fileno()).st_size - source.tell()
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


# What Linux allows; a profile needs nothing near it.
NAME_MAX = 255
PATH_MAX = 4096
MAX_DEPTH = 64  # directory levels in a member name (real profiles use about ten)
MAX_COMPRESSED_FRAMES = 65_536  # gzip members or zstd frames (one is the rule)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_CLASH = "clashes with an earlier member (the same name twice, or as a file and as a directory)"
# File-system refusals that are the archive's fault; any other OSError is the machine's.
_FS_REASONS = {
    errno.EEXIST: _CLASH,
    errno.EISDIR: _CLASH,
    errno.ENOTDIR: "clashes with an earlier member: a file is in the way of its directory",
    errno.ENAMETOOLONG: "has a name too long for the file system",
    errno.EILSEQ: "has a name the file system does not accept",
    errno.EINVAL: "has a name the file system does not accept",
}


def _refused(name: str, why: str) -> ArchiveInvalid:
    """``ArchiveInvalid`` for a member, named by its archive name, escaped and cut short:
    never a path of this machine (the staging directory lives under the store's home)."""
    detail = name[:256].encode("utf-8", "backslashreplace").decode("utf-8")
    return ArchiveInvalid(f"Archive member {shown(name)} {why}.", field="file", member=detail)


def _check_member(member: tarfile.TarInfo, staging: Path) -> tuple[str, ...]:
    """The member's path under ``staging`` as parts, or ``ArchiveInvalid`` if it is anything
    but a regular file or directory with a plain, relative, portable name."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        kind = _KINDS.get(member.type, f"of tar type {member.type.decode('latin-1')!r}")
        raise _refused(name, f"is {kind}; only regular files and directories are allowed")
    if _CONTROL.search(name):
        raise _refused(name, "has a control character in its name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refused(name, "has a name that is not valid UTF-8") from None
    raw_parts = name.split("/")
    if not name or name.startswith(("/", "\\")) or ".." in raw_parts:
        raise _refused(name, "points outside the profile (absolute path or '..')")
    parts = tuple(part for part in raw_parts if part not in ("", "."))
    if member.isreg():
        if not parts:
            raise _refused(name, "is a file with no name (it names the profile itself)")
        if name.endswith("/"):
            raise _refused(name, "is a file with a trailing slash in its name")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise _refused(name, f"has a name part longer than {NAME_MAX} bytes")
    if len(parts) > MAX_DEPTH:
        raise _refused(name, f"is nested too deep (more than {MAX_DEPTH} levels)")
    room = PATH_MAX - len(os.fsencode(staging)) - 2
    if len("/".join(parts).encode()) > room:
        raise _refused(name, "has a path too long to unpack")
    # No tarfile.data_filter on top: for a regular file or a directory with a relative name
    # and no '..' it refuses nothing more, and its realpath() of every member (a dozen
    # lstat calls each) was a third of the time a server spent taking a session's commit.
    # Extraction cannot meet a link either: the staging directory is new and private, and
    # only directories (mkdir, an existing non-directory refused) and new files (O_EXCL,
    # O_NOFOLLOW) are made in it.
    return parts


class _Tree:
    """Makes the directories of the unpacked tree one level at a time (no recursion, no
    following of anything but our own directories), remembering the last one made so the
    files of one directory cost no extra system calls."""

    def __init__(self, root: Path) -> None:
        self._root = os.fspath(root)
        self._last: tuple[str, ...] = ()

    def path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self._root, *parts)

    def make(self, parts: tuple[str, ...]) -> None:
        same = 0
        for mine, last in zip(parts, self._last, strict=False):
            if mine != last:
                break
            same += 1
        for depth in range(same, len(parts)):
            path = self.path(parts[: depth + 1])
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise
        self._last = parts


def unpack_archive(
    source: Path | str | IO[bytes] | BinaryIO,
    target: Path,
    *,
    limits: ArchiveLimits | None = None,
    replace: bool = False,
) -> UnpackStats:
    """Unpack a ``.tar.gz`` / ``.tar.zst`` into ``target``, all or nothing.

    ``target`` must not exist unless ``replace``: then the old tree is swapped out only
    after the new one is complete. Any problem with the archive raises ``ArchiveInvalid``
    and leaves ``target`` as it was.
    """
    limits = limits or ArchiveLimits()
    target = Path(target)
    if target.exists() and not replace:
        raise ValueError(f"{target} exists; pass replace=True to swap it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.unpack-"))
    try:
        with contextlib.ExitStack() as stack:
            raw: IO[bytes] | BinaryIO = (
                stack.enter_context(open(source, "rb"))
                if isinstance(source, str | Path)
                else source
            )
            stats = _extract(raw, staging, limits)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats


def _extract(raw: IO[bytes] | BinaryIO, staging: Path, limits: ArchiveLimits) -> UnpackStats:
    known = _known_size(raw)
    if known is not None and known > limits.max_compressed_bytes:
        raise ArchiveInvalid(
            f"The archive is {known // MiB} MB; the upload limit is "
            f"{limits.max_compressed_bytes // MiB} MB.",
            field="file",
        )
    head = raw.read(4)
    if not head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        # Refused: read a tar header's worth more, so the message can say what it is.
        detect_codec(head + raw.read(508))
    codec = detect_codec(head)
    counted = _SourceReader(raw, head, limits.max_compressed_bytes)
    source = io.BufferedReader(counted, CHUNK)
    budget = limits.max_uncompressed_bytes
    if known is not None:
        budget = min(budget, max(limits.ratio_floor, known * limits.max_ratio))
    decoder: GzipDecoder | ZstdDecoder = (
        GzipDecoder(source, max_members=MAX_COMPRESSED_FRAMES)
        if codec == "gzip"
        else ZstdDecoder(source, max_frames=MAX_COMPRESSED_FRAMES)
    )
    # Every decompressed byte counts, headers and padding included: the members' budget,
    # two blocks of overhead per member, and the zero padding after the end marker.
    meter = Meter(
        decoder.read,
        lambda: counted.count,
        cap=budget + limits.max_members * 2 * BLOCK + MAX_ZERO_PADDING,
        max_ratio=limits.max_ratio,
        ratio_floor=limits.ratio_floor,
    )
    reader = TarReader(meter.read, max_header_bytes=limits.max_header_bytes)
    tree = _Tree(staging)
    # Directories get their member's mtime (a directory made for a file without a member
    # of its own, that file's), set once every file is written: the same archive then
    # always unpacks to the same tree, and so to the same state.
    dir_times: dict[tuple[str, ...], float] = {}
    files = directories = total = members = 0
    try:
        while (member := reader.next()) is not None:
            members += 1
            if members > limits.max_members:
                raise ArchiveInvalid(
                    f"The archive has more than {limits.max_members} members.", field="file"
                )
            parts = _check_member(member, staging)
            if member.size > limits.max_member_bytes:
                raise _refused(
                    member.name,
                    f"is {member.size // MiB} MB; at most {limits.max_member_bytes // MiB} MB "
                    "per file is allowed",
                )
            if total + member.size > budget:
                raise ArchiveInvalid(
                    f"The archive expands to more than {budget // MiB} MB "
                    f"(member {shown(member.name)}); it looks like a decompression bomb.",
                    field="file",
                )
            try:
                if member.isdir():
                    tree.make(parts)
                    if parts:
                        dir_times[parts] = member.mtime
                    directories += 1
                    continue
                tree.make(parts[:-1])
                for depth in range(1, len(parts)):
                    dir_times.setdefault(parts[:depth], member.mtime)
                total += _write_member(reader, tree.path(parts), member)
                files += 1
            except OSError as exc:
                why = _FS_REASONS.get(exc.errno or 0)
                if why is None:
                    raise
                raise _refused(member.name, why) from exc
    except TarFormatError as exc:
        raise ArchiveInvalid(
            f"The archive is not a complete {codec}-compressed tar: {exc}.", field="file"
        ) from exc
    except (zlib.error, zstandard.ZstdError) as exc:
        raise ArchiveInvalid(
            f"The archive is not a complete {codec}-compressed tar: the {codec} data is "
            f"corrupt ({exc}).",
            field="file",
        ) from exc
    for parts, mtime in dir_times.items():
        os.utime(tree.path(parts), (mtime, mtime))
    return UnpackStats(files=files, directories=directories, uncompressed_bytes=total, codec=codec)


def _write_member(reader: TarReader, path: str, member: tarfile.TarInfo) -> int:
    """Write the member's data to a new file at ``path`` (never over an existing one)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        for piece in reader.data():
            written += len(piece)
            out.write(piece)
    os.utime(path, (member.mtime, member.mtime))
    return written


def _swap_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{id(staging)}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
        fsync_dir(target.parent)
        remove_tree(old)
    else:
        os.rename(staging, target)
        fsync_dir(target.parent)


# ---------------------------------------------------------------------------- directories on disk


def remove_engine_locks(root: Path, engine: Engine) -> list[str]:
    """Delete the lock files a dead browser left (``Singleton*`` are dangling symlinks)."""
    rules = RULES[engine]
    removed: list[str] = []
    for directory in (Path(root), Path(root) / "Default"):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if rules.is_engine_lock(entry.name) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(os.path.relpath(entry.path, root))
    return sorted(removed)


def tree_digest(root: Path, *, engine: Engine | None = None) -> dict[str, str]:
    """``relpath -> sha256`` of every regular file kept (by ``engine``'s rules, if given)."""
    import hashlib

    root = Path(root)
    digest: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or path.is_symlink():
                continue
            if engine is not None and RULES[engine].excludes(rel):
                continue
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest
