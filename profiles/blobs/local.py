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

from profiles.blobs.base import BlobInfo, BlobSink, BlobStore
from profiles.errors import NotFound, ValidationFailed
from profiles.fsutil import fsync_dir
from profiles.scratch import sweep

__all__ = ["LocalBlobStore"]

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
PART_PREFIX = "blob-"


def _check(checksum: str) -> str:
    if len(checksum) != 64 or not _HEX.issuperset(checksum):
        raise ValidationFailed(f"{checksum!r} is not a sha256 hex digest.", field="checksum")
    return checksum


class LocalBlobStore(BlobStore):
    """Content-addressed files, written through a temp file, fsync and rename."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._objects.mkdir(mode=0o700, exist_ok=True)
            self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True)

    def sweep_scratch(self) -> list[str]:
        """Remove partial blobs whose writer died (the writer holds a lock on its file)."""
        return sweep(self._tmp, (PART_PREFIX,))

    def _path(self, checksum: str) -> Path:
        _check(checksum)
        return self._objects / checksum[:2] / checksum

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobSink]:
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=PART_PREFIX, suffix=".part")
        tmp = Path(tmp_name)
        # A sweeper takes parts it can lock: hold the lock (on a duplicate, so it outlives
        # the file object) until the part has been renamed into place or removed.
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.dup(fd)
        try:
            with os.fdopen(fd, "wb", buffering=1024 * 1024) as raw:
                sink = BlobSink(raw)
                yield sink
                raw.flush()
                os.fsync(raw.fileno())
            checksum = sink.hexdigest()
            final = self._path(checksum)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, final)  # same content under the same name: replacing is harmless
            fsync_dir(final.parent)
            sink.checksum = checksum
        finally:
            tmp.unlink(missing_ok=True)
            os.close(held)

    def open(self, checksum: str) -> BinaryIO:
        try:
            return self._path(checksum).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(
                f"State blob {checksum} is missing from {self._objects}; the store's files "
                "were changed outside the library."
            ) from exc

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
            if len(path.name) == 64 and _HEX.issuperset(path.name):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    yield BlobInfo(path.name, st.st_size, st.st_mtime)
