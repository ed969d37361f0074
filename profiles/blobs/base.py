"""The blob-store interface: immutable state archives named by their SHA-256.

Content is written once and never rewritten (restic's rule): a writer hashes the bytes as
they stream in and the blob appears under its checksum only when complete and durable.
The store deletes a blob when no profile or snapshot references it any more.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["BlobInfo", "BlobSink", "BlobStore"]


class BlobSink:
    """A write-only binary stream that counts and hashes what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0
        self.checksum: str | None = None  # set when the blob is committed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        written = self._target.write(data)
        self.size += len(data)
        return written if written is not None else len(data)

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class BlobInfo:
    checksum: str
    size: int
    modified: float  # POSIX time of the write


class BlobStore(ABC):
    """Where state archives live. Local directory by default; S3-compatible later."""

    @abstractmethod
    def writer(self) -> AbstractContextManager[BlobSink]:
        """Stream a new blob in; on normal exit it is committed under its checksum
        (``sink.checksum``), on an exception nothing is kept."""

    @abstractmethod
    def open(self, checksum: str) -> BinaryIO:
        """Read a blob; ``NotFound`` if it is not there."""

    @abstractmethod
    def local_path(self, checksum: str) -> Path | None:
        """A path on this machine holding the blob, if the backend has one."""

    @abstractmethod
    def exists(self, checksum: str) -> bool: ...

    @abstractmethod
    def delete(self, checksum: str) -> None:
        """Remove a blob; a missing one is no error."""

    @abstractmethod
    def list(self) -> Iterator[BlobInfo]: ...
