"""Blobs as files in a local directory: ``<root>/sha256/<2 hex>/<64 hex>``."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from profiles.blobs.base import (
    BlobInfo,
    BlobStore,
    HashingReader,
    check_checksum,
    check_range,
)
from profiles.errors import NotFound
from profiles.fsutil import fsync_dir, sweep

__all__ = ["LocalBlobStore"]

log = logging.getLogger(__name__)

PART_PREFIX = "blob-"
CHUNK = 1024 * 1024


class LocalBlobStore(BlobStore):
    """Content-addressed files, written through a temp file, fsync and rename.

    Partial files live in ``<root>/tmp`` and are locked (``flock``) by their writer, so
    :meth:`sweep_scratch` removes only those whose writer died.
    """

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._objects.mkdir(mode=0o700, exist_ok=True)
            self._tmp.mkdir(mode=0o700, exist_ok=True)

    def sweep_scratch(self) -> list[str]:
        return sweep(self._tmp, (PART_PREFIX,))

    def _path(self, checksum: str) -> Path:
        check_checksum(checksum)
        return self._objects / checksum[:2] / checksum

    def _publish(self, tmp: Path, checksum: str) -> None:
        final = self._path(checksum)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(tmp, final)  # the same content under the same name: replacing is harmless
        fsync_dir(final.parent)

    def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
        if self.exists(checksum):
            return False
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=PART_PREFIX, suffix=".part")
        tmp = Path(tmp_name)
        # A sweeper takes parts it can lock: hold the lock (on a duplicate, so it outlives
        # the file object) until the part has been renamed into place or removed.
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.dup(fd)
        try:
            reader = HashingReader(source, size, checksum)
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
                reader.verify()
                out.flush()
                os.fsync(out.fileno())
            self._publish(tmp, checksum)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(held)
        return True

    def put_file(self, checksum: str, path: Path) -> None:
        """Move ``path`` into place when it is on this file system (the caller hashed it
        and fsynced it); else copy it through :meth:`put`."""
        check_checksum(checksum)
        try:
            same_fs = os.stat(path).st_dev == os.stat(self._tmp).st_dev
        except OSError:
            same_fs = False
        if not same_fs:
            super().put_file(checksum, path)
            return
        if self.exists(checksum):
            return
        os.chmod(path, 0o600)
        self._publish(path, checksum)

    def open(self, checksum: str) -> BinaryIO:
        return self._open(checksum)

    def _open(self, checksum: str) -> BinaryIO:
        try:
            return self._path(checksum).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(
                f"State blob {checksum} is missing from {self._objects}; the store's files "
                "were changed outside the library.",
                resource="blob",
                ref=checksum,
            ) from exc

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._open(checksum) as f:
            return os.pread(f.fileno(), length, offset) if length else b""

    def stat(self, checksum: str) -> BlobInfo | None:
        try:
            st = self._path(checksum).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(checksum, st.st_size, st.st_mtime)

    def local_path(self, checksum: str) -> Path | None:
        path = self._path(checksum)
        return path if path.exists() else None

    def exists(self, checksum: str) -> bool:
        return self._path(checksum).exists()

    def delete(self, checksum: str) -> None:
        path = self._path(checksum)
        path.unlink(missing_ok=True)
        log.debug("deleted blob %s", checksum)

    def list(self) -> Iterator[BlobInfo]:
        for path in self._objects.glob("*/*"):
            with contextlib.suppress(ValueError, FileNotFoundError):
                check_checksum(path.name)
                st = path.stat()
                yield BlobInfo(path.name, st.st_size, st.st_mtime)
