"""Reading stored manifests: :class:`ManifestReader` reads the manifest a state's checksum
names from a blob store (a delta merged with its base, every one checked as hostile input),
and keeps the last few it read or was given, since manifests never change."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from profiles.blobs.base import BlobStore
from profiles.errors import ArchiveInvalid, NotFound, StateCorrupt
from profiles.state.archive import GZIP_MAGIC, ZSTD_MAGIC, ArchiveLimits
from profiles.state.manifest import (
    MANIFEST_MAGIC,
    MAX_MANIFEST_BLOB,
    Manifest,
    is_manifest,
    parse_manifest,
    read_capped,
)

__all__ = ["MANIFESTS_KEPT", "ManifestReader"]

MANIFESTS_KEPT = 16


class ManifestReader:
    """The manifests stored in ``blobs``, read under ``limits``."""

    def __init__(self, blobs: BlobStore, limits: ArchiveLimits, *, kept: int = MANIFESTS_KEPT):
        self.blobs = blobs
        self.limits = limits
        self._kept = kept
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, manifest: Manifest) -> None:
        """Keep ``manifest`` (one just written or read) for the next read of its checksum."""
        with self._lock:
            self._manifests[manifest.checksum] = manifest
            self._manifests.move_to_end(manifest.checksum)
            while len(self._manifests) > self._kept:
                self._manifests.popitem(last=False)

    def forget(self) -> None:
        """Keep nothing (the next reads go to the store, as a fresh process's would)."""
        with self._lock:
            self._manifests.clear()

    def read(
        self, checksum: str, *, missing_ok: bool = True, full: bool = False
    ) -> Manifest | None:
        """The manifest stored under ``checksum``, or ``None`` for a whole archive (and for
        no blob at all, with ``missing_ok``; else ``StateCorrupt``). A delta is read with
        its base (``full``: the base of a delta is being read, and must be a full
        manifest).

        These bytes come from the store: a blob that is neither a manifest nor an archive,
        or a manifest that does not hash to its name or cannot be parsed, is
        ``StateCorrupt`` (the stored state is damaged), never ``ArchiveInvalid`` (which
        says an upload is a bad file)."""
        with self._lock:
            kept = self._manifests.get(checksum)
        if kept is not None and not (full and kept.base is not None):
            return kept
        try:
            with self.blobs.open(checksum) as stream:
                head = stream.read(len(MANIFEST_MAGIC))
                if not is_manifest(head):
                    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
                        return None  # a whole archive: its reader checks it
                    raise StateCorrupt(
                        f"The state {checksum} in {self.blobs.location} is damaged: it is "
                        f"neither a manifest nor an archive (it starts with {head[:8]!r}).",
                        chunk=checksum,
                    )
                rest = read_capped(stream, MAX_MANIFEST_BLOB)
        except NotFound:
            if missing_ok:
                return None
            raise StateCorrupt(
                f"The committed state {checksum} is missing from {self.blobs.location}.",
                checksum=checksum,
            ) from None
        if rest is None:
            raise StateCorrupt(
                f"The state manifest {checksum} in {self.blobs.location} is larger than "
                f"{MAX_MANIFEST_BLOB} bytes.",
                chunk=checksum,
            )
        blob = head + rest
        if hashlib.sha256(blob).hexdigest() != checksum:
            raise StateCorrupt(
                f"The state manifest {checksum} in {self.blobs.location} is damaged: it "
                "does not hash to its name.",
                chunk=checksum,
            )
        try:
            manifest = parse_manifest(
                blob, limits=self.limits, bases=None if full else self._base_of
            )
        except ArchiveInvalid as exc:
            raise StateCorrupt(
                f"The state manifest {checksum} in {self.blobs.location} cannot be read: "
                f"{exc.message}",
                chunk=checksum,
            ) from exc
        manifest._checksum = checksum
        self.remember(manifest)
        return manifest

    def _base_of(self, checksum: str) -> Manifest:
        """The full manifest a delta names as its base, checked against its name."""
        try:
            base = self.read(checksum, missing_ok=False, full=True)
        except StateCorrupt as exc:
            raise StateCorrupt(
                f"The base manifest {checksum} of a delta state cannot be read: {exc.message}",
                chunk=checksum,
            ) from exc
        if base is None:
            raise ArchiveInvalid(
                f"The state manifest names {checksum} as its base, which is not a manifest.",
                field="manifest",
            )
        if base.checksum != checksum:
            raise StateCorrupt(
                f"The base manifest {checksum} in {self.blobs.location} does not hash to its name.",
                chunk=checksum,
            )
        return base
