"""The blob-store interface: immutable state archives named by their SHA-256.

The contract
============

Every backend MUST keep these rules, and ``profiles.testing.blob_contract`` checks them
(run it against any new backend):

1. **Named before the bytes** (restic's ``Save(h, reader)``): :meth:`BlobStore.put` is given
   the checksum and the size first, then a stream. It reads exactly ``size`` bytes, hashes
   them, and raises :class:`~profiles.errors.ChecksumMismatch` (nothing stored) when they
   do not match the name.
2. **Nothing half-written is ever visible.** A blob appears under its checksum only when
   complete and durable (a local rename after fsync; an S3 PUT or a completed multipart
   upload); a failed or interrupted ``put`` leaves no blob under that name.
3. **Content is never rewritten.** A blob that exists is not replaced by other bytes: ``put``
   of an existing checksum is a no-op (the bytes are the same by construction).
4. **Streams only.** :meth:`BlobStore.open` returns a readable stream that callers read from
   start to end; they never seek it, so a network body works as well as a file.
   :meth:`BlobStore.read_range` returns ``length`` bytes from ``offset`` in one request (a
   pack of chunks is read a span at a time); it returns fewer only where the blob ends, and
   it does not verify the whole blob: the caller checks what it reads (every chunk in a
   pack is named by its own hash).
5. **Deletion is idempotent** and :meth:`BlobStore.list` may run concurrently with writes.
   Deciding *whether* a blob may be deleted is the store's job (the catalog's references,
   data first and metadata last); the backend only does what it is told.
6. **Faults.** Storage and network faults raise
   :class:`~profiles.errors.StorageUnavailable` naming the location (never a secret);
   a missing blob is :class:`~profiles.errors.NotFound`.
"""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from profiles.errors import ChecksumMismatch, ValidationFailed

__all__ = [
    "BlobInfo",
    "BlobStore",
    "HashingReader",
    "check_checksum",
    "check_range",
    "read_up_to",
]

_HEX = frozenset("0123456789abcdef")


def check_checksum(checksum: str) -> str:
    """A lowercase SHA-256 hex digest, or ``ValidationFailed``."""
    if not isinstance(checksum, str) or len(checksum) != 64 or not _HEX.issuperset(checksum):
        raise ValidationFailed(f"{checksum!r} is not a sha256 hex digest.", field="checksum")
    return checksum


class HashingReader:
    """Reads exactly ``size`` bytes from ``source``, hashing them; :meth:`verify` checks the
    count and the digest at the end. Backends wrap a ``put`` source in one."""

    def __init__(self, source: BinaryIO, size: int, checksum: str) -> None:
        self._source = source
        self._left = size
        self._hash = hashlib.sha256()
        self.size = size
        self.checksum = checksum

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        if want <= 0:
            return b""
        data = self._source.read(want)
        self._hash.update(data)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def verify(self) -> None:
        """``ChecksumMismatch`` unless exactly ``size`` bytes hashing to ``checksum`` were
        read (read the rest first, if the consumer stopped early)."""
        while self.read(1024 * 1024):
            pass
        if self._left > 0:
            raise ChecksumMismatch(
                f"The state bytes for {self.checksum} ended {self._left} bytes short of the "
                f"announced {self.size}; nothing was stored.",
                checksum=self.checksum,
            )
        got = self._hash.hexdigest()
        if got != self.checksum:
            raise ChecksumMismatch(
                f"The state bytes hash to {got}, not to their name {self.checksum}; nothing "
                "was stored.",
                checksum=self.checksum,
            )


def check_range(offset: int, length: int) -> None:
    """``ValidationFailed`` unless ``offset`` and ``length`` are non-negative integers."""
    if (
        isinstance(offset, bool)
        or isinstance(length, bool)
        or not isinstance(offset, int)
        or not isinstance(length, int)
        or offset < 0
        or length < 0
    ):
        raise ValidationFailed(
            f"A blob range needs a non-negative offset and length, not {offset!r}, {length!r}.",
            field="range",
        )


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def read_up_to(stream: Readable, length: int) -> bytes:
    """``length`` bytes of ``stream``, fewer only where it ends (reads may come short)."""
    pieces: builtins.list[bytes] = []
    left = length
    while left > 0:
        piece = stream.read(left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


@dataclass(frozen=True)
class BlobInfo:
    checksum: str
    size: int
    modified: float  # POSIX time of the write


class BlobStore(ABC):
    """Where state archives live: a local directory by default, or S3-compatible storage."""

    #: Where it lives, for messages: a path or a URL without credentials.
    location: str

    @abstractmethod
    def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
        """Store exactly ``size`` bytes of ``source`` under ``checksum`` (rules 1-3). Returns
        whether this call stored them (``False``: the blob was there already)."""

    def put_file(self, checksum: str, path: Path) -> None:
        """Store the file at ``path`` (which the caller may remove afterwards). Backends on
        the same file system may move it instead of copying."""
        with path.open("rb") as source:
            self.put(checksum, source, size=path.stat().st_size)

    @abstractmethod
    def open(self, checksum: str) -> BinaryIO:
        """Read a blob as a stream (rule 4); ``NotFound`` if it is not there."""

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only where the blob ends; rule 4);
        ``NotFound`` if the blob is not there. Backends override this with one ranged read;
        the default reads the stream up to the end of the range."""
        check_range(offset, length)
        with self.open(checksum) as stream:
            skip = offset
            while skip:
                piece = stream.read(min(skip, 1024 * 1024))
                if not piece:
                    return b""
                skip -= len(piece)
            return read_up_to(stream, length)

    @abstractmethod
    def exists(self, checksum: str) -> bool: ...

    @abstractmethod
    def delete(self, checksum: str) -> None:
        """Remove a blob; a missing one is no error."""

    @abstractmethod
    def list(self) -> Iterator[BlobInfo]: ...

    def stat(self, checksum: str) -> BlobInfo | None:
        """Size and time of one blob (``None`` if missing). Backends override this with
        one request; the default scans :meth:`list`."""
        return next((b for b in self.list() if b.checksum == checksum), None)

    def local_path(self, checksum: str) -> Path | None:
        """A path on this machine holding the blob, if the backend has one."""
        return None

    def sweep_scratch(self) -> builtins.list[str]:
        """Remove what interrupted writes left behind (partial files, stale uploads)."""
        return []

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        """Release connections."""
